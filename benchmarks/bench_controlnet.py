"""ControlNet memory and speed: peak RSS with one ControlNet at 64 vs 16 frames, seconds per step with 0, 1, 2.

    nice -n 10 python benchmarks/bench_controlnet.py --models /tmp/bench_models   # ~15 min on 2 busy cores
    python benchmarks/bench_controlnet.py --from-json results.json                  # print a table again

Every point is one ``animatediff generate`` command in its own process, as a user runs it: a fabricated
full-size SD1.5 single file (fp16 on disk, fp32 in memory) + v3 motion module (``scripts/fabricate_checkpoints.py
--motion-preset v3``, random weights), and full-size SD1.5 ControlNets (diffusers ``ControlNetModel`` from the
SD1.5 ControlNet config shipped in ``animatediff/data/sd15/controlnet``, random weights, one fp16 .safetensors;
the second net is the same file under another name, so it is loaded as a second model), 64x64 pixels = 8x8
latents, uniform context windows of 16 frames, overlap 4, a control video with as many frames as the clip.
- memory: peak RSS (the child's own ``ru_maxrss``) with 1 ControlNet at 16 and at 64 frames (``--memory-steps``,
  default 1: the peak does not grow with steps); target: 64 frames <= 1.3x 16 frames, which holds when each
  window's residuals are computed inside that window (a ControlNet over all 64 frames at once would not);
- speed: seconds per denoising step (the sidecar's denoise time / steps) at 16 frames (one window, CFG batch 2)
  with 0, 1 and 2 ControlNets (``--steps``, default 2).
The 1-minute load average is recorded with every row: other jobs on the machine slow every number down.
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
RSS_TARGET = 1.3
_CLI = "import sys; from animatediff.cli import main; sys.exit(main())"


def run(args: list[str], out: Path) -> dict:
    """One CLI command in a child process -> peak RSS (GiB), wall seconds, the sidecar's timings."""
    started, load = time.perf_counter(), os.getloadavg()[0]
    child = subprocess.Popen([sys.executable, "-c", _CLI, "-q", "generate", PROMPT, *args, "--out", str(out)])
    _, status, usage = os.wait4(child.pid, 0)  # the child's own rusage
    code = os.waitstatus_to_exitcode(status)
    if code != 0:  # -9: killed, on a shared machine usually by the kernel for lack of memory
        why = "killed (SIGKILL: out of memory?)" if code == -9 else f"exit status {code}"
        print(f"  failed: {why}: {' '.join(args)}", flush=True)
        return {"failed": why, "rss_gib": usage.ru_maxrss / 2**20, "wall_s": time.perf_counter() - started,
                "timings": None, "load": os.getloadavg()[0], "available_gib": _available_gib()}
    timings = json.loads(Path(f"{out}.json").read_text())["timings"]
    return {"rss_gib": usage.ru_maxrss / 2**20, "wall_s": time.perf_counter() - started, "timings": timings,
            "load": (load + os.getloadavg()[0]) / 2, "available_gib": _available_gib()}


def _available_gib() -> float | None:
    """MemAvailable now (other jobs' memory decides whether a big run fits)."""
    try:
        line = next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemAvailable"))
        return int(line.split()[1]) / 2**20
    except (OSError, StopIteration):
        return None


def fabricate_base(folder: Path) -> tuple[Path, Path]:
    checkpoint, motion = folder / "sd15.safetensors", folder / "v3_sd15_mm.ckpt"
    if not (checkpoint.exists() and motion.exists()):
        print(f"fabricating full-size SD1.5 + v3 in {folder} ...", flush=True)
        subprocess.run([sys.executable, str(ROOT / "scripts" / "fabricate_checkpoints.py"), str(folder),
                        "--motion-preset", "v3"], check=True)
    return checkpoint, motion


def fabricate_controlnets(folder: Path) -> list[Path]:
    """A full-size SD1.5 ControlNet (random weights, fp16 diffusers keys) and a second name for it."""
    first, second = folder / "controlnet_sd15.safetensors", folder / "controlnet_sd15_b.safetensors"
    if not first.exists():
        import torch
        from diffusers import ControlNetModel
        from safetensors.torch import save_file

        from animatediff.components import package_data

        print(f"fabricating a full-size SD1.5 ControlNet in {folder} ...", flush=True)
        torch.manual_seed(0)
        net = ControlNetModel.from_config(ControlNetModel.load_config(str(package_data("sd15", "controlnet"))))
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.half().contiguous() for k, v in net.state_dict().items()}, str(first))
    if not second.exists():
        second.symlink_to(first.name)
    return [first, second]


def hint_video(folder: Path, frames: int) -> Path:
    """A PNG folder of ``frames`` 64x64 frames: a bright disc moving right (something for the edges to see)."""
    import numpy as np

    from animatediff.video_io import save_video

    path = folder / f"hints-{frames}"
    if not path.exists():
        yy, xx = np.mgrid[:64, :64]
        clip = np.stack([((np.hypot(yy - 32, xx - 8 - 48 * i / frames) < 12)[..., None] * 255).repeat(3, -1)
                         for i in range(frames)]).astype(np.uint8)
        save_video(clip, path)
    return path


