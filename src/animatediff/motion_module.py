"""The AnimateDiff motion module (paper §4.2, Fig. 3): a temporal Transformer over the frame axis.

Every spatial location of a feature map attends over the frames of the clip, independently of the
other locations. Module and parameter names reproduce the official checkpoint keys
(``down_blocks.{i}.motion_modules.{k}.temporal_transformer.transformer_blocks.0.attention_blocks.{j}...``)
so the released ``mm_sd_v15*.ckpt`` / ``v3_sd15_mm.ckpt`` / ``mm_sdxl_v10_beta.ckpt`` files load strictly.

Layout convention inside this file: the UNet hands us frames folded into the batch, ``(b f) c h w``;
attention runs on sequences of frames, ``(b h w) f c``.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from diffusers.models.attention import FeedForward
from torch import nn

from .motion_conv import TemporalConv3DModel
from .temporal_mixer import TemporalMixer3D
from .presets import MotionModuleConfig


def sinusoidal_position_encoding(max_len: int, dim: int) -> torch.Tensor:
    """The Vaswani et al. sinusoid, ``(1, max_len, dim)``: sin on even channels, cos on odd ones."""
    position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(1, max_len, dim)
    pe[0, :, 0::2] = torch.sin(position * div_term)
    pe[0, :, 1::2] = torch.cos(position * div_term)
    return pe


class PositionalEncoding(nn.Module):
    """Adds the frame-index sinusoid. Recomputed, never loaded (the buffer is not persistent), so
    ``max_len`` may exceed the length a checkpoint was trained with."""

    def __init__(self, dim: int, max_len: int):
        super().__init__()
        self.register_buffer("pe", sinusoidal_position_encoding(max_len, dim), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (b h w, f, c)
        num_frames = x.shape[1]
        if num_frames > self.pe.shape[1]:
            raise ValueError(
                f"{num_frames} frames exceed the motion module's position encoding length {self.pe.shape[1]}"
            )
        return x + self.pe[:, :num_frames].to(x.dtype)


class VersatileAttention(nn.Module):
    """Temporal self-attention over frames (the official class name, kept for the key names).

    Why the PE sits here: the official code adds it to the LayerNorm output inside the attention, so it
    reaches Q, K and V but never the residual stream."""

    def __init__(self, dim: int, heads: int, max_len: int | None):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])  # "to_out.0" as in the checkpoints
        self.pos_encoder = PositionalEncoding(dim, max_len) if max_len else None
        self.key_scale: torch.Tensor | None = None  # motion_scale (b, f), set only inside MotionModules.controls
        self._fused: torch.Tensor | None = None  # (3c, c) storage of to_q/to_k/to_v once fused (qkv_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (b h w, f, c)
        if self.pos_encoder is not None:
            x = self.pos_encoder(x)
        n, f, c = x.shape
        if self._unfused():
            # (b h w, f, c) -> (b h w, heads, f, c / heads)
            q, k, v = (proj(x).view(n, f, self.heads, c // self.heads).transpose(1, 2) for proj in (self.to_q, self.to_k, self.to_v))
        else:
            # one (3c, c) matmul; (b h w, f, 3c) -> 3 x (b h w, heads, f, c / heads), strided views (SDPA takes them as
            # they are: a .contiguous() copy measured slower)
            qkv = F.linear(x, self.qkv_weight()).view(n, f, 3, self.heads, c // self.heads)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if self.key_scale is not None:
            k = self._scale_keys(k)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v, no mask
        out = out.transpose(1, 2).reshape(n, f, c)  # merge heads back
        return self.to_out[1](self.to_out[0](out))

    # ---- fused Q/K/V projection ------------------------------------------------------------------------------
    def _unfused(self) -> bool:
        """Run the three projections separately: while training them (autograd must reach each Parameter) and
        while anything hooks them (MotionLoRA training attaches its LoRA pairs as forward hooks on to_q/k/v)."""
        projections = (self.to_q, self.to_k, self.to_v)
        if torch.is_grad_enabled() and any(p.weight.requires_grad for p in projections):
            return True
        return any(p._forward_hooks or p._forward_pre_hooks for p in projections)

    def qkv_weight(self) -> torch.Tensor:
        """``(3c, c)``: to_q, to_k and to_v weights stacked, with no copy per call.

        Fused on first use: one tensor is allocated and the three Parameters become views of its thirds
        (``Parameter.data`` is replaced, the Parameter objects and their state-dict keys stay), so in-place
        changes to them (LoRA merges, ``load_state_dict``) are seen here. Anything that gives them new
        storage (``.to(dtype)``, assigning loads) is detected and fused again."""
        if self._fused is not None and torch.compiler.is_compiling():
            return self._fused  # torch.compile (generation/compiled.py fuses first): data_ptr() checks cannot be traced
        parts = (self.to_q.weight, self.to_k.weight, self.to_v.weight)
        if self._fused is None or not _stacked_views(self._fused, parts):
            fused = torch.cat([p.detach() for p in parts])  # (3c, c)
            for i, p in enumerate(parts):
                p.data = fused[i * p.shape[0] : (i + 1) * p.shape[0]]
            self._fused = fused
        return self._fused

    def _apply(self, fn, recurse=True):
        self._fused = None  # .to()/.half() give the Parameters new storage: let the old fused copy go now
        return super()._apply(fn, recurse)

    def _scale_keys(self, k: torch.Tensor) -> torch.Tensor:
        """motion_scale: frame j's key times ``s[b, j]``, so every logit ``q_i . k_j`` is times it (an inverse
        temperature over the frames attended to). k: (b h w, heads, f, d); key_scale: (b, f)."""
        b, f = self.key_scale.shape
        n, heads, frames, d = k.shape
        if frames != f or n % b:
            raise ValueError(f"motion_scale is for {b} clips x {f} frames, the attention sees {frames} frames ({n} rows)")
        scale = self.key_scale.to(k.dtype).view(b, 1, 1, f, 1)
        return (k.view(b, n // b, heads, f, d) * scale).view(n, heads, f, d)  # (b h w) ... -> b (h w) ... and back


def _stacked_views(fused: torch.Tensor, parts: Sequence[torch.Tensor]) -> bool:
    """Whether ``parts`` are still the consecutive contiguous slices of ``fused`` (``qkv_weight``)."""
    offset = fused.data_ptr()
    for p in parts:
        if p.dtype != fused.dtype or p.device != fused.device or not p.is_contiguous() or p.data_ptr() != offset:
            return False
        offset += p.numel() * p.element_size()
    return True


class TemporalTransformerBlock(nn.Module):
    """Pre-LayerNorm block: ``x += attn_j(norm_j(x))`` for each attention, then ``x += ff(ff_norm(x))``."""

    def __init__(self, dim: int, heads: int, num_attention_blocks: int, max_len: int | None):
        super().__init__()
        self.attention_blocks = nn.ModuleList(VersatileAttention(dim, heads, max_len) for _ in range(num_attention_blocks))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(num_attention_blocks))
        self.ff = FeedForward(dim, dropout=0.0, activation_fn="geglu")  # net.0.proj (8C, C), net.2 (C, 4C)
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (b h w, f, c)
        for attention, norm in zip(self.attention_blocks, self.norms):
            x = attention(norm(x)) + x
        return self.ff(self.ff_norm(x)) + x


class TemporalTransformer3DModel(TemporalMixer3D):
    """The paper's temporal transformer: ``transformer_blocks`` of temporal self-attention (official keys)."""

    def __init__(self, channels: int, config: MotionModuleConfig):
        super().__init__(channels, config)
        self.transformer_blocks = nn.ModuleList(
            TemporalTransformerBlock(channels, config.num_attention_heads, config.num_attention_blocks, config.position_encoding_length)
            for _ in range(config.num_transformer_blocks)
        )

    def mixer_blocks(self) -> nn.ModuleList:
        return self.transformer_blocks


