"""``python -m animatediff.demo.long_video``: regenerate ``docs/long-video.md``, the evidence on long clips (issue 10).

64-frame clips on the bundled demo model (its motion module was trained on 16 frames and encodes 32) under every
context schedule, every fuse method, view windows, FreeNoise, FreeInit and a closed loop, each for a few
prompts x seeds, scored with the weight-free metrics of ``animatediff.metrics``:

- warping error of consecutive frame pairs **inside** windows vs pairs **across** window seams (``seam_pairs``),
  and the seam excess: the same difference taken against the clip without windows of the same prompt and seed,
  so that what the content does at a pair cancels (``seam_excess``);
- dynamic degree (VBench; read together with the warping error, since a clip that barely moves is smooth);
- the warping error of the pair (last frame, first frame) against the clip's inner pairs: how well it loops.

Writes ``docs/long-video.md``, ``docs/long-video/<variant>.gif`` (one example per variant, 64x64),
``docs/long-video/pair-errors.png`` and ``docs/long-video/clips.json``. About 8 minutes on 2 CPU cores; prints
its runtime. ``--quick`` runs a tiny grid for development (not the page's numbers).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import metrics
from ..api import Animator
from ..errors import UserInputError
from ..generation.config import GenerationConfig
from ..sampling.context import windows as context_windows
from ..video_io import save_video, to_uint8_frames
from . import reproduce, world

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- settings

@dataclass(frozen=True)
class Settings:
    num_frames: int = 64
    width: int = 64  # size, steps and guidance: main() takes the bundled family's own (for_family)
    height: int = 64
    steps: int = 10
    guidance_scale: float = 7.5
    scheduler: str = "ddim"
    fps: int = 8
    length: int = 16  # context / view window length (the motion module was trained on 16 frames)
    overlap: int = 4  # frames shared by neighbouring windows (the default, a quarter of the length)
    freeinit_iterations: int = 2
    prompts: int = 3  # drawn like docs/reproduction.md's (reproduce.table_specs, same prompt seed)
    seeds: tuple[int, ...] = (11, 12)
    prompt_seed: int = 2024


QUICK = dict(num_frames=40, steps=3, prompts=1, seeds=(11,))


def for_family(s: Settings, quick: bool = False) -> Settings:
    """``s`` at the bundled family's own size, guidance and (unless ``quick``) steps, from its demo.json, as the
    reproduction report samples: a family sampled away from its size draws little (v2 is made for 128 px)."""
    from ..bundled import generation_defaults

    d = generation_defaults()
    return dataclasses.replace(s, width=d["width"], height=d["height"], guidance_scale=d["guidance_scale"],
                               **({} if quick else {"steps": d["steps"]}))


@dataclass(frozen=True)
class Variant:
    """One way of generating a long clip: GenerationConfig fields on top of the common settings."""

    name: str  # file name of its example GIF
    label: str
    fields: dict = field(default_factory=dict)
    extended: bool = False  # one window of all frames: the motion module's position encoding extended to num_frames


VARIANTS = (
    Variant("one-window", "no windows: one window of all frames (PE extended)", {"context": "none"}, extended=True),
    Variant("static", "static, pyramid", {"context": "static"}),
    Variant("static-flat", "static, flat", {"context": "static", "context_fuse": "flat"}),
    Variant("static-gauss", "static, gauss", {"context": "static", "context_fuse": "gauss"}),
    Variant("static-relative", "static, relative", {"context": "static", "context_fuse": "relative"}),
    Variant("uniform", "uniform, pyramid (the default)", {"context": "uniform"}),
    Variant("looped", "looped, pyramid", {"context": "looped"}),
    Variant("closed-loop", "looped + closed_loop", {"context": "looped", "closed_loop": True}),
    Variant("batched", "batched (no overlap)", {"context": "batched"}),
    Variant("views", "view windows (static), no context windows", {"context": "none", "view_context": "static"}),
    Variant("freenoise", "static + FreeNoise shuffle", {"context": "static", "noise_type": "shuffle"}),
    Variant("freenoise-views", "view windows + FreeNoise shuffle",
            {"context": "none", "view_context": "static", "noise_type": "shuffle"}),
    Variant("freeinit", "static + FreeInit", {"context": "static", "freeinit_iterations": None}),  # K from Settings
)


def config_for(variant: Variant, s: Settings, prompt: str, seed: int) -> GenerationConfig:
    fields = dict(variant.fields)
    if "freeinit_iterations" in fields:
        fields["freeinit_iterations"] = s.freeinit_iterations
    if fields.get("context") != "none":
        fields.update(context_length=s.length, context_overlap=s.overlap)
    if fields.get("view_context", "none") != "none":
        fields.update(view_length=s.length, view_overlap=s.overlap)
    return GenerationConfig(prompt=prompt, num_frames=s.num_frames, width=s.width, height=s.height, steps=s.steps,
                            guidance_scale=s.guidance_scale, scheduler=s.scheduler, seed=seed, **fields)


def final_windows(variant: Variant, s: Settings) -> list[list[int]]:
    """The windows whose seams the page measures: those of the **last** denoising step.

    Context windows count steps over all FreeInit iterations (``ContextWindows`` advances on every new
    timestep), view windows by the index in the scheduler's timesteps (``ViewPlan.track``). ``static`` and
    ``batched`` are the same at every step; ``uniform`` and ``looped`` move every step, and their last step's
    seams are where the final prediction was fused. A variant without windows gets the static schedule's
    positions as a placebo: what "across seams" reads on a clip with no seams."""
    fields = variant.fields
    if fields.get("view_context", "none") != "none":
        return context_windows(s.num_frames, s.steps - 1, s.length, s.overlap, fields["view_context"])
    schedule = fields.get("context", "none")
    if schedule == "none":
        return context_windows(s.num_frames, 0, s.length, s.overlap, "static")
    passes = s.freeinit_iterations if "freeinit_iterations" in fields else 1
    return context_windows(s.num_frames, passes * s.steps - 1, s.length, s.overlap, schedule,
                           closed_loop=bool(fields.get("closed_loop")))


# ------------------------------------------------------------------------------------------- measurement

def seam_pairs(windows: list[list[int]], num_frames: int) -> list[int]:
    """Indices ``t`` of the consecutive pairs (t, t+1), 0 <= t < num_frames - 1, that cross a window seam:
    frames t and t+1 do not belong to exactly the same windows, i.e. a window starts at t+1 or ends at t.

    Static, N=64, L=16, O=4 (windows 0-15, 12-27, 24-39, 36-51, 48-63): t = 11, 15, 23, 27, 35, 39, 47, 51.
    Batched (0-15, 16-31, ...): t = 15, 31, 47. A wrapped looped window (60..63, 0..11) makes seams at its
    ends (t = 11 and t = 59) and none at 63 -> 0, which is not a pair here (see ``loop_pair_error``)."""
    members: list[set[int]] = [set() for _ in range(num_frames)]
    for i, window in enumerate(windows):
        for frame in window:
            members[frame].add(i)
    return [t for t in range(num_frames - 1) if members[t] != members[t + 1]]


def pair_errors(frames: np.ndarray, flows: metrics.ClipFlows | None = None) -> np.ndarray:
    """Warping error (``metrics.warping_error``) of each consecutive pair: float ``(num_frames - 1,)``; their
    mean is the clip's warping error. ``frames`` uint8 ``(num_frames, H, W, 3)``."""
    flows = flows or metrics.clip_flows(frames)
    return np.array([metrics.warping_error(frames[t:t + 2], metrics.ClipFlows(flows.forward[t:t + 1],
                                                                               flows.backward[t:t + 1]))
                     for t in range(len(frames) - 1)])


