"""Noise schedules and samplers: named presets over the diffusers scheduler classes.

A *preset* fixes what a motion module was trained (or distilled) with: the beta schedule and how the
inference timesteps are spaced, plus the recommended sampler, step count and guidance scale. A
*scheduler name* picks the solver. Any solver can run on any preset:

    make_scheduler("ddim")                              # official AnimateDiff SD1.5 settings
    make_scheduler("euler", preset="lightning")         # AnimateDiff-Lightning
    SAMPLING_DEFAULTS["lightning"]                      # SamplingDefaults("euler", 4, 1.0)
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from diffusers.schedulers.scheduling_utils import SchedulerMixin

from ..errors import UserInputError

# name -> (diffusers class name, solver options). Class names, not classes: the command line reads these names
# for its choices, and importing diffusers' schedulers would add seconds to every `animatediff --help`.
SCHEDULERS: dict[str, tuple[str, dict]] = {
    # eta is a step() argument (0 = deterministic DDIM, as in the official scripts), not a config key.
    "ddim": ("DDIMScheduler", dict(clip_sample=False, set_alpha_to_one=True)),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpm++2m": ("DPMSolverMultistepScheduler", dict(algorithm_type="dpmsolver++", solver_order=2)),
    "lcm": ("LCMScheduler", dict(clip_sample=False)),
}

# The noise schedule of each model family (diffusers config keys).
# Why "linear": AnimateDiff SD1.5 modules were trained with betas *linear in beta* from 0.00085 to 0.012,
# which diffusers calls "linear". Stable Diffusion's own "scaled_linear" (linear in sqrt(beta), named
# "linear" in LDM/ComfyUI) visibly degrades the motion (diffusers #5881, guoyww #246).
SCHEDULER_PRESETS: dict[str, dict] = {
    "animatediff": dict(  # official configs/inference/*.yaml with diffusers 0.11 DDIM defaults
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="linear",
        timestep_spacing="leading", steps_offset=1,
    ),
    "sdxl-beta": dict(  # sdxl branch: scaled_linear to 0.020, Euler with leading spacing
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.020, beta_schedule="scaled_linear",
        timestep_spacing="leading", steps_offset=1,
    ),
    "lightning": dict(  # AnimateDiff-Lightning model card: trailing spacing so step 1 starts at t=999
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="linear",
        timestep_spacing="trailing", steps_offset=0,
    ),
    "animatelcm": dict(  # diffusers AnimateLCM docs: LCMScheduler over SD1.5's config with linear betas
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="linear",
        timestep_spacing="leading", steps_offset=1,
    ),
}


@dataclass(frozen=True)
class SamplingDefaults:
    """What to sample a preset with when the user does not say otherwise."""

    scheduler: str
    steps: int
    guidance_scale: float


SAMPLING_DEFAULTS: dict[str, SamplingDefaults] = {
    "animatediff": SamplingDefaults("ddim", 25, 7.5),
    "sdxl-beta": SamplingDefaults("euler", 100, 8.5),  # sdxl branch inference.yaml (1024x1024)
    "lightning": SamplingDefaults("euler", 4, 1.0),  # steps must match the 1/2/4/8-step checkpoint
    "animatelcm": SamplingDefaults("lcm", 6, 1.5),
}


def check_scheduler(name: str) -> str:
    """``name`` if it is a known solver, else ``UserInputError`` about the ``scheduler`` field. The one check
    of scheduler names: ``GenerationConfig.validate`` and ``make_scheduler`` both call it."""
    if name not in SCHEDULERS:
        raise UserInputError(f"unknown; choose one of {', '.join(SCHEDULERS)}", field="scheduler", value=name)
    return name


def check_preset(preset: str) -> str:
    """``preset`` if it is a known noise schedule, else ``UserInputError`` about the ``scheduler_preset`` field."""
    if preset not in SCHEDULER_PRESETS:
        raise UserInputError(f"unknown; choose one of {', '.join(SCHEDULER_PRESETS)}", field="scheduler_preset", value=preset)
    return preset


def check_steps(steps: int | None, preset: str | None) -> None:
    """``UserInputError`` about ``steps`` when a run would need more steps than the noise schedule has training
    timesteps (DDIM and LCM refuse that inside diffusers; the others would repeat timesteps)."""
    limit = SCHEDULER_PRESETS[check_preset(preset or "animatediff")]["num_train_timesteps"]
    if steps is not None and steps > limit:
        raise UserInputError(f"must be at most {limit} (the noise schedule's training timesteps)", field="steps", value=steps)


def sampling_defaults(preset: str) -> SamplingDefaults:
    """The recommended sampler, steps and guidance of a (checked) preset."""
    return SAMPLING_DEFAULTS[check_preset(preset)]


def make_scheduler(name: str, preset: str = "animatediff", **overrides) -> SchedulerMixin:
    """A fresh diffusers scheduler: solver ``name`` on the noise schedule of ``preset``.

    ``overrides`` are diffusers config keys (e.g. ``use_karras_sigmas=True``) and win over the preset."""
    check_scheduler(name)
    check_preset(preset)
    import diffusers

    class_name, solver_options = SCHEDULERS[name]
    cls = getattr(diffusers, class_name)
    accepted = inspect.signature(cls.__init__).parameters
    config = {**SCHEDULER_PRESETS[preset], **solver_options}
    config = {k: v for k, v in config.items() if k in accepted}  # e.g. DPM++ has no clip_sample
    unknown = sorted(set(overrides) - set(accepted))
    if unknown:
        raise UserInputError(f"scheduler option {', '.join(unknown)}: not accepted by {cls.__name__}")
    return cls(**{**config, **overrides})


def step_kwargs(scheduler: SchedulerMixin, eta: float, generator) -> dict:
    """The optional ``scheduler.step`` arguments this scheduler understands (``eta``: DDIM only;
    ``generator``: ancestral / stochastic samplers)."""
    accepted = inspect.signature(scheduler.step).parameters
    kwargs = {}
    if "eta" in accepted:
        kwargs["eta"] = eta
    if "generator" in accepted:
        kwargs["generator"] = generator
    return kwargs