class VanillaTemporalModule(nn.Module):
    """One motion module, ``motion_modules.{k}`` in the checkpoints: ``temporal_transformer`` (the paper's), or
    ``temporal_conv`` for the §5.3 ablation preset (``config.temporal_layer == "conv"``, motion_conv.py)."""

    def __init__(self, channels: int, config: MotionModuleConfig):
        super().__init__()
        if config.temporal_layer == "conv":
            self.temporal_conv = TemporalConv3DModel(channels, config)
        else:
            self.temporal_transformer = TemporalTransformer3DModel(channels, config)
        # Training option: recompute activations in backward. diffusers checkpoints its blocks but not the
        # layers our hooks follow, so the motion modules need their own switch.
        self.gradient_checkpointing = False
        self.effect: torch.Tensor | None = None  # motion_effect (b, f), set only inside MotionModules.controls

    def forward(self, hidden_states: torch.Tensor, num_frames: int, views: Sequence[View] | None = None) -> torch.Tensor:
        """``hidden_states`` ``(b f) c h w``. ``views``: windows of frame indices with per-position fuse weights;
        the module then runs on each window alone and every frame gets the weighted mean of its windows'
        outputs (FreeNoise's window fusion, ADE's view options). None: all frames at once."""
        if views:
            return fuse_views(self._forward_view, hidden_states, num_frames, views)
        return self._forward(hidden_states, num_frames)

    def _forward_view(self, hidden_states: torch.Tensor, num_frames: int, index: torch.Tensor) -> torch.Tensor:
        """``_forward`` on the frames ``index`` of the clip: per-frame motion_scale/effect are sliced to them."""
        attentions = [m for m in self.modules() if isinstance(m, VersatileAttention) and m.key_scale is not None]
        saved = self.effect, [m.key_scale for m in attentions]
        try:
            if self.effect is not None:
                self.effect = self.effect[:, index]
            for m in attentions:
                m.key_scale = m.key_scale[:, index]
            return self._forward(hidden_states, num_frames)
        finally:
            self.effect = saved[0]
            for m, value in zip(attentions, saved[1]):
                m.key_scale = value

    @property
    def temporal(self) -> nn.Module:
        """The temporal model this module wraps (``temporal_transformer`` or ``temporal_conv``)."""
        return self._modules["temporal_conv" if "temporal_conv" in self._modules else "temporal_transformer"]

    def _forward(self, hidden_states: torch.Tensor, num_frames: int) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            out = torch.utils.checkpoint.checkpoint(self.temporal, hidden_states, num_frames, use_reentrant=False)
        else:
            out = self.temporal(hidden_states, num_frames)
        if self.effect is not None:  # motion_effect: row (clip j, frame i) = x (1 - e[j, i]) + module(x) e[j, i]
            if self.effect.shape[1] != num_frames or self.effect.numel() != out.shape[0]:
                raise ValueError(f"motion_effect is for {tuple(self.effect.shape)} clips x frames, the module sees "
                                 f"{out.shape[0]} rows of {num_frames} frames")
            e = self.effect.to(out.dtype).reshape(-1, 1, 1, 1)  # b f -> (b f) 1 1 1, the rows of hidden_states
            out = hidden_states * (1 - e) + out * e  # exact at 0 (x) and 1 (module(x))
        return out


