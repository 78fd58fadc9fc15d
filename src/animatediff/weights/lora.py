"""LoRA merging into loaded weights: community LoRAs (base model), MotionLoRA (motion modules) and the v3
domain adapter (spatial attention), all as ``W += scale * factor * ΔW`` (``deltas.py``: ``ΔW`` and ``factor``
of each family), undone bit-exactly by ``unmerge`` (each handle keeps a copy of the weights it changed).

Formats (``--lora``; every one is renamed into the kohya names of ``kohya_layer_names``, the one table of names):
- kohya: ``lora_unet_<layer>`` / ``lora_te_<layer>`` (SDXL ``lora_te1_``/``lora_te2_``) with ``.lora_down.weight``
  (r, in[, kh, kw]), ``.lora_up.weight`` (out, r[, 1, 1]) and optional ``.alpha``; ``<layer>`` is a diffusers
  module name (``down_blocks_0_attentions_0_...``) or an LDM one (``input_blocks_4_1_...``) with ``.`` -> ``_``.
- LyCORIS LoHa (``.hada_w1_a`` ...) and LoKr (``.lokr_w1`` ...) under the same kohya layer names.
- diffusers / PEFT: ``unet.<module>.lora_A.weight`` / ``.lora_B.weight`` (``text_encoder.``, ``text_encoder_2.``,
  PEFT ``base_model.model.``; older ``.lora.down``/``.lora_linear_layer.down``), ``<prefix>.<module>.alpha``
  (diffusers' network alphas; none: factor 1, as diffusers does); a PEFT ``adapter_config.json`` next to the file
  gives ``lora_alpha``.
- processor (official MotionLoRA ``v2_lora_*.ckpt``, ``v3_sd15_adapter.ckpt``, old diffusers attention-processor
  LoRAs): ``<module>.processor.to_{q,k,v,out}_lora.{down,up}.weight``; the target is ``<module>.to_{q,k,v,out.0}.weight``,
  merged with factor 1 (the official ``W += alpha * up @ down``).
"""

from __future__ import annotations

import json
import logging
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

from ..components import BaseModel
from ..errors import UserInputError
from ..motion_module import MotionModules
from .convert import (
    PEFT_PREFIX, diffusers_lora_key_to_kohya, motion_module_from_diffusers, parse_processor_lora_key, unet_name_to_ldm,
)
from .deltas import Delta, family_of, layer_delta
from .detect import KOHYA_PREFIXES, is_diffusers_motion_layout
from .files import examples, read_state_dict

logger = logging.getLogger(__name__)

_BASE_NAMES = {"sd15": "SD1.5", "sdxl": "SDXL"}


@dataclass(eq=False)
class _Merge:
    """One ``param += factor * ΔW`` and ``saved``, the parameter as it was before (its dtype, its device)."""

    param: nn.Parameter
    delta: Delta
    factor: float
    saved: torch.Tensor | None = None


# The merges into each parameter, oldest first. Held weakly: a handle dropped without ``unmerge()`` is a
# permanent merge; its dead entry stays so that the merge above it knows its saved copy contains it.
_STACKS: WeakIdKeyDictionary = WeakIdKeyDictionary()  # nn.Parameter -> list[weakref.ref[_Merge]]


def _merge(merge: _Merge) -> None:
    with torch.no_grad():
        merge.saved = merge.param.detach().clone()
    _add_delta(merge.param, merge.delta, merge.factor)
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
            _add_delta(merge.param, merge.delta, -merge.factor)
            nearest = next((m for m in above if m is not None), None)  # None: only permanent merges above
            if nearest is not None and nearest is above[0]:  # merged right onto ours: our base is exactly its base now
                nearest.saved = merge.saved
            elif nearest is not None:  # a permanent merge lies between: its part of nearest.saved must stay
                _add_delta(nearest.saved, merge.delta, -merge.factor)
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


def _add_delta(param: torch.Tensor, delta: Delta, factor: float) -> None:
    """``param += factor * ΔW``, computed in float32 on the parameter's device and rounded once to its dtype."""
    with torch.no_grad():
        param.add_((factor * delta.weight(param.shape, param.device)).to(param.dtype))


def _read(source, what: str) -> tuple[dict[str, torch.Tensor], str]:
    if isinstance(source, dict):
        return dict(source), f"{what} (in memory)"
    return read_state_dict(source, mmap=False), str(source)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _low_rank(up: torch.Tensor, down: torch.Tensor) -> Delta:
    return Delta("lora", {"lora_up.weight": up, "lora_down.weight": down}, int(down.shape[0]), 1.0)


def _merge_all(pairs: dict[str, tuple[nn.Parameter, Delta, float]], name: str, target: str, scale: float) -> LoraHandle:
    """Merge every ``(parameter, delta, factor)``, after checking that all of them fit (nothing merged otherwise)."""
    wrong = [(k, tuple(p.shape), d) for k, (p, d, _) in pairs.items() if not d.fits(tuple(p.shape))]
    if wrong:
        layer, weight, delta = wrong[0]
        shapes = " / ".join(f"{k} {tuple(v.shape)}" for k, v in delta.parts.items())
        raise UserInputError(
            f"{name}: {len(wrong)} LoRA layers do not fit this {target} (e.g. {layer}: {shapes} "
            f"against weight {weight}); is it made for another base model?"
        )
    handle = LoraHandle(source=name, scale=scale)
    for param, delta, factor in pairs.values():
        handle.merges.append(_Merge(param, delta, factor))
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


