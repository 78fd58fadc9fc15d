"""The frame both temporal layers share: GroupNorm -> proj_in -> blocks over the frame axis -> zero-initialised
proj_out, with a residual (paper §4.2). ``motion_module.TemporalTransformer3DModel`` (the paper's temporal
transformer) and ``motion_conv.TemporalConv3DModel`` (the §5.3 temporal-convolution ablation) fill in the blocks."""

from __future__ import annotations

import torch
from torch import nn

from .presets import MotionModuleConfig


class TemporalMixer3D(nn.Module):
    """GroupNorm -> proj_in -> ``self.mixer_blocks()`` over frames -> proj_out, with a residual around it all.

    The frame axis is what the blocks mix: the paper's temporal transformer here, the §5.3 temporal convolution in
    motion_conv.py. Subclasses create their blocks after calling ``super().__init__`` (key names are theirs)."""

    def __init__(self, channels: int, config: MotionModuleConfig):
        super().__init__()
        self.groupnorm_across_frames = config.motion_groupnorm_across_frames
        self.norm = nn.GroupNorm(config.norm_num_groups, channels, eps=1e-6, affine=True)
        self.proj_in = nn.Linear(channels, channels)
        self.proj_out = nn.Linear(channels, channels)
        if config.zero_initialize:
            # Why: a fresh module is then an identity map, so training starts from the image model (paper §4.2).
            nn.init.zeros_(self.proj_out.weight)
            nn.init.zeros_(self.proj_out.bias)

    def mixer_blocks(self) -> nn.ModuleList:
        raise NotImplementedError

    def _group_norm(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        if not self.groupnorm_across_frames:
            return self.norm(x)  # official SD1.5: statistics per frame, frames are in the batch
        # SDXL beta (and diffusers' MotionAdapter): statistics pooled over all frames of a clip.
        bf, c, h, w = x.shape
        x = x.view(bf // num_frames, num_frames, c, h, w).transpose(1, 2)  # (b f) c h w -> b c f h w
        x = self.norm(x)
        return x.transpose(1, 2).reshape(bf, c, h, w)  # b c f h w -> (b f) c h w

    def forward(self, hidden_states: torch.Tensor, num_frames: int) -> torch.Tensor:
        bf, c, h, w = hidden_states.shape  # (b f) c h w
        b = bf // num_frames
        residual = hidden_states
        x = self._group_norm(hidden_states, num_frames)
        x = x.view(b, num_frames, c, h * w).permute(0, 3, 1, 2).reshape(b * h * w, num_frames, c)  # -> (b h w) f c
        x = self.proj_in(x)
        for block in self.mixer_blocks():
            x = block(x)
        x = self.proj_out(x)
        x = x.view(b, h, w, num_frames, c).permute(0, 3, 4, 1, 2).reshape(bf, c, h, w)  # -> (b f) c h w
        return x + residual
