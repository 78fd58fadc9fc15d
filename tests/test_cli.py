"""The command line end to end on tiny fabricated files in the formats users have."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from animatediff.cli import main
from animatediff.video_io import read_frames, sidecar_path

import fixtures
from tiny_models import save_diffusers_folder, tiny_base_model

FAST = ["--frames", "4", "--width", "64", "--height", "64", "--steps", "2", "--seed", "7"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    base = tiny_base_model()
    sdxl = tiny_base_model(sdxl=True)
    paths = {
        "ldm": fixtures.save(fixtures.ldm_checkpoint(base), d / "tiny_sd15.safetensors"),
        "folder": save_diffusers_folder(base, d / "tiny_sd15_diffusers"),
        "v2": fixtures.save(fixtures.official_motion_state_dict("v2", config_entry=True), d / "mm_sd_v15_v2.ckpt", wrapper="state_dict"),
        "v3": fixtures.save(fixtures.official_motion_state_dict("v3"), d / "v3_sd15_mm.ckpt"),
        "sdxl_mm": fixtures.save(fixtures.official_motion_state_dict("sdxl-beta"), d / "mm_sdxl_v10_beta.ckpt"),
        "lora": fixtures.save(fixtures.kohya_lora_state_dict(base), d / "style.safetensors"),
        "sdxl_lora": fixtures.save(fixtures.kohya_lora_state_dict(sdxl), d / "sdxl_style.safetensors"),
        "motion_lora": fixtures.save(fixtures.motion_lora_state_dict("v2"), d / "v2_lora_ZoomIn.ckpt"),
        "motion_lora_b": fixtures.save(fixtures.motion_lora_state_dict("v2", seed=1), d / "v2_lora_PanLeft.ckpt"),
        "adapter": fixtures.save(fixtures.domain_adapter_state_dict(base.unet), d / "v3_sd15_adapter.ckpt"),
        "pickle": fixtures.write_code_execution_pickle(d / "evil.ckpt"),
        "truncated": fixtures.write_truncated_safetensors(d / "truncated.safetensors"),
        "corrupt": fixtures.write_corrupt(d / "corrupt.ckpt"),
    }
    return {k: str(v) for k, v in paths.items()}


def _generate(files, out, *extra):
    return main(["-q", "generate", "a red circle", *_model(files), "--motion-module", files["v2"], *FAST, "--out", str(out), *extra])


def _model(files):
    """The tiny model as a single LDM file; its architecture is not stock SD1.5, so --model-config says it."""
    return ["--model", files["ldm"], "--model-config", files["folder"]]


@pytest.mark.parametrize("name", ["clip.gif", "clip.mp4", "clip.webp", "frames"])
def test_every_output_format(files, tmp_path, name):
    out = tmp_path / name
    assert _generate(files, out) == 0
    frames = read_frames(out)
    assert frames.shape == (4, 64, 64, 3) or (name.endswith(".gif") and frames.shape[1:] == (64, 64, 3))
    assert sidecar_path(out).exists()


def test_full_stack_with_loras_and_sidecar(files, tmp_path):
    import json

    out = tmp_path / "clip.gif"
    code = _generate(files, out, "--lora", files["lora"] + ":0.6", "--motion-lora", files["motion_lora"] + ":1.0",
                     "--motion-lora", files["motion_lora_b"] + ":0.5", "--negative", "blurry")
    assert code == 0
    meta = json.loads(sidecar_path(out).read_text())
    assert meta["seed"] == 7 and meta["steps"] == 2 and meta["negative_prompt"] == "blurry"
    assert meta["loras"][0]["scale"] == 0.6 and len(meta["motion_loras"]) == 2
    assert len(meta["files"]["motion_module"]["sha256"]) == 64


def test_same_seed_same_video_and_loras_change_it(files, tmp_path):
    a, b, c = tmp_path / "a.gif", tmp_path / "b.gif", tmp_path / "c.gif"
    assert _generate(files, a) == 0 and _generate(files, b) == 0
    assert _generate(files, c, "--motion-lora", files["motion_lora"] + ":1.0") == 0
    fa, fb, fc = (torch.from_numpy(read_frames(p)).float() for p in (a, b, c))
    assert torch.equal(fa, fb)
    assert fa.shape != fc.shape or (fa - fc).abs().max() > 0


def test_diffusers_folder_and_v3_with_adapter(files, tmp_path):
    out = tmp_path / "v3.gif"
    assert main(["-q", "generate", "a blue square", "--model", files["folder"], "--motion-module", files["v3"],
                 "--adapter", files["adapter"] + ":0.8", *FAST, "--out", str(out)]) == 0
    assert out.exists()


def test_official_prompt_yaml(files, tmp_path):
    recipe = tmp_path / "2_motionlora.yaml"
    recipe.write_text(f"""
