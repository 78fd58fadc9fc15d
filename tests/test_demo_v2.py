"""Demo family v2 (issue 11): the contrastive text encoder, the 128 px VAE, their build stages, and the MotionLoRA
diagnosis (the training path's camera moves read correctly by eval's estimator)."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from animatediff.demo import build, camera_check, clip, vae_v2
from animatediff.presets import CAMERA_MOVES

TINY_CLIP = dict(image_size=32, text_width=16, text_layers=1, text_heads=2, image_channels=(8, 8), projection_dim=8,
                 batch_size=4, steps=4, pool_size=16, warmup_steps=2)
TINY_VAE = dict(image_size=32, block_out_channels=(8, 8), norm_num_groups=4, batch_size=2, steps=4, pool_size=8)


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_clip_towers_shapes_and_loss():
    config = clip.ClipConfig(**TINY_CLIP)
    model = clip.build_towers(config)
    images, ids = torch.rand(3, 3, 32, 32) * 2 - 1, clip.tokenize(["a red circle"] * 3, config.max_tokens)
    assert ids.shape == (3, config.max_tokens) and ids[0, 0] == 49406  # BOS of the real CLIP vocabulary
    assert model.encode_image(images).shape == model.encode_text(ids).shape == (3, 8)
    assert model.encode_image(torch.rand(2, 3, 64, 64)).shape == (2, 8)  # larger images are resized
    assert torch.isfinite(clip.contrastive_loss(model, images, ids))


def test_clip_resume_is_bit_exact(tmp_path):
    whole = clip.train_clip(clip.ClipConfig(**TINY_CLIP))
    clip.train_clip(clip.ClipConfig(**TINY_CLIP), tmp_path, stop_at=2)  # interrupted after 2 steps
    resumed = clip.train_clip(clip.ClipConfig(**TINY_CLIP), tmp_path)
    assert resumed.step == 4 and resumed.losses == whole.losses
    for key, value in _weights(whole.model).items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    with pytest.raises(ValueError, match="another ClipConfig"):
        clip.train_clip(clip.ClipConfig(**{**TINY_CLIP, "text_layers": 2}), tmp_path)


def test_clip_towers_save_load_and_zero_shot(tmp_path):
    from transformers import CLIPTextModel

    model = clip.train_clip(clip.ClipConfig(**TINY_CLIP)).model
    clip.save_towers(model, tmp_path, dtype=torch.float32)
    text = CLIPTextModel.from_pretrained(tmp_path / "text_encoder")  # what a base model's folder takes
    assert text.config.hidden_size == 16
    loaded = clip.load_towers(tmp_path)
    images, texts = torch.rand(2, 3, 32, 32) * 2 - 1, ["a red circle on a blue striped background", "a star"]
    assert torch.allclose(loaded.similarity(images, texts), model.similarity(images, texts), atol=1e-5)
    result = clip.zero_shot_accuracy(model, num_scenes=3, num_objects=None)
    assert set(result) == {*clip.ATTRIBUTES, "mean", "chance"}
    assert result["chance"]["shape"] == pytest.approx(0.2) and result["chance"]["background pattern"] == pytest.approx(1 / 3, abs=1e-4)


def test_vae_v2_resume_is_bit_exact_and_round_trip(tmp_path):
    whole = vae_v2.train(vae_v2.VAE2Config(**TINY_VAE))
    vae_v2.train(vae_v2.VAE2Config(**TINY_VAE), tmp_path, stop_at=2)  # interrupted after 2 steps
    resumed = vae_v2.train(vae_v2.VAE2Config(**TINY_VAE), tmp_path)
    assert resumed.losses == whole.losses
    for key, value in _weights(whole.vae).items():
        assert torch.equal(value, resumed.vae.state_dict()[key]), key
    assert resumed.vae.config.scaling_factor == whole.vae.config.scaling_factor != 1.0
    result = vae_v2.round_trip_accuracy(whole.vae, num_images=2, size=32)
    assert set(result) == {"truth", "round_trip", "mse"} and 0 <= result["round_trip"]["accuracy"] <= 1


def test_vae_v2_pool_renders_watermarked_frames():
    images = vae_v2.render_pool(12, 32, seed=0)
    assert images.shape == (12, 32, 32, 3) and images.dtype == np.uint8
    assert np.array_equal(images, vae_v2.render_pool(12, 32, seed=0))  # deterministic: the cache may be dropped


@pytest.mark.parametrize("move", ["PanLeft", "TiltUp", "ZoomIn", "RollingClockwise"])
def test_motion_lora_training_clips_read_as_their_move(move):
    """The clips the MotionLoRA trainer sees (training data path + augment.camera_move) are measured by eval's
    camera estimator with the right sign and about the right size (the report's camera metric can be met)."""
    row = camera_check.check_moves(num_clips=3, moves=(move,))[move]
    assert 0.6 < row["ratio"] < 1.5 and row["accuracy"] >= 2 / 3, row  # one clip's object motion can add ~30 %


def test_build_v2_stages_smoke(tmp_path):
    work = tmp_path / "v2"
    assert build.main(["--work", str(work), "--steps-scale", "0.02"]) == 0  # v2 is the default family
    record = json.loads((work / "stages.json").read_text())
    assert set(record) == {"text-encoder", "vae-v2", "data-v2", "init-v2", "base-v2", "base-v2-anneal", "personal-v2", "personal-lora-v2",
                           "domain-adapter-v2", "motion-module-v2", "motion-module-conv-v2", "sparsectrl-v2"} | \
        {f"motion-lora-v2-{m}" for m in CAMERA_MOVES}
    assert (work / "text-encoder" / "text_encoder" / "config.json").is_file()
    assert (work / "vae" / "config.json").is_file() and not (tmp_path / "unused").exists()
    assert record["text-encoder"]["steps"] == 20 and "shape" in record["text-encoder"]["zero_shot_single_object"]
    assert record["vae-v2"]["round_trip"]["truth"]["accuracy"] > 0.5
    assert record["data-v2"]["size"] == 128 and (work / "data" / "clips-ZoomIn.csv").is_file()
    from animatediff.weights.load import load_base_model  # the v2 init folder loads like any SD1.5 folder

    base = load_base_model(str(work / "init"))
    assert base.unet.config.sample_size == 16 and base.unet.config.cross_attention_dim == base.text_encoder.config.hidden_size

    # base-v2: `animatediff train image --config demo/base-v2` from the init folder, 100 steps of batch 2 in a smoke run
    assert record["base-v2"]["recipe"] == "demo/base-v2" and record["base-v2"]["steps"] == 100
    assert record["base-v2-anneal"]["recipe"] == "demo/base-v2-anneal" and record["base-v2-anneal"]["steps"] == 60
    assert not (work / "base-constant").exists()  # the phase-1 folder is the build's own intermediate
    trained = load_base_model(str(work / "base"))
    assert trained.unet.config.sample_size == 16
    assert not torch.equal(trained.unet.conv_in.weight, base.unet.conv_in.weight)  # the trained UNet, not init's

    # the rest of the family: clip stages on 4-frame clips, 2 steps; MotionLoRAs on world clips of static objects
    # filmed with the move, the move left out of the caption
    assert record["motion-module-v2"]["steps"] == 2 and record["motion-lora-v2-ZoomIn"]["steps"] == 2
    with open(work / "data" / "camera-clips-PanLeft.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(w not in r["caption"] for r in rows for w in ("moving", "circling", "camera"))
    assert record["data-v2"]["camera_share"] == build.V2_CAMERA_SHARE
    bundle = work / "bundle"  # package-v2 of a smoke run without --out: <work>/bundle, never the shipped family
    meta = json.loads((bundle / "demo.json").read_text())
    assert meta["generation_defaults"]["width"] == 128 and (bundle / "text-encoder" / "image_tower.safetensors").is_file()
    assert (bundle / "ablation" / "motion_module_conv.safetensors").is_file()
    from animatediff.demo.clip_score import is_towers_folder

    assert is_towers_folder(bundle / "text-encoder")  # what the report scores with
    assert sorted(p.stem for p in (bundle / "motion_loras").glob("*.safetensors")) == sorted(CAMERA_MOVES)
    assert record["sparsectrl-v2"]["steps"] == 2 and meta["sparsectrl"]["file"] == build.SPARSECTRL_FILE  # issue 12
    assert meta["files_bytes"][build.SPARSECTRL_FILE] == (bundle / build.SPARSECTRL_FILE).stat().st_size
    from animatediff.api import Animator

    animator = Animator.load(str(bundle / "base"), str(bundle / "motion_module.safetensors"))
    animator.set_loras([], [(str(bundle / "motion_loras" / "ZoomIn.safetensors"), 1.0)],
                       (str(bundle / "domain_adapter.safetensors"), 1.0))
    result = animator.generate("a red circle on a blue plain background", num_frames=4, steps=2, width=128, height=128, seed=1)
    assert tuple(result.frames.shape) == (1, 3, 4, 128, 128)


def test_build_base_v2_resumes_its_run(tmp_path):
    """A second base-v2 run with more steps continues the first (the trainer's --resume), never restarts it."""
    work = tmp_path / "v2"
    common = ["--family", "v2", "--work", str(work), "--out", str(tmp_path / "unused")]
    assert build.main(common + ["--only", "data-v2", "vae-v2", "text-encoder", "init-v2", "--steps-scale", "0.002"]) == 0
    assert build.main(common + ["--only", "base-v2", "--steps-scale", "0.0004"]) == 0  # 2 steps
    run = work / "runs" / "base-v2"
    (run / "mine.txt").write_text("a restart would remove the run folder")
    assert build.main(common + ["--only", "base-v2", "--force", "base-v2", "--steps-scale", "0.0008"]) == 0  # to 4
    assert (run / "mine.txt").is_file() and (run / "latest").read_text().strip() == "step-000004"
    with open(run / "train_log.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [1, 2, 3, 4]
    record = json.loads((work / "stages.json").read_text())["base-v2"]
    shutil.rmtree(work / "base")  # a fresh clone: the committed fp16 base-unet, no run, no base folder
    shutil.rmtree(run)
    assert build.main(common + ["--only", "base-v2", "--steps-scale", "0.0008"]) == 0  # nothing to train
    assert json.loads((work / "stages.json").read_text())["base-v2"] == record and (work / "base" / "model_index.json").is_file()
    assert not run.exists()  # not retrained: the folder is built from base-unet
    committed = (work / "base-unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert (work / "base" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == committed


def test_motion_loras_v2_train_on_the_packaged_module_in_a_clone(tmp_path, monkeypatch):
    """A clone has no runs/motion-module-v2: the MotionLoRA stage trains on the bundle's motion module and domain
    adapter (as sparsectrl-v2 does) instead of waiting for a run that will never come."""
    work, out = tmp_path / "v2", tmp_path / "bundle"
    (work / "base").mkdir(parents=True)
    (work / "base" / "model_index.json").write_text("{}")
    out.mkdir()
    for name in ("motion_module.safetensors", "domain_adapter.safetensors"):
        (out / name).write_bytes(b"x")
    calls = []
    monkeypatch.setattr(build.Builder, "_camera_clips", lambda self, move, seed: work / "data" / f"camera-clips-{move}.csv")
    monkeypatch.setattr(build.Builder, "train", lambda self, stage, *args, **options: calls.append((stage, options)) or True)
    build.Builder(out, work, 1.0, set()).stage_motion_loras_v2()
    assert [stage for stage, _ in calls] == [f"motion-lora-v2-{m}" for m in CAMERA_MOVES]
    assert all(o["motion_module"] == out / "motion_module.safetensors" and
               o["domain_adapter"] == out / "domain_adapter.safetensors" for _, o in calls)


def test_repackaging_an_fp16_file_keeps_its_bytes(tmp_path):
    """package-v2 in a clone re-packages the bundle's own fp16 files: copied byte for byte (re-saving reorders the
    safetensors header, a binary diff with no change); fp32 run exports are converted."""
    from safetensors.torch import load_file, save_file

    half, full = tmp_path / "half.safetensors", tmp_path / "full.safetensors"
    save_file({"a": torch.randn(3, 2).half(), "b": torch.randn(4).half()}, str(half), metadata={"x": "1", "y": "2"})
    save_file({"a": torch.randn(3, 2)}, str(full))
    build._fp16_file(half, tmp_path / "out" / "half.safetensors")
    assert (tmp_path / "out" / "half.safetensors").read_bytes() == half.read_bytes()
    build._fp16_file(full, tmp_path / "out" / "full.safetensors")
    assert load_file(str(tmp_path / "out" / "full.safetensors"))["a"].dtype == torch.float16
    assert build._is_fp16(half) and not build._is_fp16(full) and not build._is_fp16()
