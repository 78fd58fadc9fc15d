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

import dataclasses
import logging
import math
from dataclasses import dataclass

import torch

from ..errors import UserInputError

logger = logging.getLogger(__name__)

SCHEDULES = ("static", "uniform", "looped", "batched")
DEFAULT_LENGTH = 16  # frames per window unless set: what AnimateDiff motion modules were trained on
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
    ``uniform`` and ``looped`` move with ``step`` (any int >= 0: ``ContextWindows`` counts distinct
    timesteps). Windows of ``looped`` may wrap (``[60, 61, 62, 63, 0, 1, ...]``); those of the other
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


# ---- options, as GenerationConfig spells them --------------------------------------------------------
@dataclass(frozen=True)
class ContextOptions:
    """One generation's window settings (GenerationConfig's ``context_*`` fields, checked)."""

    schedule: str = "uniform"
    length: int = 16
    overlap: int = 4
    stride: int = 1
    fuse: str = "pyramid"
    closed_loop: bool = False
    batch: int = 1  # windows per model call, stacked on the batch axis

    def windows(self, num_frames: int, step: int) -> list[list[int]]:
        return windows(num_frames, step, self.length, self.overlap, self.schedule, self.stride, self.closed_loop)

    def __str__(self) -> str:
        extra = (f", stride {self.stride}" if self.stride > 1 else "") + (", closed loop" if self.closed_loop else "")
        return f"{self.schedule} context windows of {self.length} frames, overlap {self.overlap}{extra}, {self.fuse} fusion"


