"""SparseCtrl encoder files (AnimateDiff v3): what a file is, and its keys, as pure ``dict -> dict`` rules.

Two layouts hold the same tensors (official-animatediff.md §4.5, advanced-features.md §1.5):

| part                 | official ``v3_sd15_sparsectrl_{rgb,scribble}.ckpt``            | diffusers ``SparseControlNetModel``        |
|----------------------|------------------------------------------------------------------|--------------------------------------------|
| wrapper              | ``{"controlnet": {...}}`` or none; ``animatediff_config`` entry    | none (``state_dict`` unwrapped if present) |
| motion module ``k``  | ``down_blocks.i.motion_modules.k.temporal_transformer.`` +        | ``down_blocks.i.motion_modules.k.`` +      |
|                      | ``transformer_blocks.0.attention_blocks.0 / norms.0 / ff_norm``   | ``transformer_blocks.0.attn1 / norm1 / norm3`` |
| position encoding    | ``...attention_blocks.0.pos_encoder.pe`` (1, 32, C)               | ``...transformer_blocks.0.pos_embed.pe``    |
| everything else      | ``conv_in``, ``time_embedding``, ``controlnet_cond_embedding``, ``down_blocks.i.{resnets,attentions,downsamplers}``, ``mid_block``, ``controlnet_down_blocks.j``, ``controlnet_mid_block``: the same names |

The flavour comes from the condition embedding: ``controlnet_cond_embedding.weight`` (one conv, VAE latent +
mask: RGB) or ``controlnet_cond_embedding.conv_in.weight`` (a conv stack on pixels + mask: scribble).
Our canonical layout is the official one without position encodings (recomputed, never loaded) and without
non-tensor entries (``files.read_state_dict`` drops ``animatediff_config`` and unwraps ``controlnet``).
"""

from __future__ import annotations

import torch

from .convert import is_position_encoding_key, motion_module_from_diffusers

RGB_KEY = "controlnet_cond_embedding.weight"
SCRIBBLE_KEY = "controlnet_cond_embedding.conv_in.weight"


def flavour(keys) -> str | None:
    """``"rgb"`` / ``"scribble"`` for a SparseCtrl file's keys, None for any other file."""
    keys = set(keys)
    return "rgb" if RGB_KEY in keys else "scribble" if SCRIBBLE_KEY in keys else None


def is_diffusers_layout(keys) -> bool:
    """diffusers' ``SparseControlNetModel`` keys: motion modules without the ``temporal_transformer`` level."""
    motion = [k for k in keys if ".motion_modules." in k]
    return bool(motion) and not any(".temporal_transformer." in k for k in motion)


def base_of(shapes: dict) -> str:
    """``"sdxl"`` or ``"sd15"`` from keys and shapes (tensors or shape tuples): SDXL's added text/size
    embedding, or its 2048-wide cross-attention."""
    if any(k.startswith("add_embedding.") for k in shapes):
        return "sdxl"
    widths = {tuple(v.shape if isinstance(v, torch.Tensor) else v)[-1] for k, v in shapes.items() if k.endswith("attn2.to_k.weight")}
    return "sdxl" if 2048 in widths else "sd15"


def to_official(state_dict: dict) -> dict[str, torch.Tensor]:
    """Either layout -> our canonical one (official names, no position encodings, tensors only)."""
    tensors = {k.removeprefix("module."): v for k, v in state_dict.items()
               if isinstance(v, torch.Tensor) and not is_position_encoding_key(k)}
    if not is_diffusers_layout(tensors):
        return tensors
    motion = {k: v for k, v in tensors.items() if ".motion_modules." in k}
    out = {k: v for k, v in tensors.items() if k not in motion}
    out.update(motion_module_from_diffusers(motion))  # attn1 -> attention_blocks.0, norm1 -> norms.0, norm3 -> ff_norm
    return out


def to_diffusers(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Canonical (official) layout -> diffusers ``SparseControlNetModel`` keys (without ``pos_embed.pe``)."""
    from .convert import motion_module_to_diffusers

    tensors = to_official(state_dict)
    motion = {k: v for k, v in tensors.items() if ".motion_modules." in k}
    out = {k: v for k, v in tensors.items() if k not in motion}
    out.update(motion_module_to_diffusers(motion))
    return out


def condition_channels(state_dict: dict) -> int:
    """Condition channels without the mask: 4 (RGB: a VAE latent) or 3 (scribble: pixels) in the official files."""
    key = RGB_KEY if RGB_KEY in state_dict else SCRIBBLE_KEY
    return tuple(state_dict[key].shape)[1] - 1


def embedding_widths(state_dict: dict) -> tuple[int, ...]:
    """The scribble conv stack's widths, (16, 32, 96, 256) in the official file: ``conv_in`` then every second
    block (the stride-2 ones)."""
    widths = [tuple(state_dict[SCRIBBLE_KEY].shape)[0]]
    i = 1
    while f"controlnet_cond_embedding.blocks.{i}.weight" in state_dict:
        widths.append(tuple(state_dict[f"controlnet_cond_embedding.blocks.{i}.weight"].shape)[0])
        i += 2
    return tuple(widths)