def loop_pair_error(frames: np.ndarray) -> float:
    """Warping error of the pair (last frame, first frame): the step a looping clip takes when it restarts."""
    return metrics.warping_error(frames[[-1, 0]])


def measure(frames: np.ndarray, windows: list[list[int]], fps: float = 8.0) -> dict:
    """Every number of the page for one clip: ``inside`` / ``across`` (mean pair warping error off / on the
    seams of ``windows``), ``warping_error`` (all pairs), ``loop`` (last -> first) and ``loop_ratio`` (loop over
    the mean inner pair), ``dynamic_degree`` and ``dynamic`` (VBench), ``pairs`` and ``seams`` (for the plot)."""
    flows = metrics.clip_flows(frames)
    errors = pair_errors(frames, flows)
    seams = seam_pairs(windows, len(frames))
    on = np.zeros(len(errors), bool)
    on[seams] = True
    dynamic = metrics.dynamic_degree(frames, fps, flows)
    loop = loop_pair_error(frames)
    return {"inside": float(errors[~on].mean()) if (~on).any() else math.nan,
            "across": float(errors[on].mean()) if on.any() else math.nan,
            "warping_error": float(errors.mean()), "loop": loop, "loop_ratio": loop / max(float(errors.mean()), 1e-12),
            "dynamic_degree": dynamic["degree"], "dynamic": dynamic["dynamic"],
            "pairs": [round(float(e), 6) for e in errors], "seams": seams}


