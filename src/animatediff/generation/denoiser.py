"""How to call the UNet: the one adapter between the sampler's fp32 world and the inflated UNet.

``UNetDenoiser(unet)(latents, t, cond) -> prediction`` is the *conditional model* that guidance.py wraps:
latents ``(batch, 4, num_frames, h, w)`` in fp32 in, the UNet run in its own dtype, the prediction (eps or v)
in fp32 out. ``cond`` is a conditioning (conditioning.py: per clip or per frame; SDXL adds ``text_embeds``
and ``time_ids``, passed as the UNet's ``added_cond_kwargs``; IP-Adapter embeddings ``ip_image_embeds_<i>`` go
there as ``image_embeds``, one set per UNet row: ip_adapter.py).

Extension point: ``residual_providers`` (ControlNet, SparseCtrl, ...). Each is called as
``provider(latents, t, cond)`` with the same (CFG-batched) arguments as the UNet and returns

    {"down_block_additional_residuals": (r_0, ..., r_n),  # one per UNet skip connection, each (batch, C, num_frames, h', w')
     "mid_block_additional_residual": r_mid}               # (batch, C_mid, num_frames, h'', w'')

in the public video layout. The residuals of all providers are summed, folded per frame to ``(batch
num_frames, C, h', w')`` and added by diffusers' ``UNet2DConditionModel`` to its skip connections and mid-block
output. Both keys are required: diffusers reads down residuals without a mid residual as T2I-Adapter features.
A provider may return None for a call it sits out (a ControlNet outside its start/end steps, or at strength
0): without any residuals the UNet call is exactly the plain one.

``cache`` (feature_cache.FeatureCache, one per generation): on the steps between full ones only the outer ring of
the UNet runs, the deep feature reused (the ``cache_interval`` knob; None: every call is the plain one).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable

import torch

from ..inflation import AnimateDiffUNet
from ..sampling.guidance import Conditioning
from . import ip_adapter
from .conditioning import fold_frames
from .feature_cache import FeatureCache

Residuals = dict[str, "torch.Tensor | tuple[torch.Tensor, ...]"]
ResidualProvider = Callable[[torch.Tensor, torch.Tensor, Conditioning], "Residuals | None"]


def _fold(residual: torch.Tensor) -> torch.Tensor:
    b, c, f, h, w = residual.shape
    return residual.transpose(1, 2).reshape(b * f, c, h, w)  # b c f h w -> (b f) c h w


class UNetDenoiser:
    """The conditional model over an ``AnimateDiffUNet`` (see the module docstring)."""

    def __init__(self, unet: AnimateDiffUNet, residual_providers: list[ResidualProvider] | None = None,
                 cache: FeatureCache | None = None):
        self.unet = unet
        self.residual_providers = list(residual_providers or [])
        self.cache = cache

    def residuals(self, latents: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> dict:
        """The providers' residuals summed and folded per frame, in the UNet's dtype ({} without providers)."""
        if not self.residual_providers:
            return {}
        down, mid = None, None
        for provider in self.residual_providers:
            out = provider(latents, t, cond)
            if out is None:
                continue
            d, m = out["down_block_additional_residuals"], out["mid_block_additional_residual"]
            down = tuple(d) if down is None else tuple(a + b for a, b in zip(down, d, strict=True))
            mid = m if mid is None else mid + m
        if down is None:
            return {}
        dtype = self.unet.dtype
        return {"down_block_additional_residuals": tuple(_fold(r).to(dtype) for r in down),
                "mid_block_additional_residual": _fold(mid).to(dtype)}

    def __call__(self, latents: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """latents ``(batch, c, num_frames, h, w)`` fp32 -> prediction of the same shape, fp32."""
        residuals = self.residuals(latents, t, cond)
        unet_cond = fold_frames(cond, latents.shape[2])
        added = {"text_embeds": unet_cond["text_embeds"], "time_ids": unet_cond["time_ids"]} if "time_ids" in cond else {}
        image_embeds = ip_adapter.unet_image_embeds(self.unet.unet, cond, latents.shape[2])  # IP-Adapter tokens per frame
        if image_embeds is not None:
            added["image_embeds"] = image_embeds
        forward = self.cache.forward_for(t) if self.cache is not None else None  # None: the whole UNet
        motion = self.unet.motion  # motion_scale / motion_effect (b, f) ride in the conditioning (prompt_travel.py)
        with motion.controls(cond.get("motion_scale"), cond.get("motion_effect")) if motion is not None else nullcontext():
            eps = self.unet(latents.to(self.unet.dtype), t, unet_cond["encoder_hidden_states"], added_cond_kwargs=added or None,
                            unet_forward=forward, **residuals)
        return eps.to(latents.dtype)