def controlnet_args(nets: list[Path], hints: Path) -> list[str]:
    return [arg for net in nets for arg in ("--controlnet", str(net), "--control-video", str(hints))]


def measure(model_args: list[str], nets: list[Path], scratch: Path, steps: int, memory_steps: int,
            memory_frames: list[int], counts: list[int], save=lambda rows: None) -> list[dict]:
    rows = []
    for kind, frames, count, n_steps in ([("memory", f, 1, memory_steps) for f in memory_frames]
                                         + [("speed", 16, c, steps) for c in counts]):
        print(f"{kind}: {frames} frames, {count} ControlNets, {n_steps} steps ...", flush=True)
        args = [*model_args, *controlnet_args(nets[:count], hint_video(scratch, frames)), "--frames", str(frames),
                "--steps", str(n_steps), "--width", "64", "--height", "64", *CONTEXT]
        result = run(args, scratch / f"{kind}-{frames}-{count}.gif")
        row = {"kind": kind, "frames": frames, "controlnets": count, "steps": n_steps, "dtype": _dtype(model_args),
               **result, "s_per_step": result["timings"]["denoise"] / n_steps if result["timings"] else None}
        rows.append(row)
        save(rows)  # each row as it comes: a later run may be killed
        if row["s_per_step"] is not None:
            print(f"  peak RSS {row['rss_gib']:.2f} GiB, {row['s_per_step']:.1f} s/step, load {row['load']:.1f}", flush=True)
    return rows


def _dtype(model_args: list[str]) -> str:
    return model_args[model_args.index("--dtype") + 1] if "--dtype" in model_args else "float32"


def table(rows: list[dict]) -> str:
    lines = ["| run | frames | ControlNets | dtype | steps | peak RSS | s / step | wall s | load (1 min) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        speed = f"{r['s_per_step']:.1f}" if r.get("s_per_step") is not None else f"– ({r.get('failed')})"
        wall = f"{r['wall_s']:.0f}" if r.get("wall_s") else "–"
        lines.append(f"| {r['kind']} | {r['frames']} | {r['controlnets']} | {r.get('dtype', 'float32')} | {r['steps']} | "
                     f"{r['rss_gib']:.2f} GiB | {speed} | {wall} | {r['load']:.1f} |")
    return "\n".join(lines)


def verdicts(rows: list[dict]) -> list[str]:
    out = []
    rows = [r for r in rows if r.get("s_per_step") is not None]
    memory = sorted((r for r in rows if r["kind"] == "memory"), key=lambda r: r["frames"])
    if len(memory) >= 2:
        ratio = memory[-1]["rss_gib"] / memory[0]["rss_gib"]
        out.append(f"- peak RSS, 1 ControlNet, {memory[-1]['frames']} vs {memory[0]['frames']} frames: {ratio:.2f}x "
                   f"(target <= {RSS_TARGET}x: {'met' if ratio <= RSS_TARGET else 'MISSED'})")
    for dtype in dict.fromkeys(r.get("dtype", "float32") for r in rows):
        speed = {r["controlnets"]: r["s_per_step"] for r in rows if r["kind"] == "speed" and r.get("dtype", "float32") == dtype}
        if 0 in speed:
            out.append(f"- {dtype}, s/step at 16 frames relative to no ControlNet: "
                       + ", ".join(f"{n} ControlNet{'s' if n != 1 else ''} {s / speed[0]:.2f}x" for n, s in sorted(speed.items())))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, help="folder for the fabricated SD1.5 + v3 files (default: a temporary one)")
    parser.add_argument("--controlnets", type=Path, help="folder for the fabricated ControlNet (default: --models)")
    parser.add_argument("--steps", type=int, default=2, help="steps of the speed runs (default 2)")
    parser.add_argument("--memory-steps", type=int, default=1, help="steps of the memory runs (default 1)")
    parser.add_argument("--memory-frames", type=int, nargs="*", default=[16, 64])
    parser.add_argument("--counts", type=int, nargs="+", default=[0, 1, 2], help="ControlNet counts of the speed runs")
    parser.add_argument("--dtype", default="float32", help="--dtype of every run (default float32; bfloat16 halves "
                        "the weights' memory where float32 does not fit beside other jobs)")
    parser.add_argument("--json", type=Path, help="also write the raw rows here (after every run)")
    parser.add_argument("--from-json", type=Path, nargs="+", help="print the table of rows written earlier; run nothing")
    args = parser.parse_args()
    if args.from_json:
        rows = [row for path in args.from_json for row in json.loads(path.read_text())]
    else:
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} (shared machines inflate times)", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            scratch = Path(tmp)
            checkpoint, motion = fabricate_base(args.models or scratch / "models")
            nets = fabricate_controlnets(args.controlnets or args.models or scratch / "models")
            save = (lambda rows: args.json.write_text(json.dumps(rows, indent=2))) if args.json else (lambda rows: None)
            rows = measure(["--model", str(checkpoint), "--motion-module", str(motion), "--dtype", args.dtype], nets, scratch,
                           args.steps, args.memory_steps, args.memory_frames, args.counts, save)
    print("\n" + table(rows) + "\n\n" + "\n".join(verdicts(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
