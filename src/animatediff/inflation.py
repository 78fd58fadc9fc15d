"""Inflation (paper §4.1): run a 2-D diffusers UNet on video by folding frames into the batch, with a
motion module after every ResNet (+ spatial attention) layer.

Mechanism: forward hooks registered on *instances* of the UNet's layers (no class is patched):
- ``down_blocks[i]`` / ``up_blocks[i]``: on ``attentions[k]`` when the block has spatial attention,
  else on ``resnets[k]``. diffusers appends the skip output right after that call, so the module runs
  after the layer and before the skip, as in the official ``unet_blocks.py``.
- ``mid_block`` (v2): on ``attentions[0]``, i.e. between ``attentions[0]`` and ``resnets[1]``.

The base UNet keeps its own state-dict keys (hooks and the shared-parameter GroupNorm swap add none), so
any personalised SD1.5/SDXL UNet can be loaded over it at any time.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

from .motion_module import MotionModules, VanillaTemporalModule, View


class FrameContext:
    """How many frames are folded into the batch during the current forward (None = plain 2-D call), and
    the view windows the motion modules run in (``views(num_frames) -> [(frame indices, weights), ...]`` or
    None; see ``AnimateDiffUNet.views``)."""

    num_frames: int | None = None
    views: Callable[[int], Sequence[View] | None] | None = None


class AcrossFramesGroupNorm(nn.GroupNorm):
    """GroupNorm whose statistics pool all frames of a clip (official v1: plain GroupNorm on 5-D tensors).

    It shares its ``weight``/``bias`` Parameters with the GroupNorm it replaces, so keys are unchanged."""

    def __init__(self, norm: nn.GroupNorm, context: FrameContext):
        super().__init__(norm.num_groups, norm.num_channels, norm.eps, norm.affine, device="meta")
        self.weight, self.bias = norm.weight, norm.bias
        self.context = context
        # Not a submodule (keys stay unchanged): outside our own video forward, defer to the norm we
        # replaced, so a second AnimateDiffUNet over the same UNet keeps the first one's behaviour.
        object.__setattr__(self, "_replaced", norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.context.num_frames
        if not f:
            return self._replaced(x)
        bf, c, h, w = x.shape
        x = x.view(bf // f, f, c, h, w).transpose(1, 2)  # (b f) c h w -> b c f h w
        x = F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        return x.transpose(1, 2).reshape(bf, c, h, w)  # b c f h w -> (b f) c h w


def _hook_target(block: nn.Module, layer: int) -> nn.Module:
    attentions = getattr(block, "attentions", None)
    return attentions[layer] if attentions is not None and len(attentions) > layer else block.resnets[layer]


class AnimateDiffUNet(nn.Module):
    """A diffusers ``UNet2DConditionModel`` plus (optionally) a ``MotionModules`` set.

    ``forward`` takes and returns latents as ``(batch, channels, num_frames, height, width)``. With
    ``motion=None`` every frame is denoised independently (the frame-by-frame image baseline).
    """

    def __init__(self, unet: UNet2DConditionModel, motion: MotionModules | None = None):
        super().__init__()
        self.unet = unet
        self.motion = None
        self.context = FrameContext()
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._swapped_norms: list[tuple[nn.Module, str, nn.GroupNorm]] = []
        if motion is not None:
            self.attach(motion)

    # ---- attaching / detaching -------------------------------------------------------------------
    def attach(self, motion: MotionModules) -> None:
        """Hook ``motion`` into the UNet (replacing any module set attached before)."""
        self.detach()
        _check_fits(self.unet, motion)
        self.motion = motion
        blocks = {"down": self.unet.down_blocks, "up": self.unet.up_blocks}
        for kind, i, k, module in motion.placements():
            target = self.unet.mid_block.attentions[0] if kind == "mid" else _hook_target(blocks[kind][i], k)
            self._hooks.append(target.register_forward_hook(self._make_hook(module)))
        if motion.config.unet_groupnorm_across_frames:
            self._swap_resnet_norms()

    def detach(self) -> MotionModules | None:
        """Remove the hooks and restore the UNet's own GroupNorms; returns the detached module set."""
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        for parent, name, original in self._swapped_norms:
            setattr(parent, name, original)
        self._swapped_norms.clear()
        motion, self.motion = self.motion, None
        return motion

    def _make_hook(self, module: VanillaTemporalModule):
        context = self.context

        def hook(_layer, _inputs, output):
            if context.num_frames is None:  # a plain 2-D call of the UNet: leave it untouched
                return output
            views = context.views(context.num_frames) if context.views is not None else None
            if isinstance(output, tuple):  # Transformer2DModel(return_dict=False) returns (sample,)
                return (module(output[0], context.num_frames, views), *output[1:])
            return module(output, context.num_frames, views)

        return hook

    def _swap_resnet_norms(self) -> None:
        """v1: ResNet norm1/norm2 and conv_norm_out pool statistics over frames (spatial attention and
        motion-module GroupNorms stay per frame, as in the official code)."""
        targets = [(self.unet, "conv_norm_out")]
        targets += [(m, attr) for m in self.unet.modules() if isinstance(m, ResnetBlock2D) for attr in ("norm1", "norm2")]
        for parent, attr in targets:
            original = getattr(parent, attr)
            if isinstance(original, nn.GroupNorm):
                setattr(parent, attr, AcrossFramesGroupNorm(original, self.context))
                self._swapped_norms.append((parent, attr, original))

    # ---- forward ---------------------------------------------------------------------------------
    @contextmanager
    def frames(self, num_frames: int):
        previous, self.context.num_frames = self.context.num_frames, num_frames
        try:
            yield
        finally:
            self.context.num_frames = previous

    @contextmanager
    def views(self, plan: Callable[[int], Sequence[View] | None] | None):
        """Run the motion modules in view windows during the block: ``plan(num_frames)`` gives the windows of
        frame indices and their fuse weights (None: all frames at once). The spatial layers still see every
        frame; each motion module sees one window at a time (so a clip may exceed the position encoding)."""
        previous, self.context.views = self.context.views, plan
        try:
            yield
        finally:
            self.context.views = previous

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        down_block_additional_residuals: tuple[torch.Tensor, ...] | None = None,
        mid_block_additional_residual: torch.Tensor | None = None,
        unet_forward: Callable[..., tuple] | None = None,
    ) -> torch.Tensor:
        """sample ``(b, c, f, h, w)``; encoder_hidden_states ``(b, tokens, dim)`` (one per clip) or
        ``(b f, tokens, dim)`` (per frame, e.g. prompt travel); ControlNet residuals per frame ``(b f) ...``.
        ``unet_forward``: runs the folded 2-D call instead of the UNet, same arguments (generation/feature_cache.py)."""
        b, c, f, h, w = sample.shape
        max_frames = self.motion.max_frames if self.motion is not None else None
        if max_frames is not None and f > max_frames and self.context.views is None:  # views: checked per window
            raise ValueError(f"{f} frames exceed the motion module's position encoding length {max_frames}")
        x = sample.transpose(1, 2).reshape(b * f, c, h, w)  # b c f h w -> (b f) c h w
        timestep = torch.as_tensor(timestep, device=sample.device)
        timestep = timestep.expand(b) if timestep.ndim == 0 else timestep
        timestep = timestep.repeat_interleave(f)  # one timestep per clip, copied to each of its frames
        if encoder_hidden_states.shape[0] == b:
            encoder_hidden_states = encoder_hidden_states.repeat_interleave(f, dim=0)  # (b f) tokens dim
        if added_cond_kwargs is not None:  # SDXL pooled text embedding and size conditioning
            added_cond_kwargs = {k: v.repeat_interleave(f, dim=0) if torch.is_tensor(v) and v.shape[0] == b else v
                                 for k, v in added_cond_kwargs.items()}  # IP-Adapter image_embeds: a list, already per frame
        with self.frames(f) if self.motion is not None else nullcontext():
            out = (unet_forward or self.unet)(
                x,
                timestep,
                encoder_hidden_states=encoder_hidden_states,
                added_cond_kwargs=added_cond_kwargs,
                down_block_additional_residuals=down_block_additional_residuals,
                mid_block_additional_residual=mid_block_additional_residual,
                return_dict=False,
            )[0]
        return out.reshape(b, f, -1, h, w).transpose(1, 2)  # (b f) c h w -> b c f h w

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def device(self) -> torch.device:
        return self.unet.device


def _check_fits(unet: UNet2DConditionModel, motion: MotionModules) -> None:
    """Refuse a motion module set built for another UNet layout (e.g. SDXL modules on SD1.5)."""
    unet_channels = tuple(unet.config.block_out_channels)
    if unet_channels != tuple(motion.config.block_out_channels):
        raise ValueError(
            f"motion module ({motion.config.name}, base {motion.config.base}, channels {motion.config.block_out_channels}) "
            f"does not fit this UNet (channels {unet_channels})"
        )
    if unet.config.layers_per_block != motion.config.layers_per_block:
        raise ValueError(
            f"motion module expects {motion.config.layers_per_block} layers per block, the UNet has {unet.config.layers_per_block}"
        )
    if motion.config.mid_block and not hasattr(unet.mid_block, "attentions"):
        raise ValueError("motion module has a mid-block module but the UNet's mid block has no attention layer")
