"""What is this file? Recognise AnimateDiff and Stable Diffusion weight files from their keys and shapes,
the way third-party loaders do (ComfyUI-AnimateDiff-Evolved, sd-webui-animatediff, diffusers). The rules are
tried in this order; the first that matches decides (docs/formats.md has the same tables for users).

| kind                 | recognised by                                                                  |
|----------------------|--------------------------------------------------------------------------------|
| lora (format: kohya, loha, lokr, lycoris) | kohya ``lora_unet_*`` / ``lora_te*_`` keys; the tensor names give the family: ``.lora_down``/``.lora_up`` (LoRA, LoCon), ``.hada_w1_a``... (LoHa), ``.lokr_w1``... (LoKr), several (lycoris) |
| sparsectrl           | ``controlnet_cond_embedding.weight`` (RGB) or ``.conv_in.weight`` (scribble); official or diffusers layout (sparsectrl.py) |
| motion-lora          | processor-format LoRA (``processor.to_q_lora``) on ``motion_modules``            |
| domain-adapter v3    | processor-format LoRA on spatial ``attentions.*.attn1/attn2`` holding what the official ``v3_sd15_adapter.ckpt`` holds: q/k/v/out of attn1 and attn2 in all 16 SD1.5 transformer blocks at rank 128, cross-attention input 768 (or that full layout in a file named ``*adapter*``) |
| processor-lora       | any other processor-format LoRA on spatial attention: the same key layout, so it is reported as "processor-format LoRA (domain adapter layout)" |
| lora (format: diffusers, peft) | ``lora_A``/``lora_B`` (or ``.lora.down``, ``.lora_linear_layer.down``) under ``unet.``/``text_encoder[_2].`` (diffusers) or ``base_model.model.`` (PEFT) |
| motion-module        | ``*.motion_modules.*.temporal_transformer.*`` (official) or ``.attn1`` without ``temporal_transformer`` (diffusers MotionAdapter); ``*.motion_modules.*.temporal_conv.*``: this project's conv-ablation preset |
| sd15/sdxl-checkpoint | LDM ``model.diffusion_model.*`` (SDXL: ``conditioner.embedders.1.model.*``)      |
| diffusers-unet       | ``conv_in.weight`` and ``down_blocks.*`` (SDXL: ``add_embedding.*``)              |

Motion-module versions, in this order (``--motion-preset`` / ``motion_preset`` replaces the version found here,
i.e. the preset's switches: PE length floor, GroupNorm modes, scheduler preset; the channels, layers per block,
attention blocks and mid block always come from the file):

| version    | told apart by                                                                               |
|------------|---------------------------------------------------------------------------------------------|
| conv-ablation | ``temporal_conv`` keys: the paper's §5.3 temporal-convolution ablation, trained with that preset (not an official format) |
| sdxl-beta  | highest ``down_blocks`` index 2 (3 down blocks; SD1.5 has 4)                                |
| lightning  | a mid block, and "lightning" in the file name (its keys are v2's)                           |
| animatelcm | a mid block, and the position encodings not all stored: none at all in the official layout (``AnimateLCM_sd15_t2v.ckpt`` deletes them), or only part of them (diffusers' copy of AnimateLCM; every v2 release stores one per attention block, official, or per transformer block, diffusers) |
| v2         | any other file with a mid block (a diffusers-layout file with no PE at all is v2: it is what converters write before the buffers are recomputed) |
| v1         | no mid block, stored PE length 24                                                           |
| v3         | no mid block, PE length 32 or none stored                                                   |
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from math import prod
from pathlib import Path

import torch

from .convert import PEFT_PREFIX, diffusers_lora_key_to_kohya, parse_processor_lora_key
from .deltas import family_of, out_in, rank_part
from . import sparsectrl
from .files import read_keys
from ..errors import UserInputError

LDM_UNET_PREFIX = "model.diffusion_model."
SDXL_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."
_MOTION_KEY = re.compile(r"^(?:module\.)?(down_blocks\.(\d+)|up_blocks\.(\d+)|mid_block)\.motion_modules\.(\d+)\.(.*)$")
_BASE_NAMES = {"sd15": "SD1.5", "sdxl": "SDXL"}
KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")


@dataclass
class FileDescription:
    kind: str  # motion-module | motion-lora | domain-adapter | processor-lora | sparsectrl | lora | sd15-checkpoint | sdxl-checkpoint | diffusers-folder | diffusers-unet | unknown
    version: str | None
    num_params: int
    base: str  # "sd15" / "sdxl" / "" when unknown
    details: dict = field(default_factory=dict)

    def summary(self) -> str:
        """A few human-readable lines."""
        title = self.kind + (f" {self.version}" if self.version else "")
        base = f" for {_BASE_NAMES.get(self.base, self.base)}" if self.base else ""
        lines = [f"{title}{base}: {self.num_params / 1e6:.1f} M parameters"]
        for key, value in self.details.items():
            if isinstance(value, (list, tuple)):
                value = ", ".join(map(str, value))
            elif isinstance(value, bool):
                value = "yes" if value else "no"
            lines.append(f"  {key.replace('_', ' ')}: {value}")
        return "\n".join(lines)


def _shape(value) -> tuple[int, ...]:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else tuple(value)


def is_diffusers_motion_layout(keys) -> bool:
    """Whether motion-module keys are in the diffusers ``MotionAdapter`` layout
    (``...motion_modules.k.transformer_blocks.j.attn1...``: no ``temporal_transformer`` level anywhere).

    ``keys``: any iterable of key names (a state dict works), motion modules, MotionLoRAs or full UNets, with
    or without ``module.``/``unet.`` prefixes. False for the official layout and for keys of no motion module."""
    keys = list(keys)
    return not any("temporal_transformer" in k for k in keys) and any(
        ".motion_modules." in k and (".attn1." in k or ".attn2." in k) for k in keys
    )


def detect_ldm_base(keys) -> str | None:
    """"sd15" / "sdxl" / "sd2" / "unknown" (text encoder of no known layout) for an LDM single-file checkpoint,
    None when it has no ``model.diffusion_model.*`` keys."""
    keys = set(keys)
    if not any(k.startswith(LDM_UNET_PREFIX) for k in keys):
        return None
    if any(k.startswith(SDXL_OPEN_CLIP_PREFIX) for k in keys):
        return "sdxl"
    if any(k.startswith("cond_stage_model.transformer.") for k in keys):
        return "sd15"
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "sd2"
    return "unknown"


def detect_motion_module(state_dict: dict, name: str = "") -> dict | None:
    """Architecture facts of a motion module state dict (official or diffusers layout), or None.

    ``pe_stored``/``pe_slots``: how many position-encoding buffers the file holds, of the number a complete
    file holds (official: one per attention block; diffusers: one per transformer block)."""
    modules: dict[tuple[str, int], set[int]] = {}
    channels: dict[int, int] = {}
    attention_blocks: set[str] = set()
    pe_slots: set[str] = set()
    pe_holders: set[str] = set()
    pe_length = None
    layout = "diffusers" if is_diffusers_motion_layout(state_dict) else "official"
    conv = False  # temporal_conv keys: the §5.3 ablation (motion_conv.py), official-style placement
    # "<block>.<k>.transformer_blocks.<j>" + ".attention_blocks.<a>" (official) / ".attn1" or ".pos_embed" (diffusers)
    slot = re.compile(r"^(.*?\.transformer_blocks\.\d+)(\.attention_blocks\.\d+|\.attn\d|\.pos_embed)\.")
    for key, value in state_dict.items():
        match = _MOTION_KEY.match(key)
        if not match:
            continue
        block, down, up, index, rest = match.groups()
        if layout == "official" and not rest.startswith(("temporal_transformer.", "temporal_conv.")):
            continue
        conv = conv or rest.startswith("temporal_conv.")
        rest = rest.removeprefix("temporal_transformer.").removeprefix("temporal_conv.")
        kind = "down" if down is not None else "up" if up is not None else "mid"
        modules.setdefault((kind, int(down or up or 0)), set()).add(int(index))
        if kind == "down" and rest == "norm.weight":
            channels[int(down)] = _shape(value)[0]
        attention = re.search(r"\.(attention_blocks\.\d+|attn\d|convs\.\d+)\.", rest)  # convs: the ablation's
        if attention:
            attention_blocks.add(attention.group(1))
        found = slot.match(f"{block}.{index}.{rest}")
        if found:  # official: a PE slot per attention block; diffusers: one per transformer block
            holder = found.group(1) + (found.group(2) if layout == "official" else "")
            (pe_holders if rest.endswith(("pos_encoder.pe", "pos_embed.pe")) else pe_slots).add(holder)
        if rest.endswith(("pos_encoder.pe", "pos_embed.pe")):
            pe_length = _shape(value)[1]
    if not modules or not channels:
        return None
    pe_slots |= pe_holders
    num_down = max(i for kind, i in modules if kind == "down") + 1
    mid_block = ("mid", 0) in modules
    base = "sdxl" if num_down == 3 else "sd15"
    lower = Path(str(name)).name.lower()
    partial_pe = 0 < len(pe_holders) < len(pe_slots)
    if conv:
        version = "conv-ablation"
    elif base == "sdxl":
        version = "sdxl-beta"
    elif mid_block and "lightning" in lower:
        version = "lightning"
    elif mid_block and (partial_pe or (not pe_holders and layout == "official")):
        version = "animatelcm"  # AnimateLCM deleted its PE buffers; diffusers' copy of it holds only part of them
    elif mid_block:
        version = "v2"
    else:
        version = "v1" if pe_length == 24 else "v3"
    return {
        "version": version,
        "base": base,
        "layout": layout,
        "block_out_channels": tuple(channels[i] for i in range(num_down)),
        "layers_per_block": len(modules[("down", 0)]),
        "num_attention_blocks": max(len(attention_blocks), 1),
        "mid_block": mid_block,
        "temporal_layer": "conv" if conv else "attention",
        "pe_length": pe_length,
        "pe_stored": len(pe_holders),
        "pe_slots": len(pe_slots),
        "num_modules": sum(len(v) for v in modules.values()),
    }


LORA_FORMATS = {
    "kohya": "kohya LoRA", "loha": "LyCORIS LoHa", "lokr": "LyCORIS LoKr", "lycoris": "LyCORIS (several families)",
    "diffusers": "diffusers LoRA (unet./text_encoder. prefixes)", "peft": "PEFT LoRA (base_model.model. prefix)",
}
_ATTENTION_TARGET = re.compile(r"^(.+\.transformer_blocks\.\d+)\.attn[12]\.(to_q|to_k|to_v|to_out\.0)\.weight$")
SD15_TRANSFORMER_BLOCKS = 16  # 2 in each of 3 down blocks, 1 in the mid block, 3 in each of 3 up blocks
ADAPTER_RANK = 128  # v3_sd15_adapter.ckpt (official-animatediff.md §4.4)


def _rank_text(ranks) -> int | str | None:
    """One rank as an int; several as "4 to 16"; LoKr layers with both factors full as "full"."""
    found = sorted({r for r in ranks if r is not None})
    if not found:
        return "full" if ranks else None
    return found[0] if len(found) == 1 else f"{found[0]} to {found[-1]}"


def _lora_groups(keys, state_dict) -> tuple[dict[str, dict[str, tuple]], str] | None:
    """Community LoRA layers in kohya names (``{layer: {part: shape}}``) and the file's format, or None when the
    keys are no kohya/LyCORIS or diffusers/PEFT LoRA (processor-format files are told apart elsewhere)."""
    groups: dict[str, dict[str, tuple]] = {}
    if any(k.startswith(KOHYA_PREFIXES) for k in keys):
        for key in keys:
            layer, _, part = key.partition(".")
            groups.setdefault(layer, {})[part] = _shape(state_dict[key])
        families = {family_of(part) for parts in groups.values() for part in parts if family_of(part)}
        return groups, "lycoris" if len(families) > 1 else "kohya" if families <= {"lora"} else families.pop()
    sdxl = any(k.startswith("text_encoder_2.") for k in keys)
    for key in keys:
        if parse_processor_lora_key(key.removeprefix("unet.")) is not None:
            continue
        converted = diffusers_lora_key_to_kohya(key, sdxl)
        if converted is not None:
            groups.setdefault(converted[0], {})[converted[1]] = _shape(state_dict[key])
    if not groups:
        return None
    return groups, "peft" if any(k.startswith(PEFT_PREFIX) for k in keys) else "diffusers"


def _lora_base(groups: dict[str, dict[str, tuple]], fmt: str) -> str:
    if any(layer.startswith(("lora_te1_", "lora_te2_")) for layer in groups):
        return "sdxl"
    cross = []
    for layer, parts in groups.items():
        if layer.endswith("attn2_to_k"):
            try:
                cross.append(out_in(family_of(next(p for p in parts if family_of(p))), parts)[1])
            except (KeyError, IndexError, StopIteration):
                pass
    if cross:
        return "sdxl" if cross[0] == 2048 else "sd15"
    # a PEFT file of a text encoder does not say whose (SD1.5's and SDXL's first are alike)
    return "sd15" if any(layer.startswith("lora_te_") for layer in groups) and fmt != "peft" else ""


def _describe_lora(groups: dict[str, dict[str, tuple]], fmt: str, keys, n: int) -> FileDescription:
    ranks = []
    for parts in groups.values():
        family = next((family_of(p) for p in parts if family_of(p)), None)
        part = rank_part(family, parts) if family else None
        ranks.append(parts[part][0] if part in parts else None)
    details = {"format": LORA_FORMATS[fmt], "rank": _rank_text(ranks), "layers": len(groups),
               "text_encoder": any(layer.startswith("lora_te") for layer in groups),
               "alpha": any(k.endswith(".alpha") for k in keys)}
    if any(".motion_modules." in k for k in keys):
        return FileDescription("motion-lora", None, n, "sd15", details)
    return FileDescription("lora", fmt, n, _lora_base(groups, fmt), details)


def _describe_processor_lora(state_dict: dict, lora_keys: list[str], n: int, name: str) -> FileDescription:
    """A processor-format LoRA: MotionLoRA, the official domain adapter, or another LoRA in that layout."""
    downs = {}
    for key in lora_keys:
        target, part = parse_processor_lora_key(key.removeprefix("module.").removeprefix("unet."))
        if part == "down":
            downs[target] = _shape(state_dict[key])
    rank = _rank_text([shape[0] for shape in downs.values()])
    details = {"format": "processor-format LoRA", "rank": rank, "layers": len(downs)}
    if any(".motion_modules." in k for k in lora_keys):
        mid = any(k.removeprefix("unet.").startswith("mid_block.") for k in lora_keys)
        return FileDescription("motion-lora", "v2" if mid else None, n, "sd15", {**details, "mid_block": mid})
    # The official adapter holds q/k/v/out of attn1 and attn2 in every transformer block; so may any LoRA in
    # this layout. Only the official sizes (or a file named *adapter*) say "domain adapter".
    matched = [_ATTENTION_TARGET.match(t) for t in downs]
    blocks = {m.group(1) for m in matched if m}
    full = all(matched) and len(downs) == 8 * len(blocks)
    cross = [shape[1] for target, shape in downs.items() if target.endswith("attn2.to_k.weight")]
    official = full and len(blocks) == SD15_TRANSFORMER_BLOCKS and rank == ADAPTER_RANK and cross[:1] == [768]
    if official or (full and "adapter" in Path(str(name)).name.lower()):
        details["format"] = "official v3 domain adapter layout (processor-format LoRA on spatial attention)"
        return FileDescription("domain-adapter", "v3", n, "sd15", details)
    details["format"] = "processor-format LoRA (domain adapter layout)"
    return FileDescription("processor-lora", None, n, "sd15" if cross[:1] == [768] else "", details)


def _num_params(state_dict: dict, skip_pe: bool = False) -> int:
    return sum(prod(_shape(v)) for k, v in state_dict.items() if not (skip_pe and ("pos_encoder" in k or k.endswith("pos_embed.pe"))))


def detect_kind(state_dict: dict, name: str = "") -> FileDescription:
    """Classify a state dict (values: tensors or shapes) from its keys and shapes alone (``name``: the file
    name, which tells AnimateDiff-Lightning from v2 and a domain adapter from other processor-format LoRAs)."""
    keys = list(state_dict)
    n = _num_params(state_dict)
    if any(k.startswith(KOHYA_PREFIXES) for k in keys):
        return _describe_lora(*_lora_groups(keys, state_dict), keys, n)
    if sparsectrl.flavour(keys) is not None:  # weights/sparsectrl.py: official or diffusers layout
        motion = detect_motion_module(state_dict) or {}
        details = {"layout": "diffusers" if sparsectrl.is_diffusers_layout(keys) else "official",
                   "motion_modules": motion.get("num_modules", 0)}
        return FileDescription("sparsectrl", sparsectrl.flavour(keys), n, sparsectrl.base_of(state_dict), details)
    lora_keys = [k for k in keys if parse_processor_lora_key(k) is not None]
    if lora_keys:
        return _describe_processor_lora(state_dict, lora_keys, n, name)
    community = _lora_groups(keys, state_dict)
    if community is not None:
        return _describe_lora(*community, keys, n)
    motion = detect_motion_module(state_dict, name)  # the file name tells Lightning from v2
    if motion is not None:
        details = {k: motion[k] for k in ("layout", "num_modules", "mid_block", "block_out_channels")}
        details["position_encoding"] = f"{motion['pe_length']} frames" if motion["pe_length"] else "not stored"
        if 0 < motion["pe_stored"] < motion["pe_slots"]:
            details["position_encoding"] += f" (stored in {motion['pe_stored']} of {motion['pe_slots']} places)"
        if motion["temporal_layer"] == "conv":
            details["architecture"] = "temporal convolution: the paper's §5.3 ablation (preset conv-ablation), not an official format"
        return FileDescription("motion-module", motion["version"], _num_params(state_dict, skip_pe=True), motion["base"], details)
    base = detect_ldm_base(keys)
    if base is not None:
        details = {"vae": any(k.startswith("first_stage_model.") for k in keys),
                   "ema": any(k.startswith("model_ema.") for k in keys),
                   "unet_params": _num_params({k: v for k, v in state_dict.items() if k.startswith(LDM_UNET_PREFIX)})}
        kind = f"{base}-checkpoint" if base in ("sd15", "sdxl", "sd2") else "ldm-checkpoint"
        return FileDescription(kind, None, n, base if base in ("sd15", "sdxl") else "", details)
    if "conv_in.weight" in state_dict and any(k.startswith("down_blocks.") for k in keys):
        sdxl = any(k.startswith("add_embedding.") for k in keys)
        return FileDescription("diffusers-unet", None, n, "sdxl" if sdxl else "sd15", {})
    prefixes = sorted({k.split(".")[0] for k in keys})
    return FileDescription("unknown", None, n, "", {"top_level_keys": prefixes[:8]})


def _folder_description(path: Path) -> FileDescription:
    if (path / "unet").is_dir():
        sdxl = (path / "text_encoder_2").is_dir()
        total = 0
        for weights in sorted(path.glob("*/*.safetensors")):
            total += _num_params(read_keys(weights))
        components = sorted(p.name for p in path.iterdir() if p.is_dir())
        return FileDescription("diffusers-folder", None, total, "sdxl" if sdxl else "sd15", {"components": components})
    weights = next((path / n for n in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                                       "diffusion_pytorch_model.bin") if (path / n).is_file()), None)
    if weights is None:
        raise UserInputError(f"{path}: folder is neither a diffusers pipeline (unet/) nor a single model (diffusion_pytorch_model.*)")
    description = describe_file(weights)
    if (path / "config.json").is_file():
        description.details["config_class"] = json.loads((path / "config.json").read_text()).get("_class_name", "?")
    return description


def describe_file(path: str | Path) -> FileDescription:
    """Describe a weight file or diffusers folder (``.safetensors`` headers only; pickles are loaded safely)."""
    path = Path(path).expanduser()
    if path.is_dir():
        return _folder_description(path)
    description = detect_kind(read_keys(path), path.name)
    description.details["file_size"] = f"{path.stat().st_size / 2**20:.1f} MiB"
    return description
