"""Write stand-ins for the files users have, with the real key layouts and random weights (no downloads).

    python scripts/fabricate_checkpoints.py OUT_DIR [--base sd15|sdxl] [--size full|tiny] [--motion-preset v2|v3]

Writes into OUT_DIR, for ``--base sd15`` (the default):
- ``sd15.safetensors``      single-file LDM SD1.5 checkpoint (fp16; full size: 1.07 B params, ~2.1 GB)
- ``mm_sd_v15_v2.ckpt``     v2 motion module, official layout with ``pos_encoder.pe`` buffers (torch.save, fp32)
- ``lora.safetensors``      kohya LoRA for SD1.5 UNet + text encoder (rank 4, alpha 4; diffusers-style names)
- ``v2_lora_ZoomIn.ckpt``   v2 MotionLoRA (rank 4), official processor format
with ``--motion-preset v3`` (SD1.5 only): ``v3_sd15_mm.ckpt`` (v3 motion module: no mid block, ``pos_encoder.pe``
of length 32; fp32, full size ~1.7 GB) instead of the v2 module and its MotionLoRA, and the two SparseCtrl encoders
``v3_sd15_sparsectrl_rgb.ckpt`` / ``v3_sd15_sparsectrl_scribble.ckpt`` (official layout in a ``controlnet`` wrapper,
``pos_encoder.pe`` of length 32; fp32, full size 497 M params, ~1.9 GB each; built in memory, one at a time);
for ``--base sdxl``:
- ``sdxl.safetensors``         single-file SDXL checkpoint, ``sd_xl_base_1.0`` layout (bf16; full size: 3.5 B
                               params, ~7 GB): ``model.diffusion_model.*`` (with ``label_emb``),
                               ``first_stage_model.*``, ``conditioner.embedders.0.transformer.text_model.*`` (CLIP L)
                               and ``conditioner.embedders.1.model.*`` (OpenCLIP bigG: fused ``in_proj``)
- ``mm_sdxl_v10_beta.ckpt``    SDXL-beta motion module, official layout with ``pos_encoder.pe`` (fp32, ~0.9 GB)
- ``sdxl_lora.safetensors``    kohya SDXL LoRA: ``lora_unet_*`` (LDM-style names, as kohya writes them for SDXL),
                               ``lora_te1_*`` / ``lora_te2_*`` (rank 4, alpha 4)
With ``--size tiny`` the same topology at toy widths, plus ``sd15/`` or ``sdxl/`` (a diffusers-style folder
holding the tiny configs and weights; load the single file with ``load_base_model(..., config_dir=OUT/sdxl)``
or ``animatediff generate --model OUT/sdxl.safetensors --model-config OUT/sdxl``).

Tensors are generated and written one at a time, so peak memory stays far below the file sizes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import struct
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from animatediff.components import package_data
from animatediff.generation.sparsectrl import SparseCtrlEncoder
from animatediff.weights.convert import clip_to_ldm, open_clip_to_ldm, unet_name_to_ldm, unet_to_ldm, vae_to_ldm
from animatediff.motion_module import MotionModules, sinusoidal_position_encoding
from animatediff.presets import MOTION_PRESETS

logger = logging.getLogger("fabricate")

_TINY_VAE = dict(block_out_channels=[8, 8, 16, 16], layers_per_block=1, norm_num_groups=4, sample_size=64)
_TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, projection_dim=32)
TINY = {
    "sd15": {
        "unet": dict(block_out_channels=[32, 32, 64, 64], cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8, sample_size=8),
        "vae": _TINY_VAE,
        "text_encoder": _TINY_TEXT,
    },
    "sdxl": {  # SDXL's topology (3 blocks, 2 layers each, several transformer layers) at toy widths
        "unet": dict(block_out_channels=[32, 64, 64], cross_attention_dim=32 + 32, attention_head_dim=8, norm_num_groups=8,
                     sample_size=8, transformer_layers_per_block=[1, 1, 2], addition_time_embed_dim=8,
                     projection_class_embeddings_input_dim=32 + 6 * 8),  # pooled text (te2 projection) + 6 size ids
        "vae": _TINY_VAE,
        "text_encoder": _TINY_TEXT,
        "text_encoder_2": _TINY_TEXT,
    },
}
# What each base writes: checkpoint dtype, motion preset and file names.
BASES = {
    "sd15": dict(dtype=torch.float16, preset="v2", checkpoint="sd15.safetensors", motion="mm_sd_v15_v2.ckpt", lora="lora.safetensors"),
    "sdxl": dict(dtype=torch.bfloat16, preset="sdxl-beta", checkpoint="sdxl.safetensors", motion="mm_sdxl_v10_beta.ckpt",
                 lora="sdxl_lora.safetensors"),
}
_TEXT_PREFIXES = {"sd15": ("cond_stage_model.transformer.",), "sdxl": ("conditioner.embedders.0.transformer.", "conditioner.embedders.1.model.")}
_DTYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32"}


def random_tensor(key: str, shape: tuple[int, ...], seed: int, dtype: torch.dtype) -> torch.Tensor:
    """Norm scales 1, biases 0, everything else N(0, 0.02): activations stay finite through the network."""
    leaf = key.rsplit(".", 1)[-1]
    if "norm" in key or ".ln_" in key or "layer_norm" in key:
        value = torch.ones(shape) if leaf == "weight" else torch.zeros(shape)
    elif leaf.endswith("bias"):  # "in_proj_bias" too (OpenCLIP's fused q/k/v)
        value = torch.zeros(shape)
    else:
        value = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 0.02
    return value.to(dtype)


def write_safetensors(path: Path, shapes: dict[str, tuple[int, ...]], make, dtype: torch.dtype) -> None:
    """Stream a ``.safetensors`` file: header (8-byte length + JSON), then each tensor's bytes in order."""
    item = torch.empty((), dtype=dtype).element_size()
    header, offset = {}, 0
    for key, shape in shapes.items():
        size = item * int(torch.Size(shape).numel())
        header[key] = {"dtype": _DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the format pads the header to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for i, (key, shape) in enumerate(shapes.items()):
            # bytes via uint8: numpy has no bfloat16
            f.write(make(key, shape, i).reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())


def _configs(base: str, size: str) -> dict[str, dict]:
    configs = {c: json.loads(package_data(base, c, "config.json").read_text()) for c in TINY[base]}
    if size == "tiny":
        for component, overrides in TINY[base].items():
            configs[component].update(overrides)
    return configs


def _text_config(config: dict) -> CLIPTextConfig:
    return CLIPTextConfig(**{k: v for k, v in config.items() if not k.startswith("_")})


def _meta_models(configs: dict[str, dict]) -> dict[str, nn.Module]:
    with init_empty_weights(include_buffers=True):
        models = {"unet": UNet2DConditionModel.from_config(configs["unet"]), "vae": AutoencoderKL.from_config(configs["vae"]),
                  "text_encoder": CLIPTextModel(_text_config(configs["text_encoder"]))}
        if "text_encoder_2" in configs:
            models["text_encoder_2"] = CLIPTextModelWithProjection(_text_config(configs["text_encoder_2"]))
    return models


def _ldm_names(base: str, configs: dict[str, dict], models: dict[str, nn.Module]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """LDM key -> (name that decides its init, shape). Mostly the diffusers key, since LDM spells norms
    "in_layers.0"; OpenCLIP keys name themselves ("ln_1", "in_proj_bias"), its fused q/k/v have no one source."""
    converters = {
        "unet": lambda sd: unet_to_ldm(sd, configs["unet"]),
        "vae": lambda sd: vae_to_ldm(sd, len(configs["vae"]["block_out_channels"])),
        "text_encoder": lambda sd: clip_to_ldm(sd, _TEXT_PREFIXES[base][0]),
    }
    names = {}
    for component, to_ldm in converters.items():
        for key, value in models[component].state_dict().items():
            (ldm_key, ldm_value), = to_ldm({key: value}).items()
            names[ldm_key] = (key, tuple(ldm_value.shape))
    if "text_encoder_2" in models:
        prefix = _TEXT_PREFIXES[base][1]
        state = {k: v for k, v in models["text_encoder_2"].state_dict().items() if not k.endswith("position_ids")}
        for ldm_key, ldm_value in open_clip_to_ldm(state, prefix).items():  # meta tensors: shapes only
            names[ldm_key] = (ldm_key, tuple(ldm_value.shape))
        names[prefix + "logit_scale"] = (prefix + "logit_scale", ())  # in every release file; unused for text
    return names


def write_checkpoint(out: Path, base: str, configs: dict[str, dict]) -> Path:
    names = _ldm_names(base, configs, _meta_models(configs))
    dtype = BASES[base]["dtype"]

    def make(key, shape, i):
        if key.endswith("logit_scale"):
            return torch.tensor(math.log(100.0), dtype=dtype)  # OpenCLIP's trained value
        return random_tensor(names[key][0], shape, i, dtype)

    path = out / BASES[base]["checkpoint"]
    write_safetensors(path, {k: shape for k, (_, shape) in names.items()}, make, dtype)
    return path


# Other motion presets a base can be fabricated with (``--motion-preset``), by their official file names.
EXTRA_MOTION = {"sd15": {"v3": "v3_sd15_mm.ckpt"}}


def write_motion_module(out: Path, base: str, configs: dict[str, dict], preset: str | None = None) -> tuple[Path, MotionModules]:
    unet = configs["unet"]
    preset = preset or BASES[base]["preset"]
    config = dataclasses.replace(MOTION_PRESETS[preset], block_out_channels=tuple(unet["block_out_channels"]),
                                 layers_per_block=unet["layers_per_block"])
    with init_empty_weights(include_buffers=True):
        meta = MotionModules(config)
    state = {}
    for i, (key, value) in enumerate(meta.state_dict().items()):
        state[key] = random_tensor(key, tuple(value.shape), 10_000 + i, torch.float32)
        if key.endswith("attention_blocks.0.to_q.weight") or key.endswith("attention_blocks.1.to_q.weight"):
            state[key.replace("to_q.weight", "pos_encoder.pe")] = sinusoidal_position_encoding(config.position_encoding_length, value.shape[0])
    path = out / (BASES[base]["motion"] if preset == BASES[base]["preset"] else EXTRA_MOTION[base][preset])
    torch.save(state, path)
    return path, meta


def write_sparsectrl(out: Path, configs: dict[str, dict], flavour: str) -> Path:
    """A SparseCtrl encoder for the UNet of ``configs``: random weights (the zero-initialised parts too, so that
    it acts), ``pos_encoder.pe`` buffers, the official ``{"controlnet": state_dict}`` wrapper."""
    with init_empty_weights(include_buffers=True):
        unet = UNet2DConditionModel.from_config(configs["unet"])
        meta = SparseCtrlEncoder(unet, flavour, 4 if flavour == "rgb" else 3).model
    state = {}
    for i, (key, value) in enumerate(meta.state_dict().items()):
        state[key] = random_tensor(key, tuple(value.shape), 20_000 + i, torch.float32)
        if key.endswith("attention_blocks.0.to_q.weight"):
            state[key.replace("to_q.weight", "pos_encoder.pe")] = sinusoidal_position_encoding(32, value.shape[0])
    path = out / f"v3_sd15_sparsectrl_{flavour}.ckpt"
    torch.save({"controlnet": state}, path)
    return path


_UNET_TARGETS = (".to_q", ".to_k", ".to_v", ".to_out.0", ".proj_in", ".proj_out", ".ff.net.0.proj", ".ff.net.2")
_TEXT_TARGETS = (".q_proj", ".k_proj", ".v_proj", ".out_proj", ".fc1", ".fc2")


def write_lora(out: Path, base: str, configs: dict[str, dict], rank: int = 4) -> Path:
    """kohya names: SD1.5 files spell UNet layers the diffusers way, SDXL files (sd-scripts) the LDM way."""
    models = _meta_models(configs)
    layers: dict[str, nn.Module] = {}
    for name, module in models["unet"].named_modules():
        if ".attentions." in name and isinstance(module, (nn.Linear, nn.Conv2d)) and name.endswith(_UNET_TARGETS):
            layer = unet_name_to_ldm(name, configs["unet"]) if base == "sdxl" else name
            layers["lora_unet_" + layer.replace(".", "_")] = module
    encoders = ("text_encoder", "text_encoder_2") if base == "sdxl" else ("text_encoder",)
    prefixes = ("lora_te1_", "lora_te2_") if base == "sdxl" else ("lora_te_",)
    for prefix, component in zip(prefixes, encoders):
        for name, module in models[component].named_modules():
            if isinstance(module, nn.Linear) and name.endswith(_TEXT_TARGETS):
                layers[prefix + ("text_model." + name.removeprefix("text_model.")).replace(".", "_")] = module
    shapes = {}
    for layer, module in layers.items():
        conv = isinstance(module, nn.Conv2d)
        fan_in, fan_out = (module.in_channels, module.out_channels) if conv else (module.in_features, module.out_features)
        shapes[f"{layer}.alpha"] = ()
        shapes[f"{layer}.lora_down.weight"] = (rank, fan_in, 1, 1) if conv else (rank, fan_in)
        shapes[f"{layer}.lora_up.weight"] = (fan_out, rank, 1, 1) if conv else (fan_out, rank)

    def make(key, shape, i):
        if key.endswith(".alpha"):
            return torch.tensor(float(rank), dtype=torch.float16)
        return (torch.randn(shape, generator=torch.Generator().manual_seed(20_000 + i)) * 0.01).to(torch.float16)

    path = out / BASES[base]["lora"]
    write_safetensors(path, shapes, make, torch.float16)
    return path


def write_motion_lora(out: Path, meta: MotionModules, rank: int = 4) -> Path:
    state = {}
    for i, (name, module) in enumerate(meta.named_modules()):
        if name.endswith((".attention_blocks.0", ".attention_blocks.1")):
            for j, (short, linear) in enumerate((("to_q", module.to_q), ("to_k", module.to_k), ("to_v", module.to_v), ("to_out", module.to_out[0]))):
                g = torch.Generator().manual_seed(30_000 + 8 * i + j)
                state[f"{name}.processor.{short}_lora.down.weight"] = torch.randn(rank, linear.in_features, generator=g) * 0.01
                state[f"{name}.processor.{short}_lora.up.weight"] = torch.randn(linear.out_features, rank, generator=g) * 0.01
    path = out / "v2_lora_ZoomIn.ckpt"
    torch.save(state, path)
    return path


def write_tiny_folder(out: Path, base: str, configs: dict[str, dict]) -> None:
    """The tiny configs and weights as a diffusers-style folder (``load_base_model(OUT/<base>)``)."""
    from animatediff.weights.load import load_base_model

    folder = _write_configs(out / base, configs)
    model = load_base_model(str(out / BASES[base]["checkpoint"]), config_dir=folder)
    model.unet.save_pretrained(folder / "unet")
    model.vae.save_pretrained(folder / "vae")
    model.text_encoder.save_pretrained(folder / "text_encoder")
    if model.text_encoder_2 is not None:
        model.text_encoder_2.save_pretrained(folder / "text_encoder_2")


def _write_configs(folder: Path, configs: dict[str, dict]) -> Path:
    for component, config in configs.items():
        (folder / component).mkdir(parents=True, exist_ok=True)
        (folder / component / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def fabricate(out_dir: Path, base: str = "sd15", size: str = "full", motion_preset: str | None = None) -> list[Path]:
    """Write ``base``'s files (see the module docstring) into ``out_dir``; returns their paths. ``motion_preset``:
    the base's own (v2 for SD1.5) when None, or one of ``EXTRA_MOTION[base]`` (raises ``ValueError`` otherwise)."""
    if motion_preset not in (None, BASES[base]["preset"], *EXTRA_MOTION.get(base, {})):
        raise ValueError(f"--motion-preset {motion_preset}: {base} takes {', '.join([BASES[base]['preset'], *EXTRA_MOTION.get(base, {})])}")
    out_dir.mkdir(parents=True, exist_ok=True)
    configs = _configs(base, size)
    paths = [write_checkpoint(out_dir, base, configs)]
    mm_path, meta = write_motion_module(out_dir, base, configs, motion_preset)
    paths += [mm_path, write_lora(out_dir, base, configs)]
    if base == "sd15" and motion_preset in (None, "v2"):  # MotionLoRAs are v2's
        paths.append(write_motion_lora(out_dir, meta))
    if base == "sd15" and motion_preset == "v3":  # the v3 release's SparseCtrl encoders
        paths += [write_sparsectrl(out_dir, configs, flavour) for flavour in ("rgb", "scribble")]
    if size == "tiny":
        write_tiny_folder(out_dir, base, configs)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--base", choices=tuple(BASES), default="sd15")
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--motion-preset", help="v3 (SD1.5): write v3_sd15_mm.ckpt instead of the v2 module and its MotionLoRA")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        paths = fabricate(args.out_dir, args.base, args.size, args.motion_preset)
    except ValueError as error:
        parser.error(str(error))
    for path in paths:
        logger.info("wrote %s (%.1f MiB)", path, path.stat().st_size / 2**20)


if __name__ == "__main__":
    main()
