"""Memory and time against clip length: peak RSS and seconds per frame at 16, 64 and 256 frames.

    python benchmarks/bench_long_video.py                      # both models (~20 min on 2 busy cores)
    python benchmarks/bench_long_video.py --only demo          # the bundled demo model only (~1 min)
    python benchmarks/bench_long_video.py --models DIR         # reuse files fabricated earlier in DIR

Every point is one ``animatediff generate`` command in its own process, as a user runs it (model load and
writing the GIF included), with uniform context windows of 16 frames, overlap 4 (one window at 16 frames):
- demo: the bundled demo model, no model flags, 64x64 pixels, ``--demo-steps`` (4) steps;
- full: a fabricated full-size SD1.5 single file (fp16 on disk, fp32 in memory) + v3 motion module
  (``scripts/fabricate_checkpoints.py --motion-preset v3``, random weights), 64x64 pixels = 8x8 latents,
  ``--full-steps`` (2) steps.
Peak RSS is the child's own ``ru_maxrss`` (``os.wait4``). Seconds per frame are the sidecar's generation time
(text + denoise + decode) over the frames; "UNet frames per frame" is how many frames the UNet evaluates per
output frame and step (overlapping windows evaluate some twice: 16/12 for long clips), and "s per evaluated
frame" divides it out, which is the "equal overlap" comparison; "denoise s per UNet call" (one window, CFG
batched) and "decode s / frame" split the time further, and "load" is the 1-minute load average after the run
(other jobs on the machine slow every number down). Prints a markdown table with the targets (peak RSS at 256 frames <= 1.25x the
16-frame peak on the full-size model; time per frame within 1.2x of the 16-frame value) and whether each is met.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a red circle bouncing on a blue striped background"
CONTEXT = ["--context", "uniform", "--context-length", "16", "--context-overlap", "4"]
RSS_TARGET, TIME_TARGET = 1.25, 1.2
_CLI = "import sys; from animatediff.cli import main; sys.exit(main())"


def window_calls(num_frames: int, steps: int) -> tuple[int, float]:
    """(UNet calls, frames the UNet evaluates per output frame and step) over the whole run: uniform windows of
    16, overlap 4, moving every step (``context.windows``); one call per step at 16 frames or fewer."""
    from animatediff.sampling.context import windows

    if num_frames <= 16:
        return steps, 1.0
    found = [w for step in range(steps) for w in windows(num_frames, step, 16, 4, "uniform")]
    return len(found), sum(len(w) for w in found) / (num_frames * steps)


def run(args: list[str], out: Path) -> dict:
    """One CLI command in a child process -> peak RSS (GiB), wall seconds, the sidecar's timings."""
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", _CLI, "-q", "generate", PROMPT, *args, "--out", str(out)])
    _, status, usage = os.wait4(child.pid, 0)  # the child's own rusage (RUSAGE_CHILDREN would be the max of all)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"command failed ({child.returncode}): {' '.join(args)}")
    timings = json.loads(Path(f"{out}.json").read_text())["timings"]
    return {"rss_gib": usage.ru_maxrss / 2**20, "wall_s": time.perf_counter() - started, "timings": timings}


def fabricate(folder: Path) -> tuple[Path, Path]:
    checkpoint, motion = folder / "sd15.safetensors", folder / "v3_sd15_mm.ckpt"
    if not (checkpoint.exists() and motion.exists()):
        print(f"fabricating full-size SD1.5 + v3 in {folder} ...", flush=True)
        subprocess.run([sys.executable, str(ROOT / "scripts" / "fabricate_checkpoints.py"), str(folder),
                        "--motion-preset", "v3"], check=True)
    return checkpoint, motion


