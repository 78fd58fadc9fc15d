"""FreeInit: low-pass filters, re-diffusion scaling per scheduler, 1 iteration = plain sampling, determinism."""

from __future__ import annotations

import pytest
import torch

from animatediff.errors import UserInputError
from animatediff.generation.pipeline import AnimationPipeline, GenerationConfig
from animatediff.motion_module import MotionModules
from animatediff.sampling.freeinit import FILTERS, FreeInit, _reinitialise, low_pass_filter, mix_frequencies
from animatediff.sampling.schedulers import SCHEDULERS, make_scheduler

from conftest import randomize_, tiny_motion_config
from tiny_models import tiny_base_model


def along_axes(h: torch.Tensor) -> list[torch.Tensor]:
    """Filter values from DC outwards to the Nyquist frequency along each axis (fftn order: DC at 0)."""
    t, y, x = h.shape
    return [h[: t // 2 + 1, 0, 0], h[0, : y // 2 + 1, 0], h[0, 0, : x // 2 + 1], torch.stack([h[i, i, i] for i in range(min(h.shape) // 2 + 1)])]


@pytest.mark.parametrize("kind", FILTERS)
@pytest.mark.parametrize("shape", [(16, 8, 8), (9, 7, 12)])
def test_filters_are_low_pass(kind, shape):
    h = low_pass_filter(kind, shape)
    assert h.shape == shape and h[0, 0, 0] == 1 and 0 <= h.min() and h.max() <= 1
    for line in along_axes(h):
        assert (line[1:] <= line[:-1]).all(), line  # never rises away from DC
    if kind != "gaussian":  # Gaussian keeps exp(-8) = 3e-4 at Nyquist
        for line in along_axes(h):
            assert line[-1] < 1e-4, line
    assert torch.equal(h, h.flip(0).roll(1, 0).flip(1).roll(1, 1).flip(2).roll(1, 2))  # H(f) = H(-f): real output


def test_butterworth_is_half_at_the_stop_frequency_and_stops_scale_it():
    h = low_pass_filter("butterworth", (1, 8, 8), spatial=0.5)
    assert h[0, 2, 0] == pytest.approx(0.5)  # f_h = 2 * 2/8 = 0.5
    wide, narrow = low_pass_filter("gaussian", (8, 8, 8), 0.5, 0.5), low_pass_filter("gaussian", (8, 8, 8), 0.25, 0.25)
    assert (wide >= narrow).all() and (wide > narrow).any()
    assert (low_pass_filter("box", (8, 8, 8), 0.25, 0.75)[:, 0, 0] > 0).sum() > (low_pass_filter("box", (8, 8, 8))[:, 0, 0] > 0).sum()


def test_mix_keeps_low_and_takes_high():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn((1, 2, 8, 6, 6), generator=g), torch.randn((1, 2, 8, 6, 6), generator=g)
    torch.testing.assert_close(mix_frequencies(a, b, torch.ones(8, 6, 6)), a, atol=1e-5, rtol=0)
    torch.testing.assert_close(mix_frequencies(a, b, torch.zeros(8, 6, 6)), b, atol=1e-5, rtol=0)
    mixed = mix_frequencies(a, b, low_pass_filter("ideal", (8, 6, 6)))
    torch.testing.assert_close(mixed.mean(dim=(-3, -2, -1)), a.mean(dim=(-3, -2, -1)), atol=1e-5, rtol=0)  # DC from a


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_rediffusion_lands_where_sampling_starts(name):
    """loop.sample multiplies unit noise by init_noise_sigma; the re-diffused latent must be on that scale (not
    sigma_max = 14.6 for Euler) and be mostly the first iteration's noise at the first timestep."""
    scheduler = make_scheduler(name)
    g = torch.Generator().manual_seed(0)
    clean, noise = torch.randn((1, 4, 8, 8, 8), generator=g), torch.randn((1, 4, 8, 8, 8), generator=g)
    keep_all = torch.ones(8, 8, 8)
    from_noise = _reinitialise(scheduler, torch.zeros_like(clean), noise, 10, keep_all, g)
    assert (from_noise - noise).abs().max() < 0.01 * noise.abs().max()
    from_clean = _reinitialise(scheduler, clean, torch.zeros_like(noise), 10, keep_all, g)
    assert 0.01 < from_clean.std() / clean.std() < 0.2  # a trace of the clean signal survives at T


def test_fast_sampling_step_counts():
    assert FreeInit(3, fast=True).steps(25) == [8, 16, 25]
    assert FreeInit(4, fast=True).steps(2) == [1, 1, 1, 2]
    assert FreeInit(2).steps(5) == [5, 5]


SIZE, FRAMES = 32, 4


def config(**overrides) -> GenerationConfig:
    return GenerationConfig(**{**dict(prompt="a cat", negative_prompt="blurry", num_frames=FRAMES, width=SIZE, height=SIZE,
                                      steps=2, seed=3), **overrides})


@pytest.fixture(scope="module")
def pipe():
    pipeline = AnimationPipeline(tiny_base_model(), randomize_(MotionModules(tiny_motion_config("v2")), std=0.1).eval())
    yield pipeline
    pipeline.close()


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_one_iteration_is_plain_sampling_and_two_are_deterministic(pipe, scheduler):
    plain = pipe.generate(config(scheduler=scheduler)).latents
    once = pipe.generate(config(scheduler=scheduler, freeinit_iterations=1)).latents
    torch.testing.assert_close(once, plain, rtol=0, atol=0)
    twice = [pipe.generate(config(scheduler=scheduler, freeinit_iterations=2)).latents for _ in range(2)]
    torch.testing.assert_close(twice[0], twice[1], rtol=0, atol=0)
    assert not torch.allclose(twice[0], plain)
    other_seed = pipe.generate(config(scheduler=scheduler, freeinit_iterations=2, seed=4)).latents
    assert not torch.allclose(other_seed, twice[0])


def test_progress_counts_every_iteration_and_fast_and_filters_change_the_clip(pipe):
    steps = []
    pipe.generate(config(freeinit_iterations=3, freeinit_fast=True, steps=3), progress=lambda i, n: steps.append((i, n)))
    assert steps == [(1, 6), (2, 6), (3, 6), (4, 6), (5, 6), (6, 6)]
    results = [pipe.generate(config(freeinit_iterations=2, **o)).latents
               for o in (dict(), dict(freeinit_fast=True), dict(freeinit_filter="box"), dict(freeinit_spatial=0.5))]
    for other in results[1:]:
        assert not torch.allclose(other, results[0])


def test_combines_with_view_windows(pipe):
    result = pipe.generate(config(freeinit_iterations=2, num_frames=6, view_context="uniform", view_length=4, view_overlap=2))
    assert torch.isfinite(result.latents).all()
    assert result.config.freeinit_iterations == 2 and result.metadata()["freeinit_filter"] == "butterworth"


@pytest.mark.parametrize("overrides, field", [
    (dict(freeinit_iterations=0), "freeinit_iterations"),
    (dict(freeinit_iterations=-1), "freeinit_iterations"),
    (dict(freeinit_iterations=1.5), "freeinit_iterations"),
    (dict(freeinit_iterations=2, freeinit_filter="lanczos"), "freeinit_filter"),
    (dict(freeinit_spatial=0.0), "freeinit_spatial"),
    (dict(freeinit_temporal=2.0), "freeinit_temporal"),
])
def test_bad_values_name_the_field(pipe, overrides, field):
    with pytest.raises(UserInputError) as caught:
        pipe.generate(config(**overrides))
    assert caught.value.field == field
