"""DeepCache-style feature caching (Ma et al., 2024): an explicit quality-for-speed knob (``cache_interval``).

Every ``cache_interval`` steps the whole UNet runs and the hidden state entering the up block of skip branch
``cache_branch`` is kept; on the steps in between only the outer ring of the UNet runs (conv_in, down blocks
0 .. b, up blocks n-1-b .. n-1, conv_out; the motion modules hooked into those blocks included) and the deep
part's output is taken from the cache. ``cache_interval = 1`` is off: the pipeline builds no cache at all.

diffusers' ``UNet2DConditionModel`` (n down blocks; SD1.5: n = 4, layers_per_block 2), frames folded into the
batch, every tensor ``(b f, c, h, w)``::

    conv_in -> s0 -> down[0] -> s1 s2 (s3) -> down[1] -> ... -> down[n-1] -> mid
                                                                              |
    conv_out <- up[n-1] <- s0 s1 s2 <- up[n-2] <- s3 s4 s5 <- ... <- up[0] <--+

The skip samples s_i are a stack: every down block pushes its layers' outputs (s3 is down[0]'s downsampler),
every up block pops ``len(up.resnets)`` of them (``res_hidden_states_tuple``). Branch b keeps the ring
down[0..b] / up[n-1-b..n-1]; everything inside it (the deeper down blocks, mid, up[0 .. n-2-b]) only produces
the one tensor entering up[n-1-b] (SD1.5, branch 0: ``(b f, 640, h, w)``), which is what is cached. The
ring's skips come from its own down blocks; a downsampler output it pushes (s3 for b = 0) feeds only the deep
part and is dropped.

The cache is per generation (the pipeline makes a new one) and per sampling pass (a timestep above the last
one starts a new pass: FreeInit's restarts). Within a step every UNet call is a slot: with fixed context
windows (``static``, ``batched``) call k of a step is always the same window, so each window has its own cached
feature; moving windows (``uniform``, ``looped``) are refused by ``check_fields``. Under classifier-free
guidance both halves are one batch, so they share a slot.
"""

from __future__ import annotations

from functools import partial
from typing import Callable
from weakref import WeakKeyDictionary

import torch
from diffusers import UNet2DConditionModel

from ..errors import UserInputError
from ..sampling.context import context_options


def check_fields(config, max_frames: int | None = None, motion_name: str | None = None) -> None:
    """``cache_interval`` (>= 1) and ``cache_branch`` (>= 0); moving context windows have nothing to reuse."""
    for name, low in (("cache_interval", 1), ("cache_branch", 0)):
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise UserInputError("must be a whole number", field=name, value=value)
        if value < low:
            raise UserInputError(f"must be at least {low}" if low else "must not be negative", field=name, value=value)
    if config.cache_interval > 1:
        options = context_options(config, max_frames, motion_name)
        if options is not None and options.schedule in ("uniform", "looped"):
            raise UserInputError(f"{options.schedule} context windows move every step, so no window can reuse its cached "
                                 "features; use context static or batched, or cache_interval 1",
                                 field="cache_interval", value=config.cache_interval)


def for_config(config, unet: UNet2DConditionModel) -> "FeatureCache | None":
    """A fresh cache for one generation, or None when ``cache_interval`` is 1 (the plain UNet call)."""
    return FeatureCache(unet, config.cache_interval, config.cache_branch) if config.cache_interval > 1 else None


class _Tap:
    """A forward pre-hook on one up block: while ``sink`` is a list, it appends the hidden state the block receives."""

    def __init__(self):
        self.sink: list | None = None

    def __call__(self, _block, _args, kwargs):
        if self.sink is not None:
            self.sink.append(kwargs["hidden_states"])  # diffusers passes it by name


_TAPS: WeakKeyDictionary = WeakKeyDictionary()  # UNet -> one _Tap per up block


def taps(unet: UNet2DConditionModel) -> list[_Tap]:
    """The UNet's taps, registered once and kept: torch.compile (compiled.py installs them first) does not see
    hooks added after it traced the UNet, and one idle tap costs an attribute check per block call."""
    if unet not in _TAPS:
        _TAPS[unet] = [_Tap() for _ in unet.up_blocks]
        for block, tap in zip(unet.up_blocks, _TAPS[unet]):
            block.register_forward_pre_hook(tap, with_kwargs=True)
    return _TAPS[unet]


