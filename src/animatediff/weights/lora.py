"""LoRA merging into loaded weights: community kohya LoRAs (base model), MotionLoRA (motion modules) and
the v3 domain adapter (spatial attention), all as ``W += scale * up @ down``, undone bit-exactly by
``unmerge`` (each handle keeps a copy of the weights it changed).

Formats:
- kohya: ``lora_unet_<layer>`` / ``lora_te_<layer>`` (SDXL ``lora_te1_``/``lora_te2_``) with ``.lora_down.weight``
  (r, in[, kh, kw]), ``.lora_up.weight`` (out, r[, 1, 1]) and optional ``.alpha``; ``<layer>`` is a diffusers
  module name (``down_blocks_0_attentions_0_...``) or an LDM one (``input_blocks_4_1_...``) with ``.`` -> ``_``.
- processor (official MotionLoRA ``v2_lora_*.ckpt`` and ``v3_sd15_adapter.ckpt``):
  ``<module>.processor.to_{q,k,v,out}_lora.{down,up}.weight``; the target is ``<module>.to_{q,k,v,out.0}.weight``.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, field
from math import prod

import torch
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

from ..components import BaseModel
from ..errors import UserInputError
from ..motion_module import MotionModules
from .convert import motion_module_from_diffusers, parse_processor_lora_key, unet_name_to_ldm
from .detect import is_diffusers_motion_layout
from .files import examples, read_state_dict

logger = logging.getLogger(__name__)

_BASE_NAMES = {"sd15": "SD1.5", "sdxl": "SDXL"}


@dataclass(eq=False)
class _Merge:
    """One ``param += factor * up @ down`` and ``saved``, the parameter as it was before (its dtype, its device)."""

    param: nn.Parameter
    up: torch.Tensor
    down: torch.Tensor
    factor: float
    saved: torch.Tensor | None = None


# The merges into each parameter, oldest first. Held weakly: a handle dropped without ``unmerge()`` is a
# permanent merge; its dead entry stays so that the merge above it knows its saved copy contains it.
_STACKS: WeakIdKeyDictionary = WeakIdKeyDictionary()  # nn.Parameter -> list[weakref.ref[_Merge]]


def _merge(merge: _Merge) -> None:
    with torch.no_grad():
        merge.saved = merge.param.detach().clone()
    _add_delta(merge.param, merge.up, merge.down, merge.factor)
    _STACKS.setdefault(merge.param, []).append(weakref.ref(merge))


def _unmerge(merge: _Merge) -> None:
    """Restore ``merge.saved`` exactly when no later merge sits on this parameter; otherwise subtract the delta
    (rounded, as any subtraction) and hand the saved copy on to the merge above, so that the last unmerge of a
    parameter still restores the exact original."""
    stack = _STACKS[merge.param]
    i = next(i for i, ref in enumerate(stack) if ref() is merge)
    above = [ref() for ref in stack[i + 1:]]
    with torch.no_grad():
        if not above:
            merge.param.copy_(merge.saved)
        else:
            _add_delta(merge.param, merge.up, merge.down, -merge.factor)
            nearest = next((m for m in above if m is not None), None)  # None: only permanent merges above
            if nearest is not None and nearest is above[0]:  # merged right onto ours: our base is exactly its base now
                nearest.saved = merge.saved
            elif nearest is not None:  # a permanent merge lies between: its part of nearest.saved must stay
                _add_delta(nearest.saved, merge.up, merge.down, -merge.factor)
    del stack[i]
    while stack and stack[0]() is None:  # permanent merges at the bottom need no bookkeeping
        del stack[0]
    if not stack:
        del _STACKS[merge.param]
    merge.saved = None


@dataclass
class LoraHandle:
    """What one ``apply_*`` call merged; ``unmerge()`` puts the weights back bit-exactly, in every dtype.

    Why copies: subtracting the delta again rounds (in fp16 one merge + unmerge moved ~15 % of the touched
    values), so swapping LoRAs many times would drift the base model.
    Memory: one copy of every parameter the handle touched, as it was before the merge (same dtype, same
    device), held while it is merged; e.g. a kohya LoRA on every SD1.5 attention layer costs those layers once
    more. Changes made to those weights while merged (e.g. training) are undone too.
    Order: unmerging handles in reverse merge order (``Animator.clear_loras``) restores each step exactly; in
    another order the states in between are right up to rounding, and a parameter is exactly its original
    again once every handle on it is unmerged. A handle dropped without ``unmerge()`` is a permanent merge
    (its copies are freed; it stays merged, up to rounding, when handles below it unmerge)."""

    source: str
    scale: float
    merges: list[_Merge] = field(default_factory=list, repr=False)
    merged: bool = True

    @property
    def num_layers(self) -> int:
        return len(self.merges)

    def unmerge(self) -> None:
        if not self.merged:
            return
        for merge in reversed(self.merges):
            _unmerge(merge)
        self.merged = False


def _add_delta(param: torch.Tensor, up: torch.Tensor, down: torch.Tensor, factor: float) -> None:
    """``param += factor * up @ down``; conv factors are flattened: (out, r) @ (r, in*kh*kw) -> (out, in, kh, kw).

    A 3x3 down conv followed by a 1x1 up conv (LoCon) is exactly the 3x3 conv with this kernel."""
    with torch.no_grad():
        delta = up.flatten(1).to(param.device, torch.float32) @ down.flatten(1).to(param.device, torch.float32)
        param.add_((factor * delta).reshape(param.shape).to(param.dtype))


def _read(source, what: str) -> tuple[dict[str, torch.Tensor], str]:
    if isinstance(source, dict):
        return dict(source), f"{what} (in memory)"
    return read_state_dict(source, mmap=False), str(source)


def _fits(weight: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> bool:
    if up.shape[0] != weight.shape[0] or up.flatten(1).shape[1] != down.shape[0]:
        return False
    if weight.ndim == 4 and down.ndim == 4 and down.shape[2:] != weight.shape[2:]:
        return False
    return prod(down.shape[1:]) == prod(weight.shape[1:])


def _merge_all(pairs: dict[str, tuple[nn.Parameter, torch.Tensor, torch.Tensor, float]], name: str, target: str,
               scale: float) -> LoraHandle:
    wrong = [(k, tuple(p.shape), tuple(up.shape), tuple(down.shape)) for k, (p, up, down, _) in pairs.items() if not _fits(p, up, down)]
    if wrong:
        layer, weight, up, down = wrong[0]
        raise UserInputError(
            f"{name}: {len(wrong)} LoRA layers do not fit this {target} (e.g. {layer}: up {up} / down {down} "
            f"against weight {weight}); is it made for another base model?"
        )
    handle = LoraHandle(source=name, scale=scale)
    for param, up, down, factor in pairs.values():
        handle.merges.append(_Merge(param, up, down, factor))
        _merge(handle.merges[-1])
    logger.info("%s: merged %d layers at scale %g", name, handle.num_layers, scale)
    return handle


# ---- kohya LoRA on a base model ----------------------------------------------------------------------
def kohya_layer_names(base: BaseModel) -> dict[str, nn.Module]:
    """Every kohya layer name of ``base`` (diffusers-style and LDM-style for the UNet) -> its Linear/Conv2d."""
    names: dict[str, nn.Module] = {}
    for name, module in base.unet.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            names["lora_unet_" + name.replace(".", "_")] = module
            try:
                names["lora_unet_" + unet_name_to_ldm(name, base.unet.config).replace(".", "_")] = module
            except (KeyError, IndexError, ValueError):
                pass
    prefixes = ["lora_te1_", "lora_te2_"] if base.is_sdxl else ["lora_te_"]
    for prefix, encoder in zip(prefixes, base.text_encoders):
        for name, module in encoder.named_modules():
            if isinstance(module, nn.Linear):  # kohya always spells the text_model level
                names[prefix + ("text_model." + name.removeprefix("text_model.")).replace(".", "_")] = module
    return names


def apply_lora(base: BaseModel, path, scale: float) -> LoraHandle:
    """Merge a kohya LoRA into ``base`` at ``scale``, scaled the way its authors intended (kohya's alpha/rank)."""
    state_dict, name = _read(path, "LoRA")
    target = f"{_BASE_NAMES.get(base.kind, base.kind)} model"
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        layer, _, part = key.partition(".")
        groups.setdefault(layer, {})[part] = value
    foreign = [k for k in groups if not k.startswith(("lora_unet_", "lora_te"))]
    if foreign:
        raise UserInputError(f"{name}: not a kohya LoRA: {len(foreign)} keys without lora_unet_/lora_te prefixes (e.g. {examples(foreign)})")
    unsupported = sorted({f"{layer}.{part}" for layer, parts in groups.items() for part in parts
                          if part not in ("lora_down.weight", "lora_up.weight", "alpha")})
    if unsupported:
        raise UserInputError(f"{name}: unsupported LoRA tensors (LoHa/LoKr/DoRA/Tucker?), e.g. {examples(unsupported)}")
    layers = kohya_layer_names(base)
    unmatched = [k for k in groups if k not in layers]
    if unmatched:
        raise UserInputError(f"LoRA {name}: {len(unmatched)} keys match no layer of this {target}, e.g. {examples(unmatched)}")
    pairs = {}
    for layer, parts in groups.items():
        if "lora_down.weight" not in parts or "lora_up.weight" not in parts:
            raise UserInputError(f"{name}: layer {layer} lacks its lora_down/lora_up pair")
        down, up = parts["lora_down.weight"], parts["lora_up.weight"]
        # Why alpha/rank: kohya trains with that factor in the forward pass, so the merge needs it to match
        # what the LoRA's author saw. (The official AnimateDiff convert_lora ignores alpha.)
        factor = scale * (float(parts["alpha"]) / down.shape[0] if "alpha" in parts else 1.0)
        pairs[layer] = (layers[layer].weight, up, down, factor)
    return _merge_all(pairs, name, target, scale)


# ---- processor-format LoRAs: MotionLoRA and the domain adapter -------------------------------------------
def _processor_pairs(state_dict: dict[str, torch.Tensor], name: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{target parameter name: (up, down)}`` by ``convert.parse_processor_lora_key``."""
    downs, ups = {}, {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.").removeprefix("unet.")
        parsed = parse_processor_lora_key(key)
        if parsed is None:
            raise UserInputError(f"{name}: not a processor-format LoRA (unexpected key {key})")
        target, part = parsed
        (downs if part == "down" else ups)[target] = value
    if downs.keys() != ups.keys():
        odd = downs.keys() ^ ups.keys()
        raise UserInputError(f"{name}: {len(odd)} LoRA layers lack their down/up pair (e.g. {examples(odd)})")
    return {k: (ups[k], downs[k]) for k in downs}


def _processor_merge(params: dict[str, nn.Parameter], pairs, name: str, target: str, scale: float) -> LoraHandle:
    unmatched = [k for k in pairs if k not in params]
    if unmatched:
        raise UserInputError(f"{name}: {len(unmatched)} keys match no layer of this {target}, e.g. {examples(unmatched)}")
    return _merge_all({k: (params[k], up, down, scale) for k, (up, down) in pairs.items()}, name, target, scale)


def apply_motion_lora(motion: MotionModules, path, alpha: float) -> LoraHandle:
    """Merge an official MotionLoRA (``v2_lora_ZoomIn.ckpt`` ...) into ``motion`` as ``W += alpha * up @ down``."""
    state_dict, name = _read(path, "MotionLoRA")
    if is_diffusers_motion_layout(state_dict):
        state_dict = motion_module_from_diffusers({k.removeprefix("unet."): v for k, v in state_dict.items()})
    if not any(".motion_modules." in k for k in state_dict):
        raise UserInputError(f"{name}: not a MotionLoRA (no motion_modules keys); is it a domain adapter or a kohya LoRA?")
    pairs = _processor_pairs(state_dict, name)
    if motion.mid_block is None and any(k.startswith("mid_block.") for k in pairs):
        raise UserInputError(
            f"{name}: this MotionLoRA has mid-block layers (it is made for v2 motion modules), but the loaded "
            f"motion module ({motion.config.name}) has no mid block"
        )
    return _processor_merge(dict(motion.named_parameters()), pairs, name, f"{motion.config.name} motion module", alpha)


def apply_domain_adapter(unet: nn.Module, path, scale: float) -> LoraHandle:
    """Merge the official v3 domain adapter (processor LoRA on spatial attn1/attn2) into ``unet``."""
    state_dict, name = _read(path, "domain adapter")
    unet = unet.unet if isinstance(getattr(unet, "unet", None), nn.Module) else unet  # AnimateDiffUNet -> its UNet
    if any(".motion_modules." in k for k in state_dict):
        raise UserInputError(f"{name}: this is a MotionLoRA (motion_modules keys), not a domain adapter")
    pairs = _processor_pairs(state_dict, name)
    return _processor_merge(dict(unet.named_parameters()), pairs, name, "UNet", scale)