def seam_excess(pairs, reference_pairs, seams: list[int]) -> float:
    """How much more a clip's seam pairs differ from a reference clip's same pairs than its inside pairs do:
    ``mean_seams(e - r) - mean_inside(e - r)``, ``e``/``r`` the pair warping errors ``(num_frames - 1,)`` of the
    clip and of the reference (same prompt and seed, no windows). A difference in differences: what the
    content does at a pair (peaks every variant shares) cancels, what the seams add stays. nan without seams."""
    diff = np.asarray(pairs, float) - np.asarray(reference_pairs, float)
    on = np.zeros(len(diff), bool)
    on[list(seams)] = True
    return float(diff[on].mean() - diff[~on].mean()) if on.any() and (~on).any() else math.nan


# ----------------------------------------------------------------------------------------------- running

@dataclass
class Clip:
    variant: str
    prompt: str
    seed: int
    seconds: float
    measures: dict
    frames: np.ndarray | None = None  # kept for the first prompt/seed only (the example GIF)


def prompts(s: Settings) -> list[str]:
    """The first ``s.prompts`` prompts of docs/reproduction.md's grid (1-2 moving objects on a background)."""
    grid = reproduce.Settings(prompt_seed=s.prompt_seed, table_prompts=s.prompts)
    return [world.caption(spec) for spec in reproduce.table_specs(grid)]


def run(s: Settings, variants=VARIANTS) -> list[Clip]:
    """Generate and measure every variant for every prompt x seed (prompt-major, so an interrupted run has
    every variant for the first prompts)."""
    files = reproduce.model_files()
    animator = Animator.load(str(files.base), str(files.motion_module), dtype=reproduce.REPORT_DTYPE)
    extended = Animator.load(str(files.base), str(files.motion_module), max_frames=s.num_frames, dtype=reproduce.REPORT_DTYPE)
    animator.generate(GenerationConfig(prompt="warm-up", num_frames=2, width=s.width, height=s.height, steps=2, seed=0))
    clips, start = [], time.perf_counter()
    grid = [(p, seed) for p in prompts(s) for seed in s.seeds]
    try:
        for n, (prompt, seed) in enumerate(grid):
            for variant in variants:
                tick = time.perf_counter()
                model = extended if variant.extended else animator
                frames = to_uint8_frames(model.generate(config_for(variant, s, prompt, seed)).frames[0])
                seconds = time.perf_counter() - tick
                clips.append(Clip(variant.name, prompt, seed, seconds, measure(frames, final_windows(variant, s), s.fps),
                                  frames if n == 0 else None))
            done = time.perf_counter() - start
            logger.info("prompt/seed %d of %d done after %.0fs; about %.0fs left", n + 1, len(grid), done,
                        done / (n + 1) * (len(grid) - n - 1))
    finally:
        animator.pipeline.close()
        extended.pipeline.close()
    return clips