def measure(name: str, model_args: list[str], steps: int, frames: list[int], size: int, scratch: Path) -> list[dict]:
    rows = []
    for n in frames:
        print(f"{name}: {n} frames ...", flush=True)
        result = run([*model_args, "--frames", str(n), "--steps", str(steps), "--width", str(size), "--height", str(size),
                      *CONTEXT], scratch / f"{name}-{n}.gif")
        generation = result["timings"]["total"]
        rows.append({"model": name, "frames": n, "steps": steps, "size": size, "rss_gib": result["rss_gib"],
                     "wall_s": result["wall_s"], "s_per_frame": generation / n, "load": os.getloadavg()[0],
                     "timings": result["timings"]})
        print(f"  peak RSS {result['rss_gib']:.2f} GiB, {generation / n:.3f} s/frame, wall {result['wall_s']:.0f} s", flush=True)
    return rows


def _derived(row: dict) -> dict:
    calls, evaluated = window_calls(row["frames"], row["steps"])
    t = row["timings"]
    return {"evaluated": evaluated, "per_eval": row["s_per_frame"] / evaluated, "per_call": t["denoise"] / calls,
            "decode": t["decode"] / row["frames"]}


def table(rows: list[dict]) -> str:
    """Markdown; "×" columns are ratios to the model's first (16-frame) row."""
    lines = ["| model | frames | peak RSS (×) | s / frame (×) | UNet frames per frame | s per evaluated frame (×) | "
             "denoise s per UNet call | decode s / frame | load |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        first = next(r for r in rows if r["model"] == row["model"])
        d, d0 = _derived(row), _derived(first)
        lines.append(f"| {row['model']}, {row['size']}², {row['steps']} steps | {row['frames']} | "
                     f"{row['rss_gib']:.2f} GiB ({row['rss_gib'] / first['rss_gib']:.2f}) | "
                     f"{row['s_per_frame']:.3f} ({row['s_per_frame'] / first['s_per_frame']:.2f}) | {d['evaluated']:.2f} | "
                     f"{d['per_eval']:.3f} ({d['per_eval'] / d0['per_eval']:.2f}) | {d['per_call']:.2f} | {d['decode']:.3f} | "
                     + (f"{row['load']:.1f} |" if "load" in row else "– |"))
    return "\n".join(lines)


def verdicts(rows: list[dict]) -> list[str]:
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        first, last = mine[0], mine[-1]
        if len(mine) < 2:
            continue
        rss = last["rss_gib"] / first["rss_gib"]
        per_frame = last["s_per_frame"] / first["s_per_frame"]
        per_eval = _derived(last)["per_eval"] / _derived(first)["per_eval"]
        label = f"{model}, {last['frames']} vs {first['frames']} frames"
        out.append(f"- {label}: peak RSS {rss:.2f}x (target <= {RSS_TARGET}x: {'met' if rss <= RSS_TARGET else 'MISSED'}); "
                   f"s/frame {per_frame:.2f}x (target <= {TIME_TARGET}x: {'met' if per_frame <= TIME_TARGET else 'MISSED'}), "
                   f"per evaluated frame {per_eval:.2f}x ({'met' if per_eval <= TIME_TARGET else 'MISSED'})")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--only", choices=("demo", "full"))
    parser.add_argument("--demo-steps", type=int, default=4)
    parser.add_argument("--full-steps", type=int, default=2)
    parser.add_argument("--demo-size", type=int, default=64, help="pixels (square) for the demo model (default 64)")
    parser.add_argument("--models", type=Path, help="folder for the fabricated full-size files (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="also write the raw rows here")
    parser.add_argument("--from-json", type=Path, nargs="+", help="print the table of rows written earlier; run nothing")
    args = parser.parse_args()
    if args.from_json:
        rows = [row for path in args.from_json for row in json.loads(path.read_text())]
        print(table(rows) + "\n\n" + "\n".join(verdicts(rows)))
        return 0
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} (shared machines inflate times)", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        if args.only in (None, "demo"):
            rows += measure("demo", [], args.demo_steps, args.frames, args.demo_size, scratch)
        if args.only in (None, "full"):
            checkpoint, motion = fabricate(args.models or scratch / "models")
            rows += measure("full-size SD1.5 + v3", ["--model", str(checkpoint), "--motion-module", str(motion)],
                            args.full_steps, args.frames, 64, scratch)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    print()
    print(table(rows))
    print()
    print("\n".join(verdicts(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