def context_options(config, max_frames: int | None = None, motion_name: str | None = None) -> ContextOptions | None:
    """The windows ``config`` asks for, or None for one pass over all frames.

    ``config`` has GenerationConfig's ``num_frames`` and ``context*`` / ``closed_loop`` fields. ``context`` None is automatic:
    ``looped`` when ``closed_loop``, else ``uniform`` when ``num_frames`` exceeds ``max_frames`` (the motion
    module's position-encoding length; None: no limit), else one pass. ``"none"`` is always one pass.
    ``context_length`` None is 16 (``max_frames`` if shorter), ``context_overlap`` None a quarter of the length.
    Raises ``UserInputError`` naming the field: a value of the wrong type or out of range, an unknown schedule
    or fuse method, ``context_overlap >= context_length``, ``context_length`` above ``max_frames`` (with windows
    on), ``closed_loop`` with a schedule that does not loop, ``context_stride > 1`` with ``batched``."""

    def require(name: str, ok: bool, detail: str) -> None:
        if not ok:
            raise UserInputError(detail, field=name, value=getattr(config, name))

    def whole(name: str, low: int, default: int | None = None) -> int:
        value = getattr(config, name)
        if value is None and default is not None:
            return default
        require(name, isinstance(value, int) and not isinstance(value, bool), "must be a whole number")
        require(name, value >= low, f"must be at least {low}")
        return value

    schedule = config.context
    require("context", schedule is None or schedule in ("none", *SCHEDULES),
            f"unknown context schedule; expected none, {', '.join(SCHEDULES)}")
    length = whole("context_length", 1, default=min(DEFAULT_LENGTH, max_frames or DEFAULT_LENGTH))
    overlap = whole("context_overlap", 0, default=length // 4)
    require("context_overlap", overlap < length, f"must be less than context_length ({length})")
    stride, batch = whole("context_stride", 1), whole("context_batch", 1)
    require("context_fuse", config.context_fuse in FUSE_METHODS, f"unknown fuse method; expected {', '.join(FUSE_METHODS)}")
    require("closed_loop", isinstance(config.closed_loop, bool), "must be true or false")
    require("closed_loop", not config.closed_loop or schedule in (None, "looped"),
            f"only the looped schedule loops (context is {schedule})")
    require("context_stride", stride == 1 or schedule != "batched", "batched windows do not overlap; dilation needs "
            "static, uniform or looped")
    if schedule is None:
        beyond = max_frames is not None and isinstance(config.num_frames, int) and config.num_frames > max_frames
        schedule = "looped" if config.closed_loop else "uniform" if beyond else "none"
    if schedule == "none":
        return None
    owner = f"the {motion_name} motion module's" if motion_name else "the motion module's"
    require("context_length", max_frames is None or length <= max_frames,
            f"exceeds {owner} position-encoding length {max_frames}")
    return ContextOptions(schedule, length, overlap, stride, config.context_fuse, config.closed_loop, batch)


def resolve_context(config, motion=None):
    """``config`` (a dataclass, checked) with ``context`` set to what runs, ``"none"`` or the schedule, and with
    windows the automatic length and overlap filled in (so the sidecar records them). Logs one line when the
    automatic choice turns windows on. ``motion``: the MotionModules (None: no motion module)."""
    max_frames, name = (motion.max_frames, motion.config.name) if motion is not None else (None, None)
    options = context_options(config, max_frames, name)
    if config.context is None and options is not None:
        why = "closed_loop" if config.closed_loop else \
            f"{config.num_frames} frames exceed the {name} motion module's position-encoding length {max_frames}"
        logger.info("%s: denoising in %s (context 'none' turns them off)", why, options)
    if options is None:
        return dataclasses.replace(config, context="none")
    return dataclasses.replace(config, context=options.schedule, context_length=options.length, context_overlap=options.overlap)


# ---- the wrapper --------------------------------------------------------------------------------------
class ContextWindows:
    """A conditional model ``(latents, t, cond) -> prediction`` that runs ``model`` window by window and fuses.

    latents ``(batch, c, num_frames, h, w)``; ``cond`` a dict of tensors whose first axis is the batch. A tensor
    is per frame when its ndim is one more than ``per_clip_ndim[key]`` (generation/conditioning.PER_CLIP_NDIM;
    its frame axis is axis 1) and is sliced with the latents; other tensors (per clip: SDXL's ``time_ids`` and
    ``text_embeds``, and keys not listed) pass to every window unchanged, as does ``t``. ``options.batch``
    windows of equal length go through one model call, stacked on the batch axis ``(k batch, c, L, h, w)``.
    Under ClassifierFreeGuidance the batch is already ``[uncond, cond]``: one call per window (group), not two.

    The step for the moving schedules (``uniform``, ``looped``) is a counter, not a timestep table: it advances
    whenever ``t`` differs from the previous call's, so it works with every scheduler (DDIM, Euler a, LCM ...);
    a solver that evaluates twice per step at different ``t`` (Heun, DPM2) advances it twice, which only moves
    the seams more often. A single window over all frames in order calls ``model`` unchanged (bit-identical)."""

    def __init__(self, model, options: ContextOptions, per_clip_ndim: dict[str, int] | None = None):
        self.model, self.options = model, options
        self.per_clip_ndim = dict(per_clip_ndim or {})
        self.step, self._last_t = -1, None

    def __call__(self, latents: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        t_key = torch.as_tensor(t).flatten().tolist()
        if t_key != self._last_t:
            self.step, self._last_t = self.step + 1, t_key
        num_frames = latents.shape[2]
        found = self.options.windows(num_frames, self.step)
        if found == [list(range(num_frames))]:
            return self.model(latents, t, cond)
        weights = fusion_weights(found, num_frames, self.options.fuse)
        out = torch.zeros_like(latents)
        for group in self._groups(found):
            indices = [torch.tensor(found[i], device=latents.device) for i in group]
            predictions = self._run(latents, t, cond, indices)
            for i, index, prediction in zip(group, indices, predictions):
                weight = weights[i].to(device=latents.device, dtype=latents.dtype).view(1, 1, -1, 1, 1)
                out.index_add_(2, index, prediction * weight)  # out[:, :, index] += w * prediction
        return out

    def _groups(self, found: list[list[int]]) -> list[list[int]]:
        """Window numbers in runs of at most ``batch`` consecutive windows of one length."""
        groups: list[list[int]] = []
        for i, window in enumerate(found):
            if groups and len(groups[-1]) < self.options.batch and len(found[groups[-1][0]]) == len(window):
                groups[-1].append(i)
            else:
                groups.append([i])
        return groups

    def _run(self, latents, t, cond, indices: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """The model on k windows at once -> k predictions ``(batch, c, len, h, w)``."""
        batch, k = latents.shape[0], len(indices)
        x = torch.cat([latents.index_select(2, index) for index in indices])  # (k batch, c, len, h, w)
        sliced = {key: torch.cat([self._frames(key, value, index) for index in indices]) for key, value in cond.items()}
        t = t.repeat(k) if torch.is_tensor(t) and t.ndim == 1 and t.numel() > 1 else t  # a per-sample t follows its batch
        return self.model(x, t, sliced).split(batch)

    def _frames(self, key: str, value: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        if key in self.per_clip_ndim and value.ndim == self.per_clip_ndim[key] + 1:
            return value.index_select(1, index)  # (batch, num_frames, ...) -> (batch, len, ...)
        return value


def with_context(model, config, per_clip_ndim: dict[str, int] | None = None):
    """``model`` wrapped in ContextWindows for a config resolved by ``resolve_context``; ``model`` itself when
    its ``context`` is ``"none"``."""
    options = context_options(config)  # max_frames was checked by resolve_context
    return model if options is None else ContextWindows(model, options, per_clip_ndim)
