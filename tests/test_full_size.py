"""Full-size SD1.5 UNet + v2 motion module from random weights (about 5.5 GiB of RAM, a minute or two).

Run with ``python -m pytest -m slow tests/test_full_size.py``.
"""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import UNet2DConditionModel

from animatediff.components import package_data
from animatediff.inflation import AnimateDiffUNet
from animatediff.motion_module import MotionModules
from animatediff.presets import get_preset

pytestmark = pytest.mark.slow


def test_full_size_sd15_unet_with_v2_motion_module():
    config = json.loads((package_data("sd15") / "unet" / "config.json").read_text())
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**{k: v for k, v in config.items() if not k.startswith("_")}).eval()
    motion = MotionModules(get_preset("v2")).eval()
    with torch.no_grad():  # random proj_out, so that the modules act (a zero-initialised one is an identity)
        for _, _, _, module in motion.placements():
            torch.nn.init.normal_(module.temporal_transformer.proj_out.weight, std=0.02)

    state_dict = motion.state_dict()
    assert motion.config.num_modules == 21
    # An official v2 file holds 26 parameter tensors + 2 pos_encoder.pe buffers per module; ours omits the
    # recomputed PE buffers, so count what the official file would hold.
    assert len(state_dict) == 21 * 26 == 546
    assert not any("pos_encoder" in key for key in state_dict)
    assert len(state_dict) + 2 * motion.config.num_modules == 588
    n_params = sum(p.numel() for p in motion.parameters())
    assert n_params == 453_209_280  # "453.2 M" (official README / training log)
    assert sum(1 for key in state_dict if key.startswith("mid_block.")) == 26

    model = AnimateDiffUNet(unet, motion)
    latents = torch.randn(1, 4, 2, 8, 8, generator=torch.Generator().manual_seed(0))  # (b, c, f, h, w)
    text = torch.randn(1, 77, 768, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(latents, 999, text)
        model.detach()
        per_frame = model(latents, 999, text)  # the same UNet with no motion modules
    assert out.shape == (1, 4, 2, 8, 8)
    assert torch.isfinite(out).all()
    assert (out - per_frame).abs().max() > 1e-3  # the motion modules act on the full-size UNet
