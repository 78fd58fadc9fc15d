"""Classifier-free guidance (Ho & Salimans, 2022) as a small wrapper around a conditional denoiser.

A *conditional model* is ``model(latents, t, cond) -> eps`` where ``cond`` is a dict of tensors whose first
axis is the batch (``encoder_hidden_states``; for SDXL also ``text_embeds`` and ``time_ids``; per clip or per
frame, see generation/conditioning.py: cond and uncond must share the layout). The wrapper is itself a plain
denoiser ``(latents, t) -> eps``, which is all the sampling loop sees.
"""

from __future__ import annotations

from typing import Callable

import torch

Conditioning = dict[str, torch.Tensor]
ConditionalModel = Callable[[torch.Tensor, torch.Tensor, Conditioning], torch.Tensor]


def concat_conditioning(*conds: Conditioning) -> Conditioning:
    """Stack conditionings along the batch axis (same keys in each)."""
    return {key: torch.cat([c[key] for c in conds]) for key in conds[0]}


class ClassifierFreeGuidance:
    """``eps = eps_u + g * (eps_c - eps_u)``, with one model call on the ``[uncond, cond]`` batch.

    As in the official pipeline, guidance is off for ``g <= 1``: only the conditional branch runs
    (distilled models such as AnimateDiff-Lightning are sampled this way)."""

    def __init__(self, model: ConditionalModel, cond: Conditioning, uncond: Conditioning | None, scale: float):
        self.model = model
        self.cond = cond
        self.scale = scale
        self.enabled = scale > 1.0 and uncond is not None
        self.batched = concat_conditioning(uncond, cond) if self.enabled else None

    def __call__(self, latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return self.model(latents, t, self.cond)
        eps = self.model(torch.cat([latents, latents]), t, self.batched)  # batch [uncond, cond]
        eps_uncond, eps_cond = eps.chunk(2)
        return eps_uncond + self.scale * (eps_cond - eps_uncond)
