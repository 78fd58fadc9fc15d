"""The sampling loop: one function for every diffusers scheduler, driven by a denoiser callable.

``denoiser(latents, t) -> eps`` sees latents ``(batch, channels, num_frames, h, w)``. Guidance, context
windows and the like wrap the denoiser; the loop never knows about them.
"""

from __future__ import annotations

from typing import Callable

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .schedulers import step_kwargs

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Progress = Callable[[int, int], None]  # (steps done, total steps)


def sample(
    denoiser: Denoiser,
    scheduler: SchedulerMixin,
    latents: torch.Tensor,
    num_steps: int,
    generator: torch.Generator | None = None,
    eta: float = 0.0,
    progress: Progress | None = None,
    init: torch.Tensor | None = None,
    start_step: int = 0,
) -> torch.Tensor:
    """Denoise pure-noise ``latents`` (unit variance) in ``num_steps`` scheduler steps.

    ``generator`` feeds the noise of ancestral/stochastic steps (Euler a, LCM, DDIM with eta > 0);
    ``eta`` is DDIM's stochasticity (0 = the deterministic DDIM of the official scripts).

    ``init`` (video-to-video): clean latents, noised with ``latents`` to the schedule's timestep
    ``start_step`` by the scheduler's ``add_noise``; only steps ``start_step ..`` of the ``num_steps`` run."""
    scheduler.set_timesteps(num_steps, device=latents.device)
    timesteps = scheduler.timesteps
    if init is None:
        latents = latents * scheduler.init_noise_sigma  # 1 for DDIM; sigma_max-ish for Euler-type solvers
    else:
        timesteps = timesteps[start_step * scheduler.order:]
        if hasattr(scheduler, "set_begin_index"):  # Euler-type solvers index their sigmas from here
            scheduler.set_begin_index(start_step * scheduler.order)
        latents = scheduler.add_noise(init.to(latents), latents, timesteps[:1])
    extra = step_kwargs(scheduler, eta, generator)
    for i, t in enumerate(timesteps):
        model_input = scheduler.scale_model_input(latents, t)
        eps = denoiser(model_input, t)
        latents = scheduler.step(eps, t, latents, **extra, return_dict=False)[0]
        if progress is not None:
            progress(i + 1, len(timesteps))
    return latents
