import pytest
import yaml

from animatediff.cli import parse_weighted
from animatediff.errors import UserInputError
from animatediff.recipes import load_official_recipe, slug

# configs/prompts/1_animate/1_1_animate_RealisticVision.yaml (v3 era), shortened
OFFICIAL_V3 = """
- inference_config: "configs/inference/inference-v3.yaml"
  motion_module:    "models/Motion_Module/v3_sd15_mm.ckpt"
  adapter_lora_path: "models/Motion_Module/v3_sd15_adapter.ckpt"
  adapter_lora_scale: 0.8
  dreambooth_path: ""
  lora_model_path: ""
  seed:           [429, 430]
  steps:          25
  guidance_scale: 8
  W: 384
  prompt:
    - "b&w photo of 42 y.o man in black clothes, bald, face, half body, body, high detailed skin"
    - "close up photo of a rabbit, forest, haze, halation, bloom, dramatic atmosphere"
  n_prompt:
    - "semi-realistic, cgi, 3d, render, sketch, cartoon, drawing, anime"
"""

# configs/prompts/2_motionlora/2_motionlora_RealisticVision.yaml style
OFFICIAL_MOTIONLORA = """
- dreambooth_path: "models/DreamBooth_LoRA/realisticVisionV60B1_v51VAE.safetensors"
  lora_model_path: "models/DreamBooth_LoRA/style.safetensors"
  inference_config: "configs/inference/inference-v2.yaml"
  motion_module: "models/Motion_Module/mm_sd_v15_v2.ckpt"
  motion_module_lora_configs:
    - path:  "models/MotionLoRA/v2_lora_ZoomIn.ckpt"
      alpha: 1.0
    - path:  "models/MotionLoRA/v2_lora_PanLeft.ckpt"
      alpha: 0.5
  seed: -1
  steps: 25
  guidance_scale: 7.5
  prompt: ["a", "b", "c"]
  n_prompt: [""]
"""