def _peft_alpha(path) -> float | None:
    """``lora_alpha`` of the PEFT ``adapter_config.json`` next to ``path``; None when there is none."""
    config_path = Path(path).with_name("adapter_config.json") if not isinstance(path, dict) else None
    if config_path is None or not config_path.is_file():
        return None
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as error:
        raise UserInputError(f"{config_path}: unreadable PEFT adapter config ({error})") from None
    unsupported = [k for k in ("use_rslora", "use_dora", "alpha_pattern") if config.get(k)]
    if unsupported:
        raise UserInputError(f"{config_path}: PEFT {', '.join(unsupported)} is not supported")
    alpha = config.get("lora_alpha")
    return float(alpha) if isinstance(alpha, (int, float)) and not isinstance(alpha, bool) else None


def _kohya_groups(state_dict: dict[str, torch.Tensor], name: str, sdxl: bool, text_prefix: str | None = None):
    """``({kohya layer: {kohya part: tensor}}, {kohya layer: [the file's keys]})`` for a file in any community
    LoRA format (module docstring); ``UserInputError`` for keys of no known LoRA form."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    origin: dict[str, list[str]] = {}
    foreign = []
    for key, value in state_dict.items():
        if key.startswith(KOHYA_PREFIXES):
            layer, _, part = key.partition(".")
        else:
            converted = diffusers_lora_key_to_kohya(key, sdxl, text_prefix)
            if converted is None:
                foreign.append(key)
                continue
            layer, part = converted
        groups.setdefault(layer, {})[part] = value
        origin.setdefault(layer, []).append(key)
    if foreign:
        raise UserInputError(
            f"{name}: not a LoRA of a known format: keys of no kohya/LyCORIS (lora_unet_, lora_te_), diffusers/PEFT "
            f"(lora_A/lora_B) or processor-format form: {len(foreign)}, e.g. {examples(foreign)}"
        )
    return groups, origin


def _all_fit(groups: dict[str, dict[str, torch.Tensor]], layers: dict[str, nn.Module], prefix: str) -> bool:
    """Whether every layer of ``groups`` named ``prefix*`` is a layer of the model and fits it."""
    def fits(layer, parts):
        try:
            return layer in layers and layer_delta(parts).fits(tuple(layers[layer].weight.shape))
        except ValueError:
            return False
    return all(fits(layer, parts) for layer, parts in groups.items() if layer.startswith(prefix))


def apply_lora(base: BaseModel, path, scale: float) -> LoraHandle:
    """Merge a community LoRA into ``base`` at ``scale``, scaled the way its training tool did (``alpha/rank``
    where an alpha is stored): kohya LoRA/LoCon, LyCORIS LoHa/LoKr, diffusers and PEFT LoRAs, processor-format
    UNet LoRAs. ``UserInputError`` (nothing merged) for other files, unknown layers or layers that do not fit."""
    state_dict, name = _read(path, "LoRA")
    target = f"{_BASE_NAMES.get(base.kind, base.kind)} model"
    if any(".motion_modules." in k for k in state_dict):
        raise UserInputError(f"{name}: this is a MotionLoRA (motion_modules keys), not a LoRA for the base model")
    layers = kohya_layer_names(base)
    groups, origin = _kohya_groups(state_dict, name, base.is_sdxl)
    if base.is_sdxl and any(k.startswith(PEFT_PREFIX + "text_model.") for k in state_dict) \
            and not _all_fit(groups, layers, "lora_te1_"):
        # A PEFT file does not say which of SDXL's text encoders it adapts: the second one, if its layers fit there.
        second, second_origin = _kohya_groups(state_dict, name, True, "lora_te2_")
        if _all_fit(second, layers, "lora_te2_"):
            groups, origin = second, second_origin
    unsupported = sorted(f"{layer}.{part}" for layer, parts in groups.items() for part in parts
                         if part != "alpha" and family_of(part) is None)
    if unsupported:
        raise UserInputError(f"{name}: {_count(len(unsupported), 'unsupported LoRA tensor')} (DoRA, LoCon Tucker, (IA)^3, OFT?), "
                             f"e.g. {examples(unsupported)}")
    unmatched = [k for k in groups if k not in layers]
    if unmatched:
        keys = [key for layer in unmatched for key in origin[layer]]
        raise UserInputError(f"LoRA {name}: keys without a matching layer in this {target}: {len(keys)} "
                             f"({_count(len(unmatched), 'layer')}), e.g. {examples(keys)}")
    peft_alpha = _peft_alpha(path) if any(k.startswith(PEFT_PREFIX) for k in state_dict) else None
    pairs = {}
    for layer, parts in groups.items():
        if peft_alpha is not None and "alpha" not in parts:
            parts["alpha"] = torch.tensor(peft_alpha)
        try:
            delta = layer_delta(parts)
        except ValueError as error:
            raise UserInputError(f"{name}: layer {layer} {error}") from None
        pairs[layer] = (layers[layer].weight, delta, scale * delta.factor)
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
    if unmatched:  # each target is a down/up pair of keys in the file
        raise UserInputError(f"{name}: keys without a matching layer in this {target}: {2 * len(unmatched)} "
                             f"({_count(len(unmatched), 'layer')}), e.g. {examples(unmatched)}")
    return _merge_all({k: (params[k], _low_rank(up, down), scale) for k, (up, down) in pairs.items()}, name, target, scale)


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
