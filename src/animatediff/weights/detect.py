"""What is this file? Recognise AnimateDiff and Stable Diffusion weight files from their keys and shapes,
the way third-party loaders do (ComfyUI-AnimateDiff-Evolved, sd-webui-animatediff, diffusers).

| kind              | recognised by                                                                  |
|-------------------|--------------------------------------------------------------------------------|
| motion-module     | ``*.motion_modules.*.temporal_transformer.*`` (official) or ``.attn1`` without ``temporal_transformer`` (diffusers MotionAdapter) |
| motion-lora       | ``processor.to_q_lora`` on ``motion_modules``                                   |
| domain-adapter    | ``processor.*_lora`` on spatial ``attentions.*.attn1/attn2``                      |
| sparsectrl        | ``controlnet_cond_embedding.*`` (``.weight``: RGB, ``.conv_in``: scribble)       |
| lora              | kohya ``lora_unet_*`` / ``lora_te*_`` with ``.lora_down``/``.lora_up``             |
| sd15/sdxl-checkpoint | LDM ``model.diffusion_model.*`` (SDXL: ``conditioner.embedders.1.model.*``)    |

Motion module versions: highest ``down_blocks`` index 3 -> SD1.5, 2 -> SDXL (sdxl-beta); a mid block -> v2
(no position encoding stored -> AnimateLCM; "lightning" in the file name -> AnimateDiff-Lightning);
otherwise the stored PE length: 24 -> v1, 32 -> v3.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from math import prod
from pathlib import Path

import torch

from .convert import parse_processor_lora_key
from .files import read_keys
from ..errors import UserInputError

LDM_UNET_PREFIX = "model.diffusion_model."
SDXL_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."
_MOTION_KEY = re.compile(r"^(?:module\.)?(down_blocks\.(\d+)|up_blocks\.(\d+)|mid_block)\.motion_modules\.(\d+)\.(.*)$")
_BASE_NAMES = {"sd15": "SD1.5", "sdxl": "SDXL"}


@dataclass
class FileDescription:
    kind: str  # motion-module | motion-lora | domain-adapter | sparsectrl | lora | sd15-checkpoint | sdxl-checkpoint | diffusers-folder | diffusers-unet | unknown
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
    """Architecture facts of a motion module state dict (official or diffusers layout), or None."""
    modules: dict[tuple[str, int], set[int]] = {}
    channels: dict[int, int] = {}
    attention_blocks: set[str] = set()
    pe_length = None
    layout = "diffusers" if is_diffusers_motion_layout(state_dict) else "official"
    for key, value in state_dict.items():
        match = _MOTION_KEY.match(key)
        if not match:
            continue
        block, down, up, index, rest = match.groups()
        if layout == "official" and not rest.startswith("temporal_transformer."):
            continue
        rest = rest.removeprefix("temporal_transformer.")
        kind = "down" if down is not None else "up" if up is not None else "mid"
        modules.setdefault((kind, int(down or up or 0)), set()).add(int(index))
        if kind == "down" and rest == "norm.weight":
            channels[int(down)] = _shape(value)[0]
        attention = re.search(r"\.(attention_blocks\.\d+|attn\d)\.", rest)
        if attention:
            attention_blocks.add(attention.group(1))
        if rest.endswith(("pos_encoder.pe", "pos_embed.pe")):
            pe_length = _shape(value)[1]
    if not modules or not channels:
        return None
    num_down = max(i for kind, i in modules if kind == "down") + 1
    mid_block = ("mid", 0) in modules
    base = "sdxl" if num_down == 3 else "sd15"
    lower = Path(str(name)).name.lower()
    if base == "sdxl":
        version = "sdxl-beta"
    elif mid_block:
        version = "lightning" if "lightning" in lower else "animatelcm" if pe_length is None and layout == "official" else "v2"
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
        "pe_length": pe_length,
        "num_modules": sum(len(v) for v in modules.values()),
    }


def _lora_rank(state_dict: dict, suffix: str) -> int | None:
    ranks = sorted({_shape(v)[0] for k, v in state_dict.items() if k.endswith(suffix)})
    return ranks[0] if len(ranks) == 1 else (ranks[-1] if ranks else None)


def _kohya_base(state_dict: dict) -> str:
    if any(k.startswith(("lora_te1_", "lora_te2_")) for k in state_dict):
        return "sdxl"
    cross = [_shape(v)[1] for k, v in state_dict.items() if "attn2_to_k" in k and k.endswith("lora_down.weight")]
    if cross:
        return "sdxl" if cross[0] == 2048 else "sd15"
    return "sd15" if any(k.startswith("lora_te_") for k in state_dict) else ""


def _num_params(state_dict: dict, skip_pe: bool = False) -> int:
    return sum(prod(_shape(v)) for k, v in state_dict.items() if not (skip_pe and ("pos_encoder" in k or k.endswith("pos_embed.pe"))))


def detect_kind(state_dict: dict) -> FileDescription:
    """Classify a state dict (values: tensors or shapes) from its keys and shapes alone."""
    keys = list(state_dict)
    n = _num_params(state_dict)
    if any(k.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")) for k in keys):
        rank = _lora_rank(state_dict, ".lora_down.weight")
        details = {"rank": rank, "layers": sum(k.endswith(".lora_down.weight") for k in keys),
                   "text_encoder": any(k.startswith("lora_te") for k in keys),
                   "alpha": any(k.endswith(".alpha") for k in keys)}
        return FileDescription("lora", None, n, _kohya_base(state_dict), details)
    if any(k.startswith("controlnet_cond_embedding.") for k in keys):
        version = "scribble" if "controlnet_cond_embedding.conv_in.weight" in state_dict else "rgb"
        motion = detect_motion_module(state_dict) or {}
        details = {"motion_modules": motion.get("num_modules", 0)}
        return FileDescription("sparsectrl", version, n, "sd15", details)
    lora_keys = [k for k in keys if parse_processor_lora_key(k) is not None]
    if lora_keys:
        rank = _lora_rank(state_dict, "_lora.down.weight")
        if any(".motion_modules." in k for k in lora_keys):
            mid = any(k.startswith("mid_block.") for k in lora_keys)
            details = {"rank": rank, "layers": len(lora_keys) // 2, "mid_block": mid}
            return FileDescription("motion-lora", "v2" if mid else None, n, "sd15", details)
        details = {"rank": rank, "layers": len(lora_keys) // 2}
        return FileDescription("domain-adapter", "v3", n, "sd15", details)
    motion = detect_motion_module(state_dict)
    if motion is not None:
        details = {k: motion[k] for k in ("layout", "num_modules", "mid_block", "block_out_channels")}
        details["position_encoding"] = f"{motion['pe_length']} frames" if motion["pe_length"] else "not stored"
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
    shapes = read_keys(path)
    description = detect_kind(shapes)
    if description.kind == "motion-module":  # the file name matters for Lightning
        motion = detect_motion_module(shapes, path.name)
        description.version = motion["version"]
    description.details["file_size"] = f"{path.stat().st_size / 2**20:.1f} MiB"
    return description
