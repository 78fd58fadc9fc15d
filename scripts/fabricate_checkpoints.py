"""Write stand-ins for the files users have, with the real key layouts and random weights (no downloads).

    python scripts/fabricate_checkpoints.py OUT_DIR [--size full|tiny]

Writes into OUT_DIR:
- ``sd15.safetensors``      single-file LDM SD1.5 checkpoint (fp16; full size: 1.07 B params, ~2.1 GB)
- ``mm_sd_v15_v2.ckpt``     v2 motion module, official layout with ``pos_encoder.pe`` buffers (torch.save, fp32)
- ``lora.safetensors``      kohya LoRA for SD1.5 UNet + text encoder (rank 4, alpha 4)
- ``v2_lora_ZoomIn.ckpt``   v2 MotionLoRA (rank 4), official processor format
With ``--size tiny`` the same topology at toy widths, plus ``sd15/`` (a diffusers folder holding the tiny
configs and weights; load the single file with ``load_base_model(..., config_dir=OUT/sd15)``).

Tensors are generated and written one at a time, so peak memory stays far below the file sizes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import struct
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel

from animatediff.components import package_data
from animatediff.weights.convert import clip_to_ldm, unet_to_ldm, vae_to_ldm
from animatediff.motion_module import MotionModules, sinusoidal_position_encoding
from animatediff.presets import MOTION_PRESETS

logger = logging.getLogger("fabricate")

TINY = {
    "unet": dict(block_out_channels=[32, 32, 64, 64], cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8, sample_size=8),
    "vae": dict(block_out_channels=[8, 8, 16, 16], layers_per_block=1, norm_num_groups=4, sample_size=64),
    "text_encoder": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, projection_dim=32),
}
_DTYPES = {torch.float16: "F16", torch.float32: "F32"}


def random_tensor(key: str, shape: tuple[int, ...], seed: int, dtype: torch.dtype) -> torch.Tensor:
    """Norm scales 1, biases 0, everything else N(0, 0.02): activations stay finite through the network."""
    leaf = key.rsplit(".", 1)[-1]
    if "norm" in key or ".ln_" in key or "layer_norm" in key:
        value = torch.ones(shape) if leaf == "weight" else torch.zeros(shape)
    elif leaf == "bias":
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
            f.write(make(key, shape, i).reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())


def _configs(size: str) -> dict[str, dict]:
    configs = {c: json.loads(package_data("sd15", c, "config.json").read_text()) for c in ("unet", "vae", "text_encoder")}
    if size == "tiny":
        for component, overrides in TINY.items():
            configs[component].update(overrides)
    return configs


def _meta_models(configs: dict[str, dict]):
    with init_empty_weights(include_buffers=True):
        unet = UNet2DConditionModel.from_config(configs["unet"])
        vae = AutoencoderKL.from_config(configs["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in configs["text_encoder"].items() if not k.startswith("_")}))
    return unet, vae, text_encoder


def write_sd15(out: Path, configs: dict[str, dict]) -> Path:
    unet, vae, text_encoder = _meta_models(configs)
    # LDM key -> (diffusers key, shape); the diffusers name decides the init (LDM spells norms "in_layers.0")
    names = {}
    for module, to_ldm in ((unet, lambda sd: unet_to_ldm(sd, configs["unet"])),
                           (vae, lambda sd: vae_to_ldm(sd, len(configs["vae"]["block_out_channels"]))), (text_encoder, clip_to_ldm)):
        for key, value in module.state_dict().items():
            (ldm_key, ldm_value), = to_ldm({key: value}).items()
            names[ldm_key] = (key, tuple(ldm_value.shape))
    path = out / "sd15.safetensors"
    write_safetensors(path, {k: shape for k, (_, shape) in names.items()},
                      lambda key, shape, i: random_tensor(names[key][0], shape, i, torch.float16), torch.float16)
    return path


def write_motion_module(out: Path, configs: dict[str, dict]) -> tuple[Path, MotionModules]:
    config = dataclasses.replace(MOTION_PRESETS["v2"], block_out_channels=tuple(configs["unet"]["block_out_channels"]))
    with init_empty_weights(include_buffers=True):
        meta = MotionModules(config)
    state = {}
    for i, (key, value) in enumerate(meta.state_dict().items()):
        state[key] = random_tensor(key, tuple(value.shape), 10_000 + i, torch.float32)
        if key.endswith("attention_blocks.0.to_q.weight") or key.endswith("attention_blocks.1.to_q.weight"):
            state[key.replace("to_q.weight", "pos_encoder.pe")] = sinusoidal_position_encoding(32, value.shape[0])
    path = out / "mm_sd_v15_v2.ckpt"
    torch.save(state, path)
    return path, meta


def write_lora(out: Path, configs: dict[str, dict], rank: int = 4) -> Path:
    unet, _, text_encoder = _meta_models(configs)
    layers: dict[str, nn.Module] = {}
    for name, module in unet.named_modules():
        if ".attentions." in name and isinstance(module, (nn.Linear, nn.Conv2d)) and name.endswith(
            (".to_q", ".to_k", ".to_v", ".to_out.0", ".proj_in", ".proj_out", ".ff.net.0.proj", ".ff.net.2")
        ):
            layers["lora_unet_" + name.replace(".", "_")] = module
    for name, module in text_encoder.named_modules():
        if isinstance(module, nn.Linear) and name.endswith((".q_proj", ".k_proj", ".v_proj", ".out_proj", ".fc1", ".fc2")):
            layers["lora_te_" + ("text_model." + name.removeprefix("text_model.")).replace(".", "_")] = module
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

    path = out / "lora.safetensors"
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


def write_tiny_folder(out: Path, configs: dict[str, dict]) -> None:
    """The tiny configs and weights as a diffusers folder (``load_base_model(OUT/sd15)``)."""
    from animatediff.weights.load import load_base_model

    model = load_base_model(str(out / "sd15.safetensors"), config_dir=_write_configs(out / "sd15", configs))
    model.unet.save_pretrained(out / "sd15" / "unet")
    model.vae.save_pretrained(out / "sd15" / "vae")
    model.text_encoder.save_pretrained(out / "sd15" / "text_encoder")


def _write_configs(folder: Path, configs: dict[str, dict]) -> Path:
    for component, config in configs.items():
        (folder / component).mkdir(parents=True, exist_ok=True)
        (folder / component / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    configs = _configs(args.size)
    paths = [write_sd15(args.out_dir, configs)]
    mm_path, meta = write_motion_module(args.out_dir, configs)
    paths += [mm_path, write_lora(args.out_dir, configs), write_motion_lora(args.out_dir, meta)]
    if args.size == "tiny":
        write_tiny_folder(args.out_dir, configs)
    for path in paths:
        logger.info("wrote %s (%.1f MiB)", path, path.stat().st_size / 2**20)


if __name__ == "__main__":
    main()
