"""bf16 vs fp32 fidelity: decoded frames after a full DDIM sample, same seed, same weights.

Two models: the bundled demo model (trained; through the public API, text encoder included) and the full-size
SD1.5 UNet + v2 motion module with random weights (``bench_unet_step.build_ours``; random text embeddings, a
full-size random SD1.5 VAE). For each: frames in fp32, frames with every component in bf16, and frames with the
UNet in bf16 but the VAE decode in fp32 (whether the VAE needs to stay fp32). The scheduler and guidance run in
fp32 in both (generation/denoiser.py). Prints PSNR (dB, frames in [0, 1]) and the max pixel difference (of 255).

    python benchmarks/bench_precision.py                                   # both models, 32x32 latents, 25 steps
    python benchmarks/bench_precision.py --model full --frames 4           # the full-size part with fewer frames
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def compare(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Frames in [0, 1]: PSNR in dB and the max difference in 8-bit levels (of the rounded uint8 frames)."""
    mse = float(((a - b) ** 2).mean())
    levels = ((a * 255).round() - (b * 255).round()).abs().max()
    return {"psnr_db": round(10 * torch.log10(torch.tensor(1.0 / max(mse, 1e-20))).item(), 2), "max_levels": int(levels)}


def demo(latent: int, steps: int, frames: int) -> dict:
    from animatediff import Animator
    from animatediff.generation import vae as vae_io

    out, vaes = {}, {}
    for dtype in (torch.float32, torch.bfloat16):
        animator = Animator.load(dtype=dtype)
        tic = time.perf_counter()
        result = animator.generate("a red circle bouncing on a blue striped background", seed=42, steps=steps, scheduler="ddim",
                                   width=8 * latent, height=8 * latent, num_frames=frames)
        out[dtype] = (result.frames, result.latents, time.perf_counter() - tic)
        vaes[dtype] = animator.base.vae
    bf16_unet_fp32_vae = vae_io.decode(vaes[torch.float32], out[torch.bfloat16][1])
    return {"bf16 everywhere": compare(out[torch.bfloat16][0], out[torch.float32][0]),
            "bf16 UNet + text, fp32 VAE": compare(bf16_unet_fp32_vae, out[torch.float32][0]),
            "seconds": {str(k): round(v[2], 1) for k, v in out.items()}}


def full(latent: int, steps: int, frames: int) -> dict:
    from diffusers import AutoencoderKL, DDIMScheduler

    import bench_unet_step as bench
    from animatediff.generation import vae as vae_io

    torch.set_num_threads(2)
    model, call, _, _ = bench.build_ours()
    vae_config = json.loads((HERE.parent / "src/animatediff/data/sd15/vae/config.json").read_text())
    torch.manual_seed(0)
    vae = AutoencoderKL(**{k: v for k, v in vae_config.items() if not k.startswith("_")}).eval()
    g = torch.Generator().manual_seed(1234)
    init = torch.randn(1, 4, frames, latent, latent, generator=g)  # (b, c, f, h, w)
    text = torch.randn(2, 77, 768, generator=g) * 0.5  # [uncond, cond]
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        model.to(dtype)
        scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear", steps_offset=1, clip_sample=False)
        scheduler.set_timesteps(steps)
        latents, tic = init.clone(), time.perf_counter()
        with torch.no_grad():
            for t in scheduler.timesteps:  # CFG 7.5; the UNet in dtype, guidance and DDIM in fp32
                uncond, cond = call(torch.cat([latents] * 2).to(dtype), t, text.to(dtype)).float().chunk(2)
                latents = scheduler.step(uncond + 7.5 * (cond - uncond), t, latents).prev_sample
        seconds = time.perf_counter() - tic
        out[dtype] = (vae_io.decode(vae.to(dtype), latents), latents, seconds)
        print(f"  full-size {dtype}: {seconds:.0f} s", file=sys.stderr, flush=True)
    bf16_unet_fp32_vae = vae_io.decode(vae.to(torch.float32), out[torch.bfloat16][1])
    return {"bf16 everywhere": compare(out[torch.bfloat16][0], out[torch.float32][0]),
            "bf16 UNet, fp32 VAE": compare(bf16_unet_fp32_vae, out[torch.float32][0]),
            "latents max |diff|": round(float((out[torch.bfloat16][1] - out[torch.float32][1]).abs().max()), 4),
            "seconds": {str(k): round(v[2], 1) for k, v in out.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", default=["demo", "full"], choices=["demo", "full"])
    parser.add_argument("--latent", type=int, default=32)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--frames", type=int, default=16)
    args = parser.parse_args()
    for name in args.model:
        result = (demo if name == "demo" else full)(args.latent, args.steps, args.frames)
        print(json.dumps({"model": name, "latent": args.latent, "steps": args.steps, "frames": args.frames, **result}), flush=True)


if __name__ == "__main__":
    main()
