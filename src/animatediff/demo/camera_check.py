"""MotionLoRA diagnosis (issue 11, item 4): does ``eval``'s camera estimator read the MotionLoRA *training clips*
as the move they are trained for?

    python -m animatediff.demo.camera_check [--clips 8] [--strength 0.25] [--size 64]

For each of the eight moves, ``clips`` demo-world videos (watermarked, moving objects, 64 px MP4 like the
bundled family's training set) go through the training data path itself (``training.data.build_dataset`` with
``camera_move``: decode, augment, resize/crop, [-1, 1]), are turned back to uint8 and measured with
``metrics.camera_motion`` (leaving out the watermark box, as the report does). Prints, per move, the mean
measured zoom / pan / tilt / roll next to ``augment.camera_move_truth`` and the share of clips labelled as the
move. A sign error shows as a negative ratio; a scale error as a ratio far from 1.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from .. import metrics
from ..presets import CAMERA_MOVES
from ..training.augment import camera_move_truth
from ..training.config import TrainConfig
from ..training.data import build_dataset
from . import world

AXES = ("zoom", "pan", "tilt", "roll_deg")


def training_clips(folder: Path, move: str | None, strength: float, size: int, num_frames: int = 16) -> list[np.ndarray]:
    """uint8 ``(num_frames, size, size, 3)`` clips exactly as the MotionLoRA trainer sees them (one per file)."""
    config = TrainConfig(mode="motion-lora", video_folder=str(folder), camera_move=move, camera_move_strength=strength,
                         size=size, num_frames=num_frames, stride=1, caption_dropout=0.0, num_workers=0)
    dataset = build_dataset(config)
    clips = []
    for index in range(len(dataset)):
        pixels = dataset[(index, index)]["pixel_values"]  # (f, 3, size, size) in [-1, 1]
        clips.append(((pixels.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8))
    return clips


def vae_round_trip(vae, clip: np.ndarray) -> np.ndarray:
    """uint8 ``(f, H, W, 3)`` -> VAE encode (posterior mean) -> decode -> uint8: what a latent model can learn."""
    import torch

    with torch.no_grad():
        x = torch.from_numpy(clip).permute(0, 3, 1, 2).to(vae.dtype) / 127.5 - 1  # f h w c -> f c h w
        y = vae.decode(vae.encode(x).latent_dist.mean).sample.float().clamp(-1, 1)
    return ((y.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().astype(np.uint8)


def check_moves(num_clips: int = 8, strength: float = 0.25, size: int = 64, seed: int = 3,
                moves: tuple[str, ...] = CAMERA_MOVES, vae=None) -> dict:
    """Per move: mean measured value on each axis, the truth, their ratio on the move's own axis, and the
    label accuracy; plus "none": the same clips without a camera move (the object motion the estimator sees).
    ``vae``: measure the clips after a round trip through it (the move as the latents carry it)."""
    with tempfile.TemporaryDirectory() as tmp:
        world.write_dataset(tmp, num_clips, "video", seed=seed)
        result = {}
        for move in (None,) + tuple(moves):
            clips = training_clips(Path(tmp), move, strength, size)
            if vae is not None:
                clips = [vae_round_trip(vae, c) for c in clips]
            measured = [metrics.camera_motion(c, ignore_box=world.WATERMARK_BOX) for c in clips]
            row = {axis: round(float(np.mean([m[axis] for m in measured])), 4) for axis in AXES}
            row["labels"] = {label: sum(m["label"] == label for m in measured) for label in {m["label"] for m in measured}}
            if move is not None:
                truth = camera_move_truth(move, strength)
                axis = max(truth, key=lambda k: abs(truth[k]))
                row["truth"] = truth
                row["ratio"] = round(row[axis] / truth[axis], 3)  # measured / true on the move's axis
                row["accuracy"] = round(sum(m["label"] == move for m in measured) / len(measured), 3)
            result[move or "none"] = row
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m animatediff.demo.camera_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--strength", type=float, default=0.25)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--vae", help="an AutoencoderKL folder: measure the clips after a round trip through it")
    args = parser.parse_args(argv)
    vae = None
    if args.vae:
        from diffusers import AutoencoderKL
        import torch

        vae = AutoencoderKL.from_pretrained(args.vae, torch_dtype=torch.float32).eval()
    for move, row in check_moves(args.clips, args.strength, args.size, vae=vae).items():
        print(json.dumps({"move": move, **row}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