# --------------------------------------------------------------------------------------------- summaries

def _stats(values) -> tuple[float, float]:
    """(mean, standard error) over clips; the error is nan for a single clip."""
    v = np.asarray([x for x in values if not math.isnan(x)], float)
    if not len(v):
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else math.nan


REFERENCE = "one-window"  # the seam excess's reference: the same prompt and seed without windows (no seams anywhere)
BASELINE = "static"  # the paired comparisons' reference: the add-ons run on its windows


def _significant(mean: float, se: float, n: int) -> bool:
    return n >= 3 and not math.isnan(se) and abs(mean) > 2 * se


def summary(clips: list[Clip], variants=VARIANTS) -> list[dict]:
    """Per variant: mean ± standard error over clips of every measure, ``ratio`` (across / inside of the means),
    ``excess`` (``seam_excess`` against the REFERENCE clip of the same prompt and seed: mean, se, significant)
    and ``excess_positive`` (clips whose excess is > 0)."""
    reference = {(c.prompt, c.seed): c.measures["pairs"] for c in clips if c.variant == REFERENCE}
    rows = []
    for variant in variants:
        mine = [c for c in clips if c.variant == variant.name]
        if not mine:
            continue
        m = lambda key: _stats(c.measures[key] for c in mine)  # noqa: E731
        inside, across = m("inside")[0], m("across")[0]
        excess = [seam_excess(c.measures["pairs"], reference[(c.prompt, c.seed)], c.measures["seams"])
                  for c in mine if (c.prompt, c.seed) in reference and variant.name != REFERENCE]
        mean, se = _stats(excess)
        rows.append({"variant": variant, "clips": len(mine), "inside": m("inside"), "across": m("across"),
                     "ratio": across / inside if inside > 0 else math.nan,
                     "excess": (mean, se, _significant(mean, se, len(excess))),
                     "excess_positive": f"{sum(e > 0 for e in excess)}/{len(excess)}" if excess else "—",
                     "warping_error": m("warping_error"), "dynamic_degree": m("dynamic_degree"),
                     "dynamic_share": float(np.mean([c.measures["dynamic"] for c in mine])),
                     "loop_ratio": m("loop_ratio"), "seconds": float(np.mean([c.seconds for c in mine]))})
    return rows


PAIRED = {"warping_error": "warping error", "dynamic_degree": "dynamic degree", "loop_ratio": "last→first / inner"}


def paired(clips: list[Clip], baseline: str = BASELINE, variants=VARIANTS) -> list[dict]:
    """Per variant and PAIRED quantity: (mean, standard error, significant) of (variant - baseline) over clips
    of the same prompt and seed; significant when |mean| > 2 standard errors with at least 3 clips. (Seams are
    not compared here: two variants' seams sit at different pairs, whose content differs.)"""
    base = {(c.prompt, c.seed): c for c in clips if c.variant == baseline}
    rows = []
    for variant in variants:
        pairs = [(c, base[(c.prompt, c.seed)]) for c in clips if c.variant == variant.name and (c.prompt, c.seed) in base]
        if variant.name == baseline or not pairs:
            continue
        row = {"variant": variant}
        for key in PAIRED:
            mean, se = _stats(c.measures[key] - b.measures[key] for c, b in pairs)
            row[key] = (mean, se, _significant(mean, se, len(pairs)))
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------ output

def _f(value: float, digits: int = 4) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _pm(stat: tuple[float, float], digits: int = 4) -> str:
    mean, se = stat
    return _f(mean, digits) + ("" if math.isnan(se) else f" ± {_f(se, digits)}")


def _table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] +
                     ["| " + " | ".join(r) + " |" for r in rows])


