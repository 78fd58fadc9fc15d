"""Tiny but real Stable Diffusion components (diffusers/transformers classes at toy size), and helpers
that write them to disk in the formats users have (diffusers folders)."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from animatediff.components import BaseModel, package_data

from conftest import tiny_unet


def tiny_tokenizer() -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(str(package_data("tokenizer")), local_files_only=True)


def tiny_text_encoder(hidden: int = 32, seed: int = 0, projection: bool = False):
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=49408, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=hidden,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def tiny_vae(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4, sample_size=32,
    ).eval()  # 4 blocks -> 3 downsamplings -> the real 8x latent factor


def tiny_base_model(seed: int = 0, sdxl: bool = False) -> BaseModel:
    if sdxl:
        return BaseModel(
            kind="sdxl", unet=tiny_unet(seed, sdxl=True), vae=tiny_vae(seed),
            text_encoder=tiny_text_encoder(32, seed), tokenizer=tiny_tokenizer(),
            text_encoder_2=tiny_text_encoder(32, seed + 1, projection=True), tokenizer_2=tiny_tokenizer(),
            source="tiny-sdxl",
        )
    return BaseModel(kind="sd15", unet=tiny_unet(seed), vae=tiny_vae(seed), text_encoder=tiny_text_encoder(32, seed),
                     tokenizer=tiny_tokenizer(), source="tiny-sd15")


def save_diffusers_folder(base: BaseModel, path: Path) -> Path:
    """Write ``base`` as a diffusers pipeline folder (model_index.json + one subfolder per component)."""
    path = Path(path)
    base.unet.save_pretrained(path / "unet")
    base.vae.save_pretrained(path / "vae")
    base.text_encoder.save_pretrained(path / "text_encoder")
    base.tokenizer.save_pretrained(path / "tokenizer")
    pipeline = "StableDiffusionXLPipeline" if base.is_sdxl else "StableDiffusionPipeline"
    index = {"_class_name": pipeline, "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"]}
    if base.is_sdxl:
        base.text_encoder_2.save_pretrained(path / "text_encoder_2")
        base.tokenizer_2.save_pretrained(path / "tokenizer_2")
        index.update(text_encoder_2=["transformers", "CLIPTextModelWithProjection"], tokenizer_2=["transformers", "CLIPTokenizer"])
    import json
    (path / "model_index.json").write_text(json.dumps(index, indent=2))
    return path
