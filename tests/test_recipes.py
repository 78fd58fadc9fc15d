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


@pytest.mark.parametrize(
    "text, message",
    [
        ("- {steps: 25, guidance_scale: 7, prompt: [a], n_prompt: [b], colour: red}", "unknown keys ['colour']"),
        ("- {guidance_scale: 7, prompt: [a]}", "missing required key 'steps'"),
        ("- {steps: 2, guidance_scale: 7, prompt: [a, b], n_prompt: [x, y, z]}", "2 prompts but 3 n_prompt"),
        ("- {steps: 2, guidance_scale: 7, prompt: [a], controlnet_path: sc.ckpt}", "SparseCtrl"),
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