def _seam_text(s: Settings) -> str:
    def show(schedule, step=0, closed=False):
        found = context_windows(s.num_frames, step, s.length, s.overlap, schedule, closed_loop=closed)
        spans = ", ".join(f"{w[0]}–{w[-1]}" for w in found)
        return f"windows {spans}; seam pairs t = {', '.join(map(str, seam_pairs(found, s.num_frames)))}"

    last = s.steps - 1

    def over_steps(schedule: str) -> str:
        counts: dict[int, int] = {}
        for step in range(s.steps):
            for t in seam_pairs(context_windows(s.num_frames, step, s.length, s.overlap, schedule), s.num_frames):
                counts[t] = counts.get(t, 0) + 1
        always = [t for t, k in sorted(counts.items()) if k == s.steps]
        rest = max((k for k in counts.values() if k < s.steps), default=0)
        text = f"`{schedule}` has seams on {len(counts)} of the {s.num_frames - 1} pairs"
        if always:
            text += (f"; t = {', '.join(map(str, always))} at every step (the edges of the end- and start-aligned "
                     f"windows that replace a wrapping one), the others at most {rest} of {s.steps} steps")
        return text + (f", each at most {rest} of {s.steps} steps" if not always else "")

    return "\n".join([
        f"A pair (t, t+1) is **across a seam** when frames t and t+1 do not lie in exactly the same windows (a window "
        f"starts at t+1 or ends at t), and **inside** otherwise (`seam_pairs`). With N = {s.num_frames}, L = {s.length}, "
        f"O = {s.overlap}:", "",
        f"- `static` (every step): {show('static')}.",
        f"- `batched` (every step): {show('batched')}.",
        f"- `uniform` and `looped` move every step; the table uses the **last** step's windows, where the final "
        f"prediction is fused (step {last}: uniform {show('uniform', last)}; looped {show('looped', last)}; closed loop "
        f"{show('looped', last, True)}). Over all {s.steps} steps, {over_steps('uniform')}; "
        f"{over_steps('looped')}.",
        "- FreeInit: the last step of the last pass (static: the same windows). View windows: the view schedule's "
        "windows at the last step (static here, so the static seams).",
        "- No windows (one window of all frames, the seam excess's reference): the static seams as a placebo; its "
        "across/inside is what the content alone gives at those pairs.",
        "- The wrap pair (last frame, first frame) is not among the consecutive pairs; it is the loop column.",
    ])


