"""``animatediff eval VIDEO_OR_FRAMES... [--prompt TEXT] [--fps N] [--out results.json]``: weight-free metrics.

Reads GIF, animated WebP, a folder of PNG frames, or a single PNG image, and returns
:func:`animatediff.metrics.video_metrics` per file.  MP4 is refused: H.264's 4:2:0 round trip changes pixels by
about as much as a smooth clip changes between frames (metrics.md §3), so flicker and warping error would
measure the codec.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageSequence

from .errors import UserInputError
from .metrics import video_metrics

logger = logging.getLogger(__name__)

LOSSY_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv", ".avi")


def read_clip(path: str | Path, fps: float | None = None) -> tuple[np.ndarray, float | None]:
    """(frames (num_frames, H, W, 3) uint8, fps or None) from a GIF / WebP / PNG folder / PNG image.

    GIF and WebP frame durations are honoured: Pillow's writer merges identical consecutive frames into one
    longer frame, so a frame shown k times as long as one frame period is repeated k times (a static 16-frame
    clip stays 16 frames).  The period is 1000 / ``fps`` ms when given, else the shortest duration in the
    file (else 125 ms, 8 fps, when the whole clip merged into one frame).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in LOSSY_SUFFIXES:
        raise UserInputError(f"{path}: lossy video ({suffix}) is not evaluated — the codec's error is as large as "
                             f"the motion being measured; pass the GIF, WebP or PNG-frame folder instead")
    if path.is_dir():
        from .video_io import read_frames

        return read_frames(path), None
    if not path.exists():
        raise UserInputError(f"{path}: no such file or folder")
    if suffix == ".png":
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))[None], None
    if suffix not in (".gif", ".webp"):
        raise UserInputError(f"{path}: cannot evaluate {suffix!r} files; use .gif, .webp, a .png or a PNG folder")
    frames, durations = [], []
    with Image.open(path) as image:
        for frame in ImageSequence.Iterator(image):
            frames.append(np.asarray(frame.convert("RGB")))
            durations.append(float(frame.info.get("duration") or 0))
    if not all(d > 0 for d in durations):
        return np.stack(frames), None
    period = 1000.0 / fps if fps else (min(durations) if len(frames) > 1 else 125.0)
    repeats = [max(1, int(round(d / period))) for d in durations]
    clip = np.stack([f for f, k in zip(frames, repeats) for _ in range(k)])  # (num_frames, H, W, 3)
    return clip, 1000.0 / period


def evaluate(paths: list[str | Path], prompt: str | None = None, fps: float | None = None) -> dict:
    """Metrics for each path: ``{"files": {path: metrics}}`` (JSON-able).  ``fps`` overrides the frame rate
    read from the file (default 8, the rate VBench's thresholds assume)."""
    if not paths:
        raise UserInputError("eval: give at least one GIF, WebP, PNG or PNG folder")
    results = {}
    for path in paths:
        frames, file_fps = read_clip(path, fps)
        rate = fps or file_fps or 8.0
        logger.info("evaluating %s: %d frames %dx%d at %.3g fps", path, len(frames), frames.shape[2],
                    frames.shape[1], rate)
        results[str(path)] = {"fps": rate, **video_metrics(frames, prompt=prompt, fps=rate)}
    return {"prompt": prompt, "files": results}


def add_eval_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``eval`` on the CLI's subparsers; dispatches to :func:`run_eval` through ``args.func``."""
    parser = subparsers.add_parser(
        "eval", help="weight-free video metrics (JSON)",
        description="Warping error, VBench temporal flicker and dynamic degree, camera-motion estimate, and the "
                    "demo world's attribute accuracy, watermark and personal-style scores, on GIF / WebP / PNG "
                    "frames (never lossy MP4).")
    parser.add_argument("paths", nargs="+", metavar="VIDEO_OR_FRAMES", help=".gif, .webp, .png, or a PNG folder")
    parser.add_argument("--prompt", default=None, help="prompt to check colours and shapes against")
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
    results = evaluate(args.paths, prompt=args.prompt, fps=args.fps)
    text = json.dumps(results, indent=2)
    if args.out:
        from .video_io import write_json_atomic

        out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(results, out)
        logger.info("wrote %s", args.out)
    else:
        sys.stdout.write(text + "\n")  # the command's output (JSON), not a log message
    return 0