View = tuple[Sequence[int], torch.Tensor]  # (frame indices, fuse weight per position)


def fuse_views(module: Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor], x: torch.Tensor, num_frames: int,
               views: Sequence[View]) -> torch.Tensor:
    """Run ``module(x_view, f_view, index)`` (``x`` ``(b f) c h w``; ``index`` the view's frames in the clip) on
    each view's frames and fuse per frame:
    ``out[i] = sum_k w_k(i) module(x[view_k])[i] / sum_k w_k(i)``. Every frame must be in some view."""
    bf, c, h, w = x.shape
    b = bf // num_frames
    frames = x.view(b, num_frames, c, h, w)
    out = torch.zeros_like(frames)
    total = torch.zeros(num_frames, dtype=x.dtype, device=x.device)
    for indices, weights in views:
        index = torch.as_tensor(indices, dtype=torch.long, device=x.device)
        weights = weights.to(device=x.device, dtype=x.dtype)
        y = module(frames[:, index].reshape(b * len(index), c, h, w), len(index), index)  # the view alone: (b v) c h w
        out.index_add_(1, index, y.view(b, len(index), c, h, w) * weights.view(1, -1, 1, 1, 1))
        total.index_add_(0, index, weights)
    if not bool((total > 0).all()):
        raise ValueError("view windows leave frames uncovered")
    return (out / total.view(1, -1, 1, 1, 1)).view(bf, c, h, w)


