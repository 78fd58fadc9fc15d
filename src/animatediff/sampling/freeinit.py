"""FreeInit (Wu et al. 2023, arXiv 2312.07537): iterative refinement of the initial noise around the sampling loop.

Why: training noise is added to real videos, whose low spatio-temporal frequencies survive the noising;
pure Gaussian initial noise lacks them. FreeInit samples once, then for each further iteration:

1. re-diffuses the clean result ``z0`` to the first timestep with the *first* iteration's noise ``eps0``
   (the scheduler's own ``add_noise``, so DDIM, Euler, Euler a, DPM++ and LCM all work);
2. keeps that latent's low 3-D (time, height, width) frequencies and takes the high ones from fresh noise
   ``eta``: ``z_T = IFFT(FFT(z_T') H + FFT(eta) (1 - H))``, ``H`` a low-pass filter;
3. samples again from ``z_T``.

Scaling detail: ``loop.sample`` takes unit-variance noise and multiplies it by ``init_noise_sigma`` (1 for
DDIM/DPM++/LCM, about sigma_max for Euler-type solvers), so the re-diffused latent is divided by it first: for
Euler ``(z0 + sigma_max eps0) / init_noise_sigma``, which is the plain noise again when ``z0`` is 0.

``eta`` is drawn from the sampling generator (after the previous iteration's draws), so a seed gives the
same clip on every run; one iteration is exactly the plain sampling loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from ..errors import UserInputError
from .loop import Denoiser, Progress, sample

FILTERS = ("butterworth", "gaussian", "ideal", "box")


def low_pass_filter(kind: str, shape: tuple[int, int, int], spatial: float = 0.25, temporal: float = 0.25,
                    order: int = 4) -> torch.Tensor:
    """Low-pass filter ``H`` ``(frames, height, width)`` in ``torch.fft.fftn`` order (DC at index 0), values in [0, 1].

    Frequencies are normalised to [-1, 1) per axis (1 = Nyquist). ``spatial`` is the stop frequency ``D_s``,
    ``temporal`` ``D_t``; the radial filters scale the time axis by ``D_s / D_t`` (as FreeInit does) and use
    ``d^2 = (D_s/D_t f_t)^2 + f_h^2 + f_w^2``:
    - ``butterworth``: ``1 / (1 + (d / D_s)^(2 order))`` (0.5 at ``d = D_s``; FreeInit's order 4);
    - ``gaussian``: ``exp(-d^2 / (2 D_s^2))``;
    - ``ideal``: 1 where ``d <= D_s``, else 0 (the FreeInit code compares ``d^2`` with ``2 D_s``, a cut-off of
      about 0.71 at the default 0.25; here ``D_s`` means the same for every filter);
    - ``box``: 1 where ``|f_t| <= D_t`` and ``|f_h|, |f_w| <= D_s``, else 0."""
    f_t, f_h, f_w = (2 * torch.fft.fftfreq(n) for n in shape)  # cycles per sample * 2: [-1, 1)
    f_t, f_h, f_w = f_t.view(-1, 1, 1), f_h.view(1, -1, 1), f_w.view(1, 1, -1)
    if kind == "box":
        return ((f_t.abs() <= temporal) & (f_h.abs() <= spatial) & (f_w.abs() <= spatial)).float()
    d2 = (spatial / temporal * f_t) ** 2 + f_h**2 + f_w**2
    if kind == "butterworth":
        return 1 / (1 + (d2 / spatial**2) ** order)
    if kind == "gaussian":
        return torch.exp(-d2 / (2 * spatial**2))
    if kind == "ideal":
        return (d2 <= spatial**2).float()
    raise UserInputError(f"unknown; choose one of {', '.join(FILTERS)}", field="freeinit_filter", value=kind)


def mix_frequencies(low: torch.Tensor, high: torch.Tensor, filter: torch.Tensor) -> torch.Tensor:
    """``IFFT(FFT(low) H + FFT(high) (1 - H))`` over the last three axes (frames, h, w) of ``(b, c, f, h, w)``."""
    dims = (-3, -2, -1)
    filter = filter.to(low.device)
    mixed = torch.fft.fftn(low.float(), dim=dims) * filter + torch.fft.fftn(high.float(), dim=dims) * (1 - filter)
    return torch.fft.ifftn(mixed, dim=dims).real  # H is symmetric (H(f) = H(-f)): the result is real


@dataclass(frozen=True)
class FreeInit:
    """FreeInit settings: ``iterations`` sampling passes (1 = plain sampling), the low-pass filter, and
    ``fast`` coarse-to-fine step counts (0-based iteration ``i`` of ``K`` uses ``max(1, steps (i+1) // K)`` steps)."""

    iterations: int = 3
    filter: str = "butterworth"
    spatial: float = 0.25
    temporal: float = 0.25
    order: int = 4
    fast: bool = False

    @classmethod
    def from_fields(cls, config) -> "FreeInit | None":
        """From a ``GenerationConfig``'s ``freeinit_*`` fields; None when FreeInit is off."""
        if not config.freeinit_iterations:
            return None
        return cls(config.freeinit_iterations, config.freeinit_filter, config.freeinit_spatial, config.freeinit_temporal,
                   fast=bool(config.freeinit_fast))

    def steps(self, num_steps: int) -> list[int]:
        """Steps of each iteration."""
        if not self.fast:
            return [num_steps] * self.iterations
        return [max(1, num_steps * (i + 1) // self.iterations) for i in range(self.iterations)]


def sample_freeinit(
    denoiser: Denoiser,
    scheduler: SchedulerMixin,
    noise: torch.Tensor,
    num_steps: int,
    freeinit: FreeInit | None = None,
    generator: torch.Generator | None = None,
    eta: float = 0.0,
    progress: Progress | None = None,
) -> torch.Tensor:
    """``loop.sample`` with FreeInit around it (module docstring); ``freeinit`` None: exactly ``loop.sample``.

    ``noise`` is unit-variance initial noise ``(b, c, f, h, w)``; ``progress(done, total)`` counts the steps
    of all iterations."""
    if freeinit is None:
        return sample(denoiser, scheduler, noise, num_steps, generator=generator, eta=eta, progress=progress)
    counts = freeinit.steps(num_steps)
    filter = low_pass_filter(freeinit.filter, tuple(noise.shape[-3:]), freeinit.spatial, freeinit.temporal, freeinit.order)
    latents, done = noise, 0
    for i, steps in enumerate(counts):
        if i > 0:
            latents = _reinitialise(scheduler, latents, noise, steps, filter, generator)
        report = None if progress is None else (lambda k, _n, done=done: progress(done + k, sum(counts)))
        latents = sample(denoiser, scheduler, latents, steps, generator=generator, eta=eta, progress=report)
        done += steps
    return latents


def _reinitialise(scheduler: SchedulerMixin, clean: torch.Tensor, noise: torch.Tensor, steps: int,
                  filter: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """The next iteration's unit-variance initial noise: ``clean`` re-diffused with ``noise`` to the first
    timestep of a ``steps``-step schedule, its high frequencies replaced by fresh noise."""
    scheduler.set_timesteps(steps, device=clean.device)  # fresh state: add_noise looks the timestep up
    diffused = scheduler.add_noise(clean, noise, scheduler.timesteps[:1]) / scheduler.init_noise_sigma
    fresh = torch.randn(clean.shape, generator=generator, dtype=torch.float32).to(clean.device)  # CPU draw: same on every device
    return mix_frequencies(diffused, fresh, filter).to(clean.dtype)


def check_fields(config) -> None:
    """``UserInputError`` naming the field for bad ``freeinit_*`` values of a ``GenerationConfig``."""

    def require(name: str, ok: bool, detail: str) -> None:
        if not ok:
            raise UserInputError(detail, field=name, value=getattr(config, name))

    iterations = config.freeinit_iterations
    require("freeinit_iterations", iterations is None or (isinstance(iterations, int) and not isinstance(iterations, bool)),
            "must be a whole number")
    require("freeinit_iterations", iterations is None or iterations >= 1, "must be at least 1 (1 = plain sampling)")
    require("freeinit_filter", config.freeinit_filter in FILTERS, f"unknown; choose one of {', '.join(FILTERS)}")
    for name in ("freeinit_spatial", "freeinit_temporal"):
        value = getattr(config, name)
        require(name, isinstance(value, (int, float)) and not isinstance(value, bool), "must be a number")
        require(name, 0 < value <= 1, "must be in (0, 1] (a fraction of the highest frequency)")
    require("freeinit_fast", isinstance(config.freeinit_fast, bool), "must be true or false")
