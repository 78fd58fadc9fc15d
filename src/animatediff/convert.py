"""Checkpoint format conversions, all as pure ``dict -> dict`` functions in one place.

Formats:
- *official* motion module: ``{down_blocks.i|mid_block|up_blocks.i}.motion_modules.k.temporal_transformer...``
  (guoyww/AnimateDiff ``.ckpt``/``.safetensors``), possibly wrapped in ``state_dict``, prefixed with
  ``module.`` (self-trained DDP files), carrying ``pos_encoder.pe`` buffers and an ``animatediff_config`` entry.
- *diffusers* ``MotionAdapter``: the same tree without ``temporal_transformer``, with ``attn1/attn2``,
  ``norm1/norm2/norm3`` and a ``pos_embed.pe`` buffer per transformer block.
"""

from __future__ import annotations

import torch

# official -> diffusers MotionAdapter renames, applied in this order (diffusers' own converter rules)
_OFFICIAL_TO_DIFFUSERS = (
    (".norms.0", ".norm1"),
    (".norms.1", ".norm2"),
    (".ff_norm", ".norm3"),
    (".attention_blocks.0", ".attn1"),
    (".attention_blocks.1", ".attn2"),
    (".temporal_transformer", ""),
)


def is_position_encoding_key(key: str) -> bool:
    return "pos_encoder" in key or key.endswith("pos_embed.pe")


def clean_official_motion_state_dict(state_dict: dict) -> dict[str, torch.Tensor]:
    """Normalise an official-layout motion module file to the exact keys of ``MotionModules``:
    strip ``module.``, drop non-tensor entries (``animatediff_config``) and the recomputed PE buffers."""
    out = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor) or is_position_encoding_key(key):
            continue
        out[key.removeprefix("module.")] = value
    return out


def motion_module_to_diffusers(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official layout -> diffusers ``MotionAdapter`` layout (PE buffers dropped; diffusers recomputes them)."""
    out = {}
    for key, value in clean_official_motion_state_dict(state_dict).items():
        for old, new in _OFFICIAL_TO_DIFFUSERS:
            key = key.replace(old, new)
        out[key] = value
    return out


def motion_module_from_diffusers(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers ``MotionAdapter`` layout -> official layout (inverse of ``motion_module_to_diffusers``)."""
    out = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor) or is_position_encoding_key(key):
            continue
        block, sep, rest = key.partition(".motion_modules.")
        index, _, rest = rest.partition(".")
        rest = (
            rest.replace(".attn1", ".attention_blocks.0")
            .replace(".attn2", ".attention_blocks.1")
            .replace(".norm1", ".norms.0")
            .replace(".norm2", ".norms.1")
            .replace(".norm3", ".ff_norm")
        )
        out[f"{block}{sep}{index}.temporal_transformer.{rest}"] = value
    return out
