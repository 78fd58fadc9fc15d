"""Feature caching (``cache_interval``, generation/feature_cache.py): seconds per clip against quality loss.

The bundled demo model through the public API at its defaults (64x64, 16 frames), DDIM, for each step count
(``--steps``: its default and 25) and cache interval (1 = uncached, the reference): seconds per clip (denoise +
decode, the median over the prompts), PSNR of the decoded frames against the uncached clip (dB, frames in [0, 1],
mean over the prompts), and the warping error (metrics.warping_error, Lai et al. 2018; lower = smoother) of the
cached clip next to the uncached one's. Intervals run back to back per prompt, so load drifts hit all alike.

    python benchmarks/bench_feature_cache.py                         # intervals 1 2 3 5, default steps and 25
    python benchmarks/bench_feature_cache.py --intervals 1 2 --steps 25 --prompts 1
    python benchmarks/bench_feature_cache.py --ring-full-size      # full-size SD1.5 + v3: one whole vs ring call

``--ring-full-size``: the speed side at full size (random weights, so no quality): seconds of one whole UNet call
and of one ring call per branch, 16x16 latents, 16 frames, CFG batch 2 (bench_compile's model).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch

PROMPTS = ["a red circle bouncing on a blue striped background", "a green square sliding left on a yellow background",
           "a blue triangle moving in a circle on a white background"]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return 10 * np.log10(1.0 / max(mse, 1e-20))


def uint8_clip(frames: torch.Tensor) -> np.ndarray:
    """(3, f, H, W) in [0, 1] -> (f, H, W, 3) uint8."""
    return (frames.permute(1, 2, 3, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def ring_full_size(branches=(0, 1, 2)) -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_compile import full_model
    from animatediff.generation.feature_cache import FeatureCache

    model, latents, t, text = full_model(16, 16)
    load_start = os.getloadavg()[0]
    for branch in branches:
        cache = FeatureCache(model.unet, 2, branch)
        times = {}
        with torch.no_grad():
            for name, run in (("whole", cache.full), ("ring", cache.cached)):
                tic = time.perf_counter()
                model(latents, t, text, unet_forward=lambda *a, **k: run(0, *a, **k))
                times[name] = time.perf_counter() - tic
        print(json.dumps({"branch": branch, "whole_call_s": round(times["whole"], 1), "ring_call_s": round(times["ring"], 1),
                          "ring_share": round(times["ring"] / times["whole"], 2)}), flush=True)
    print(f"load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--intervals", type=int, nargs="+", default=[1, 2, 3, 5])
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 25], help="0: the model's default")
    parser.add_argument("--prompts", type=int, default=2, help=f"how many of the {len(PROMPTS)} prompts")
    parser.add_argument("--branch", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--ring-full-size", action="store_true", help="time whole vs ring calls at full size instead")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.ring_full_size:
        return ring_full_size()

    from animatediff import Animator
    from animatediff.metrics import warping_error

    animator = Animator.load()
    load_start, rows = os.getloadavg(), []
    intervals = sorted(set([1, *args.intervals]))
    for steps in args.steps:
        per = {i: {"s": [], "psnr": [], "warp": []} for i in intervals}
        for prompt in PROMPTS[: args.prompts]:
            reference = None
            for interval in intervals:
                settings = dict(seed=42, scheduler="ddim", cache_interval=interval, cache_branch=args.branch)
                if steps:
                    settings["steps"] = steps
                tic = time.perf_counter()
                result = animator.generate(prompt, **settings)
                frames = result.frames[0]  # (3, f, H, W): decoded here, timed with the denoise
                per[interval]["s"].append(time.perf_counter() - tic)
                reference = frames if interval == 1 else reference
                per[interval]["psnr"].append(psnr(frames, reference) if interval > 1 else float("inf"))
                per[interval]["warp"].append(warping_error(uint8_clip(frames)))
                used_steps = result.config.steps
        base_s = statistics.median(per[1]["s"])
        for interval in intervals:
            s = statistics.median(per[interval]["s"])
            rows.append({"steps": used_steps, "cache_interval": interval, "s_per_clip": round(s, 2),
                         "speedup": round(base_s / s, 2), "psnr_db": round(float(np.mean(per[interval]["psnr"])), 1),
                         "warping_error": round(float(np.mean(per[interval]["warp"])), 5),
                         "warping_error_uncached": round(float(np.mean(per[1]["warp"])), 5)})
    load_end = os.getloadavg()
    print(f"bundled demo model, 64x64, 16 frames, DDIM, CFG, cache_branch {args.branch}, {args.prompts} prompts (seed 42), "
          f"{args.threads} threads; load average {load_start[0]:.1f} at the start, {load_end[0]:.1f} at the end\n")
    print("| steps | cache_interval | s / clip | speed-up | PSNR vs uncached | warping error (uncached) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        p = "=" if r["cache_interval"] == 1 else f"{r['psnr_db']:.1f} dB"
        print(f"| {r['steps']} | {r['cache_interval']} | {r['s_per_clip']:.2f} | {r['speedup']:.2f}x | {p} | "
              f"{r['warping_error']:.4f} ({r['warping_error_uncached']:.4f}) |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "load": [load_start, load_end]}, f, indent=1)


if __name__ == "__main__":
    main()