def _write(tmp_path, text, name="prompts.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_official_v3_recipe(tmp_path):
    jobs = load_official_recipe(_write(tmp_path, OFFICIAL_V3), model="base-model")
    assert len(jobs) == 2
    first, second = jobs
    assert first.model == "base-model"  # empty dreambooth_path -> --model
    assert first.motion_module == "models/Motion_Module/v3_sd15_mm.ckpt"
    assert first.adapter == ("models/Motion_Module/v3_sd15_adapter.ckpt", 0.8)
    assert first.settings == {"steps": 25, "guidance_scale": 8.0, "width": 384, "seed": 429}
    assert second.settings["seed"] == 430
    assert first.negative_prompt == second.negative_prompt  # a single n_prompt is broadcast
    assert first.loras == [] and first.motion_loras == []


def test_official_motionlora_recipe_and_flag_precedence(tmp_path):
    jobs = load_official_recipe(_write(tmp_path, OFFICIAL_MOTIONLORA), model=None, overrides={"steps": 4, "width": 64})
    assert len(jobs) == 3
    job = jobs[0]
    assert job.model.endswith("realisticVisionV60B1_v51VAE.safetensors")  # dreambooth_path is the whole model
    assert job.loras == [("models/DreamBooth_LoRA/style.safetensors", 0.8)]  # official default lora_alpha
    assert job.motion_loras == [("models/MotionLoRA/v2_lora_ZoomIn.ckpt", 1.0), ("models/MotionLoRA/v2_lora_PanLeft.ckpt", 0.5)]
    assert job.settings["steps"] == 4 and job.settings["width"] == 64  # explicit flags beat the recipe
    assert job.settings["guidance_scale"] == 7.5
    assert job.settings["seed"] is None  # -1 = random


def test_july_2023_named_format_with_motion_module_list(tmp_path):
    text = yaml.safe_dump({"ToonYou": {"base": "", "path": "toonyou.safetensors", "motion_module": ["mm_sd_v14.ckpt", "mm_sd_v15.ckpt"],
                                       "seed": [1], "steps": 25, "guidance_scale": 7.5, "prompt": ["p1", "p2"], "n_prompt": ["n"]}})
    jobs = load_official_recipe(_write(tmp_path, text), model="m")
    assert [j.motion_module for j in jobs] == ["mm_sd_v14.ckpt", "mm_sd_v14.ckpt", "mm_sd_v15.ckpt", "mm_sd_v15.ckpt"]
    assert [j.prompt for j in jobs] == ["p1", "p2", "p1", "p2"] and {j.negative_prompt for j in jobs} == {"n"}
    assert all(j.model == "toonyou.safetensors" and j.loras == [] for j in jobs)  # path: the whole model, not --model
    assert all(j.where == "job ToonYou" for j in jobs)


def test_july_2023_path_with_base_is_a_lora_on_base(tmp_path):
    text = yaml.safe_dump({"FilmVelvia": {"base": "majicmix.safetensors", "path": "FilmVelvia2.safetensors", "lora_alpha": 0.6,
                                          "motion_module": "mm_sd_v15.ckpt", "steps": 25, "guidance_scale": 7.5, "prompt": "p"},
                           "NoAlpha": {"base": "majicmix.safetensors", "path": "style.safetensors", "steps": 25,
                                       "guidance_scale": 7.5, "prompt": "p"}})
    film, no_alpha = load_official_recipe(_write(tmp_path, text), model="m")
    assert film.model == "majicmix.safetensors" and film.loras == [("FilmVelvia2.safetensors", 0.6)]
    assert no_alpha.loras == [("style.safetensors", 0.8)]  # the official default lora_alpha
    assert film.keys["model"] == "base" and film.keys["loras"] == "path"


def test_seed_lists_with_random_and_seeds_above_2_63(tmp_path):
    text = yaml.safe_dump({"Toon": {"path": "", "steps": 25, "guidance_scale": 7.5, "prompt": ["a", "b", "c"],
                                    "seed": [10788741199826055526, -1, 2**64 - 1]}})
    jobs = load_official_recipe(_write(tmp_path, text), model=None)
    assert [j.settings["seed"] for j in jobs] == [10788741199826055526, None, 2**64 - 1]  # None: random, recorded
    assert jobs[0].model is None  # empty path: the --model fallback
    flagged = load_official_recipe(_write(tmp_path, text), model=None, overrides={"seed": None})  # --seed -1
    assert [j.settings["seed"] for j in flagged] == [None, None, None] and "seed" not in flagged[0].keys


def test_unknown_keys_are_warned_once_and_init_image_is_not_ignored_silently(tmp_path, caplog):
    text = yaml.safe_dump([{"steps": 2, "guidance_scale": 7, "prompt": "a", "colour": "red"},
                           {"steps": 2, "guidance_scale": 7, "prompt": "b", "colour": "blue", "init_image": "start.png"}])
    with caplog.at_level("WARNING", logger="animatediff.recipes"):
        jobs = load_official_recipe(_write(tmp_path, text), model="m")
    assert len(jobs) == 2
    colour = [r.getMessage() for r in caplog.records if "colour" in r.getMessage()]
    assert len(colour) == 1 and "job 0, 1" in colour[0], colour
    assert any("init_image is not supported yet" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "text, message",
    [
        ("- {guidance_scale: 7, prompt: [a]}", "missing required key 'steps'"),
        ("- {steps: 2, guidance_scale: 7, prompt: [a, b], n_prompt: [x, y, z]}", "2 prompts but 3 n_prompt"),
        ("- {steps: 2, guidance_scale: 7, prompt: [a], controlnet_path: sc.ckpt}", "SparseCtrl job needs controlnet_images"),
        ("just a string", "expected a list of jobs"),
        ("- [unclosed", "not valid YAML"),
    ],
)
def test_bad_recipes_are_one_line_errors(tmp_path, text, message):
    with pytest.raises(UserInputError, match=r".*") as info:
        load_official_recipe(_write(tmp_path, text), model="m")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_empty_dreambooth_path_without_model_means_the_bundled_family(tmp_path):
    jobs = load_official_recipe(_write(tmp_path, OFFICIAL_V3), model=None)
    assert jobs and all(job.model is None for job in jobs)  # Animator.load(None) -> the bundled demo base


def test_parse_weighted_and_slug():
    assert parse_weighted("a.safetensors:0.6", "--lora") == ("a.safetensors", 0.6)
    assert parse_weighted("a.safetensors", "--lora") == ("a.safetensors", 1.0)
    assert parse_weighted(r"C:\models\a.safetensors", "--lora") == (r"C:\models\a.safetensors", 1.0)
    assert parse_weighted(r"C:\models\a.safetensors:-0.5", "--lora") == (r"C:\models\a.safetensors", -0.5)
    assert slug("b&w photo of 42 y.o man, bald") == "bw-photo-of-42-yo-man-bald"


# ---- every bad value is one line through the CLI: exit 2, names the job and the key, nothing loaded or written ----
GOOD_JOB = {"motion_module": "mm_sd_v15_v2.ckpt", "steps": 2, "guidance_scale": 7.5, "prompt": ["a", "b"], "W": 64, "H": 64, "L": 4}
BAD_VALUES = {  # name -> (changes to GOOD_JOB (None: drop the key), words the error must hold after "job NAME, ")
    "guidance_scale with a decimal comma": ({"guidance_scale": "7,5"}, "guidance_scale '7,5'"),
    "guidance_scale null": ({"guidance_scale": None}, "guidance_scale null"),
    "seed random": ({"seed": "random"}, "seed 'random'"),
    "seed text in a list": ({"seed": [1, "random"]}, "seed[1] 'random'"),
    "seed 2**64": ({"seed": 2**64}, f"seed {2**64}"),
    "seed -2": ({"seed": -2}, "seed -2"),
    "seed true": ({"seed": True}, "seed True"),
    "seed float": ({"seed": 1.5}, "seed 1.5"),
    "seed count": ({"seed": [1, 2, 3]}, "seed: 2 prompts but 3 seeds"),
    "W with a unit": ({"W": "64px"}, "W '64px'"),
    "H zero": ({"H": 0}, "H 0"),
    "L as text": ({"L": "16 frames"}, "L '16 frames'"),
    "steps null": ({"steps": None}, "steps null"),
    "steps fractional": ({"steps": 2.5}, "steps 2.5"),
    "motion LoRAs as strings": ({"motion_module_lora_configs": ["v2_lora_ZoomIn.ckpt"]}, "motion_module_lora_configs[0] 'v2_lora_ZoomIn.ckpt'"),
    "motion LoRA without a path": ({"motion_module_lora_configs": [{"alpha": 1.0}]}, "motion_module_lora_configs[0]"),
    "motion LoRA alpha as text": ({"motion_module_lora_configs": [{"path": "z.ckpt", "alpha": "full"}]},
                                  "motion_module_lora_configs[0].alpha 'full'"),
    "motion LoRAs as one mapping": ({"motion_module_lora_configs": {"path": "z.ckpt"}}, "motion_module_lora_configs"),
    "prompt empty list": ({"prompt": []}, "prompt []"),
    "prompt null": ({"prompt": None}, "prompt null"),
    "prompt empty text": ({"prompt": ["a", " "]}, "prompt[1] ' '"),
    "prompt with a null": ({"prompt": ["a", None]}, "prompt[1] null"),
    "n_prompt count": ({"n_prompt": ["x", "y", "z"]}, "n_prompt: 2 prompts but 3"),
    "lora_alpha as text": ({"lora_model_path": "style.safetensors", "lora_alpha": "strong"}, "lora_alpha 'strong'"),
    "adapter scale as text": ({"adapter_lora_path": "adapter.ckpt", "adapter_lora_scale": "0,8"}, "adapter_lora_scale '0,8'"),
    "motion_module a number": ({"motion_module": 3}, "motion_module 3"),
    "motion_module empty list": ({"motion_module": []}, "motion_module []"),
    "path and dreambooth_path": ({"path": "a.safetensors", "dreambooth_path": "b.safetensors"}, "path 'a.safetensors'"),
    "path a list": ({"path": ["a.safetensors"]}, "path ['a.safetensors']"),
    "missing steps": ({"steps": ...}, "missing required key 'steps'"),
    "SparseCtrl": ({"controlnet_path": "sparsectrl.ckpt"}, "controlnet_path 'sparsectrl.ckpt'"),
}


@pytest.fixture
def no_loading(monkeypatch):
    from animatediff.api import Animator

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the prompt YAML was checked")

    monkeypatch.setattr(Animator, "load", refuse)


@pytest.mark.parametrize("layout", ["named", "list"])
@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_bad_yaml_value_is_one_line_naming_job_and_key(tmp_path, capsys, no_loading, layout, case):
    from animatediff.cli import main

    changes, words = BAD_VALUES[case]
    job = {k: v for k, v in {**GOOD_JOB, **changes}.items() if v is not ...}
    recipe = _write(tmp_path, yaml.safe_dump({"Toon": job} if layout == "named" else [job]))
    out = tmp_path / "samples"
    assert main(["-q", "generate", "--config", str(recipe), "--model", "m.safetensors", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --config {recipe}: "), err
    name = "Toon" if layout == "named" else "0"
    assert f"job {name}, {words}" in err[0] or f"job {name}: {words}" in err[0], err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompts.yaml"], "nothing may be written"


@pytest.mark.parametrize("text, words", [
    ("", "expected a list of jobs"), ("{}", "holds no jobs"), ("[]", "holds no jobs"), ("just text", "expected a list of jobs"),
    ("- [unclosed", "not valid YAML"), ("Toon: 3", "job Toon: expected a mapping"),
])
def test_bad_yaml_file_is_one_line(tmp_path, capsys, no_loading, text, words):
    from animatediff.cli import main

    recipe = _write(tmp_path, text)
    assert main(["-q", "generate", "--config", str(recipe), "--out", str(tmp_path / "samples")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --config {recipe}: ") and words in err[0], err
