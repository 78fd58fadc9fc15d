"""Between pixels and latents: the base model's VAE applied frame by frame, in chunks.

Frames are independent images to the VAE, so a clip ``(b, 3, f, H, W)`` is folded to ``(b f, 3, H, W)`` and
encoded or decoded ``chunk_size`` frames per call (the official code decodes one frame at a time; diffusers'
``decode_chunk_size`` does the same as here). Latents carry the VAE's ``scaling_factor`` (0.18215 for SD1.5),
as the UNet sees them.

Tiling (``tile``, the ``vae_tiling`` field): diffusers' own tiled and sliced VAE (``AutoencoderKL.use_tiling`` /
``use_slicing``) for the duration of a call: one frame per VAE call, in overlapping ``tile`` x ``tile``-pixel tiles
blended over a quarter of a tile, so the VAE's activations are those of one tile whatever the frame size and
``chunk_size``. Off (None) by default: the output then stays bit-identical to untiled decoding.

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

from ..errors import UserInputError
from ..video_io import to_uint8

if TYPE_CHECKING:  # annotations only: importing diffusers costs seconds and the VAE object is passed in
    from diffusers import AutoencoderKL


def decode_dtype(vae: AutoencoderKL) -> torch.dtype:
    """The dtype the VAE really runs in: its own, except fp16 with ``force_upcast`` (fp32). A bf16 VAE stays
    bf16: on the demo model its decode is 58.6 dB PSNR from fp32's, max 3.5/255 (README "Precision")."""
    upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    return torch.float32 if upcast else vae.dtype


@contextmanager
def _fp32_if_needed(vae: AutoencoderKL):
    """SDXL's VAE overflows in fp16 (``config.force_upcast``): run it in fp32 for the duration."""
    original = vae.dtype
    upcast = decode_dtype(vae) != original
    try:
        if upcast:
            vae.to(torch.float32)
        yield
    finally:
        if upcast:
            vae.to(original)


TILE = 256  # pixels per tile side with vae_tiling (32x32 latents for SD's 8x VAE); diffusers' default is the model's 512


def check_tiling_field(config) -> None:
    """``vae_tiling`` must be a bool (GenerationConfig.validate calls this)."""
    if not isinstance(config.vae_tiling, bool):
        raise UserInputError("must be true or false", field="vae_tiling", value=config.vae_tiling)


@contextmanager
def _tiled(vae: AutoencoderKL, tile: int | None):
    """diffusers' tiling (``tile`` x ``tile`` pixels) and slicing switched on for the duration; None: as it is."""
    if not tile:
        yield
        return
    factor = 2 ** (len(vae.config.block_out_channels) - 1)  # pixels per latent
    saved = vae.use_tiling, vae.use_slicing, vae.tile_sample_min_size, vae.tile_latent_min_size
    try:
        vae.use_tiling = vae.use_slicing = True  # what enable_tiling() / enable_slicing() set
        vae.tile_sample_min_size, vae.tile_latent_min_size = tile, tile // factor
        yield
    finally:
        vae.use_tiling, vae.use_slicing, vae.tile_sample_min_size, vae.tile_latent_min_size = saved


@torch.no_grad()
def decode_chunks(vae: AutoencoderKL, latents: torch.Tensor, chunk_size: int = 16,
                  clip: int | None = None, tile: int | None = None) -> Iterator[torch.Tensor]:
    """Latents ``(b, 4, f, h, w)`` (scaled) -> frames chunk by chunk, each ``(n, 3, H, W)`` in [0, 1], fp32 on
    the CPU, ``n <= chunk_size``, in ``(b f)`` order; only the frames of clip ``clip`` when given.

    The VAE calls are the same ``chunk_size`` slices of ``(b f)`` whichever frames are asked for (a chunk may
    span two clips), so every frame is bit-identical to :func:`decode`'s. Only one chunk is held at a time;
    an fp16 VAE with ``force_upcast`` stays in fp32 (and ``tile`` tiling on) until the generator is exhausted or
    closed. ``tile``: decode in tiles of that many pixels, one frame per VAE call (module docstring)."""
    b, c, f, h, w = latents.shape
    x = latents.transpose(1, 2).reshape(b * f, c, h, w) / vae.config.scaling_factor  # b c f h w -> (b f) c h w
    first, stop = (0, b * f) if clip is None else (clip * f, (clip + 1) * f)
    with _fp32_if_needed(vae), _tiled(vae, tile):
        for start in range(0, b * f, chunk_size):
            end = min(start + chunk_size, b * f)
            if end <= first or start >= stop:
                continue  # no frame of the clip asked for: not decoded
            frames = vae.decode(x[start:end].to(device=vae.device, dtype=vae.dtype)).sample.float().cpu()
            yield (frames / 2 + 0.5).clamp(0, 1)[max(first - start, 0) : min(stop, end) - start]


def decode(vae: AutoencoderKL, latents: torch.Tensor, chunk_size: int = 16, tile: int | None = None) -> torch.Tensor:
    """Latents ``(b, 4, f, h, w)`` -> frames ``(b, 3, f, H, W)`` in [0, 1], fp32 on the CPU, all at once
    (12 bytes per pixel of the whole clip; :func:`decode_uint8` streams instead)."""
    b, _, f = latents.shape[:3]
    frames = torch.cat(list(decode_chunks(vae, latents, chunk_size, tile=tile)))
    return frames.reshape(b, f, *frames.shape[1:]).transpose(1, 2)  # (b f) c H W -> b c f H W


def decode_uint8(vae: AutoencoderKL, latents: torch.Tensor, chunk_size: int = 16, clip: int = 0,
                 tile: int | None = None) -> Iterator[np.ndarray]:
    """The frames of clip ``clip`` of latents ``(b, 4, f, h, w)`` as uint8 chunks ``(n, H, W, 3)``, ``n <=
    chunk_size``, decoded one chunk at a time (what the video writers consume: ``video_io.save_video``
    accepts this iterator); equal to ``to_uint8`` of :func:`decode`'s frames, bit for bit."""
    for frames in decode_chunks(vae, latents, chunk_size, clip, tile):
        yield to_uint8(frames)


@torch.no_grad()
def encode(vae: AutoencoderKL, frames: torch.Tensor, chunk_size: int = 16, generator: torch.Generator | None = None,
           sample: bool = True, tile: int | None = None) -> torch.Tensor:
    """Frames ``(b, 3, f, H, W)`` in [0, 1] -> latents ``(b, 4, f, H/8, W/8)`` x scaling_factor, fp32 on the
    VAE's device.

    ``sample``: a draw from the VAE posterior with ``generator`` (what diffusers' video-to-video pipeline and
    training do; the draws follow the chunks, so they depend on ``chunk_size``), else its mode (the mean).
    ``tile``: encode in tiles of that many pixels, one frame per VAE call (module docstring)."""
    b, c, f, H, W = frames.shape
    x = frames.transpose(1, 2).reshape(b * f, c, H, W) * 2 - 1  # b c f H W -> (b f) c H W, [0, 1] -> [-1, 1]
    with _fp32_if_needed(vae), _tiled(vae, tile):
        latents = []
        for chunk in x.split(chunk_size):
            posterior = vae.encode(chunk.to(device=vae.device, dtype=vae.dtype)).latent_dist
            latents.append((posterior.sample(generator) if sample else posterior.mode()).float())
    latents = torch.cat(latents) * vae.config.scaling_factor
    return latents.reshape(b, f, *latents.shape[1:]).transpose(1, 2)  # (b f) c h w -> b c f h w
