"""``cache_latents: true``: encode every training frame with the frozen VAE once, then train from the cache.

The VAE is frozen in every mode, so its posterior of a frame never changes during training; encoding the same
frames again at every step is pure cost (on the demo family's 128 px clips, 27 % of a motion-module step, measured
with cProfile). With the cache, each file's frames are read, resized and centre-cropped exactly as
``ClipDataset`` does, encoded once at start, and their posterior ``mean`` and ``std`` kept in memory as float32;
a step gathers the sampled frames' rows and draws ``latent = (mean + std * noise) * scaling_factor`` from the
step's generator, the draw ``DiagonalGaussianDistribution.sample`` makes.

Cost: ``2 * 4 * (size / 8)**2 * 4`` bytes per frame of every file (e.g. 16 KiB per frame at size 128, 256 KiB at
512), so it is for datasets that fit in memory. It cannot be combined with pixel augmentations that draw new
pixels per step (``hflip``, ``camera_move``) or with ``sparsectrl`` mode (its conditions are made from pixels):
``TrainConfig.validate`` refuses those with one line naming ``cache_latents``.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..video_io import read_frames_at
from .data import IMAGE_SUFFIXES, ClipDataset, Item, resize_center_crop

logger = logging.getLogger(__name__)


@torch.no_grad()
def encode_item(vae, item: Item, size: int, device, chunk: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Every frame of ``item`` -> posterior ``(mean, std)``, each ``(frames, 4, size/8, size/8)`` float32 on the CPU."""
    if item.path.suffix.lower() in IMAGE_SUFFIXES:
        from PIL import Image

        frames = torch.from_numpy(np.array(Image.open(item.path).convert("RGB")))[None]  # 1 h w 3
    else:
        frames = torch.from_numpy(read_frames_at(item.path, np.arange(item.num_frames)))  # f h w 3
    pixels = resize_center_crop(frames, size)  # f 3 size size, in [-1, 1]
    means, stds = [], []
    for x in pixels.split(chunk):
        posterior = vae.encode(x.to(device, vae.dtype)).latent_dist
        means.append(posterior.mean.float().cpu())
        stds.append(posterior.std.float().cpu())
    return torch.cat(means), torch.cat(stds)


def cache_latents(dataset: ClipDataset, vae, device) -> None:
    """Fill ``dataset.latents`` (one ``(mean, std)`` per item); a file that fails to decode now is dropped
    from the dataset with a warning, as the uncached loader would skip it at train time."""
    kept, latents = [], []
    for item in dataset.items:
        try:
            latents.append(encode_item(vae, item, dataset.size, device))
        except Exception as e:  # noqa: BLE001 - a corrupt file is skipped, never a crash
            logger.warning("skipping %s while caching latents: %s", item.path, e)
            continue
        kept.append(item)
    if not kept:
        from ..errors import UserInputError

        raise UserInputError("no training file could be decoded for the latent cache", field="cache_latents")
    frames = sum(int(mean.shape[0]) for mean, _ in latents)
    megabytes = sum(mean.numel() + std.numel() for mean, std in latents) * 4 / 2**20
    logger.info("cached the VAE posterior of %d frames of %d files (%.1f MiB)", frames, len(kept), megabytes)
    dataset.items, dataset.latents = kept, latents


def sample_latents(batch: dict, scaling_factor: float, generator: torch.Generator, device) -> torch.Tensor:
    """A cached batch's ``latent_mean``/``latent_std`` ``(b, f, 4, h, w)`` -> latents ``(b, 4, f, h, w)``."""
    mean, std = batch["latent_mean"], batch["latent_std"]
    noise = torch.randn(mean.shape, generator=generator)  # on the CPU generator: the same on any device
    latents = (mean + std * noise) * scaling_factor
    return latents.transpose(1, 2).to(device).float()  # b f c h w -> b c f h w
