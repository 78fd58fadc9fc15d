"""Write a small random-weight model in the formats users have: a diffusers folder (SD1.5 structure at toy
width) and a motion module in the official key layout. Stand-in for the trained demo family (issue 4):
the animation it makes is noise, but it runs the exact code path of a real SD1.5 + motion module in seconds.

    python scripts/make_random_model.py OUT_DIR
"""

import json
import shutil
import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

from animatediff.components import package_data
from animatediff.motion_module import MotionModules
from animatediff.presets import MotionModuleConfig


def main(out: Path) -> None:
    torch.manual_seed(0)
    channels = (32, 64, 64, 64)
    unet = UNet2DConditionModel(
        sample_size=8, block_out_channels=channels, layers_per_block=2, norm_num_groups=8, cross_attention_dim=64,
        attention_head_dim=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                                num_attention_heads=4, projection_dim=64))
    base = out / "base"
    unet.save_pretrained(base / "unet")
    vae.save_pretrained(base / "vae")
    text_encoder.save_pretrained(base / "text_encoder")
    shutil.copytree(package_data("tokenizer"), base / "tokenizer", dirs_exist_ok=True)
    (base / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    motion = MotionModules(MotionModuleConfig(name="v3", block_out_channels=channels, norm_num_groups=8))
    with torch.no_grad():  # random (not zero) output projections, so the module does something
        for p in motion.parameters():
            p.normal_(0, 0.02)
    save_file(motion.state_dict(), out / "motion_module.safetensors")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
