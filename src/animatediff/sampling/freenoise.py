"""FreeNoise (Qiu et al., ICLR 2024) for long clips: rescheduled initial noise and view windows.

1. Noise rescheduling (``noise_type``): a long clip's initial noise is built from the noise of its first
   context window, so windows far apart start from related noise instead of independent draws:
   - ``shuffle``: with hop ``d = context_length - context_overlap``, the ``d`` frames right after the window
     that starts at ``s`` (frames ``s+L .. s+L+d-1``) take a seeded random permutation of the noise of frames
     ``s .. s+d-1`` (ADE's FreeNoise noise and diffusers' ``shuffle_context``); each hop reuses, locally
     shuffled, noise drawn earlier.
   - ``repeat``: the first ``context_length`` frames' noise tiled over the clip.
   - ``plain`` / ``random``: the noise as drawn (``random`` is diffusers' name for it).
   The first window (frames ``0 .. context_length-1``) is always the plain noise.
2. View windows (``view_context``, FreeNoise's window-based attention fusion, ADE's "view options"): every
   spatial layer sees all frames, each motion module runs on windows of ``view_length`` frames and fuses its
   outputs per frame with the window weights. ``ViewPlan`` computes those windows for the current sampling
   step and is handed to the UNet (``AnimateDiffUNet.views``), which passes it to the motion modules.
"""

from __future__ import annotations

import torch

from ..errors import UserInputError
from .context import FUSE_METHODS, SCHEDULES, fuse_weights, windows
from .loop import Denoiser

NOISE_TYPES = ("plain", "random", "shuffle", "repeat")
# Why a stream of its own: the permutations must not reuse the draws of the latents' generator (same seed).
_SHUFFLE_SALT = 0x9E3779B97F4A7C15


def reschedule_noise(noise: torch.Tensor, noise_type: str, context_length: int, context_overlap: int, seed: int) -> torch.Tensor:
    """Initial noise ``(batch, channels, num_frames, h, w)`` rescheduled per ``noise_type`` (module docstring).

    Deterministic per ``seed``; the same permutation is used for every clip of the batch. Clips no longer
    than ``context_length`` are returned unchanged, as is ``plain``/``random`` noise."""
    num_frames = noise.shape[2]
    length, hop = context_length, context_length - context_overlap
    if noise_type in ("plain", "random") or num_frames <= length:
        return noise
    if noise_type == "repeat":
        return noise[:, :, torch.arange(num_frames) % length]  # frame i <- frame i mod L
    if noise_type != "shuffle":
        raise UserInputError(f"unknown; choose one of {', '.join(NOISE_TYPES)}", field="noise_type", value=noise_type)
    generator = torch.Generator("cpu").manual_seed((seed + _SHUFFLE_SALT) % 2**64)
    noise = noise.clone()
    for start in range(0, num_frames - length, hop):  # target frames start+L .. start+L+hop-1
        target = start + length
        count = min(hop, num_frames - target)
        source = start + torch.randperm(hop, generator=generator)[:count]  # frames start .. start+hop-1, shuffled
        noise[:, :, target:target + count] = noise[:, :, source.to(noise.device)]
    return noise


def noise_window(config) -> tuple[int, int]:
    """The (length, overlap) FreeNoise reschedules the noise over: the context windows' (as given, or as
    ``resolve_context`` filled them in; overlap by default a quarter of the length), else the view windows'."""
    if config.context_length is not None:
        overlap = config.context_overlap if config.context_overlap is not None else config.context_length // 4
        return config.context_length, overlap
    return config.view_length, config.view_overlap


# ---- view windows ------------------------------------------------------------------------------------
# The window grids and fuse weights are those of context windows (sampling/context.py): views differ only in
# where they run (inside each motion module, around its temporal attention) and what they cost.
VIEW_SCHEDULES = ("none", *SCHEDULES)


class ViewPlan:
    """The view windows handed to the motion modules: ``plan(num_frames) -> [(frame indices, weights), ...]``.

    ``num_frames`` is what the motion modules see (the whole clip, or one context window). Uniform and looped
    grids move every sampling step: ``track`` wraps the denoiser so the plan knows the current step (the
    index of ``t`` in ``scheduler.timesteps``)."""

    def __init__(self, schedule: str, length: int, overlap: int, fuse: str):
        self.schedule, self.length, self.overlap, self.fuse = schedule, length, overlap, fuse
        self.step = 0
        self._cache: dict[tuple[int, int], list | None] = {}  # (num_frames, step) -> views: every motion module asks

    @classmethod
    def from_fields(cls, config) -> "ViewPlan | None":
        """From a ``GenerationConfig``'s ``view_*`` fields; None when ``view_context`` is ``none``."""
        if config.view_context in (None, "none"):
            return None
        return cls(config.view_context, config.view_length, config.view_overlap, config.view_fuse)

    def __call__(self, num_frames: int) -> list[tuple[list[int], torch.Tensor]] | None:
        key = (num_frames, self.step)
        if key not in self._cache:  # None: one window of all frames, i.e. the plain motion module
            found = windows(num_frames, self.step, self.length, self.overlap, self.schedule)
            self._cache[key] = None if len(found) == 1 else [(w, fuse_weights(len(w), self.fuse)) for w in found]
        return self._cache[key]

    def track(self, denoiser: Denoiser, scheduler) -> Denoiser:
        def tracked(latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            found = (scheduler.timesteps == t).nonzero()
            self.step = int(found[0, 0]) if len(found) else 0
            return denoiser(latents, t)

        return tracked


def check_fields(config, max_frames: int | None) -> None:
    """``UserInputError`` naming the field for bad ``noise_type`` / ``view_*`` values of a ``GenerationConfig``
    (``view_length``/``view_overlap`` are also the noise window without context windows). ``max_frames``: the motion module's position-encoding
    length, which a view may not exceed."""

    def require(name: str, ok: bool, detail: str) -> None:
        if not ok:
            raise UserInputError(detail, field=name, value=getattr(config, name))

    def whole(name: str, low: int) -> None:
        value = getattr(config, name)
        require(name, isinstance(value, int) and not isinstance(value, bool), "must be a whole number")
        require(name, value >= low, f"must be at least {low}")

    require("noise_type", config.noise_type in NOISE_TYPES, f"unknown; choose one of {', '.join(NOISE_TYPES)}")
    require("view_context", config.view_context in VIEW_SCHEDULES, f"unknown; choose one of {', '.join(VIEW_SCHEDULES)}")
    whole("view_length", 1)  # also FreeNoise's noise window when no context windows run
    whole("view_overlap", 0)
    require("view_overlap", config.view_overlap < config.view_length, f"must be less than view_length {config.view_length}")
    if config.view_context == "none":
        return
    require("view_fuse", config.view_fuse in FUSE_METHODS, f"unknown; choose one of {', '.join(FUSE_METHODS)}")
    if max_frames is not None:
        require("view_length", config.view_length <= max_frames,
                f"exceeds the motion module's position-encoding length {max_frames}")
