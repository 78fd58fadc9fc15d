"""FreeNoise noise rescheduling: deterministic, first window plain, shuffle = local permutations of earlier noise."""

from __future__ import annotations

import pytest
import torch

from animatediff.errors import UserInputError
from animatediff.generation.pipeline import AnimationPipeline, GenerationConfig
from animatediff.motion_module import MotionModules
from animatediff.sampling.freenoise import reschedule_noise

from conftest import randomize_, tiny_motion_config
from tiny_models import tiny_base_model

L, O = 5, 2  # context length and overlap: hop 3


def plain(frames: int = 17, seed: int = 0) -> torch.Tensor:
    return torch.randn((2, 4, frames, 3, 3), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("noise_type", ["shuffle", "repeat"])
def test_deterministic_and_first_window_is_plain(noise_type):
    noise = plain()
    a, b = (reschedule_noise(noise, noise_type, L, O, seed=3) for _ in range(2))
    assert torch.equal(a, b)
    assert torch.equal(a[:, :, :L], noise[:, :, :L])
    assert not torch.equal(a, noise)


def test_shuffle_permutation_depends_on_the_seed():
    noise = plain(frames=40)
    assert not torch.equal(reschedule_noise(noise, "shuffle", L, O, seed=3), reschedule_noise(noise, "shuffle", L, O, seed=4))


@pytest.mark.parametrize("frames", [6, 8, 17, 18, 40])
def test_shuffle_reuses_a_permutation_of_earlier_noise(frames):
    """Each hop after the first window holds, at every position, the values of the hop one window earlier."""
    noise = plain(frames)
    out = reschedule_noise(noise, "shuffle", L, O, seed=1)
    hop, shuffled = L - O, False
    for start in range(0, frames - L, hop):
        target = out[:, :, start + L:start + L + hop]
        count = target.shape[2]
        source = out[:, :, start:start + hop]
        if count == hop:  # the multiset of values per (batch, channel, y, x) position is the same
            assert torch.equal(target.sort(dim=2).values, source.sort(dim=2).values)
        else:  # last, partial hop: a subset of the source frames
            for k in range(count):
                assert any(torch.equal(target[:, :, k], source[:, :, j]) for j in range(hop))
        shuffled |= not torch.equal(target, source[:, :, :count])
    for k in range(frames):  # every frame's noise is one of the first window's draws
        assert any(torch.equal(out[:, :, k], noise[:, :, j]) for j in range(L))
    assert shuffled or frames <= L + hop


def test_repeat_tiles_the_first_window():
    noise = plain()
    out = reschedule_noise(noise, "repeat", L, O, seed=0)
    for k in range(noise.shape[2]):
        assert torch.equal(out[:, :, k], noise[:, :, k % L])


@pytest.mark.parametrize("noise_type", ["plain", "random", "shuffle", "repeat"])
def test_plain_noise_and_short_clips_are_unchanged(noise_type):
    assert torch.equal(reschedule_noise(plain(L), noise_type, L, O, seed=0), plain(L))
    if noise_type in ("plain", "random"):
        assert torch.equal(reschedule_noise(plain(), noise_type, L, O, seed=0), plain())


SIZE, FRAMES = 32, 9


def config(**overrides) -> GenerationConfig:
    return GenerationConfig(**{**dict(prompt="a cat", num_frames=FRAMES, width=SIZE, height=SIZE, steps=1, seed=5,
                                      context_length=4, context_overlap=1), **overrides})


@pytest.fixture(scope="module")
def pipe():
    pipeline = AnimationPipeline(tiny_base_model(), randomize_(MotionModules(tiny_motion_config("v2")), std=0.1).eval())
    yield pipeline
    pipeline.close()


def test_pipeline_starts_from_the_rescheduled_noise(pipe):
    result = pipe.generate(config(noise_type="shuffle"))
    drawn = pipe.prepare_latents(config())
    expected = pipe.generate(config(), latents=reschedule_noise(drawn, "shuffle", 4, 1, seed=5))
    torch.testing.assert_close(result.latents, expected.latents, rtol=0, atol=0)
    assert not torch.equal(result.latents, pipe.generate(config()).latents)
    assert result.metadata()["noise_type"] == "shuffle"


@pytest.mark.parametrize("overrides, field", [
    (dict(noise_type="freenoise"), "noise_type"),
    (dict(noise_type="shuffle", context_overlap=4), "context_overlap"),
])
def test_bad_values_name_the_field(pipe, overrides, field):
    with pytest.raises(UserInputError) as caught:
        pipe.generate(config(**overrides))
    assert caught.value.field == field
