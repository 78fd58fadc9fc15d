"""Fabricated weight files with the exact key names of the real ones (tiny channels, random values).

Nothing here is downloaded: every file users have (official motion modules, MotionLoRAs, the v3 domain
adapter, SparseCtrl encoders, kohya LoRAs, single-file LDM checkpoints) is rebuilt from its documented
key layout (../shared/reference/official-animatediff.md §4), plus broken files for the error paths.
"""

from __future__ import annotations

import dataclasses
from math import prod
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from animatediff.components import BaseModel
from animatediff.weights.convert import clip_to_ldm, open_clip_to_ldm, unet_name_to_ldm, unet_to_ldm, vae_to_ldm
from animatediff.motion_module import MotionModules, sinusoidal_position_encoding

from conftest import randomize_, tiny_motion_config

# PE length stored in each official file (None: AnimateLCM stores none)
PE_LENGTH = {"v1": 24, "v2": 32, "v3": 32, "sdxl-beta": 32, "lightning": 32, "animatelcm": None}


def tiny_config(preset: str):
    """The tiny architecture of a preset; sdxl-beta gets 3 down blocks, as the real SDXL layout has."""
    config = tiny_motion_config(preset)
    if preset == "sdxl-beta":
        config = dataclasses.replace(config, block_out_channels=(32, 64, 64))
    return config


# ---- (a) official motion modules ------------------------------------------------------------------------
def official_motion_state_dict(
    preset: str = "v2", *, seed: int = 0, with_pe: bool = True, config_entry: bool = False, module_prefix: bool = False
) -> dict:
    """An official-layout motion module file's contents (``pos_encoder.pe`` buffers as in the release files)."""
    motion = randomize_(MotionModules(tiny_config(preset)), seed=seed)
    state = dict(motion.state_dict())
    length = PE_LENGTH[preset]
    if with_pe and length:
        for key in list(state):
            if key.endswith(".to_q.weight") and ".attention_blocks." in key:
                channels = state[key].shape[0]
                state[key.replace("to_q.weight", "pos_encoder.pe")] = sinusoidal_position_encoding(length, channels)
    if module_prefix:
        state = {"module." + k: v for k, v in state.items()}
    if config_entry:
        state["animatediff_config"] = ""  # the official "dummy key" (a non-tensor)
    return state


def diffusers_motion_state_dict(preset: str = "v2", *, seed: int = 0, pe_in=lambda key: True) -> dict:
    """A diffusers ``MotionAdapter`` file's contents: the official tensors renamed, plus the ``pos_embed.pe``
    buffer (1, 32, C) that ``save_pretrained`` writes in every transformer block, or only in those whose key
    prefix ``pe_in`` accepts (diffusers' copy of AnimateLCM holds only part of them)."""
    from animatediff.weights.convert import motion_module_to_diffusers

    state = motion_module_to_diffusers(official_motion_state_dict(preset, seed=seed))
    for key in list(state):
        if key.endswith(".attn1.to_q.weight"):
            block = key.removesuffix(".attn1.to_q.weight")  # ...motion_modules.k.transformer_blocks.j
            if pe_in(block):
                state[f"{block}.pos_embed.pe"] = sinusoidal_position_encoding(32, state[key].shape[0])
    return state