class _BlockMotionModules(nn.Module):
    """Holds ``motion_modules.{k}`` of one UNet block, so keys read ``down_blocks.{i}.motion_modules.{k}``."""

    def __init__(self, channels: int, count: int, config: MotionModuleConfig):
        super().__init__()
        self.motion_modules = nn.ModuleList(VanillaTemporalModule(channels, config) for _ in range(count))


class MotionModules(nn.Module):
    """The full set of motion modules for one UNet; its ``state_dict()`` is exactly an official motion
    module file (minus the ``pos_encoder.pe`` buffers, which are recomputed).

    Placement (official ``unet_blocks.py``): ``layers_per_block`` modules in every down block, one more in
    every up block, and (v2) one in the mid block.
    """

    def __init__(self, config: MotionModuleConfig):
        super().__init__()
        self.config = config
        channels = config.block_out_channels
        layers = config.layers_per_block
        self.down_blocks = nn.ModuleList(_BlockMotionModules(c, layers, config) for c in channels)
        self.mid_block = _BlockMotionModules(channels[-1], 1, config) if config.mid_block else None
        self.up_blocks = nn.ModuleList(_BlockMotionModules(c, layers + 1, config) for c in reversed(channels))

    def placements(self):
        """Yield ``(block_kind, block_index, layer_index, module)`` for every motion module."""
        for i, block in enumerate(self.down_blocks):
            for k, module in enumerate(block.motion_modules):
                yield "down", i, k, module
        if self.mid_block is not None:
            yield "mid", 0, 0, self.mid_block.motion_modules[0]
        for i, block in enumerate(self.up_blocks):
            for k, module in enumerate(block.motion_modules):
                yield "up", i, k, module

    @property
    def max_frames(self) -> int | None:
        """The position-encoding length; None (no limit) for the convolution ablation, which has no encoding."""
        return self.config.position_encoding_length if self.config.temporal_layer != "conv" else None

    @contextmanager
    def controls(self, scale: torch.Tensor | None = None, effect: torch.Tensor | None = None):
        """Within the block, every temporal attention scales its keys by ``scale`` and every module blends its
        output by ``effect`` (ADE's motion scale and motion effect; generation/prompt_travel.py). Each is None
        (off) or ``(clips, frames)``, one value per clip and frame of the UNet batch, e.g. per-frame values
        repeated for the CFG batch. The previous settings (normally none: scale 1, effect 1) come back after."""
        if scale is None and effect is None:
            yield
            return
        attentions = [m for m in self.modules() if isinstance(m, VersatileAttention)]
        modules = [m for m in self.modules() if isinstance(m, VanillaTemporalModule)]
        before = [m.key_scale for m in attentions], [m.effect for m in modules]
        try:
            for m in attentions:
                m.key_scale = scale
            for m in modules:
                m.effect = effect
            yield
        finally:
            for m, value in zip(attentions, before[0]):
                m.key_scale = value
            for m, value in zip(modules, before[1]):
                m.effect = value
