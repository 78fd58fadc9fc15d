"""``animatediff eval VIDEO_OR_FRAMES... [--fps N] [--demo-scores [--prompt TEXT]] [--out results.json]``:
weight-free metrics.

Reads GIF, animated WebP, a folder of PNG frames, or a single PNG image (``video_io.read_clip``), and returns
:func:`animatediff.metrics.video_metrics` per file.  MP4 is refused: H.264's 4:2:0 round trip changes pixels by
about as much as a smooth clip changes between frames (metrics.md §3), so flicker and warping error would
measure the codec.

Extra scorers are plug-ins found through the entry-point group ``animatediff.scorers``: each entry point names
a callable ``scorer(frames, prompt, fps) -> dict`` (frames ``(num_frames, H, W, 3)`` uint8, prompt or None,
fps) whose JSON-able result joins each file's metrics.  The package registers ``demo``
(``animatediff.demo.scores:demo_scores``: the demo world's attribute accuracy, watermark and style scores),
run with ``--demo-scores``; this module never imports ``animatediff.demo`` itself.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np

from .errors import UserInputError
from .video_io import read_clip

logger = logging.getLogger(__name__)

LOSSY_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv", ".avi")
EVALUABLE_SUFFIXES = (".gif", ".webp", ".png")  # or a folder of PNG frames
SCORER_GROUP = "animatediff.scorers"
Scorer = Callable[[np.ndarray, str | None, float], dict]


def read_evaluable(path: str | Path, fps: float | None = None) -> tuple[np.ndarray, float | None]:
    """``video_io.read_clip`` for the files ``eval`` accepts: (frames (num_frames, H, W, 3) uint8, fps or None).
    Refuses lossy video and other kinds of file with a ``UserInputError``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in LOSSY_SUFFIXES:
        raise UserInputError(f"{path}: lossy video ({suffix}) is not evaluated — the codec's error is as large as "
                             f"the motion being measured; pass the GIF, WebP or PNG-frame folder instead")
    if path.is_file() and suffix not in EVALUABLE_SUFFIXES:
        raise UserInputError(f"{path}: cannot evaluate {suffix!r} files; use .gif, .webp, a .png or a PNG folder")
    return read_clip(path, fps)


def load_scorer(name: str) -> Scorer:
    """The scorer registered as ``name`` in the entry-point group ``animatediff.scorers``. Raises
    ``UserInputError`` when none is registered, or when it cannot load for lack of an optional dependency."""
    found = [ep for ep in entry_points(group=SCORER_GROUP) if ep.name == name]
    if not found:
        installed = ", ".join(sorted(ep.name for ep in entry_points(group=SCORER_GROUP))) or "none"
        raise UserInputError(f"no scorer {name!r} is installed (entry-point group {SCORER_GROUP}; installed: "
                             f"{installed}); reinstall animatediff so its entry points are registered")
    try:
        return found[0].load()
    except ModuleNotFoundError as error:  # e.g. the demo scores without OpenCV
        hint = ': pip install "animatediff[demo]"' if name == "demo" else ""
        raise UserInputError(f"the {name!r} scorer needs the missing Python module {error.name!r}{hint}") from None


def evaluate(paths: Sequence[str | Path], prompt: str | None = None, fps: float | None = None,
             scores: Sequence[str] = ()) -> dict:
    """Metrics for each path: ``{"prompt": prompt, "files": {path: metrics}}`` (JSON-able).  ``fps`` overrides
    the frame rate read from the file (default 8, the rate VBench's thresholds assume).  ``scores``: names of
    extra scorers (entry points of ``animatediff.scorers``, e.g. ``("demo",)``), each given the ``prompt``."""
    if not paths:
        raise UserInputError("eval: give at least one GIF, WebP, PNG or PNG folder")
    from . import metrics  # OpenCV: one clear error line when the [demo] extra is missing

    scorers = {name: load_scorer(name) for name in scores}
    results = {}
    for path in paths:
        frames, file_fps = read_evaluable(path, fps)
        rate = fps or file_fps or 8.0
        logger.info("evaluating %s: %d frames %dx%d at %.3g fps", path, len(frames), frames.shape[2],
                    frames.shape[1], rate)
        result = {"fps": rate, **metrics.video_metrics(frames, fps=rate)}
        for scorer in scorers.values():
            result.update(scorer(frames, prompt, rate))
        results[str(path)] = result
    return {"prompt": prompt, "files": results}


def add_eval_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``eval`` on the CLI's subparsers; dispatches to :func:`run_eval` through ``args.func``."""
    parser = subparsers.add_parser(
        "eval", help="weight-free video metrics (JSON)",
        description="Warping error, VBench temporal flicker and dynamic degree, and a camera-motion estimate on "
                    "GIF / WebP / PNG frames (never lossy MP4); with --demo-scores also the demo world's attribute "
                    "accuracy, watermark and personal-style scores.")
    parser.add_argument("paths", nargs="+", metavar="VIDEO_OR_FRAMES", help=".gif, .webp, .png, or a PNG folder")
    parser.add_argument("--demo-scores", action="store_true",
                        help="add the demo world's scores (attribute accuracy needs --prompt)")
    parser.add_argument("--prompt", default=None, help="prompt to check colours and shapes against (--demo-scores)")
    parser.add_argument("--fps", type=float, default=None, help="frame rate (default: from the file, else 8)")
    parser.add_argument("--out", default=None, help="write the JSON here (default: print it)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file that is not an eval report")
    parser.set_defaults(func=run_eval)
    return parser


def _is_eval_report(path: Path) -> bool:
    try:
        return set(json.loads(path.read_text())) == {"prompt", "files"}
    except (OSError, ValueError, TypeError):
        return False


def run_eval(args: argparse.Namespace) -> int:
    if args.fps is not None and args.fps <= 0:
        raise UserInputError(f"--fps: must be positive, got {args.fps}")
    if args.out:  # checked before any clip is read
        from .video_io import check_file_target, check_parent_writable

        out = Path(args.out)
        check_parent_writable(out.parent, "out", out)
        check_file_target(out, _is_eval_report, "an eval report", args.overwrite, "out")
    scores = ("demo",) if args.demo_scores else ()
    if args.prompt and not scores:
        logger.warning("--prompt is only used by the demo scores; add --demo-scores")
    results = evaluate(args.paths, prompt=args.prompt, fps=args.fps, scores=scores)
    text = json.dumps(results, indent=2)
    if args.out:
        from .video_io import write_json_atomic

        out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(results, out)
        logger.info("wrote %s", args.out)
    else:
        sys.stdout.write(text + "\n")  # the command's output (JSON), not a log message
    return 0
