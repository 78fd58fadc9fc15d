"""Checkpoint format conversions, all as pure ``dict -> dict`` functions in one place.

Formats:
- *official* motion module: ``{down_blocks.i|mid_block|up_blocks.i}.motion_modules.k.temporal_transformer...``
  (guoyww/AnimateDiff ``.ckpt``/``.safetensors``), possibly wrapped in ``state_dict``, prefixed with
  ``module.`` (self-trained DDP files), carrying ``pos_encoder.pe`` buffers and an ``animatediff_config`` entry.
- *diffusers* ``MotionAdapter``: the same tree without ``temporal_transformer``, with ``attn1/attn2``,
  ``norm1/norm2/norm3`` and a ``pos_embed.pe`` buffer per transformer block.
- *processor* LoRA (official MotionLoRA, v3 domain adapter): ``<module>.processor.to_q_lora.down.weight``
  for the parameter ``<module>.to_q.weight``.
"""

from __future__ import annotations

import re

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


# ---- diffusers -> LDM single-file layout ---------------------------------------------------------------
# The inverse of diffusers' ``single_file_utils.convert_ldm_*`` (the mapping of diffusers'
# ``scripts/convert_diffusers_to_original_stable_diffusion.py``, generalised to any block layout). Used to
# write single-file checkpoints (test fixtures, scripts/fabricate_checkpoints.py) and to name kohya LoRA
# layers in the LDM style (``lora_unet_input_blocks_4_1_...``).

