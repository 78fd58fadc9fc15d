"""Text conditioning (SD1.5, SDXL) and its per-clip / per-frame layout, on tiny real components."""

from __future__ import annotations

import logging

import pytest
import torch

from animatediff.generation.conditioning import encode_conditioning, encode_prompt, fold_frames, per_frame
from animatediff.generation.denoiser import UNetDenoiser
from animatediff.generation.pipeline import GenerationConfig
from animatediff.inflation import AnimateDiffUNet
from animatediff.motion_module import MotionModules
from animatediff.sampling.guidance import ClassifierFreeGuidance

from conftest import randomize_, tiny_motion_config
from tiny_models import tiny_base_model

CPU = dict(device=torch.device("cpu"), dtype=torch.float32)


@pytest.fixture(scope="module")
def sd15():
    return tiny_base_model()


@pytest.fixture(scope="module")
def sdxl():
    return tiny_base_model(sdxl=True)


def settings(**overrides) -> GenerationConfig:
    values = dict(prompt="a cat", negative_prompt="blurry", width=32, height=48, guidance_scale=7.5, num_frames=3)
    return GenerationConfig(**{**values, **overrides})


# ---- text ----------------------------------------------------------------------------------------------
def test_sd15_text_is_clip_last_hidden_state_padded_to_77(sd15):
    ids = sd15.tokenizer("a cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        out = sd15.text_encoder(ids, output_hidden_states=True)
        final_norm = getattr(sd15.text_encoder, "text_model", sd15.text_encoder).final_layer_norm
        penultimate = final_norm(out.hidden_states[-2])
    cond = encode_prompt(sd15, "a cat", **CPU)
    assert set(cond) == {"encoder_hidden_states"}
    torch.testing.assert_close(cond["encoder_hidden_states"], out.last_hidden_state)
    # clip_skip 1: the penultimate layer, through the final LayerNorm (diffusers / A1111)
    torch.testing.assert_close(encode_prompt(sd15, "a cat", clip_skip=1, **CPU)["encoder_hidden_states"], penultimate)


def test_long_prompt_warns_that_clip_truncates(sd15, caplog):
    with caplog.at_level(logging.WARNING, logger="animatediff.generation.conditioning"):
        encode_prompt(sd15, "a cat " * 60, **CPU)
    assert "CLIP reads only the first 77" in caplog.text


def test_sdxl_both_encoders_pooled_zero_uncond_and_size_ids(sdxl):
    cond, uncond = encode_conditioning(sdxl, settings(negative_prompt="", num_videos=2), **CPU)
    assert cond["encoder_hidden_states"].shape == (2, 77, 32 + 32)  # both encoders' penultimate states side by side
    assert cond["text_embeds"].shape == (2, 32)  # pooled, projected, from text_encoder_2
    assert cond["time_ids"].tolist() == [[48, 32, 0, 0, 48, 32]] * 2  # (height, width), crop (0, 0), (height, width)
    assert (uncond["encoder_hidden_states"] == 0).all() and (uncond["text_embeds"] == 0).all()  # "" -> zeros
    assert torch.equal(uncond["time_ids"], cond["time_ids"])
    _, blurry = encode_conditioning(sdxl, settings(), **CPU)
    assert blurry["encoder_hidden_states"].abs().sum() > 0  # a real negative prompt is encoded
    cond, uncond = encode_conditioning(sdxl, settings(guidance_scale=1.0), **CPU)
    assert uncond is None  # no guidance: no unconditional branch


# ---- per clip / per frame --------------------------------------------------------------------------------
def test_per_frame_adds_an_explicit_frame_axis(sdxl):
    cond, _ = encode_conditioning(sdxl, settings(num_videos=2), **CPU)
    frames = per_frame(cond, 3)
    assert {k: tuple(v.shape) for k, v in frames.items()} == {
        "encoder_hidden_states": (2, 3, 77, 64), "text_embeds": (2, 3, 32), "time_ids": (2, 3, 6)}
    assert all(torch.equal(frames[k][:, i], cond[k]) for k in cond for i in range(3))
    assert per_frame(frames, 3) is not frames and all(per_frame(frames, 3)[k] is frames[k] for k in frames)  # idempotent


def test_fold_frames_puts_frame_i_of_clip_j_at_row_j_times_f_plus_i():
    hidden = torch.randn(2, 3, 77, 8)
    folded = fold_frames({"encoder_hidden_states": hidden}, 3)["encoder_hidden_states"]
    assert folded.shape == (6, 77, 8)
    assert all(torch.equal(folded[j * 3 + i], hidden[j, i]) for j in range(2) for i in range(3))
    per_clip = {"encoder_hidden_states": torch.randn(2, 77, 8)}
    assert fold_frames(per_clip, 3)["encoder_hidden_states"] is per_clip["encoder_hidden_states"]  # the UNet repeats it
    with pytest.raises(ValueError, match="4 frames, the latents 3"):
        fold_frames({"encoder_hidden_states": torch.randn(2, 4, 77, 8)}, 3)


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_per_frame_conditioning_with_equal_frames_is_exactly_the_per_clip_one(kind, request):
    base = request.getfixturevalue(kind)
    motion = randomize_(MotionModules(tiny_motion_config("sdxl-beta" if kind == "sdxl" else "v2")), std=0.1).eval()
    unet = AnimateDiffUNet(base.unet, motion)
    try:
        cond, uncond = encode_conditioning(base, settings(num_videos=2, height=32), **CPU)
        latents = torch.randn(2, 4, 3, 4, 4, generator=torch.Generator().manual_seed(0))
        t = torch.tensor(500)
        with torch.no_grad():
            clip = ClassifierFreeGuidance(UNetDenoiser(unet), cond, uncond, 7.5)(latents, t)
            frame = ClassifierFreeGuidance(UNetDenoiser(unet), per_frame(cond, 3), per_frame(uncond, 3), 7.5)(latents, t)
        assert torch.equal(clip, frame)
    finally:
        unet.detach()


def test_per_frame_conditioning_reaches_its_own_frame(sd15):
    """Frame-by-frame baseline (no motion): frame i of clip j, denoised with prompt (j, i), equals that frame
    denoised alone with that prompt per clip - so the rows are in order."""
    denoiser = UNetDenoiser(AnimateDiffUNet(sd15.unet))
    prompts = [["a cat", "a dog", "a red circle"], ["a tree", "a house", "a blue square"]]
    hidden = torch.stack([torch.cat([encode_prompt(sd15, p, **CPU)["encoder_hidden_states"] for p in row]) for row in prompts])
    latents = torch.randn(2, 4, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    t = torch.tensor(300)
    with torch.no_grad():
        video = denoiser(latents, t, {"encoder_hidden_states": hidden})  # hidden: (2, 3, 77, 32)
        for j in range(2):
            for i in range(3):
                alone = denoiser(latents[j : j + 1, :, i : i + 1], t, {"encoder_hidden_states": hidden[j : j + 1, i]})
                torch.testing.assert_close(video[j : j + 1, :, i : i + 1], alone, atol=1e-5, rtol=1e-5)
        other = denoiser(latents[:1, :, :1], t, {"encoder_hidden_states": hidden[:1, 1]})
    assert not torch.allclose(video[:1, :, :1], other, atol=1e-3)  # the prompt matters, so a misplaced row would show
