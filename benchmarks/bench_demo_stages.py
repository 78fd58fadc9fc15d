"""Training throughput of each demo-family stage (issue 11, item 3: "measure clips/s first").

    PYTHONPATH=src python benchmarks/bench_demo_stages.py [--threads 2] [--seconds 20] [--only vae unet ...]

For every stage model, at the current size (64 px images, 8x8 latents) and at the v2 size (128 px, 16x16
latents), fp32 and bf16 autocast (``torch.autocast("cpu", torch.bfloat16)``: this CPU has AVX-512 BF16, no
AMX): one full training step (forward, backward, AdamW) on random data, repeated for ``--seconds`` after two
warm-up steps. Prints one JSON line per case: samples/s (images for vae/unet/clip, clips for motion) and s/step.
Random data and random weights: throughput does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def _vae(size: int):
    from animatediff.demo.vae import VAEConfig, build_vae

    channels = (16, 32, 64, 64) if size == 64 else (32, 64, 128, 128)
    vae = build_vae(VAEConfig(block_out_channels=channels))
    batch = 12
    x = torch.rand(batch, 3, size, size) * 2 - 1

    def step():
        posterior = vae.encode(x).latent_dist
        rec = vae.decode(posterior.sample()).sample
        return (rec.float() - x).square().mean() + (rec.float() - x).abs().mean()

    return vae, step, batch, f"AutoencoderKL {channels}"


def _unet(latent: int, frames: int = 1, batch: int = 16):
    from diffusers import UNet2DConditionModel

    from animatediff.demo.build import UNET_CONFIG
    from animatediff.inflation import AnimateDiffUNet

    unet = UNet2DConditionModel(**{**UNET_CONFIG, "sample_size": latent})
    text = torch.randn(batch, 77, UNET_CONFIG["cross_attention_dim"])
    if frames == 1:
        model, trained = AnimateDiffUNet(unet), unet
        x = torch.randn(batch, 4, 1, latent, latent)
    else:
        from animatediff.training.config import TrainConfig
        from animatediff.training.modes import fresh_motion

        motion = fresh_motion(TrainConfig(mode="motion-module", motion_preset="v3", num_frames=frames, video_folder="."), unet)
        model, trained = AnimateDiffUNet(unet, motion), motion
        unet.requires_grad_(False)
        x = torch.randn(batch, 4, frames, latent, latent)
    t = torch.randint(0, 1000, (batch,))

    def step():
        return model(x, t, text).float().square().mean()

    return trained, step, batch, "UNet" if frames == 1 else f"UNet + v3 motion modules, {frames} frames"


def _clip(size: int):
    from animatediff.demo.clip import ClipConfig, build_towers, contrastive_loss

    config = ClipConfig(image_size=size)
    model = build_towers(config)
    batch = 64
    images = torch.rand(batch, 3, size, size) * 2 - 1
    ids = torch.randint(0, 49406, (batch, config.max_tokens))

    def step():
        return contrastive_loss(model, images, ids)

    return model, step, batch, f"CLIP towers at {size} px"


CASES = {
    "vae-64": lambda: _vae(64), "vae-128": lambda: _vae(128),
    "unet-8": lambda: _unet(8), "unet-16": lambda: _unet(16),
    "motion-8": lambda: _unet(8, frames=16, batch=2), "motion-16": lambda: _unet(16, frames=16, batch=2),
    "clip-64": lambda: _clip(64), "clip-128": lambda: _clip(128),
}


def measure(name: str, bf16: bool, seconds: float) -> dict:
    torch.manual_seed(0)
    module, step, batch, what = CASES[name]()
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    def one():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = step()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):
        one()
    steps, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or steps < 2:
        one()
        steps += 1
    per_step = (time.perf_counter() - started) / steps
    return {"case": name, "what": what, "bf16": bf16, "batch": batch, "steps": steps,
            "s_per_step": round(per_step, 4), "samples_per_s": round(batch / per_step, 2),
            "trainable_params": sum(p.numel() for p in params)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--only", nargs="+", default=list(CASES), choices=list(CASES))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.only:
        for bf16 in (False, True):
            print(json.dumps(measure(name, bf16, args.seconds)), flush=True)


if __name__ == "__main__":
    main()