_UNET_TOP_LEVEL = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_RESNET_TO_LDM = (
    ("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
    ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection"),
)


def _resnet_name_to_ldm(rest: str) -> str:
    head, _, tail = rest.partition(".")
    return next((new for old, new in _RESNET_TO_LDM if head == old), head) + (f".{tail}" if tail else "")


def unet_name_to_ldm(name: str, config: dict) -> str:
    """One diffusers UNet parameter/module name -> its LDM name (``model.diffusion_model.`` prefix not included).

    ``config`` is the UNet config (``layers_per_block``, ``up_block_types``)."""
    layers = config["layers_per_block"]
    for old, new in _UNET_TOP_LEVEL.items():
        if name == old or name.startswith(old + "."):
            return new + name[len(old):]
    parts = name.split(".")
    if parts[0] == "down_blocks":
        i, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
        if kind == "downsamplers":  # down_blocks.i.downsamplers.0.conv.* -> input_blocks.N.0.op.*
            return f"input_blocks.{1 + i * (layers + 1) + layers}.0.op.{'.'.join(parts[5:])}".rstrip(".")
        n = 1 + i * (layers + 1) + j
        return f"input_blocks.{n}.0.{_resnet_name_to_ldm(rest)}" if kind == "resnets" else f"input_blocks.{n}.1.{rest}"
    if parts[0] == "mid_block":
        kind, j, rest = parts[1], int(parts[2]), ".".join(parts[3:])
        if kind == "resnets":
            return f"middle_block.{2 * j}.{_resnet_name_to_ldm(rest)}"
        return f"middle_block.1.{rest}"
    if parts[0] == "up_blocks":
        i, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
        if kind == "upsamplers":  # after the last layer: index 2 if that layer has attention, else 1
            has_attention = "CrossAttn" in config["up_block_types"][i]
            return f"output_blocks.{i * (layers + 1) + layers}.{2 if has_attention else 1}.{'.'.join(parts[4:])}".rstrip(".")
        n = i * (layers + 1) + j
        return f"output_blocks.{n}.0.{_resnet_name_to_ldm(rest)}" if kind == "resnets" else f"output_blocks.{n}.1.{rest}"
    raise KeyError(f"no LDM name for UNet key {name}")


def unet_to_ldm(state_dict: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """diffusers ``UNet2DConditionModel`` state dict -> LDM keys (``model.diffusion_model.*``)."""
    return {"model.diffusion_model." + unet_name_to_ldm(k, config): v for k, v in state_dict.items()}


def _vae_name_to_ldm(name: str, num_blocks: int) -> str:
    name = name.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
    parts = name.split(".")
    if len(parts) > 2 and parts[1] == "down_blocks":  # encoder.down_blocks.i.{resnets.j|downsamplers.0}.*
        i, kind = parts[2], parts[3]
        if kind == "resnets":
            return f"encoder.down.{i}.block.{parts[4]}.{'.'.join(parts[5:])}"
        return f"encoder.down.{i}.downsample.{'.'.join(parts[5:])}"
    if len(parts) > 2 and parts[1] == "up_blocks":  # decoder up blocks are numbered from the bottom in LDM
        i, kind = num_blocks - 1 - int(parts[2]), parts[3]
        if kind == "resnets":
            return f"decoder.up.{i}.block.{parts[4]}.{'.'.join(parts[5:])}"
        return f"decoder.up.{i}.upsample.{'.'.join(parts[5:])}"
    if len(parts) > 2 and parts[1] == "mid_block":
        if parts[2] == "resnets":
            return f"{parts[0]}.mid.block_{int(parts[3]) + 1}.{'.'.join(parts[4:])}"
        rest = ".".join(parts[4:])
        rest = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}.get(rest.rsplit(".", 1)[0], None)
        return f"{parts[0]}.mid.attn_1.{rest}.{parts[-1]}"
    return name


def vae_to_ldm(state_dict: dict[str, torch.Tensor], num_blocks: int = 4) -> dict[str, torch.Tensor]:
    """diffusers ``AutoencoderKL`` -> LDM ``first_stage_model.*`` (mid attention projections as 1x1 convs)."""
    out = {}
    for key, value in state_dict.items():
        ldm = _vae_name_to_ldm(key, num_blocks)
        if ".mid.attn_1." in ldm and value.ndim == 2:
            value = value[:, :, None, None]  # (out, in) -> (out, in, 1, 1): LDM stores them as convs
        out["first_stage_model." + ldm] = value
    return out


def clip_to_ldm(state_dict: dict[str, torch.Tensor], prefix: str = "cond_stage_model.transformer.") -> dict[str, torch.Tensor]:
    """transformers ``CLIPTextModel`` -> LDM (``cond_stage_model.transformer.text_model.*``; SDXL embedder 0:
    ``conditioner.embedders.0.transformer.text_model.*``). Works with and without a ``text_model.`` level."""
    return {prefix + "text_model." + k.removeprefix("text_model."): v for k, v in state_dict.items()}


_OPEN_CLIP_RENAMES = (
    ("text_model.encoder.layers.", "transformer.resblocks."), (".self_attn.out_proj", ".attn.out_proj"),
    (".layer_norm1", ".ln_1"), (".layer_norm2", ".ln_2"), (".mlp.fc1", ".mlp.c_fc"), (".mlp.fc2", ".mlp.c_proj"),
    ("text_model.final_layer_norm", "ln_final"), ("text_model.embeddings.token_embedding", "token_embedding"),
)


def open_clip_to_ldm(state_dict: dict[str, torch.Tensor], prefix: str = "conditioner.embedders.1.model.") -> dict[str, torch.Tensor]:
    """transformers ``CLIPTextModelWithProjection`` -> OpenCLIP layout of SDXL's second text encoder
    (fused ``attn.in_proj_{weight,bias}``, transposed ``text_projection``, ``positional_embedding``)."""
    out, fused = {}, {}
    for key, value in state_dict.items():
        if key == "text_projection.weight":
            out[prefix + "text_projection"] = value.T.contiguous()  # Linear (proj, hidden) -> matrix (hidden, proj)
        elif key.endswith("embeddings.position_embedding.weight"):
            out[prefix + "positional_embedding"] = value
        elif ".self_attn." in key and key.split(".")[-2] in ("q_proj", "k_proj", "v_proj"):
            layer = key.split(".self_attn.")[0].replace("text_model.encoder.layers.", "transformer.resblocks.")
            projection, kind = key.split(".")[-2:]
            fused.setdefault((layer, kind), {})[projection] = value
        else:
            for old, new in _OPEN_CLIP_RENAMES:
                key = key.replace(old, new)
            out[prefix + key] = value
    for (layer, kind), parts in fused.items():  # q, k, v stacked along dim 0, as nn.MultiheadAttention stores them
        out[f"{prefix}{layer}.attn.in_proj_{kind}"] = torch.cat([parts["q_proj"], parts["k_proj"], parts["v_proj"]])
    return out


# ---- processor-format LoRA keys (official MotionLoRA and v3 domain adapter) -----------------------------
# ``<module>.processor.to_{q,k,v,out}_lora.{down,up}.weight`` holds the pair merged into the parameter
# ``<module>.to_{q,k,v,out.0}.weight`` (``to_out`` is a ModuleList whose Linear is ``to_out.0``).
_PROCESSOR_KEY = re.compile(r"^(.+)\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")
_TARGET_KEY = re.compile(r"^(.+)\.(to_q|to_k|to_v|to_out\.0)\.weight$")


def parse_processor_lora_key(key: str) -> tuple[str, str] | None:
    """``<module>.processor.to_out_lora.down.weight`` -> (``<module>.to_out.0.weight``, ``"down"``);
    None for a key of any other form."""
    match = _PROCESSOR_KEY.match(key)
    if match is None:
        return None
    module, projection, part = match.groups()
    return f"{module}.{projection}{'.0' if projection == 'to_out' else ''}.weight", part


def processor_lora_key(target: str, part: str) -> str:
    """Inverse of ``parse_processor_lora_key``: (``<module>.to_out.0.weight``, ``"up"``) ->
    ``<module>.processor.to_out_lora.up.weight``. ``ValueError`` for other parameters or parts."""
    match = _TARGET_KEY.match(target)
    if match is None or part not in ("down", "up"):
        raise ValueError(f"no processor-LoRA key for {target!r} ({part!r})")
    module, projection = match.groups()
    return f"{module}.processor.{projection.removesuffix('.0')}_lora.{part}.weight"


def processor_lora_to_kohya(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Processor-format LoRA on UNet layers (``<module>.processor.to_q_lora.down.weight``, merged as
    ``W += up @ down``) -> kohya (``lora_unet_<module>_to_q.lora_down.weight`` / ``.lora_up.weight`` and
    ``.alpha`` = rank, so kohya's ``alpha / rank`` factor is 1 and the merge is the same)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        parsed = parse_processor_lora_key(key)
        assert parsed is not None, key
        target, part = parsed
        layer = "lora_unet_" + target.removesuffix(".weight").replace(".", "_")  # ...attn1.to_out.0 -> ..._attn1_to_out_0
        out[f"{layer}.lora_{part}.weight"] = value
        if part == "down":
            out[f"{layer}.alpha"] = torch.tensor(float(value.shape[0]), dtype=value.dtype)
    assert len(out) == len(state_dict) * 3 // 2, "every down needs its up"
    return out


# ---- diffusers / PEFT LoRA keys -> kohya names -------------------------------------------------------------
# One naming for every community LoRA: ``lora.kohya_layer_names`` owns the kohya names of a model's layers, and
# diffusers/PEFT files are renamed into them (``<module>`` with ``.`` -> ``_``), so one table decides what matches.
# The LoRA's own part names become kohya's (``lora_A`` is kohya's ``lora_down``, ``lora_B`` its ``lora_up``).
_DIFFUSERS_LORA_PARTS = (
    (".lora_A.weight", "lora_down.weight"), (".lora_B.weight", "lora_up.weight"),  # PEFT / diffusers >= 0.24
    (".lora.down.weight", "lora_down.weight"), (".lora.up.weight", "lora_up.weight"),  # diffusers 0.21-0.23 UNet
    (".lora_linear_layer.down.weight", "lora_down.weight"), (".lora_linear_layer.up.weight", "lora_up.weight"),  # text encoder
    (".alpha", "alpha"),  # diffusers' network_alphas, saved next to the weights
)
PEFT_PREFIX = "base_model.model."


def _text_encoder_layer(prefix: str, module: str) -> str:
    # kohya always spells the text_model level (transformers 5 modules have none)
    return prefix + ("text_model." + module.removeprefix("text_model.")).replace(".", "_")


def diffusers_lora_key_to_kohya(key: str, sdxl: bool = False, peft_text_prefix: str | None = None) -> tuple[str, str] | None:
    """One diffusers/PEFT LoRA key -> (kohya layer name, kohya part), or None for a key of no such form.

    ``unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight`` ->
    (``lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q``, ``lora_down.weight``);
    ``text_encoder.`` -> ``lora_te_`` (SDXL: ``lora_te1_``), ``text_encoder_2.`` -> ``lora_te2_``; PEFT's
    ``base_model.model.`` names the UNet, or a text encoder when the module is ``text_model.*`` (SDXL: which
    one is ``peft_text_prefix``, default the first). Processor-format keys (``<module>.processor.to_q_lora.down.weight``,
    optionally ``unet.``-prefixed) name the ``<module>.to_q`` layer."""
    te1 = "lora_te1_" if sdxl else "lora_te_"
    processor = parse_processor_lora_key(key.removeprefix("unet."))
    if processor is not None:
        target, part = processor
        return "lora_unet_" + target.removesuffix(".weight").replace(".", "_"), f"lora_{part}.weight"
    suffix, part = next(((s, p) for s, p in _DIFFUSERS_LORA_PARTS if key.endswith(s)), (None, None))
    if suffix is None:
        return None
    module = key[: -len(suffix)]
    if module.startswith("unet."):
        return "lora_unet_" + module.removeprefix("unet.").replace(".", "_"), part
    if module.startswith("text_encoder."):
        return _text_encoder_layer(te1, module.removeprefix("text_encoder.")), part
    if module.startswith("text_encoder_2."):
        return _text_encoder_layer("lora_te2_", module.removeprefix("text_encoder_2.")), part
    if module.startswith(PEFT_PREFIX):
        module = module.removeprefix(PEFT_PREFIX)
        if module.startswith(("text_model.", "encoder.layers.")):
            return _text_encoder_layer(peft_text_prefix or te1, module), part
        return "lora_unet_" + module.replace(".", "_"), part
    return None
