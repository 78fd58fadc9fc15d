"""Context windows: denoise a clip longer than the motion module's reach in overlapping windows of frames.

Behaviour follows ComfyUI-AnimateDiff-Evolved (ADE; community-features.md §1.2-1.3). At every model
evaluation the frames are split into windows (lists of frame indices) for the current step, the model runs on
each window's frames only (the motion module sees ``len(window) <= context_length`` frames with position
encodings 0 .. len-1), and the predictions are fused per frame as a weighted average.

Two layers, usable separately:
- pure functions (no model): ``windows(num_frames, step, ...)`` builds the windows of one step;
  ``fuse_weights(length, method)`` is one window's weight profile and ``fusion_weights(windows, ...)`` the
  per-frame normalised weights (also used by view windows inside the motion modules);
- ``ContextWindows(model, options)``, a conditional model ``(latents, t, cond) -> prediction`` wrapping
  another one; classifier-free guidance (guidance.py) wraps *it*, so cond and uncond stay one batch inside
  every window.

Schedules (N frames, L = length, O = overlap, hop L - O):
    static    fixed windows at 0, hop, 2 hop, ...; the last one end-aligned (ends at frame N-1). N=64, L=16,
              O=4: [0-15] [12-27] [24-39] [36-51] [48-63], every step.
    looped    ADE's "Looped Uniform": the same grid shifted every step by round(N * h(step)), h the
              bit-reversal sequence 0, 1/2, 1/4, 3/4, 1/8 ...; indices mod N, so windows wrap from the end to
              the start and the clip loops. ``closed_loop`` adds the window that overlaps the last frames with
              the first ones by O as well (without it that seam may have no overlap).
    uniform   ADE's "Standard Uniform": the moving grid of ``looped`` (seams move every step), but a window
              that would wrap is replaced by one end-aligned and one start-aligned window: no wrap, no loop.
    batched   non-overlapping chunks of L (the last one shorter); for checking, or for non-AnimateDiff models.
A clip of N <= L frames is a single window ``[0 .. N-1]`` under every schedule.

``stride`` s adds dilated passes for long-range coherence: level k = 1 .. s-1 (dilation d = 2**k) runs the same
schedule on each of the d interleaved sub-clips (frames p, p+d, p+2d ...), so a window spans up to d * L frames;
levels stop at ceil(log2(N / L)) + 1, as in ADE. Naming trap: this is ADE's / A1111's ``context_stride`` (a
dilation level; 1 = contiguous, the default). diffusers' FreeNoise ``context_stride`` is the hop between window
starts (our L - O), and the CLIs' ``-S`` is this stride minus one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import UserInputError

SCHEDULES = ("static", "uniform", "looped", "batched")
FUSE_METHODS = ("pyramid", "flat", "gauss", "relative")


# ---- windows ------------------------------------------------------------------------------------------
def ordered_halving(step: int) -> float:
    """The bit-reversal (van der Corput) sequence 0, 1/2, 1/4, 3/4, 1/8, 5/8 ...: step's 32 bits mirrored."""
    return int(f"{step:032b}"[::-1], 2) / 2**32


def _grid(n: int, step: int, length: int, overlap: int, schedule: str, closed_loop: bool) -> list[list[int]]:
    """One level's windows over frames 0 .. n-1 (see the module docstring)."""
    if n <= length:
        return [list(range(n))]
    hop = length - overlap
    if schedule == "batched":
        return [list(range(s, min(s + length, n))) for s in range(0, n, length)]
    if schedule == "static":
        starts = list(range(0, n - length, hop)) + [n - length]  # the last window ends at frame n-1
        return [list(range(s, s + length)) for s in starts]
    shift = round(n * ordered_halving(step))
    end = n + shift if closed_loop and schedule == "looped" else n + shift - overlap
    grid = [[f % n for f in range(s, s + length)] for s in range(shift, end, hop)]  # covers 0..n-1 cyclically
    if schedule == "looped":
        return grid
    out = []  # uniform: a window that wraps covers the last and the first frames; take both ends unwrapped
    for window in grid:
        wraps = window[-1] - window[0] != length - 1
        out += [list(range(n - length, n)), list(range(length))] if wraps else [window]
    return out