def render(s: Settings, clips: list[Clip], header: dict) -> str:
    rows = summary(clips)
    diffs = paired(clips)
    ps = prompts(s)
    out = ["# Long clips on the demo model: context windows, view windows, FreeNoise, FreeInit, loops", "",
           f"Evidence for issue 10: {s.num_frames}-frame clips of the bundled demo model (its v3-layout motion module "
           f"was trained on 16 frames and encodes 32), generated under each option and scored with the weight-free "
           "metrics of `animatediff.metrics` (optical-flow warping error, VBench dynamic degree). "
           "**This file is generated by `python -m animatediff.demo.long_video` (`make long-video-report`); do not "
           "edit it by hand.**", "",
           _table(["", ""], [[k, v] for k, v in header.items()]), "",
           f"Prompts ({len(ps)}, the first of docs/reproduction.md's grid) × seeds {', '.join(map(str, s.seeds))} = "
           f"{len(ps) * len(s.seeds)} clips per variant: " + "; ".join(f"“{p}”" for p in ps) + ".", "",
           "## What is measured", "",
           "- **inside / across**: mean warping error (Lai et al. 2018; lower = the next frame is a better "
           "flow-warp of this one) of consecutive pairs inside windows / across window seams. A seam that shows "
           "makes *across* larger than *inside*, but so can the content: every variant's clip of one prompt and "
           "seed shares most of its content (one seed gives them the same initial noise), and that content has its "
           "own peaks at some pairs.",
           "- **seam excess**: the difference in differences `mean_seams(e − r) − mean_inside(e − r)`, `e` the "
           "variant's pair errors and `r` those of the clip **without windows** of the same prompt and seed "
           "(`seam_excess`): what the content does at a pair cancels, what the seams add stays; > 0 means the seams "
           "show. *clips > 0*: in how many clips it is positive.",
           f"- **warping error**: all {s.num_frames - 1} pairs (the clip's `metrics.warping_error`). Read it with the **dynamic "
           "degree** (mean top-5 % flow per pair / frame size; *dynamic* = VBench's verdict): a clip that barely "
           "moves is smooth for free.",
           "- **last→first / inner**: warping error of the pair (last frame, first frame) over the mean of the "
           "inner pairs; 1 means the restart looks like any other step (a seamless loop), non-looped clips are a "
           "control.", "",
           _seam_text(s), "",
           "## Results", "",
           "Mean ± standard error over clips; *across/inside* is the ratio of the two means; **bold**: more than 2 "
           "standard errors from 0, a loose test (at 6 clips about 10 % two-sided: t with 5 degrees of freedom), and "
           "the page makes dozens of comparisons: a bold value or two is "
           "expected from noise alone; a consistent sign over the clips means more.", "",
           _table(["variant", "inside", "across", "across/inside", "seam excess", "clips > 0", "warping error",
                   "dynamic degree", "dynamic", "last→first / inner", "s / clip"],
                  [[r["variant"].label, _pm(r["inside"]), _pm(r["across"]), _f(r["ratio"], 2),
                    "reference" if r["variant"].name == REFERENCE else _diff(r["excess"]), r["excess_positive"],
                    _pm(r["warping_error"]), _pm(r["dynamic_degree"], 3), f"{100 * r['dynamic_share']:.0f} %",
                    _pm(r["loop_ratio"], 2), f"{r['seconds']:.1f}"] for r in rows]), "",
           f"### Paired against `{BASELINE}` (static, pyramid; same prompt and seed)", "",
           "Mean ± standard error of (variant − static pyramid) per clip; **bold** where |mean| > 2 standard errors.", "",
           _table(["variant"] + list(PAIRED.values()),
                  [[r["variant"].label] + [_diff(r[key]) for key in PAIRED] for r in diffs]), "",
           "![pair errors](long-video/pair-errors.png)", "",
           "*Warping error of each consecutive pair, averaged over the clips; grey lines: the static seams, red dotted: "
           "the batched ones. The peaks every variant shares come from the content (one seed gives the variants the "
           "same initial noise; FreeNoise reshuffles it after the first window), not from windows.*", "",
           "## Reading", "", *_reading(s, rows, diffs), "",
           "## Examples", "",
           f"One clip per variant (“{ps[0]}”, seed {s.seeds[0]}), {s.width}×{s.height}, {s.fps} fps.", "",
           _table(["variant", "clip"], [[r["variant"].label, f"![{r['variant'].name}](long-video/{r['variant'].name}.gif)"]
                                        for r in rows]), ""]
    return "\n".join(out)


def _diff(cell: tuple[float, float, bool]) -> str:
    mean, se, significant = cell
    text = f"{mean:+.4f}" + ("" if math.isnan(se) else f" ± {se:.4f}")
    return f"**{text}**" if significant else text


