"""``--compile`` (torch.compile of the UNet with its motion modules): compile time, per-step gain, and the
difference to eager, in one process.

- ``demo``: the bundled demo model through the public API at its defaults (64x64, 16 frames, its steps):
  ``--calls`` eager clips, then ``compile_unet`` and ``1 + --calls`` compiled clips (the first pays the compile).
  Compile time = first compiled clip - best eager clip. Max |delta| of the final latents compiled vs eager.
- ``full``: the full-size SD1.5 UNet + v3 motion module with random weights (bench_unet_step's weights) at 16x16
  latents, 16 frames, CFG batch 2: ``--calls`` eager UNet calls, then compile and ``1 + --calls`` compiled calls
  (the first compiles). Max |delta| of one call's prediction.

Per step = best of the timed calls / clips divided by steps. Under ``nice`` on a shared machine: the load is printed.

    python benchmarks/bench_compile.py --model demo
    python benchmarks/bench_compile.py --model full --calls 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def demo(clips: int) -> dict:
    from animatediff import Animator
    from animatediff.generation import compiled

    animator = Animator.load()
    prompt, settings = "a red circle bouncing on a blue striped background", dict(seed=42)
    eager_times = []
    for _ in range(clips):
        tic = time.perf_counter()
        eager = animator.generate(prompt, **settings)
        eager_times.append(time.perf_counter() - tic)
    eager_s = min(eager_times)
    steps = eager.config.steps
    compiled.compile_unet(animator.pipeline)
    times, result = [], None
    for _ in range(1 + clips):
        tic = time.perf_counter()
        result = animator.generate(prompt, **settings)
        times.append(time.perf_counter() - tic)
    best = min(times[1:])
    return {"model": "demo", "steps": steps, "eager_clip_s": round(eager_s, 2), "first_compiled_clip_s": round(times[0], 1),
            "compile_s": round(times[0] - eager_s, 1), "compiled_clip_s": round(best, 2),
            "eager_step_s": round(eager.timings["denoise"] / steps, 3), "compiled_step_s": round(result.timings["denoise"] / steps, 3),
            "speedup": round(eager_s / best, 2),
            "max_abs_delta_latents": float((result.latents - eager.latents).abs().max()),
            "latent_abs_max": float(eager.latents.abs().max())}


def full_model(latent: int, frames: int):
    """Full-size SD1.5 UNet + v3 motion module (bench_unet_step's random weights) and one CFG-batched input."""
    from diffusers import UNet2DConditionModel

    import bench_unet_step as bench
    from animatediff.inflation import AnimateDiffUNet
    from animatediff.motion_module import MotionModules
    from animatediff.presets import get_preset

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**bench.sd15_unet_config()).eval()
    motion = MotionModules(get_preset("v3")).eval()
    for key, tensor in motion.state_dict().items():
        bench.fill_motion_tensor_(tensor, key)
    g = torch.Generator().manual_seed(1234)
    latents = torch.randn(2, 4, frames, latent, latent, generator=g)  # CFG batch [uncond, cond]
    text = torch.randn(2, 77, 768, generator=g)
    return AnimateDiffUNet(unet, motion).eval(), latents, torch.tensor(801), text


def full(calls: int, latent: int, frames: int) -> dict:
    model, latents, t, text = full_model(latent, frames)
    unet = model.unet

    def timed() -> tuple[float, torch.Tensor]:
        tic = time.perf_counter()
        with torch.no_grad():
            out = model(latents, t, text)
        return time.perf_counter() - tic, out

    eager = [timed() for _ in range(calls)]
    unet.compile()
    first, out = timed()
    compiled_times = [timed()[0] for _ in range(calls)]
    eager_s = min(s for s, _ in eager)
    return {"model": "full SD1.5 + v3", "latent": latent, "frames": frames, "eager_call_s": [round(s, 1) for s, _ in eager],
            "first_compiled_call_s": round(first, 1), "compile_s": round(first - eager_s, 1),
            "compiled_call_s": [round(s, 1) for s in compiled_times], "speedup": round(eager_s / min(compiled_times), 2),
            "max_abs_delta": float((out - eager[0][1]).abs().max()), "prediction_std": float(eager[0][1].std())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", default=["demo"], choices=["demo", "full"])
    parser.add_argument("--calls", type=int, default=2, help="timed eager and compiled calls (clips for demo), best taken")
    parser.add_argument("--latent", type=int, default=16)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.model:
        before = load()
        result = demo(args.calls) if name == "demo" else full(args.calls, args.latent, args.frames)
        result.update(load_before=before, load_after=load(), threads=args.threads, torch=torch.__version__)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