def windows(num_frames: int, step: int = 0, length: int = 16, overlap: int = 4, schedule: str = "uniform",
            stride: int = 1, closed_loop: bool = False) -> list[list[int]]:
    """The windows of one step: lists of frame indices in 0 .. num_frames-1, each of at most ``length``.

    Every frame is in at least one window. ``static`` and ``batched`` give the same windows at every step;
    ``uniform`` and ``looped`` move with ``step`` (any int >= 0: the model-evaluation counter of
    ``ContextWindows``). Windows of ``looped`` may wrap (``[60, 61, 62, 63, 0, 1, ...]``); those of the other
    schedules are increasing. No window repeats. ValueError unless length >= 1, 0 <= overlap < length and
    stride >= 1; for an unknown schedule; for ``closed_loop`` with another schedule than looped; for
    ``stride > 1`` with batched."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {', '.join(SCHEDULES)}")
    if not (length >= 1 and 0 <= overlap < length and stride >= 1 and num_frames >= 1 and step >= 0):
        raise ValueError(f"need length >= 1, 0 <= overlap < length, stride >= 1, num_frames >= 1, step >= 0; got "
                         f"{length=}, {overlap=}, {stride=}, {num_frames=}, {step=}")
    if closed_loop and schedule != "looped":
        raise ValueError("closed_loop needs the looped schedule")
    if stride > 1 and schedule == "batched":
        raise ValueError("batched windows do not overlap; stride needs static, uniform or looped")
    if num_frames <= length:
        return [list(range(num_frames))]
    levels = min(stride, math.ceil(math.log2(num_frames / length)) + 1)
    found, seen = [], set()
    for level in range(levels):
        d = 2**level
        for phase in range(min(d, num_frames)):  # the sub-clip phase, phase + d, phase + 2d, ...
            frames = list(range(phase, num_frames, d))
            for window in _grid(len(frames), step, length, overlap, schedule, closed_loop):
                mapped = [frames[i] for i in window]
                if tuple(mapped) not in seen:
                    seen.add(tuple(mapped))
                    found.append(mapped)
    return found


# ---- fuse weights -------------------------------------------------------------------------------------
def fuse_weights(length: int, method: str = "pyramid") -> torch.Tensor:
    """One window's weight per position, float64 ``(length,)``, all > 0 (the scale does not matter: frames are
    fused by ``fusion_weights``, which normalises per frame).

    pyramid   1, 2, ..., L/2, L/2, ..., 2, 1: distance to the window's nearer edge (ADE's and diffusers' default)
    flat      all 1: a plain mean (neggles' animatediff-cli)
    gauss     exp(-x**2 / 2 sigma**2), x the distance to the centre, sigma = L / 4 (ADE's gauss-sigma at a
              fixed width; edges get about 0.17 of the centre at L = 16)
    relative  max(0.01, 1 - |x| / half-width), half-width (L - 1 + 0.01) / 2: ADE's "relative", a running mean
              biased to the window centre, which equals this weighted average (computed on positions in the
              window, so it is defined for wrapped and dilated windows too)"""
    if method not in FUSE_METHODS:
        raise ValueError(f"unknown fuse method {method!r}; expected one of {', '.join(FUSE_METHODS)}")
    pos = torch.arange(length, dtype=torch.float64)
    centre = (length - 1) / 2
    if method == "pyramid":
        return torch.minimum(pos + 1, length - pos)
    if method == "flat":
        return torch.ones(length, dtype=torch.float64)
    if method == "gauss":
        return torch.exp(-0.5 * ((pos - centre) / (length / 4)) ** 2)
    return torch.clamp(1 - (pos - centre).abs() / ((length - 1 + 0.01) / 2), min=0.01)


def fusion_weights(windows: list[list[int]], num_frames: int, method: str = "pyramid") -> list[torch.Tensor]:
    """Per window, the float64 weights ``(len(window),)`` that fuse its predictions: ``fuse_weights`` divided by
    the total weight its frames get from all windows, so a frame's weights sum to 1 (exactly 1.0 for a frame
    in one window). ValueError if a frame is in no window."""
    raw = [fuse_weights(len(w), method) for w in windows]
    total = torch.zeros(num_frames, dtype=torch.float64)
    for window, weight in zip(windows, raw):
        total.index_add_(0, torch.tensor(window), weight)
    if bool((total == 0).any()):
        raise ValueError(f"frames {torch.nonzero(total == 0).flatten().tolist()} are in no window")
    return [weight / total[window] for window, weight in zip(windows, raw)]