def _reading(s: Settings, rows: list[dict], diffs: list[dict]) -> list[str]:
    """The page's reading, derived from the numbers (so it stays true when the page is regenerated)."""
    by = {r["variant"].name: r for r in rows}
    paired_by = {r["variant"].name: r for r in diffs}

    def excess(name: str) -> str:
        mean, se, significant = by[name]["excess"]
        return (f"`{name}` {mean:+.4f} ± {se:.4f} ({by[name]['excess_positive']} clips > 0"
                + (", beyond 2 SE)" if significant else ")"))

    def diff(name: str, key: str, digits: int = 4) -> str:
        mean, se, significant = paired_by[name][key]
        return f"{mean:+.{digits}f} ± {se:.{digits}f}" + (" (beyond 2 SE)" if significant else "")

    def names(items) -> str:
        return ", ".join(f"`{n}`" for n in items) or "none"

    lines = []
    windowed = [n for n in by if n != REFERENCE]
    shows = [n for n in windowed if by[n]["excess"][2] and by[n]["excess"][0] > 0]
    lines.append(f"- **Seams.** Seam excess beyond 2 SE: {names(shows)}. " + "; ".join(
        excess(n) for n in ("batched", "static", "uniform") if n in by) + ". " + (
        f"Raw across/inside: `batched` {_f(by['batched']['ratio'], 2)}, `static` {_f(by['static']['ratio'], 2)}, "
        f"and {_f(by[REFERENCE]['ratio'], 2)} for the clip without windows at the static positions, where there "
        "is no seam: the ratio alone mostly reads the content." if {"batched", "static", REFERENCE} <= by.keys() else ""))
    fuses = [n for n in ("static", "static-flat", "static-gauss", "static-relative") if n in by]
    if len(fuses) > 1:
        values = [by[n]["excess"][0] for n in fuses]
        lines.append(f"- **Fuse methods** (static windows): seam excess from {min(values):+.4f} to {max(values):+.4f} "
                     f"over pyramid, flat, gauss and relative; beyond 2 SE: {names(n for n in fuses if by[n]['excess'][2])}.")
    if BASELINE in by and diffs:
        spread = by[BASELINE]["warping_error"][1]
        largest = max((abs(r["warping_error"][0]), r["variant"].name) for r in diffs)
        lines.append(f"- **Noise scale.** Between prompts and seeds the warping error has a standard error of {spread:.4f}; "
                     f"paired with static pyramid on the same prompt and seed, no variant moves it by more than "
                     f"{largest[0]:.4f} (`{largest[1]}`). Differences between rows of the first table's warping-error "
                     "column are mostly prompt/seed spread; the paired table is the one to read.")
    loops = [n for n in ("looped", "closed-loop") if n in paired_by]
    if loops:
        lines.append("- **Loops.** last→first / inner: " + ", ".join(
            f"`{n}` {_pm(by[n]['loop_ratio'], 2)}" for n in [BASELINE, *loops, REFERENCE] if n in by) +
            "; paired with static: " + ", ".join(f"`{n}` {diff(n, 'loop_ratio', 2)}" for n in loops) +
            ". One pair per clip is a noisy measurement; a difference within 2 SE is no evidence either way.")
    extras = [n for n in (REFERENCE, "views", "freenoise", "freenoise-views", "freeinit") if n in paired_by]
    if extras:
        lines.append("- **No windows, view windows, FreeNoise, FreeInit** (paired with static pyramid): " + "; ".join(
            f"`{n}` warping error {diff(n, 'warping_error')}, dynamic degree {diff(n, 'dynamic_degree', 3)}"
            for n in extras) + ".")
    for key, what in (("warping_error", "Warping error"), ("loop_ratio", "Loop ratio"), ("dynamic_degree", "Motion")):
        below = [r["variant"].name for r in diffs if r[key][2] and r[key][0] < 0]
        above = [r["variant"].name for r in diffs if r[key][2] and r[key][0] > 0]
        lines.append(f"- **{what} vs static pyramid, in short**: lower beyond 2 SE: {names(below)}; higher: "
                     f"{names(above)}; the rest within noise" +
                     (" (more motion is not better in itself)." if key == "dynamic_degree" else "."))
    own = f" (here {_f(by[BASELINE]['inside'][0])} per pair inside windows)" if BASELINE in by else ""
    lines += ["", f"What this cannot show: the demo model is small, its clips are {s.width}×{s.height} and flicker from frame to frame "
              f"on their own{own}, so a seam has to add a jump larger than that flicker to stand out; FreeNoise's claim is long-range "
              "consistency of the content (the same subject at frame 0 and 63), which consecutive-pair warping "
              "error does not measure; FreeInit's claim concerns the low-frequency gap between training videos and "
              "Gaussian noise in large models. A result within noise here is no evidence against them on real "
              "models, only that this setting does not show an effect."]
    return lines


