"""The report's CLIP-score stand-in (issue 11, items 1 and 6): the demo family's trained contrastive towers
(``demo/clip.py``: text tower + image tower) in place of CLIP ViT, as the paper's Table 1 uses CLIP.

- *text alignment* (CLIP score analog): mean cosine similarity of each frame's image embedding to the prompt's
  text embedding;
- *domain similarity*: mean cosine similarity of each frame to the personalised model's own image for the same
  prompt and seed, both through the image tower (image-image, as the paper's CLIP domain score).

The towers come from :func:`find_towers`: an explicit folder, else the family's ``text-encoder/`` subfolder,
else the v2 stage output ``demo-v2/text-encoder`` (working directory or source checkout) when present.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import clip

TOWERS_FILE = "clip_config.json"  # with image_tower.safetensors and text_encoder/ (clip.save_towers)


def is_towers_folder(folder: Path) -> bool:
    """Every file ``clip.load_towers`` reads is there (a folder missing one is "no towers", not a late crash)."""
    return all((folder / name).is_file() for name in (TOWERS_FILE, "image_tower.safetensors", "text_encoder/config.json"))


def find_towers(family_root: Path | None, explicit: str | Path | None = None) -> tuple[Path | None, str]:
    """(folder, why) — the towers to use and where they came from; (None, why not) when there are none.
    An explicit folder without towers is an error for the caller to report (ValueError)."""
    if explicit is not None:
        folder = Path(explicit)
        if not is_towers_folder(folder):
            raise ValueError(f"{folder}: no contrastive towers ({TOWERS_FILE} and image_tower.safetensors, "
                             "as demo/clip.py's save_towers writes)")
        return folder, "given"
    if family_root is not None and is_towers_folder(family_root / "text-encoder"):
        return family_root / "text-encoder", "the family's own"
    checkout = Path(__file__).resolve().parents[3]  # src/animatediff/demo -> the repository root (editable install)
    for root in dict.fromkeys((Path.cwd(), checkout)):
        if is_towers_folder(root / "demo-v2" / "text-encoder"):
            return root / "demo-v2" / "text-encoder", "the v2 text-encoder stage"
    return None, "not available: no text-encoder/ towers in the family and no demo-v2/text-encoder"


class ClipScorer:
    """Embeds frames and prompts with the towers in ``folder`` (float32, CPU); caches prompt embeddings."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.towers = clip.load_towers(folder)
        self._texts: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def images(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 (n, H, W, 3) or (H, W, 3) -> unit embeddings (n, projection_dim)."""
        frames = np.asarray(frames)
        frames = frames[None] if frames.ndim == 3 else frames
        return self.towers.encode_image(clip.to_pixels(np.ascontiguousarray(frames)))

    @torch.no_grad()
    def text(self, prompt: str) -> torch.Tensor:
        """Unit embedding (projection_dim,) of a prompt (cut to the towers' ``max_tokens``, as in training)."""
        if prompt not in self._texts:
            ids = clip.tokenize([prompt], self.towers.config.max_tokens)
            self._texts[prompt] = self.towers.encode_text(ids)[0]
        return self._texts[prompt]

    def text_alignment(self, frames: np.ndarray, prompt: str) -> float:
        """Mean over frames of cos(frame, prompt), in [-1, 1]."""
        return float((self.images(frames) @ self.text(prompt)).mean())

    def image_similarity(self, frames: np.ndarray, reference: np.ndarray) -> float:
        """Mean over frames and reference images of cos(frame, reference), in [-1, 1]."""
        return float((self.images(frames) @ self.images(reference).T).mean())
