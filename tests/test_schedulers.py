"""Scheduler presets, classifier-free guidance and the sampling loop, without any model."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler, LCMScheduler

from animatediff.errors import UserInputError
from animatediff.sampling.guidance import ClassifierFreeGuidance
from animatediff.sampling.loop import sample
from animatediff.sampling.schedulers import SAMPLING_DEFAULTS, SCHEDULER_PRESETS, SCHEDULERS, make_scheduler, sampling_defaults


def test_official_ddim_timesteps():
    scheduler = make_scheduler("ddim")
    assert isinstance(scheduler, DDIMScheduler)
    scheduler.set_timesteps(25)
    assert scheduler.timesteps.tolist() == [961 - 40 * i for i in range(25)]  # [961, 921, ..., 1]
    config = scheduler.config
    assert (config.beta_schedule, config.beta_start, config.beta_end) == ("linear", 0.00085, 0.012)
    assert (config.clip_sample, config.set_alpha_to_one, config.steps_offset) == (False, True, 1)
    assert scheduler.init_noise_sigma == 1.0


def test_linear_betas_are_linear_in_beta():
    betas = make_scheduler("ddim").betas
    torch.testing.assert_close(betas, torch.linspace(0.00085, 0.012, 1000))


def test_lightning_trailing_timesteps():
    scheduler = make_scheduler("euler", preset="lightning")
    assert isinstance(scheduler, EulerDiscreteScheduler) and scheduler.config.timestep_spacing == "trailing"
    scheduler.set_timesteps(4)
    assert scheduler.timesteps.tolist() == [999, 749, 499, 249]
    assert SAMPLING_DEFAULTS["lightning"].guidance_scale == 1.0


def test_sdxl_beta_and_animatelcm_presets():
    sdxl = make_scheduler("euler", preset="sdxl-beta").config
    assert (sdxl.beta_schedule, sdxl.beta_end, sdxl.timestep_spacing, sdxl.steps_offset) == ("scaled_linear", 0.020, "leading", 1)
    lcm = make_scheduler("lcm", preset="animatelcm")
    assert isinstance(lcm, LCMScheduler) and lcm.config.beta_schedule == "linear"
    assert SAMPLING_DEFAULTS["animatelcm"] == SAMPLING_DEFAULTS["animatelcm"].__class__("lcm", 6, 1.5)


def test_every_preset_has_defaults_that_build():
    assert set(SAMPLING_DEFAULTS) == set(SCHEDULER_PRESETS)
    for preset, defaults in SAMPLING_DEFAULTS.items():
        make_scheduler(defaults.scheduler, preset).set_timesteps(defaults.steps)


def test_overrides_and_bad_names():
    assert make_scheduler("euler", use_karras_sigmas=True).config.use_karras_sigmas
    with pytest.raises(UserInputError, match="^scheduler heun: unknown; choose one of ddim") as error:
        make_scheduler("heun")
    assert (error.value.field, error.value.value) == ("scheduler", "heun")
    with pytest.raises(UserInputError, match="^scheduler_preset sd3: unknown") as error:
        make_scheduler("ddim", preset="sd3")
    assert error.value.field == "scheduler_preset"
    with pytest.raises(UserInputError, match="^scheduler_preset sd3"):
        sampling_defaults("sd3")
    with pytest.raises(UserInputError, match="no_such_key"):
        make_scheduler("ddim", no_such_key=1)


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_each_scheduler_denoises_a_gaussian(name):
    """With the exact eps of data = 0 (eps = x_t / sqrt(1 - alpha_bar)), every solver must land near 0."""
    scheduler = make_scheduler(name)
    alphas = scheduler.alphas_cumprod

    def denoiser(x, t):  # x is the scaled model input: the DDPM-space x_t
        return x / (1 - alphas[int(t)]).sqrt()

    latents = torch.randn(1, 4, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    steps = []
    out = sample(denoiser, scheduler, latents, 6, generator=torch.Generator().manual_seed(1),
                 progress=lambda i, n: steps.append((i, n)))
    assert out.shape == latents.shape
    assert out.abs().max() < 0.1
    assert steps == [(i, 6) for i in range(1, 7)]


def test_cfg_equals_two_call_formula():
    calls = []

    def model(x, t, cond):
        calls.append(x.shape[0])
        return x * cond["encoder_hidden_states"].mean(dim=(1, 2)).view(-1, 1, 1, 1, 1) + t

    cond = {"encoder_hidden_states": torch.randn(2, 7, 8)}
    uncond = {"encoder_hidden_states": torch.randn(2, 7, 8)}
    x, t, g = torch.randn(2, 4, 3, 4, 4), torch.tensor(10.0), 7.5
    expected = model(x, t, uncond) + g * (model(x, t, cond) - model(x, t, uncond))
    calls.clear()
    torch.testing.assert_close(ClassifierFreeGuidance(model, cond, uncond, g)(x, t), expected)
    assert calls == [4]  # one call on the [uncond, cond] batch

    calls.clear()
    torch.testing.assert_close(ClassifierFreeGuidance(model, cond, uncond, 1.0)(x, t), model(x, t, cond))
    assert calls == [2, 2]  # g <= 1: the unconditional branch is skipped
