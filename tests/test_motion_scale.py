"""Motion scale (temporal-attention key scale) and motion effect (motion-module residual blend), per frame, on tiny
real components: their exact meaning at one attention / one module, and end to end through the pipeline."""

from __future__ import annotations

import pytest
import torch

from animatediff.errors import UserInputError
from animatediff.generation.config import GenerationConfig
from animatediff.generation.pipeline import AnimationPipeline
from animatediff.motion_module import MotionModules, VanillaTemporalModule, VersatileAttention

from conftest import randomize_, tiny_motion_config

FRAMES = 4


def config(**overrides) -> GenerationConfig:
    values = dict(prompt="a red circle", negative_prompt="blurry", width=32, height=32, num_frames=FRAMES, steps=2, seed=11)
    return GenerationConfig(**{**values, **overrides})


# ---- one attention, one module ---------------------------------------------------------------------------------
def attention_by_hand(attn: VersatileAttention, x: torch.Tensor, key_scale: torch.Tensor) -> torch.Tensor:
    """softmax(s_j q_i . k_j / sqrt(d)) v, written out; x (b h w, f, c), key_scale (b, f)."""
    x = attn.pos_encoder(x)
    n, f, c = x.shape
    d = c // attn.heads
    q, k, v = (p(x).view(n, f, attn.heads, d).transpose(1, 2) for p in (attn.to_q, attn.to_k, attn.to_v))
    b = key_scale.shape[0]
    logits = q @ k.transpose(-1, -2) / d**0.5  # (n, heads, f_query, f_key)
    logits = logits.view(b, n // b, attn.heads, f, f) * key_scale.view(b, 1, 1, 1, f)  # column j times s[b, j]
    out = (logits.view(n, attn.heads, f, f).softmax(-1) @ v).transpose(1, 2).reshape(n, f, c)
    return attn.to_out[0](out)


def test_motion_scale_multiplies_the_logits_of_each_key_frame():
    motion = randomize_(MotionModules(tiny_motion_config("v2")), std=0.3).eval()
    attn = next(m for m in motion.modules() if isinstance(m, VersatileAttention))
    x = torch.randn(2 * 3, FRAMES, 32, generator=torch.Generator().manual_seed(0))  # b=2 clips, h w = 3 locations
    scale = torch.tensor([[1.0, 0.5, 2.0, 0.0], [3.0, 1.0, 1.0, 0.25]])
    with torch.no_grad(), motion.controls(scale=scale):
        got = attn(x)
    torch.testing.assert_close(got, attention_by_hand(attn, x, scale), atol=1e-5, rtol=1e-5)
    with torch.no_grad(), motion.controls(scale=torch.zeros(2, FRAMES)):
        flat = attn(x)  # scale 0: uniform attention, every frame gets the mean of the values over frames
    xp = attn.pos_encoder(x)
    torch.testing.assert_close(flat, attn.to_out[0](attn.to_v(xp).mean(1, keepdim=True).expand_as(xp)), atol=1e-5, rtol=1e-5)


def test_motion_effect_blends_each_frame_of_the_module_output():
    motion = randomize_(MotionModules(tiny_motion_config("v2")), std=0.3).eval()
    module = next(m for m in motion.modules() if isinstance(m, VanillaTemporalModule))
    x = torch.randn(2 * FRAMES, 32, 2, 2, generator=torch.Generator().manual_seed(1))  # (b f) c h w
    with torch.no_grad():
        full = module(x, FRAMES)
        effect = torch.tensor([[0.0, 0.5, 1.0, 2.0], [1.0, 1.0, 0.0, 0.25]])
        with motion.controls(effect=effect):
            blended = module(x, FRAMES)
        with motion.controls(effect=torch.zeros(2, FRAMES)):
            assert torch.equal(module(x, FRAMES), x)  # 0: the module is skipped
        with motion.controls(effect=torch.ones(2, FRAMES)):
            assert torch.equal(module(x, FRAMES), full)  # 1: the module unchanged
    e = effect.reshape(-1, 1, 1, 1)  # row (clip j, frame i)
    torch.testing.assert_close(blended, x + e * (full - x))


def test_controls_are_undone_after_an_error():
    motion = MotionModules(tiny_motion_config("v2"))
    with pytest.raises(RuntimeError), motion.controls(torch.ones(1, 2), torch.ones(1, 2)):
        raise RuntimeError("a failing UNet call")
    assert all(getattr(m, "key_scale", None) is None and getattr(m, "effect", None) is None for m in motion.modules())


def test_a_frame_count_mismatch_is_loud_not_misread():
    motion = randomize_(MotionModules(tiny_motion_config("v2")), std=0.3).eval()
    attn = next(m for m in motion.modules() if isinstance(m, VersatileAttention))
    with motion.controls(scale=torch.ones(1, 8)), pytest.raises(ValueError, match="8 frames"):
        attn(torch.randn(8, 4, 32))  # 8 rows of 4 frames: a (1, 8) scale must not be reshaped to fit


# ---- end to end ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def plain(base, motion):
    with AnimationPipeline(base, motion) as pipe:
        return pipe.generate(config())


def generate(base, motion, **overrides):
    with AnimationPipeline(base, motion) as pipe:
        return pipe.generate(config(**overrides))


def controls_left(motion) -> list:
    return [m for m in motion.modules() if getattr(m, "key_scale", None) is not None or getattr(m, "effect", None) is not None]


def test_motion_effect_0_is_the_frame_by_frame_image_model(base, motion):
    image = generate(base, None)
    assert torch.equal(generate(base, motion, motion_effect=0.0).latents, image.latents)
    assert torch.equal(generate(base, motion, motion_effect=[0.0] * FRAMES).frames, image.frames)


@pytest.mark.parametrize("fields", [dict(motion_effect=1.0), dict(motion_scale=1.0), dict(motion_scale=[1.0] * FRAMES),
                                    dict(motion_effect=[1, 1, 1, 1], motion_scale=1)])
def test_1_is_plain_animatediff_exactly_and_the_modules_return_to_1(base, motion, plain, fields):
    result = generate(base, motion, **fields)
    assert torch.equal(result.latents, plain.latents)
    assert controls_left(motion) == []
    assert all(result.metadata()[k] == v for k, v in fields.items())  # recorded in the sidecar


@pytest.mark.parametrize("fields", [dict(motion_scale=0.5), dict(motion_scale=[1, 1, 3, 1]), dict(motion_effect=1.5),
                                    dict(motion_effect=[1, 1, 0, 1])])
def test_other_values_change_the_clip(base, motion, plain, fields):
    result = generate(base, motion, **fields)
    assert (result.latents - plain.latents).abs().max() > 1e-4
    assert controls_left(motion) == []


def test_per_frame_effect_0_on_one_frame_leaves_that_frame_to_the_image_model_at_each_layer(base, motion):
    """Per frame means per output row: with effect 0 on frame 2 only, the motion modules never change frame 2's
    features, so with one step and no guidance frame 2 equals the image model's frame 2 (the other frames don't)."""
    image = generate(base, None, steps=1, guidance_scale=1.0)
    one = generate(base, motion, steps=1, guidance_scale=1.0, motion_effect=[1, 1, 0, 1])
    assert torch.equal(one.latents[:, :, 2], image.latents[:, :, 2])
    assert not torch.allclose(one.latents[:, :, 1], image.latents[:, :, 1])


BAD = {
    "list length is not num_frames": (dict(motion_scale=[1.0, 1.0]), "motion_scale", "2 values for 4 frames"),
    "negative": (dict(motion_effect=-0.5), "motion_effect", ">= 0"),
    "not finite": (dict(motion_scale=[1, float("nan"), 1, 1]), "motion_scale", ">= 0"),
    "not a number": (dict(motion_effect="strong"), "motion_effect", "number"),
    "bool": (dict(motion_scale=True), "motion_scale", "number"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_values_are_user_errors_naming_the_field(case):
    fields, field, words = BAD[case]
    with pytest.raises(UserInputError, match=words) as caught:
        config(**fields).validate()
    assert caught.value.field == field
