"""Between pixels and latents: the base model's VAE applied frame by frame, in chunks.

Frames are independent images to the VAE, so a clip ``(b, 3, f, H, W)`` is folded to ``(b f, 3, H, W)`` and
encoded or decoded ``chunk_size`` frames per call (the official code decodes one frame at a time; diffusers'
``decode_chunk_size`` does the same as here). Latents carry the VAE's ``scaling_factor`` (0.18215 for SD1.5),
as the UNet sees them.

Decoding streams: :func:`decode_chunks` / :func:`decode_uint8` yield one chunk of frames at a time, so a long
clip goes to the video writer without its float32 frames (12 bytes per pixel) ever being held at once;
:func:`decode` collects them for callers that want the whole clip as a tensor.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..video_io import to_uint8

if TYPE_CHECKING:  # annotations only: importing diffusers costs seconds and the VAE object is passed in
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
def decode_chunks(vae: AutoencoderKL, latents: torch.Tensor, chunk_size: int = 16,
                  clip: int | None = None) -> Iterator[torch.Tensor]:
    """Latents ``(b, 4, f, h, w)`` (scaled) -> frames chunk by chunk, each ``(n, 3, H, W)`` in [0, 1], fp32 on
    the CPU, ``n <= chunk_size``, in ``(b f)`` order; only the frames of clip ``clip`` when given.

    The VAE calls are the same ``chunk_size`` slices of ``(b f)`` whichever frames are asked for (a chunk may
    span two clips), so every frame is bit-identical to :func:`decode`'s. Only one chunk is held at a time;
    an fp16 VAE with ``force_upcast`` stays in fp32 until the generator is exhausted or closed."""
    b, c, f, h, w = latents.shape
    x = latents.transpose(1, 2).reshape(b * f, c, h, w) / vae.config.scaling_factor  # b c f h w -> (b f) c h w
    first, stop = (0, b * f) if clip is None else (clip * f, (clip + 1) * f)
    with _fp32_if_needed(vae):
        for start in range(0, b * f, chunk_size):
            end = min(start + chunk_size, b * f)
            if end <= first or start >= stop:
                continue  # no frame of the clip asked for: not decoded
            frames = vae.decode(x[start:end].to(device=vae.device, dtype=vae.dtype)).sample.float().cpu()
            yield (frames / 2 + 0.5).clamp(0, 1)[max(first - start, 0) : min(stop, end) - start]


def decode(vae: AutoencoderKL, latents: torch.Tensor, chunk_size: int = 16) -> torch.Tensor:
    """Latents ``(b, 4, f, h, w)`` -> frames ``(b, 3, f, H, W)`` in [0, 1], fp32 on the CPU, all at once
    (12 bytes per pixel of the whole clip; :func:`decode_uint8` streams instead)."""
    b, _, f = latents.shape[:3]
    frames = torch.cat(list(decode_chunks(vae, latents, chunk_size)))
    return frames.reshape(b, f, *frames.shape[1:]).transpose(1, 2)  # (b f) c H W -> b c f H W


def decode_uint8(vae: AutoencoderKL, latents: torch.Tensor, chunk_size: int = 16, clip: int = 0) -> Iterator[np.ndarray]:
    """The frames of clip ``clip`` of latents ``(b, 4, f, h, w)`` as uint8 chunks ``(n, H, W, 3)``, ``n <=
    chunk_size``, decoded one chunk at a time (what the video writers consume: ``video_io.save_video``
    accepts this iterator); equal to ``to_uint8`` of :func:`decode`'s frames, bit for bit."""
    for frames in decode_chunks(vae, latents, chunk_size, clip):
        yield to_uint8(frames)


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
