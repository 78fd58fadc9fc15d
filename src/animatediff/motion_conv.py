"""The paper's §5.3 ablation: a motion module whose temporal mixing is a 1-D convolution over frames.

"We replace the temporal attention with 1D temporal convolution and ensured that the two model parameters were
closely aligned." Everything else is the transformer module's (motion_module.py): the same placement and
``(b f) c h w`` input/output, GroupNorm -> proj_in -> blocks -> zero-initialised proj_out, plus the residual, and
the same pre-LayerNorm block with its GEGLU feed-forward. Only each ``VersatileAttention`` becomes a
``TemporalConv``: a kernel-3 convolution over frames -> SiLU -> a pointwise ``to_out``. Its 3 kernel taps (3 C^2)
take the place of Q, K, V (3 C^2) and ``to_out`` is the attention's own, so a module holds
``22 C^2 + 23 C`` parameters against the transformer's ``22 C^2 + 21 C`` (tests/test_motion_conv.py counts both).

Not an official checkpoint format: keys are ``...motion_modules.{k}.temporal_conv.*`` (the ``conv-ablation``
preset; weights/detect.py recognises them). There is no position encoding; the convolution sees frame order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention import FeedForward
from torch import nn

from .temporal_mixer import TemporalMixer3D
from .presets import MotionModuleConfig


class TemporalConv(nn.Module):
    """In place of one temporal self-attention: ``to_out(silu(conv_k3(x)))`` over the frame axis."""

    def __init__(self, dim: int):
        super().__init__()
        # Why zero padding: the 'same' padding of video diffusion's temporal convolutions; it also lets the module
        # tell the first and last frames from the others (the transformer learns that from its position encoding).
        self.conv = nn.Conv1d(dim, dim, kernel_size=3, padding=1, padding_mode="zeros")
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (b h w, f, c)
        y = self.conv(x.transpose(1, 2)).transpose(1, 2)  # (b h w) f c -> (b h w) c f -> conv -> (b h w) f c
        return self.to_out(F.silu(y))


class TemporalConvBlock(nn.Module):
    """``TemporalTransformerBlock`` with convolutions: ``x += conv_j(norm_j(x))`` for each, then ``x += ff(ff_norm(x))``."""

    def __init__(self, dim: int, num_convs: int):
        super().__init__()
        self.convs = nn.ModuleList(TemporalConv(dim) for _ in range(num_convs))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(num_convs))
        self.ff = FeedForward(dim, dropout=0.0, activation_fn="geglu")  # net.0.proj (8C, C), net.2 (C, 4C)
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (b h w, f, c)
        for conv, norm in zip(self.convs, self.norms):
            x = conv(norm(x)) + x
        return self.ff(self.ff_norm(x)) + x


class TemporalConv3DModel(TemporalMixer3D):
    """GroupNorm -> proj_in -> temporal convolution blocks -> proj_out, with a residual around it all
    (``TemporalMixer3D``, the transformer's own frame); ``config.num_attention_blocks`` convolutions per block (2,
    as the transformer's two self-attentions)."""

    def __init__(self, channels: int, config: MotionModuleConfig):
        super().__init__(channels, config)
        self.blocks = nn.ModuleList(TemporalConvBlock(channels, config.num_attention_blocks)
                                    for _ in range(config.num_transformer_blocks))

    def mixer_blocks(self) -> nn.ModuleList:
        return self.blocks
