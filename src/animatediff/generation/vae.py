"""Between pixels and latents: the base model's VAE applied frame by frame, in chunks.

Frames are independent images to the VAE, so a clip ``(b, 3, f, H, W)`` is folded to ``(b f, 3, H, W)`` and
encoded or decoded ``chunk_size`` frames per call (the official code decodes one frame at a time; diffusers'
``decode_chunk_size`` does the same as here). Latents carry the VAE's ``scaling_factor`` (0.18215 for SD1.5),
as the UNet sees them.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from diffusers import AutoencoderKL


@contextmanager
def _fp32_if_needed(vae: AutoencoderKL):
    """SDXL's VAE overflows in fp16 (``config.force_upcast``): run it in fp32 for the duration."""
    original = vae.dtype
    upcast = original == torch.float16 and getattr(vae.config, "force_upcast", False)
    try:
        if upcast:
            vae.to(torch.float32)
        yield
    finally:
        if upcast:
            vae.to(original)


@torch.no_grad()
def decode(vae: AutoencoderKL, latents: torch.Tensor, chunk_size: int = 16) -> torch.Tensor:
    """Latents ``(b, 4, f, h, w)`` (scaled) -> frames ``(b, 3, f, H, W)`` in [0, 1], fp32 on the CPU."""
    b, c, f, h, w = latents.shape
    x = latents.transpose(1, 2).reshape(b * f, c, h, w) / vae.config.scaling_factor  # b c f h w -> (b f) c h w
    with _fp32_if_needed(vae):
        decoded = [vae.decode(chunk.to(device=vae.device, dtype=vae.dtype)).sample.float().cpu()
                   for chunk in x.split(chunk_size)]
    frames = torch.cat(decoded)
    frames = frames.reshape(b, f, *frames.shape[1:]).transpose(1, 2)  # (b f) c H W -> b c f H W
    return (frames / 2 + 0.5).clamp(0, 1)


@torch.no_grad()
def encode(vae: AutoencoderKL, frames: torch.Tensor, chunk_size: int = 16, generator: torch.Generator | None = None,
           sample: bool = True) -> torch.Tensor:
    """Frames ``(b, 3, f, H, W)`` in [0, 1] -> latents ``(b, 4, f, H/8, W/8)`` x scaling_factor, fp32 on the
    VAE's device.

    ``sample``: a draw from the VAE posterior with ``generator`` (what diffusers' video-to-video pipeline and
    training do; the draws follow the chunks, so they depend on ``chunk_size``), else its mode (the mean)."""
    b, c, f, H, W = frames.shape
    x = frames.transpose(1, 2).reshape(b * f, c, H, W) * 2 - 1  # b c f H W -> (b f) c H W, [0, 1] -> [-1, 1]
    with _fp32_if_needed(vae):
        latents = []
        for chunk in x.split(chunk_size):
            posterior = vae.encode(chunk.to(device=vae.device, dtype=vae.dtype)).latent_dist
            latents.append((posterior.sample(generator) if sample else posterior.mode()).float())
    latents = torch.cat(latents) * vae.config.scaling_factor
    return latents.reshape(b, f, *latents.shape[1:]).transpose(1, 2)  # (b f) c h w -> b c f h w
