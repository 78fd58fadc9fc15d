"""The bundled demo family: files load strictly, fit the size budget, generate with no flags, names resolve."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from animatediff.cli import main
from animatediff import bundled
from animatediff.weights.load import load_base_model, load_motion_modules
from animatediff.weights.lora import apply_domain_adapter, apply_lora, apply_motion_lora
from animatediff.video_io import read_frames, sidecar_path

PROMPT = "a red circle bouncing on a blue striped background"
ROOT = bundled.demo_root()


@pytest.fixture(scope="module")
def base():
    return load_base_model(str(ROOT / "base"))


def test_bundle_files_fp16_and_within_60_mb():
    expected = {"base/unet/diffusion_pytorch_model.safetensors", "base/vae/diffusion_pytorch_model.safetensors",
                "base/text_encoder/model.safetensors", "personal/unet/diffusion_pytorch_model.safetensors",
                "personal-lora.safetensors", "domain_adapter.safetensors", "motion_module.safetensors",
                "sparsectrl_rgb.safetensors", "text-encoder/image_tower.safetensors",
                "ablation/motion_module_conv.safetensors"}
    expected |= {f"motion_loras/{move}.safetensors" for move in bundled.CAMERA_MOVES}
    files = {str(p.relative_to(ROOT)): p for p in ROOT.rglob("*.safetensors")}
    assert expected <= files.keys()
    for name, path in files.items():
        with safe_open(str(path), "pt") as f:
            dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
        assert dtypes == {"F16"}, (name, dtypes)
    total = sum(p.stat().st_size for p in ROOT.rglob("*") if p.is_file())
    assert total <= 60e6, f"bundle is {total / 1e6:.1f} MB"  # issue 11's budget
    meta = bundled.metadata()
    assert meta["generation_defaults"]["width"] == 128 and meta["generation_defaults"]["num_frames"] == 16


def _keys(path) -> set[str]:
    with safe_open(str(path), "pt") as f:
        return set(f.keys())


def test_base_and_motion_module_load_strictly(base):
    assert base.kind == "sd15"
    for component, file in ((base.unet, "unet/diffusion_pytorch_model.safetensors"),
                            (base.vae, "vae/diffusion_pytorch_model.safetensors")):
        assert _keys(ROOT / "base" / file) == set(component.state_dict())
    assert base.vae.config.scaling_factor != 0.18215  # measured for this VAE, not SD's
    motion = load_motion_modules(str(ROOT / "motion_module.safetensors"), unet=base.unet)
    # Four UNet levels, so the file reads as an SD1.5 v3 module (per-frame GroupNorm, linear-beta DDIM).
    assert motion.config.name == "v3" and motion.config.base == "sd15"
    assert motion.config.block_out_channels == tuple(base.unet.config.block_out_channels)
    assert motion.max_frames == 32


def test_personal_variants_and_loras_merge(base):
    personal = load_base_model(bundled.model_path("personal"))
    assert set(personal.unet.state_dict()) == set(base.unet.state_dict())
    assert not torch.equal(personal.unet.conv_in.weight, base.unet.conv_in.weight)  # really finetuned
    handles = [apply_lora(base, bundled.lora_path("personal-lora"), 1.0),
               apply_domain_adapter(base.unet, bundled.adapter_path("domain-adapter"), 1.0)]
    assert all(h.num_layers > 0 for h in handles)
    motion = load_motion_modules(bundled.motion_module_path("demo"), unet=base.unet)
    for move in bundled.CAMERA_MOVES:
        handle = apply_motion_lora(motion, bundled.motion_lora_path(move), 1.0)
        assert handle.num_layers == 4 * 2 * len(list(motion.placements()))  # q, k, v, out x 2 attentions
        handle.unmerge()
    for handle in reversed(handles):
        handle.unmerge()


def test_named_resolution(tmp_path, monkeypatch):
    found = bundled.resolve("personal", None, [("personal-lora", 0.8)], [("ZoomIn", 1.0)], ("domain-adapter", 0.5))
    assert found.model == str(ROOT / "personal")
    assert found.motion_module == str(ROOT / "motion_module.safetensors")  # the bundled family's own module
    assert found.loras == [(str(ROOT / "personal-lora.safetensors"), 0.8)]
    assert found.motion_loras == [(str(ROOT / "motion_loras" / "ZoomIn.safetensors"), 1.0)]
    assert found.adapter == (str(ROOT / "domain_adapter.safetensors"), 0.5)
    assert found.defaults["width"] == 128
    # explicit paths win over bundled names, and a model given by path gets no bundled defaults
    monkeypatch.chdir(tmp_path)
    (tmp_path / "personal").mkdir()
    found = bundled.resolve("personal", "mm.ckpt", [("x.safetensors", 1.0)])
    assert (found.model, found.motion_module, found.loras, found.defaults) == ("personal", "mm.ckpt", [("x.safetensors", 1.0)], {})


def test_generate_with_no_model_flags(tmp_path):
    out = tmp_path / "clip.gif"
    assert main(["-q", "generate", PROMPT, "--steps", "2", "--seed", "3", "--out", str(out)]) == 0
    frames = read_frames(out)
    assert frames.shape[1:] == (128, 128, 3) and len(frames) <= 16  # GIF may merge identical frames
    meta = json.loads(sidecar_path(out).read_text())
    assert (meta["width"], meta["height"], meta["num_frames"], meta["steps"]) == (128, 128, 16, 2)
    assert meta["files"]["model"]["path"] == str(ROOT / "base")
    assert meta["files"]["motion_module"]["path"] == str(ROOT / "motion_module.safetensors")


def test_generate_with_bundled_names(tmp_path):
    out = tmp_path / "frames"
    assert main(["-q", "generate", PROMPT, "--model", "personal", "--lora", "personal-lora:0.8",
                 "--motion-lora", "ZoomIn:1.0", "--frames", "4", "--steps", "1", "--seed", "1", "--out", str(out)]) == 0
    assert read_frames(out).shape == (4, 128, 128, 3)
    meta = json.loads(sidecar_path(out).read_text())
    assert meta["motion_loras"][0]["path"].endswith("ZoomIn.safetensors")
    assert meta["loras"][0]["path"].endswith("personal-lora.safetensors")


def test_official_prompt_config_uses_the_bundled_family_and_names(tmp_path):
    """An official job with an empty dreambooth_path and no --model gets the bundled base, as `generate` does;
    LoRA, MotionLoRA and motion-module entries may be bundled names."""
    recipe = tmp_path / "job.yaml"
    recipe.write_text(
        "- dreambooth_path: ''\n  lora_model_path: personal-lora\n  lora_alpha: 0.8\n  motion_module: [demo]\n"
        "  motion_module_lora_configs: [{path: ZoomIn, alpha: 1.0}]\n  seed: [3]\n  steps: 1\n"
        "  guidance_scale: 7.5\n  L: 4\n  prompt: ['" + PROMPT + "']\n")
    assert main(["-q", "generate", "--config", str(recipe), "--out", str(tmp_path / "out")]) == 0
    (clip,) = (tmp_path / "out").glob("*.gif")
    meta = json.loads(sidecar_path(clip).read_text())
    assert meta["files"]["model"]["path"] == str(ROOT / "base") and meta["num_frames"] == 4
    assert meta["loras"][0]["path"].endswith("personal-lora.safetensors")
    assert meta["motion_loras"][0]["path"].endswith("ZoomIn.safetensors")


def test_processor_lora_to_kohya_merges_the_same_weights():
    """personal-lora is trained as a processor-format LoRA and shipped in kohya keys: both merges must agree."""
    import fixtures
    from tiny_models import tiny_base_model

    from animatediff.weights.convert import processor_lora_to_kohya

    base = tiny_base_model()
    processor = fixtures.domain_adapter_state_dict(base.unet)
    before = {k: v.clone() for k, v in base.unet.state_dict().items()}
    handle = apply_domain_adapter(base.unet, processor, 0.7)
    expected = {k: v.clone() for k, v in base.unet.state_dict().items()}
    handle.unmerge()
    apply_lora(base, processor_lora_to_kohya(processor), 0.7)
    for key, value in base.unet.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=1e-6)
    assert any(not torch.equal(before[k], expected[k]) for k in before)
