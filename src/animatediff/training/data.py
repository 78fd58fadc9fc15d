"""Training data: videos (or images) with captions, sampled deterministically.

Sources: a WebVid-layout CSV (``videoid``, ``name`` -> ``{video_folder}/{videoid}.mp4``), a CSV/JSONL of
``path, caption``, or an image folder (optional same-name ``.txt`` captions).

Clip sampling is the official one (official-animatediff.md §5): ``clip_length = min(len, (n - 1) * stride + 1)``,
a random start, ``linspace`` indices (short videos are sampled more densely). Frames: short side resized,
centre-cropped to ``size``, optional horizontal flip, scaled to [-1, 1].

Determinism: every random choice for one sample (clip start, flip, empty caption, which file on a retry)
is a function of a per-sample seed handed in by ``StepSampler``, which itself is a function of
``(seed, step, rank)``. Data order thus survives worker processes and resumption exactly.
"""

from __future__ import annotations

import csv
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import UserInputError
from ..video_io import count_frames, read_frames_at
from .augment import camera_move, opencv
from .config import TrainConfig

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = {".mp4", ".webm", ".mkv", ".mov", ".avi", ".gif"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


@dataclass
class Item:
    path: Path
    caption: str
    num_frames: int = 1  # frames in the file (1 for an image)


# ---- captions / listing ---------------------------------------------------------------------------
def read_caption_file(caption_file: str | Path, video_folder: str | Path | None) -> list[Item]:
    """Rows of a WebVid CSV (videoid, name), or a CSV/JSONL of (path, caption)."""
    path = Path(caption_file)
    if not path.is_file():
        raise UserInputError("no such file", field="caption_file", value=path)
    folder = Path(video_folder) if video_folder else path.parent
    if path.suffix.lower() == ".jsonl":
        rows = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise UserInputError(f"{path}:{n}: not a JSON object") from None
        columns = set(rows[0]) if rows else set()
    else:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            columns = set(reader.fieldnames or ())
            rows = list(reader)
    if {"videoid", "name"} <= columns:
        return [Item(folder / f"{r['videoid']}.mp4", r["name"] or "") for r in rows]
    if {"path", "caption"} <= columns:
        return [Item(folder / r["path"], r["caption"] or "") for r in rows]
    raise UserInputError(
        f"{path}: caption file needs columns videoid,name (WebVid) or path,caption; found {', '.join(sorted(columns)) or 'none'}"
    )


def list_image_folder(folder: str | Path) -> list[Item]:
    folder = Path(folder)
    if not folder.is_dir():
        raise UserInputError("no such folder", field="image_folder", value=folder)
    items = []
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in IMAGE_SUFFIXES:
            txt = p.with_suffix(".txt")
            items.append(Item(p, txt.read_text().strip() if txt.is_file() else ""))
    return items


def probe(items: list[Item], min_frames: int) -> list[Item]:
    """Keep the readable items with at least ``min_frames`` frames; count and log the others."""
    usable, skipped = [], []
    for item in items:
        if item.path.suffix.lower() in IMAGE_SUFFIXES:
            usable.append(item)
            continue
        try:
            item.num_frames = count_frames(item.path)
        except Exception as e:  # noqa: BLE001 - any decoder failure means "skip this file"
            skipped.append((item.path, f"unreadable ({type(e).__name__})"))
            continue
        if item.num_frames < min_frames:
            skipped.append((item.path, f"too short ({item.num_frames} < {min_frames} frames)"))
        else:
            usable.append(item)
    for path, why in skipped[:20]:
        logger.warning("skipping %s: %s", path, why)
    if skipped:
        logger.warning("skipped %d of %d videos (unreadable or too short)", len(skipped), len(items))
    return usable


# ---- decoding / transforms ------------------------------------------------------------------------
def clip_indices(num_available: int, num_frames: int, stride: int, rng: random.Random) -> np.ndarray:
    """Official sampling: a window of ``min(len, (n-1)*stride+1)`` frames at a random start, linspace inside."""
    clip_length = min(num_available, (num_frames - 1) * stride + 1)
    start = rng.randint(0, num_available - clip_length)
    return np.linspace(start, start + clip_length - 1, num_frames, dtype=int)


def resize_center_crop(frames: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``(f, h, w, 3)`` -> float ``(f, 3, size, size)`` in [-1, 1]: short side to ``size``, centre crop."""
    x = frames.permute(0, 3, 1, 2).float() / 255.0  # f h w c -> f c h w
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return (x[:, :, top : top + size, left : left + size] * 2 - 1).clamp(-1, 1)


# ---- datasets ------------------------------------------------------------------------------------
class ClipDataset(torch.utils.data.Dataset):
    """``dataset[(index, sample_seed)]`` -> ``{"pixel_values": (num_frames, 3, size, size), "caption": str}``.

    ``num_frames == 1`` samples single random frames (image objective). A file that fails to decode at
    train time (the probe passed) is logged and replaced by another, chosen from the sample seed."""

    def __init__(self, items: list[Item], config: TrainConfig, num_frames: int):
        self.items = items
        self.num_frames = num_frames
        self.stride = config.stride if num_frames > 1 else 1
        self.size = config.size
        self.hflip = config.hflip
        self.caption_dropout = config.caption_dropout
        self.camera_move = config.camera_move
        self.camera_move_strength = config.camera_move_strength
        if self.camera_move is not None:
            opencv()  # a missing OpenCV is one clear error now, not a failure inside a loader worker
        self.latents: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # latent_cache.cache_latents fills it

    def __len__(self) -> int:
        return len(self.items)

    def _load(self, item: Item, rng: random.Random) -> torch.Tensor:
        """uint8 ``(num_frames, h, w, 3)`` at the file's own resolution."""
        if item.path.suffix.lower() in IMAGE_SUFFIXES:
            image = np.array(Image.open(item.path).convert("RGB"))
            return torch.from_numpy(image)[None].expand(self.num_frames, -1, -1, -1)
        return torch.from_numpy(read_frames_at(item.path, clip_indices(item.num_frames, self.num_frames, self.stride, rng)))

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, sample_seed = key
        rng = random.Random(sample_seed)
        if self.latents is not None:  # cache_latents: the same draws, the frames' cached posteriors instead of pixels
            mean, std = self.latents[index]
            frames = (np.zeros(self.num_frames, dtype=int) if self.items[index].path.suffix.lower() in IMAGE_SUFFIXES
                      else clip_indices(len(mean), self.num_frames, self.stride, rng))
            caption = "" if rng.random() < self.caption_dropout else self.items[index].caption
            return {"latent_mean": mean[frames], "latent_std": std[frames], "caption": caption}
        for _ in range(min(len(self.items), 10)):
            item = self.items[index]
            try:
                pixels = self._load(item, rng)
                break
            except Exception as e:  # noqa: BLE001 - a corrupt file is skipped, never a crash
                logger.warning("skipping %s at train time: %s", item.path, e)
                index = rng.randrange(len(self.items))
        else:
            raise UserInputError("training data: no usable video among the files tried (all corrupt?)")
        if self.hflip and rng.random() < 0.5:
            pixels = pixels.flip(2)  # f h w c; before the camera move, which must keep its direction
        if self.camera_move is not None:  # MotionLoRA augmentation (paper §4.3), augment.py's sign conventions
            pixels = torch.from_numpy(camera_move(pixels.contiguous().numpy(), self.camera_move, self.camera_move_strength))
        caption = "" if rng.random() < self.caption_dropout else item.caption
        return {"pixel_values": resize_center_crop(pixels, self.size), "caption": caption}


def build_dataset(config: TrainConfig) -> ClipDataset:
    num_frames = config.frames_per_sample
    if config.image_folder is not None:
        items = list_image_folder(config.image_folder)
        where = ("image_folder", config.image_folder)
    elif config.caption_file is not None:
        items = read_caption_file(config.caption_file, config.video_folder)
        where = ("caption_file", config.caption_file)
    else:
        folder = Path(config.video_folder)
        if not folder.is_dir():
            raise UserInputError("no such folder", field="video_folder", value=folder)
        items = [Item(p, p.stem.replace("_", " ")) for p in sorted(folder.iterdir()) if p.suffix.lower() in VIDEO_SUFFIXES]
        where = ("video_folder", folder)
        logger.info("no caption file: using file names as captions")
    items = probe(items, min_frames=num_frames)
    if not items:
        raise UserInputError(f"no usable video or image (all missing, unreadable or shorter than {num_frames} frames)",
                             field=where[0], value=where[1])
    logger.info("training data: %d usable files", len(items))
    return ClipDataset(items, config, num_frames)


# ---- deterministic order -------------------------------------------------------------------------
def mix_seed(*values: int) -> int:
    """A 63-bit seed from integers (order-sensitive), stable across processes and Python runs."""
    h = 1469598103934665603
    for v in values:
        h = ((h ^ (v & 0xFFFFFFFFFFFFFFFF)) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h >> 1


class StepSampler(torch.utils.data.Sampler):
    """Infinite stream of ``(index, sample_seed)`` for one rank, starting at ``start_step``.

    Global position ``p = (step * world_size + rank) * batch_size + i`` reads item ``perm_e[p mod n]`` of
    epoch ``e = p // n`` (a seeded permutation per epoch); each rank gets its own slice of every step."""

    def __init__(self, num_items: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1, start_step: int = 0):
        self.n, self.batch_size, self.seed = num_items, batch_size, seed
        self.rank, self.world_size, self.start_step = rank, world_size, start_step

    def _perm(self, epoch: int) -> list[int]:
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(mix_seed(self.seed, epoch))).tolist()

    def __iter__(self):
        step, epoch, perm = self.start_step, -1, []
        while True:
            for i in range(self.batch_size):
                p = (step * self.world_size + self.rank) * self.batch_size + i
                if p // self.n != epoch:
                    epoch = p // self.n
                    perm = self._perm(epoch)
                yield perm[p % self.n], mix_seed(self.seed, 1, p)
            step += 1