def write_plot(clips: list[Clip], s: Settings, path: Path, names=("one-window", "static", "uniform", "batched", "views")) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3))
    for schedule, style in (("static", dict(color="0.8", lw=1)), ("batched", dict(color="tab:red", lw=0.8, ls=":"))):
        for t in seam_pairs(context_windows(s.num_frames, 0, s.length, s.overlap, schedule), s.num_frames):
            ax.axvline(t + 0.5, **style)
    for name in names:
        mine = [c.measures["pairs"] for c in clips if c.variant == name]
        if mine:
            ax.plot(np.arange(s.num_frames - 1) + 0.5, np.mean(mine, axis=0), lw=1.2, label=name)
    ax.set_xlabel("pair (t, t+1) at t + 0.5")
    ax.set_ylabel("warping error")
    ax.legend(fontsize=7, ncol=len(names))
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def gif_frames(frames: np.ndarray, colors: int = 64) -> np.ndarray:
    """``frames`` (f, H, W, 3) uint8 mapped to one palette of ``colors`` for the whole clip, without dithering.
    Why: the GIF writer's per-frame dithered palettes make a 64-frame 64x64 clip about 360 KB; this one about
    half (a mean error of about 3 grey levels). Only the example GIFs use it; the metrics read the raw frames."""
    from PIL import Image

    palette = Image.fromarray(np.concatenate(list(frames), axis=0)).quantize(colors, dither=Image.Dither.NONE)
    return np.stack([np.asarray(Image.fromarray(f).quantize(palette=palette, dither=Image.Dither.NONE).convert("RGB"))
                     for f in frames])


def clips_json(clips: list[Clip]) -> str:
    return "[\n" + ",\n".join(json.dumps({"variant": c.variant, "prompt": c.prompt, "seed": c.seed,
                                          "seconds": round(c.seconds, 2), **c.measures}) for c in clips) + "\n]\n"


# -------------------------------------------------------------------------------------------------- main

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m animatediff.demo.long_video", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="docs", help="folder for long-video.md and long-video/ (default: docs)")
    parser.add_argument("--quick", action="store_true", help="a tiny grid for development (not the page's numbers)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the demo model is too "
                                                               "small to gain from more on a shared machine)")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for name in ("diffusers", "transformers", "accelerate", "animatediff.sampling.context", "animatediff.generation.pipeline"):
        logging.getLogger(name).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    s = for_family(Settings(**QUICK) if args.quick else Settings(), quick=args.quick)
    start = time.perf_counter()
    try:
        clips = run(s)
    except UserInputError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    out, folder = Path(args.out), Path(args.out) / "long-video"
    folder.mkdir(parents=True, exist_ok=True)
    for clip in clips:
        if clip.frames is not None:
            save_video(gif_frames(clip.frames), folder / f"{clip.variant}.gif", s.fps)  # no sidecar next to a docs example
    write_plot(clips, s, folder / "pair-errors.png")
    (folder / "clips.json").write_text(clips_json(clips))
    runtime = time.perf_counter() - start
    files = reproduce.model_files()
    header = {
        "command": "`python -m animatediff.demo.long_video" + (" --quick`" if args.quick else "`"),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} CPU cores ({platform.machine()}, {platform.system()}), torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads",
        "total runtime": f"{runtime:.0f} s ({len(clips)} clips, generation and metrics)",
        "settings": ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(s).items()) +
                    " (length/overlap: context and view windows)",
        "model": f"bundled demo family, motion module sha256 `{reproduce.path_sha256(files.motion_module)[:16]}`, "
                 f"base sha256 `{reproduce.path_sha256(files.base)[:16]}`",
    }
    (out / "long-video.md").write_text(render(s, clips, header))
    print(f"wrote {out / 'long-video.md'}: {len(clips)} clips in {runtime:.0f} s ({runtime / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