- dreambooth_path: "{files['ldm']}"
  lora_model_path: "{files['lora']}"
  lora_alpha: 0.6
  inference_config: "configs/inference/inference-v2.yaml"
  motion_module: "{files['v2']}"
  motion_module_lora_configs:
    - path: "{files['motion_lora']}"
      alpha: 1.0
  seed: [1, 2]
  steps: 2
  guidance_scale: 7.5
  W: 64
  H: 64
  L: 4
  prompt: ["a red circle", "a green star"]
  n_prompt: [""]
""")
    out = tmp_path / "samples"
    assert main(["-q", "generate", "--config", str(recipe), "--model-config", files["folder"], "--out", str(out)]) == 0
    written = sorted(p.name for p in out.glob("*.gif"))
    assert written == ["0-a-red-circle-seed1.gif", "1-a-green-star-seed2.gif"]


def test_inspect_names_each_kind(files, capsys):
    assert main(["inspect", files["v2"], files["v3"], files["sdxl_mm"], files["motion_lora"], files["adapter"], files["lora"], files["ldm"]]) == 0
    text = capsys.readouterr().out.lower()
    for word in ("motion-module v2", "motion-module v3", "sdxl", "motion-lora", "domain-adapter", "lora", "sd15-checkpoint"):
        assert word in text, word


BAD = {
    "sdxl motion module on sd15": (["--motion-module", "{sdxl_mm}"], "sdxl"),
    "v2 motion lora on v3": (["--motion-module", "{v3}", "--motion-lora", "{motion_lora}"], "mid"),
    "lora for another base": (["--lora", "{sdxl_lora}"], "sdxl_style.safetensors"),
    "truncated file": (["--motion-module", "{truncated}"], "truncated.safetensors"),
    "corrupt file": (["--motion-module", "{corrupt}"], "corrupt.ckpt"),
    "code-execution pickle": (["--motion-module", "{pickle}"], "evil.ckpt"),
    "missing file": (["--lora", "/nonexistent/x.safetensors"], "x.safetensors"),
    "width not divisible by 8": (["--width", "66"], "--width"),
    "too many frames": (["--frames", "40", "--context", "none"], "--frames"),  # windows forced off
    "unknown extension": (["--out", "{tmp}/clip.avi"], "--out"),
    "unknown scheduler": (["--scheduler", "plms2"], "--scheduler"),
    "steps past the training timesteps": (["--steps", "1001", "--scheduler", "ddim"], "--steps 1001: must be at most 1000"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2_no_output(files, tmp_path, capsys, case):
    extra, expected = BAD[case]
    args = {"motion_module": files["v2"]}
    extra = [e.format(**files, tmp=tmp_path) for e in extra]
    out = tmp_path / "clip.gif"
    argv = ["-q", "generate", "a red circle", *_model(files), *FAST, "--out", str(out)]
    if "--motion-module" not in extra:
        argv += ["--motion-module", args["motion_module"]]
    argv += extra  # later flags win
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert expected.lower() in err[0].lower(), err[0]
    assert not any(tmp_path.iterdir()), "no output may be left behind"


def test_bad_input_in_a_real_process_has_no_traceback(files, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "animatediff", "generate", "x", *_model(files), "--motion-module", files["pickle"],
         "--out", str(tmp_path / "a.gif")], capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: evil.ckpt") or "evil.ckpt" in proc.stderr.strip().splitlines()[-1]


# ---- output targets: checked before any model loads, never destroyed -----------------------------------
def _user_folder(tmp_path):
    folder = tmp_path / "holiday"
    folder.mkdir()
    (folder / "holiday.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 a precious video")
    (folder / "notes.txt").write_text("notes")
    return folder


OUT_TARGETS = {  # name -> (make the target in tmp_path, extra flags, words of the error)
    "existing folder of user files, no extension": (lambda t: _user_folder(t), [], "not frames written by animatediff"),
    "existing plain file, no extension": (lambda t: (t / "NAME").write_text("mine") and t / "NAME", [], "is a file"),
    "existing plain file, no extension, --overwrite": (lambda t: (t / "NAME").write_text("mine") and t / "NAME",
                                                       ["--overwrite"], "is a file"),
    "existing folder named clip.gif": (lambda t: (t / "clip.gif").mkdir() or t / "clip.gif", [], "is a folder"),
    "a text file named clip.gif": (lambda t: (t / "clip.gif").write_text("mine") and t / "clip.gif", [], "is not a gif"),
    "parent is a file": (lambda t: (t / "parent").write_text("mine") and t / "parent" / "clip.gif", [], "is a file, not a folder"),
}


@pytest.mark.parametrize("case", list(OUT_TARGETS))
def test_output_target_refused_before_loading_and_kept(files, tmp_path, capsys, monkeypatch, case):
    from animatediff.api import Animator

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the output target was checked")

    monkeypatch.setattr(Animator, "load", no_loading)
    make, extra, expected = OUT_TARGETS[case]
    target = make(tmp_path)
    before = {str(p): (p.read_bytes() if p.is_file() else None) for p in sorted(tmp_path.rglob("*"))}
    argv = ["-q", "generate", "a red circle", *_model(files), "--motion-module", files["v2"], *FAST, "--out", str(target), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --out "), err
    assert expected in err[0].lower(), err[0]
    after = {str(p): (p.read_bytes() if p.is_file() else None) for p in sorted(tmp_path.rglob("*"))}
    assert after == before


def test_overwrite_into_a_user_folder_keeps_the_users_files(files, tmp_path):
    folder = _user_folder(tmp_path)
    assert _generate(files, folder, "--overwrite") == 0
    assert (folder / "notes.txt").read_text() == "notes"
    assert (folder / "holiday.mp4").read_bytes().endswith(b"a precious video")
    assert len(read_frames(folder)) == 4 and (folder / "settings.json").is_file()


def test_config_out_that_is_a_file_is_refused(files, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"- dreambooth_path: \"{files['ldm']}\"\n  motion_module: \"{files['v2']}\"\n  prompt: [\"a\"]\n  steps: 2\n  W: 64\n  H: 64\n  L: 4\n  seed: 1\n  guidance_scale: 7.5\n")
    (tmp_path / "samples").write_text("mine")
    assert main(["-q", "generate", "--config", str(recipe), "--model-config", files["folder"], "--out", str(tmp_path / "samples")]) == 2
    assert "--out" in capsys.readouterr().err
    assert (tmp_path / "samples").read_text() == "mine"


# ---- option values: every flag checked before any model loads, one line ------------------------------
@pytest.fixture
def no_loading(monkeypatch):
    """Animator.load fails the test; torch looks CPU-only (no CUDA, no MPS) whatever machine runs the test."""
    from animatediff.api import Animator

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the options were checked")

    monkeypatch.setattr(Animator, "load", refuse)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


BAD_OPTIONS = {  # name -> (extra flags, words the error line must hold)
    "unknown motion preset": (["--motion-preset", "v4"], ["--motion-preset", "v4", "v3"]),
    "unknown scheduler": (["--scheduler", "plms2"], ["--scheduler", "plms2", "euler_a"]),
    "unknown scheduler preset": (["--scheduler-preset", "turbo"], ["--scheduler-preset", "turbo", "lightning"]),
    "unknown dtype": (["--dtype", "float8"], ["--dtype", "float8"]),
    "cuda on a CPU-only torch": (["--device", "cuda"], ["--device cuda", "available: cpu"]),
    "cuda:1 on a CPU-only torch": (["--device", "cuda:1"], ["--device cuda:1", "available: cpu"]),
    "mps on a CPU-only torch": (["--device", "mps"], ["--device mps", "available: cpu"]),
    "gpu is not a torch device": (["--device", "gpu"], ["--device gpu", "not a torch device name", "cuda", "available: cpu"]),
    "device garbage": (["--device", "cuda:x"], ["--device cuda:x", "available: cpu"]),
    "seed 2**64": (["--seed", str(2**64)], ["--seed", str(2**64)]),
    "seed -2": (["--seed", "-2"], ["--seed", "-2", "-1"]),
    "seed not a number": (["--seed", "random"], ["--seed", "random"]),
    "fps 0": (["--fps", "0"], ["--fps", "0"]),
    "fps negative": (["--fps", "-8"], ["--fps", "-8"]),
    "fps garbage": (["--fps", "fast"], ["--fps", "fast"]),
    "fps 1/0": (["--fps", "1/0"], ["--fps", "1/0"]),
    "fps nan": (["--fps", "nan"], ["--fps", "nan"]),
    # settings that need no model are refused before it loads (a fresh user waited for the load to hear --steps 0)
    "steps 0": (["--steps", "0"], ["--steps", "0"]),
    "frames 0": (["--frames", "0"], ["--frames", "0"]),
    "guidance -1": (["--guidance", "-1"], ["--guidance", "-1"]),
}


@pytest.mark.parametrize("case", list(BAD_OPTIONS))
def test_bad_option_value_is_one_line_before_loading(files, tmp_path, capsys, no_loading, case):
    extra, words = BAD_OPTIONS[case]
    argv = ["-q", "generate", "a red circle", *_model(files), "--motion-module", files["v2"], *FAST, "--out", str(tmp_path / "clip.gif")]
    assert main(argv + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    for word in words:
        assert word in err[0], (word, err[0])
    assert not any(tmp_path.iterdir()), "no output may be left behind"


def test_closed_sets_are_case_insensitive():
    from animatediff.cli import build_parser

    args = build_parser().parse_args(["generate", "x", "--motion-preset", "V2", "--scheduler", "Euler_A",
                                      "--scheduler-preset", "AnimateDiff", "--dtype", "Float16"])
    assert (args.motion_preset, args.scheduler, args.scheduler_preset, args.dtype) == ("v2", "euler_a", "animatediff", "float16")
    assert build_parser().parse_args(["generate", "x", "--scheduler", "DDIM"]).scheduler == "ddim"


def test_unknown_motion_preset_in_the_library_is_a_user_error(files):
    from animatediff.api import Animator
    from animatediff.errors import UserInputError
    from animatediff.presets import get_preset

    assert get_preset("V2").name == "v2"
    with pytest.raises(UserInputError) as info:
        Animator.load(files["ldm"], files["v2"], motion_preset="v4", model_config=files["folder"])
    assert info.value.field == "motion_preset" and info.value.value == "v4" and "v1, v2, v3" in str(info.value)


def test_motion_preset_in_capitals_generates(files, tmp_path):
    assert _generate(files, tmp_path / "clip.gif", "--motion-preset", "V2", "--scheduler", "DDIM") == 0


def test_seed_minus_one_is_random_and_recorded(files, tmp_path):
    import json

    assert _generate(files, tmp_path / "clip.gif", "--seed", "-1") == 0
    seed = json.loads(sidecar_path(tmp_path / "clip.gif").read_text())["seed"]
    assert 0 <= seed < 2**64


def test_largest_seed_is_taken(files, tmp_path):
    import json

    assert _generate(files, tmp_path / "clip.gif", "--seed", str(2**64 - 1)) == 0
    assert json.loads(sidecar_path(tmp_path / "clip.gif").read_text())["seed"] == 2**64 - 1


@pytest.mark.parametrize("fps, name, written", [("24000/1001", "clip.mp4", 24000 / 1001), ("23.976", "clip.webp", 23.976),
                                                ("12.5", "clip.gif", 12.5)])
def test_fractional_fps(files, tmp_path, fps, name, written):
    import json

    assert _generate(files, tmp_path / name, "--fps", fps) == 0
    assert json.loads(sidecar_path(tmp_path / name).read_text())["fps"] == pytest.approx(written)


# ---- train: a bad motion_preset in a recipe or an option is one line, before training starts ----------
@pytest.mark.parametrize("where", ["recipe", "option"])
def test_train_unknown_motion_preset_is_one_line(tmp_path, capsys, monkeypatch, where):
    import animatediff.training.loop

    def refuse(*args, **kwargs):
        raise AssertionError("training started before the recipe was checked")

    monkeypatch.setattr(animatediff.training.loop, "train", refuse)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("mode: motion-module\nmotion_preset: v4\nvideo_folder: .\nbase_model: base\n")
    config = [str(recipe)] if where == "recipe" else ["tiny-motion-module", "--motion_preset", "v4", "--video_folder", ".",
                                                       "--base_model", "base"]
    assert main(["train", "motion-module", "--config", *config]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "v4" in err[0] and "v3" in err[0]
    assert ("recipe.yaml" in err[0] and "motion_preset" in err[0]) if where == "recipe" else "--motion_preset" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]


# ---- official prompt YAML, July-2023 named-job format -------------------------------------------------
def test_july_2023_prompt_yaml_reads_path_and_base(files, tmp_path):
    """``path`` alone is the whole model; with ``base`` it is a LoRA (at ``lora_alpha``) on top of ``base``; a list of
    motion modules gives one clip per module x prompt. --model is only the fallback for jobs that name no model."""
    import json

    import yaml

    recipe = tmp_path / "v1.yaml"
    recipe.write_text(yaml.safe_dump({
        "Personal": {"base": "", "path": files["ldm"], "motion_module": [files["v2"], files["v3"]],
                     "seed": [1], "steps": 2, "guidance_scale": 7.5, "prompt": ["a red circle"], "n_prompt": [""]},
        "Styled": {"base": files["ldm"], "path": files["lora"], "lora_alpha": 0.6, "motion_module": [files["v2"]],
                   "seed": 2, "steps": 2, "guidance_scale": 7.5, "prompt": ["a green star"], "n_prompt": [""]},
    }, sort_keys=False))
    out = tmp_path / "samples"
    argv = ["-q", "generate", "--config", str(recipe), "--model", files["folder"], "--model-config", files["folder"],
            "--width", "64", "--height", "64", "--frames", "4", "--out", str(out)]
    assert main(argv) == 0
    clips = sorted(out.glob("*.gif"))
    assert [p.name for p in clips] == ["0-a-red-circle-seed1.gif", "1-a-red-circle-seed1.gif", "2-a-green-star-seed2.gif"]
    meta = [json.loads(sidecar_path(p).read_text()) for p in clips]
    assert [m["files"]["model"]["path"] for m in meta] == [files["ldm"]] * 3  # never the --model fallback
    assert [m["files"]["motion_module"]["path"] for m in meta] == [files["v2"], files["v3"], files["v2"]]
    assert meta[0]["loras"] == [] and meta[1]["loras"] == []
    assert [(lora["path"], lora["scale"]) for lora in meta[2]["loras"]] == [(files["lora"], 0.6)]


def test_yaml_frames_beyond_the_motion_module_name_L(files, tmp_path, capsys):
    """The frame count came from the YAML's ``L``, so the error names the job and ``L``, not ``--frames``."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"- dreambooth_path: \"{files['ldm']}\"\n  motion_module: \"{files['v2']}\"\n  prompt: [\"a\"]\n"
                      "  steps: 2\n  guidance_scale: 7.5\n  W: 64\n  H: 64\n  L: 40\n  context: none\n")
    out = tmp_path / "samples"
    assert main(["-q", "generate", "--config", str(recipe), "--model-config", files["folder"], "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --config "), err
    assert "job 0, L 40" in err[0] and "--frames" not in err[0], err[0]
    assert not out.exists()


# ---- files that are not weights, and every community LoRA format, through the command line --------------------
BROKEN = {  # flag, file name, what it holds
    "web page as motion module": ("--motion-module", "mm_sd_v15_v2.ckpt", "html"),
    "LFS pointer as LoRA": ("--lora", "style.safetensors", "lfs"),
    "empty model": ("--model", "realisticVision.safetensors", "empty"),
    "JSON error page as adapter": ("--adapter", "v3_sd15_adapter.ckpt", "json"),
    "web page as MotionLoRA": ("--motion-lora", "v2_lora_ZoomIn.ckpt", "html"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_download_is_one_line_naming_what_the_file_is(files, tmp_path, capsys, case):
    flag, name, kind = BROKEN[case]
    downloads, out = tmp_path / "downloads", tmp_path / "out"
    downloads.mkdir(), out.mkdir()
    path = str(fixtures.write_broken_download(downloads / name, kind))
    argv = ["-q", "generate", "a red circle", *_model(files), "--motion-module", files["v2"], *FAST, "--out", str(out / "clip.gif")]
    argv += [flag, path]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}: "), err
    assert fixtures.BROKEN_DOWNLOADS[kind][1] in err[0] and "weights_only" not in err[0], err[0]
    assert not any(out.iterdir()) and [p.name for p in downloads.iterdir()] == [name]
    assert main(["inspect", path]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fixtures.BROKEN_DOWNLOADS[kind][1] in err[0], err


def test_inspect_and_generate_with_every_lora_format(files, tmp_path, capsys):
    base = tiny_base_model()
    kohya = fixtures.kohya_lora_state_dict(base, conv=True)
    layers = len({k.partition(".")[0] for k in kohya})
    text_layers = len({k.partition(".")[0] for k in kohya if k.startswith("lora_te_")})
    loras = {  # file name: (contents, format words, layers)
        "loha.safetensors": (fixtures.loha_state_dict(base, conv=True, tucker=True), "LyCORIS LoHa", layers),
        "lokr.safetensors": (fixtures.lokr_state_dict(base, conv=True, mode="tucker"), "LyCORIS LoKr", layers),
        "pytorch_lora_weights.safetensors": (fixtures.kohya_to_diffusers_lora(kohya, base), "diffusers LoRA", layers),
        "adapter_model.safetensors": ({k: v for k, v in fixtures.kohya_to_diffusers_lora(kohya, base, "peft").items()
                                       if ".text_model." not in k}, "PEFT LoRA", layers - text_layers),
    }
    for name, (state, words, count) in loras.items():
        path = str(fixtures.save(state, tmp_path / name))
        assert main(["inspect", path]) == 0
        text = capsys.readouterr().out
        assert text.startswith("lora ") and words in text and f"layers: {count}\n" in text and "rank: " in text, text
        out = tmp_path / f"{name}.gif"
        assert _generate(files, out, "--lora", path + ":0.7") == 0 and out.exists()


def test_unwritable_output_folder_is_refused_before_loading(files, tmp_path, capsys, monkeypatch):
    import os

    from animatediff.api import Animator

    monkeypatch.setattr(Animator, "load", lambda *a, **k: (_ for _ in ()).throw(AssertionError("model loaded")))
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    real_access = os.access  # as root every folder is writable; the check asks os.access, so deny it there
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(locked) else real_access(p, mode))
    argv = ["-q", "generate", "a red circle", *_model(files), "--motion-module", files["v2"], *FAST,
            "--out", str(locked / "clip.gif")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --out ") and "no permission" in err[0], err
    assert list(locked.iterdir()) == []


def test_no_motion_warning_only_when_no_motion_module_is_used(files, tmp_path, caplog):
    """A job without motion_module on the bundled family gets the bundled module (no warning); on another model
    it really has no motion, and the warning says so."""
    bundled, own = tmp_path / "bundled.yaml", tmp_path / "own.yaml"
    job = "  prompt: [\"a red circle\"]\n  steps: 1\n  guidance_scale: 7.5\n  W: 64\n  H: 64\n  L: 2\n  seed: 1\n"
    bundled.write_text("- dreambooth_path: \"\"\n" + job)
    own.write_text(f"- dreambooth_path: \"{files['ldm']}\"\n" + job)
    with caplog.at_level("WARNING", logger="animatediff"):
        assert main(["-q", "generate", "--config", str(bundled), "--out", str(tmp_path / "a")]) == 0
        assert "no motion" not in caplog.text
        assert main(["-q", "generate", "--config", str(own), "--model-config", files["folder"], "--out", str(tmp_path / "b")]) == 0
        assert "no motion" in caplog.text


# ---- error wording from a fresh-user trial: the flag that was given, the value as typed --------------------------
MESSAGES = {  # name -> (extra flags, words the error line must hold, words it must not hold)
    "control video not a video": (["--controlnet", "{tmp}/cn.safetensors", "--control-video", "{tmp}/notes.txt"],
                                  ["--control-video", "notes.txt"], ["--controlnet"]),
    "control image not an image": (["--controlnet", "{tmp}/cn.safetensors", "--control-image", "{tmp}/notes.txt"],
                                   ["--control-image", "notes.txt"], ["--controlnet"]),
    "keyframe without sparsectrl": (["--keyframe", "{tmp}/k.png@0"], ["--keyframe", "k.png@0"], ["[{", "'image'"]),
    "ip-image without ip-adapter": (["--ip-image", "{tmp}/k.png", "--ip-image", "{tmp}/k.png@3"],
                                    ["--ip-image", "k.png /", "k.png@3:"], ["[{", "'image'"]),
    "motion scale per frame, too few": (["--motion-scale", "1,2"], ["--motion-scale 1,2:"], ["[1.0"]),
    "sparsectrl scale without sparsectrl": (["--sparsectrl-scale", "2,3"], ["--sparsectrl-scale 2,3:"], ["[2.0"]),
    "lora scale not a number": (["--lora", "personal-lora:abc"], ["--lora", "personal-lora:abc", "scale 'abc' is not a number"],
                                ["not found"]),
    "ip-adapter scale not a number": (["--ip-adapter", "f:abc"], ["--ip-adapter", "scale 'abc' is not a number"], ["no such file"]),
    "max frames 0": (["--max-frames", "0"], ["--max-frames", "at least 1"], ["--context-length", "None"]),
    "folder of user files": (["--out", "{tmp}/holiday"], ["--out", "or --overwrite to"], []),
}


@pytest.mark.parametrize("case", list(MESSAGES))
def test_error_names_the_flag_and_value_as_typed(files, tmp_path, capsys, no_loading, case):
    from PIL import Image

    extra, words, absent = MESSAGES[case]
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.new("RGB", (8, 8)).save(inputs / "k.png")
    (inputs / "notes.txt").write_text("not a video")
    (inputs / "cn.safetensors").write_bytes(b"")
    _user_folder(inputs)
    argv = ["-q", "generate", "a red circle", *_model(files), "--motion-module", files["v2"], *FAST,
            "--out", str(tmp_path / "clip.gif")]
    before = sorted(tmp_path.rglob("*"))
    assert main(argv + [e.format(tmp=inputs) for e in extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    for word in words:
        assert word in err[0], (word, err[0])
    for word in absent:
        assert word not in err[0], (word, err[0])
    assert sorted(tmp_path.rglob("*")) == before, "nothing may be written"


def test_a_file_whose_name_ends_in_colon_text_is_still_a_file(tmp_path):
    from animatediff.cli import parse_weighted
    from animatediff.generation.ip_adapter import parse_ip_adapter_arg

    odd = tmp_path / "style:v2"
    odd.write_bytes(b"")
    assert parse_weighted(str(odd), "--lora") == (str(odd), 1.0)
    assert parse_ip_adapter_arg(str(odd)) == {"path": str(odd)}
    assert parse_weighted("C:\\loras\\x.safetensors:0.5", "--lora") == ("C:\\loras\\x.safetensors", 0.5)
    assert parse_weighted("C:x.safetensors", "--lora") == ("C:x.safetensors", 1.0)
