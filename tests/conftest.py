"""Tiny real configurations shared by the tests (diffusers' own classes at toy size)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from diffusers import UNet2DConditionModel

from animatediff.presets import MOTION_PRESETS, MotionModuleConfig

TINY_CHANNELS = (32, 64)


def tiny_unet_config(sdxl: bool = False) -> dict:
    config = dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=TINY_CHANNELS,
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    if sdxl:  # SDXL-style: no attention in the first down block, text_time conditioning
        config.update(
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=32 + 6 * 8,
            cross_attention_dim=64,
            transformer_layers_per_block=(1, 2),
        )
    return config


def tiny_unet(seed: int = 0, sdxl: bool = False) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(**tiny_unet_config(sdxl)).eval()


def tiny_motion_config(preset: str = "v2", **overrides) -> MotionModuleConfig:
    base = MOTION_PRESETS[preset]
    return dataclasses.replace(
        base, block_out_channels=TINY_CHANNELS, layers_per_block=1, norm_num_groups=8, **overrides
    )


def randomize_(module: torch.nn.Module, seed: int = 1, std: float = 0.2) -> torch.nn.Module:
    """Give every parameter (zero-initialised projections included) random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


@pytest.fixture
def unet():
    return tiny_unet()


# ---- shared module-scoped models (one instance per test module, so a module may change its own) -------------
@pytest.fixture(scope="module")
def base():
    """The tiny SD1.5-layout base model (tests/tiny_models.py)."""
    from tiny_models import tiny_base_model

    return tiny_base_model()


@pytest.fixture(scope="module")
def motion():
    """A tiny v2 motion module set with random (non-zero) weights, so it changes the output."""
    from animatediff.motion_module import MotionModules

    return randomize_(MotionModules(tiny_motion_config("v2")), std=0.1).eval()


@pytest.fixture(scope="module")
def model_files(tmp_path_factory, base):
    """The tiny base as a single LDM file and as a diffusers folder (its configs), and a v2 motion module file."""
    import fixtures
    from tiny_models import save_diffusers_folder

    d = tmp_path_factory.mktemp("models")
    return {"ldm": str(fixtures.save(fixtures.ldm_checkpoint(base), d / "tiny_sd15.safetensors")),
            "folder": str(save_diffusers_folder(base, d / "tiny_sd15_diffusers")),
            "v2": str(fixtures.save(fixtures.official_motion_state_dict("v2"), d / "mm_sd_v15_v2.ckpt"))}