# ---- (b) MotionLoRA and domain adapter (processor format) ------------------------------------------------
def _processor_lora(targets: dict[str, nn.Linear], rank: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for prefix, layers in targets.items():
        for name, linear in layers.items():
            out[f"{prefix}.processor.{name}_lora.down.weight"] = torch.randn(rank, linear.in_features, generator=g) * 0.1
            out[f"{prefix}.processor.{name}_lora.up.weight"] = torch.randn(linear.out_features, rank, generator=g) * 0.1
    return out


def motion_lora_state_dict(preset: str = "v2", rank: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """A MotionLoRA (``v2_lora_*.ckpt``): down (r, C) / up (C, r) for to_q/k/v/out of every temporal attention."""
    motion = MotionModules(tiny_config(preset))
    targets = {}
    for name, module in motion.named_modules():
        if name.endswith(tuple(f"attention_blocks.{j}" for j in range(4))):
            targets[name] = {"to_q": module.to_q, "to_k": module.to_k, "to_v": module.to_v, "to_out": module.to_out[0]}
    return _processor_lora(targets, rank, seed)


def domain_adapter_state_dict(unet: nn.Module, rank: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """The v3 domain adapter: processor LoRA on every spatial attn1/attn2 (attn2 to_k/to_v read the text dim)."""
    targets = {}
    for name, module in unet.named_modules():
        if ".attentions." in name and name.endswith((".attn1", ".attn2")):
            targets[name] = {"to_q": module.to_q, "to_k": module.to_k, "to_v": module.to_v, "to_out": module.to_out[0]}
    return _processor_lora(targets, rank, seed)


# ---- (c) kohya LoRA -----------------------------------------------------------------------------------------
_UNET_TARGETS = (".to_q", ".to_k", ".to_v", ".to_out.0", ".proj_in", ".proj_out", ".ff.net.0.proj", ".ff.net.2")
_TEXT_TARGETS = (".q_proj", ".k_proj", ".v_proj", ".out_proj", ".fc1", ".fc2")


def _unet_wanted(name: str, module: nn.Module, conv: bool | str) -> bool:
    """Whether a LoRA of ``conv`` kind adapts this UNet layer: attention projections always; ``conv=True`` adds
    the ResNets' ``conv1``; ``conv="all"`` every layer kohya's LoCon (``conv_dim``) and LyCORIS adapt outside
    attention: ResNet ``conv1``/``conv2``/``conv_shortcut``/``time_emb_proj`` and the down/upsampler convs."""
    if not isinstance(module, (nn.Linear, nn.Conv2d)):
        return False
    if name.endswith(_UNET_TARGETS) and ".attentions." in name:
        return True
    if conv == "all":
        return (".resnets." in name or ".downsamplers." in name or ".upsamplers." in name) and \
            name.endswith((".conv1", ".conv2", ".conv_shortcut", ".time_emb_proj", ".conv"))
    return bool(conv) and isinstance(module, nn.Conv2d) and ".resnets." in name and name.endswith(".conv1")


def _kohya_layers(prefix: str, named: dict[str, nn.Module], rank: int, alpha: float | None, g) -> dict[str, torch.Tensor]:
    out = {}
    for kohya, module in named.items():
        if isinstance(module, nn.Linear):
            down, up = torch.randn(rank, module.in_features, generator=g), torch.randn(module.out_features, rank, generator=g)
        else:  # conv: down carries the kernel (LoCon), up is 1x1
            k = module.kernel_size
            down = torch.randn(rank, module.in_channels, *k, generator=g)
            up = torch.randn(module.out_channels, rank, 1, 1, generator=g)
        out[f"{prefix}{kohya}.lora_down.weight"] = down * 0.1
        out[f"{prefix}{kohya}.lora_up.weight"] = up * 0.1
        if alpha is not None:
            out[f"{prefix}{kohya}.alpha"] = torch.tensor(float(alpha))
    return out


def kohya_lora_state_dict(
    base: BaseModel, *, rank: int = 4, alpha: float | None = 2.0, style: str = "diffusers", text_encoder: bool = True,
    conv: bool | str = False, seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A kohya LoRA for ``base``: ``lora_unet_*`` in diffusers-style or LDM-style names, ``lora_te_*``
    (SDXL: ``lora_te1_``/``lora_te2_``), with optional ``.alpha`` and conv (LoCon) layers (``_unet_wanted``)."""
    g = torch.Generator().manual_seed(seed)
    unet_layers = {}
    for name, module in base.unet.named_modules():
        if _unet_wanted(name, module, conv):
            ldm_or_diffusers = unet_name_to_ldm(name, base.unet.config) if style == "ldm" else name
            unet_layers[ldm_or_diffusers.replace(".", "_")] = module
    out = _kohya_layers("lora_unet_", unet_layers, rank, alpha, g)
    if text_encoder:
        prefixes = ["lora_te1_", "lora_te2_"] if base.is_sdxl else ["lora_te_"]
        for prefix, encoder in zip(prefixes, base.text_encoders):
            layers = {("text_model." + n.removeprefix("text_model.")).replace(".", "_"): m
                      for n, m in encoder.named_modules() if n.endswith(_TEXT_TARGETS) and isinstance(m, nn.Linear)}
            out.update(_kohya_layers(prefix, layers, rank, alpha, g))
    return out


# ---- (c2) the other community LoRA formats: LyCORIS LoHa / LoKr, diffusers, PEFT ---------------------------
def lora_targets(base: BaseModel, *, text_encoder: bool = True, conv: bool | str = False) -> dict[str, tuple[str, nn.Module]]:
    """The layers ``kohya_lora_state_dict`` targets: kohya name -> (diffusers module name with its model prefix
    ``unet.``/``text_encoder.``/``text_encoder_2.``, module)."""
    out = {}
    for name, module in base.unet.named_modules():
        if _unet_wanted(name, module, conv):
            out["lora_unet_" + name.replace(".", "_")] = ("unet." + name, module)
    if text_encoder:
        prefixes = [("lora_te1_", "text_encoder."), ("lora_te2_", "text_encoder_2.")] if base.is_sdxl else [("lora_te_", "text_encoder.")]
        for (kohya, model), encoder in zip(prefixes, base.text_encoders):
            for n, m in encoder.named_modules():
                if n.endswith(_TEXT_TARGETS) and isinstance(m, nn.Linear):
                    full = "text_model." + n.removeprefix("text_model.")
                    out[kohya + full.replace(".", "_")] = (model + full, m)
    return out


def _shape_of(module: nn.Module) -> tuple[int, int, tuple[int, ...]]:
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features, ()
    return module.out_channels, module.in_channels, tuple(module.kernel_size)


def loha_state_dict(base: BaseModel, *, rank: int = 4, alpha: float | None = 2.0, tucker: bool = False,
                    conv: bool | str = False, text_encoder: bool = True, seed: int = 0) -> dict[str, torch.Tensor]:
    """A LyCORIS LoHa: ``hada_w1_a`` (out, r), ``hada_w1_b`` (r, in*k), the same for w2; with ``tucker``, 3x3 convs
    get ``hada_t1/t2`` (r, r, 3, 3) cores and ``w*_a`` (r, out), ``w*_b`` (r, in), as LyCORIS saves them."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g) * 0.3  # noqa: E731
    out = {}
    for kohya, (_, module) in lora_targets(base, text_encoder=text_encoder, conv=conv).items():
        o, i, k = _shape_of(module)
        if tucker and k and k != (1, 1):
            for w in ("1", "2"):
                out[f"{kohya}.hada_t{w}"], out[f"{kohya}.hada_w{w}_a"], out[f"{kohya}.hada_w{w}_b"] = r(rank, rank, *k), r(rank, o), r(rank, i)
        else:
            for w in ("1", "2"):
                out[f"{kohya}.hada_w{w}_a"], out[f"{kohya}.hada_w{w}_b"] = r(o, rank), r(rank, i * prod(k))
        if alpha is not None:
            out[f"{kohya}.alpha"] = torch.tensor(float(alpha))
    return out


def _split(n: int) -> tuple[int, int]:
    """n = a * b with a <= b as close as possible (LyCORIS' default factorisation)."""
    a = max(d for d in range(1, int(n**0.5) + 1) if n % d == 0)
    return a, n // a


def lokr_state_dict(base: BaseModel, *, rank: int = 2, alpha: float | None = 3.0, mode: str = "w2",
                    conv: bool | str = False, text_encoder: bool = True, seed: int = 0) -> dict[str, torch.Tensor]:
    """A LyCORIS LoKr with out = l*k, in = m*n: ``lokr_w1`` (l, m) full or ``lokr_w1_a/_b`` (mode ``both``);
    ``lokr_w2`` (k, n[, kh, kw]) full (mode ``full``) or ``lokr_w2_a`` (k, r) / ``lokr_w2_b`` (r, n*kh*kw)
    (modes ``w2``, ``both``); mode ``tucker``: 3x3 convs get ``lokr_t2`` (r, r, 3, 3), ``w2_a`` (r, k), ``w2_b`` (r, n)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g) * 0.3  # noqa: E731
    out = {}
    for kohya, (_, module) in lora_targets(base, text_encoder=text_encoder, conv=conv).items():
        o, i, k = _shape_of(module)
        (l, kk), (m, n) = _split(o), _split(i)
        if mode == "both":
            out[f"{kohya}.lokr_w1_a"], out[f"{kohya}.lokr_w1_b"] = r(l, rank), r(rank, m)
        else:
            out[f"{kohya}.lokr_w1"] = r(l, m)
        if mode == "full":
            out[f"{kohya}.lokr_w2"] = r(kk, n, *k)
        elif mode == "tucker" and k and k != (1, 1):
            out[f"{kohya}.lokr_t2"], out[f"{kohya}.lokr_w2_a"], out[f"{kohya}.lokr_w2_b"] = r(rank, rank, *k), r(rank, kk), r(rank, n)
        else:
            out[f"{kohya}.lokr_w2_a"], out[f"{kohya}.lokr_w2_b"] = r(kk, rank), r(rank, n * prod(k))
        if alpha is not None:
            out[f"{kohya}.alpha"] = torch.tensor(float(alpha))
    return out


def kohya_to_diffusers_lora(kohya: dict[str, torch.Tensor], base: BaseModel, style: str = "diffusers") -> dict[str, torch.Tensor]:
    """The same tensors as a diffusers/PEFT LoRA file (a kohya LoRA of ``kohya_lora_state_dict`` with diffusers-style
    layer names). ``style``: ``diffusers`` (``unet.<m>.lora_A.weight``, ``<prefix>.<m>.alpha``), ``old``
    (``unet.<m>.lora.down.weight``, ``text_encoder.<m>.lora_linear_layer.down.weight``), ``peft``
    (``base_model.model.<m>.lora_A.weight``, without the model prefix; no alphas: PEFT keeps them in adapter_config.json)."""
    names = {kohya_name: module_name for kohya_name, (module_name, _) in lora_targets(base, conv="all").items()}
    out = {}
    for key, value in kohya.items():
        layer, _, part = key.partition(".")
        module = names[layer]
        if style == "peft":
            if part == "alpha":
                continue
            module = "base_model.model." + module.split(".", 1)[1]
        if part == "alpha":
            out[f"{module}.alpha"] = value
        elif style == "old":
            down_up = "down" if part == "lora_down.weight" else "up"
            out[f"{module}.{'lora' if module.startswith('unet.') else 'lora_linear_layer'}.{down_up}.weight"] = value
        else:
            out[f"{module}.lora_{'A' if part == 'lora_down.weight' else 'B'}.weight"] = value
    return out


# ---- (d) single-file LDM checkpoints --------------------------------------------------------------------
def ldm_checkpoint(base: BaseModel) -> dict[str, torch.Tensor]:
    """``base`` in the single-file layout (SD1.5 ``v1-5-pruned`` style or SDXL ``sd_xl_base_1.0`` style)."""
    out = unet_to_ldm(base.unet.state_dict(), base.unet.config)
    out.update(vae_to_ldm(base.vae.state_dict(), len(base.vae.config.block_out_channels)))
    if base.is_sdxl:
        out.update(clip_to_ldm(base.text_encoder.state_dict(), "conditioner.embedders.0.transformer."))
        out.update(open_clip_to_ldm(base.text_encoder_2.state_dict(), "conditioner.embedders.1.model."))
    else:
        out.update(clip_to_ldm(base.text_encoder.state_dict(), "cond_stage_model.transformer."))
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


# ---- (e) SparseCtrl ------------------------------------------------------------------------------------------
def sparsectrl_state_dict(unet: nn.Module, variant: str = "rgb", seed: int = 0) -> dict[str, torch.Tensor]:
    """A SparseCtrl encoder: the UNet's encoder half, single-attention motion modules in the down blocks
    (with ``pos_encoder.pe`` of length 32), the condition embedding, and zero 1x1 output convs."""
    g = torch.Generator().manual_seed(seed)
    keep = ("conv_in.", "time_embedding.", "down_blocks.", "mid_block.")
    out = {k: v.clone() for k, v in unet.state_dict().items() if k.startswith(keep)}
    config = dataclasses.replace(tiny_motion_config("v3"), num_attention_blocks=1, mid_block=False)
    for key, value in MotionModules(config).state_dict().items():
        if key.startswith("down_blocks."):
            out[key] = value.clone()
            if key.endswith("attention_blocks.0.to_q.weight"):
                out[key.replace("to_q.weight", "pos_encoder.pe")] = sinusoidal_position_encoding(32, value.shape[0])
    c0 = unet.config.block_out_channels[0]
    if variant == "rgb":  # latent condition (4 channels) + mask
        out["controlnet_cond_embedding.weight"] = torch.zeros(c0, 5, 3, 3)
        out["controlnet_cond_embedding.bias"] = torch.zeros(c0)
    else:  # scribble: RGB + mask through a small conv stack
        widths = [(16, 4), (16, 16), (32, 16), (32, 32), (96, 32), (96, 96), (256, 96)]
        out["controlnet_cond_embedding.conv_in.weight"] = torch.randn(16, 4, 3, 3, generator=g)
        out["controlnet_cond_embedding.conv_in.bias"] = torch.zeros(16)
        for i, (o, c) in enumerate(widths[1:]):
            out[f"controlnet_cond_embedding.blocks.{i}.weight"] = torch.randn(o, c, 3, 3, generator=g)
            out[f"controlnet_cond_embedding.blocks.{i}.bias"] = torch.zeros(o)
        out["controlnet_cond_embedding.conv_out.weight"] = torch.zeros(c0, 256, 3, 3)
        out["controlnet_cond_embedding.conv_out.bias"] = torch.zeros(c0)
    skips = [c0] + [c for c in unet.config.block_out_channels for _ in range(unet.config.layers_per_block + 1)]
    for i, c in enumerate(skips[: 1 + len(unet.config.block_out_channels) * (unet.config.layers_per_block + 1) - 1]):
        out[f"controlnet_down_blocks.{i}.weight"] = torch.zeros(c, c, 1, 1)
        out[f"controlnet_down_blocks.{i}.bias"] = torch.zeros(c)
    c = unet.config.block_out_channels[-1]
    out["controlnet_mid_block.weight"] = torch.zeros(c, c, 1, 1)
    out["controlnet_mid_block.bias"] = torch.zeros(c)
    return out


# ---- (f) broken files ------------------------------------------------------------------------------------------
class CustomObject:
    """A class the safe unpickler does not know: loading it would need code execution."""

    def __init__(self):
        self.payload = "anything"


def write_code_execution_pickle(path: Path) -> Path:
    torch.save({"state_dict": {"w": torch.zeros(2)}, "callback": CustomObject()}, path)
    return path


def write_truncated_safetensors(path: Path) -> Path:
    save_file({"w": torch.randn(64, 64)}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_corrupt(path: Path, seed: int = 0) -> Path:
    g = torch.Generator().manual_seed(seed)
    path.write_bytes(bytes(torch.randint(0, 256, (4096,), generator=g, dtype=torch.uint8).tolist()))
    return path


BROKEN_DOWNLOADS = {  # what a failed download leaves behind -> words the error must use
    "html": ("<!DOCTYPE html>\n<html lang=en><head><title>Hugging Face - Sign in</title></head><body></body></html>\n", "HTML page"),
    "lfs": ("version https://git-lfs.github.com/spec/v1\noid sha256:" + "ab" * 32 + "\nsize 1815672016\n", "Git LFS pointer"),
    "empty": ("", "is empty"),
    "json": ('{"error": "Repository Not Found for url: https://huggingface.co/api/models/x"}', "JSON file"),
    "text": ("Access denied\n", "text file"),
}


def write_broken_download(path: Path, kind: str) -> Path:
    """A weight-file name holding what a failed download leaves: a web page, a Git LFS pointer, nothing, JSON, text."""
    Path(path).write_text(BROKEN_DOWNLOADS[kind][0])
    return Path(path)


# ---- writing ------------------------------------------------------------------------------------------------
def save(state: dict, path: Path, wrapper: str | None = None) -> Path:
    """``.safetensors`` via safetensors (tensors only), anything else via ``torch.save`` (optionally wrapped)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}, str(path))
    else:
        torch.save({wrapper: state} if wrapper else state, path)
    return path