class FeatureCache:
    """Decides per UNet call whether to run the whole UNet (and keep the deep feature) or only the outer ring.

    ``forward_for(t)`` returns the folded 2-D forward for that call, with ``UNet2DConditionModel.forward``'s
    arguments (``AnimateDiffUNet.forward(..., unet_forward=...)``). ``full_calls`` / ``cached_calls`` count them."""

    def __init__(self, unet: UNet2DConditionModel, interval: int, branch: int = 0):
        n = len(unet.down_blocks)
        if not 0 <= branch < n:
            raise UserInputError(f"this UNet has {n} down blocks (branches 0 .. {n - 1})", field="cache_branch", value=branch)
        if unet.class_embedding is not None or unet.config.center_input_sample or unet.config.addition_embed_type == "image_hint":
            raise UserInputError("feature caching supports SD1.5/SDXL-style UNets only", field="cache_interval", value=interval)
        self.unet, self.interval, self.branch = unet, interval, branch
        self.tap = taps(unet)[n - 1 - branch]  # on the up block the cached feature enters
        self.features: dict[int, torch.Tensor] = {}  # slot -> feature entering `entry`, (b f, c, h_b, w_b)
        self.full_calls = self.cached_calls = 0
        self.reset()

    def reset(self) -> None:
        self.step, self._last_t, self._slot = -1, None, 0
        self.features.clear()

    def forward_for(self, t: torch.Tensor | float) -> Callable[..., tuple[torch.Tensor]]:
        key = torch.as_tensor(t).flatten().tolist()
        if key != self._last_t:
            if self._last_t is not None and key[0] > self._last_t[0]:  # noise went up: a new sampling pass
                self.reset()
            self.step, self._last_t, self._slot = self.step + 1, key, 0
        else:
            self._slot += 1  # another call at the same t: the next context window (group)
        reuse = self.step % self.interval != 0 and self._slot in self.features
        return partial(self.cached if reuse else self.full, self._slot)

    def full(self, slot: int, sample: torch.Tensor, timestep, encoder_hidden_states, **kwargs) -> tuple[torch.Tensor]:
        """The plain UNet call; the entry block's tap keeps the feature it receives."""
        self.tap.sink = []
        try:
            out = self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, **{**kwargs, "return_dict": False})
            self.features[slot] = self.tap.sink[0]
        finally:
            self.tap.sink = None
        self.full_calls += 1
        return out

    def cached(self, slot: int, sample: torch.Tensor, timestep, encoder_hidden_states, added_cond_kwargs=None,
               down_block_additional_residuals=None, mid_block_additional_residual=None, return_dict=False) -> tuple[torch.Tensor]:
        """The outer ring only, the deep feature from ``slot`` (see the module docstring); sample ``(b f, 4, h, w)``."""
        deep = self.features[slot]
        if deep.shape[0] != sample.shape[0]:  # not the batch this slot was filled with: recompute
            return self.full(slot, sample, timestep, encoder_hidden_states, added_cond_kwargs=added_cond_kwargs,
                             down_block_additional_residuals=down_block_additional_residuals,
                             mid_block_additional_residual=mid_block_additional_residual)
        unet, n = self.unet, len(self.unet.down_blocks)
        emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), None)  # (b f, d)
        aug = unet.get_aug_embed(emb=emb, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs)
        emb = emb + aug if aug is not None else emb  # SDXL: pooled text + size conditioning
        emb = unet.time_embed_act(emb) if unet.time_embed_act is not None else emb
        text = unet.process_encoder_hidden_states(encoder_hidden_states=encoder_hidden_states,
                                                  added_cond_kwargs=added_cond_kwargs)  # IP-Adapter: (text, image tokens)
        x = unet.conv_in(sample)  # (b f, c_0, h, w)
        skips = (x,)
        for block in unet.down_blocks[: self.branch + 1]:
            x, res = _run(block, hidden_states=x, temb=emb, encoder_hidden_states=text)
            skips += res  # each (b f, c_i, h_i, w_i)
        if down_block_additional_residuals is not None:  # ControlNet: the ring's own skips get theirs (zip stops there)
            skips = tuple(s + r for s, r in zip(skips, down_block_additional_residuals))
        ring = unet.up_blocks[n - 1 - self.branch:]
        skips = skips[: sum(len(block.resnets) for block in ring)]  # drop what only the deep part reads
        odd = any(d % 2**unet.num_upsamplers for d in sample.shape[-2:])  # as diffusers: pass sizes when not divisible
        x = deep
        for block in ring:
            res, skips = skips[-len(block.resnets):], skips[: -len(block.resnets)]
            size = skips[-1].shape[2:] if odd and skips else None
            x = _run(block, hidden_states=x, temb=emb, res_hidden_states_tuple=res, encoder_hidden_states=text, upsample_size=size)
        if unet.conv_norm_out is not None:
            x = unet.conv_act(unet.conv_norm_out(x))
        self.cached_calls += 1
        return (unet.conv_out(x),)  # (b f, 4, h, w)


def _run(block, encoder_hidden_states, **kwargs):
    """A down/up block with diffusers' keywords; blocks without cross attention take no text."""
    if getattr(block, "has_cross_attention", False):
        kwargs["encoder_hidden_states"] = encoder_hidden_states
    return block(**kwargs)
