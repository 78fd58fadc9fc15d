import json

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint, convert_open_clip_checkpoint,
)
from transformers import CLIPTextConfig, CLIPTextModelWithProjection

from animatediff.components import package_data
from animatediff.weights.convert import (
    clip_to_ldm, motion_module_from_diffusers, motion_module_to_diffusers, open_clip_to_ldm, parse_processor_lora_key,
    processor_lora_key, unet_name_to_ldm, unet_to_ldm, vae_to_ldm,
)
from animatediff.weights.load import load_motion_modules
from animatediff.motion_module import MotionModules

from conftest import tiny_unet
from fixtures import domain_adapter_state_dict, motion_lora_state_dict, official_motion_state_dict, save, tiny_config


def _adapter(mid_block: bool) -> MotionAdapter:
    return MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=1, motion_norm_num_groups=8,
                         motion_max_seq_length=32, use_motion_mid_block=mid_block)


@pytest.mark.parametrize("preset", ["v2", "v3"])
def test_official_to_diffusers_loads_strictly_into_motion_adapter(preset):
    official = official_motion_state_dict(preset, config_entry=True, module_prefix=True)
    converted = motion_module_to_diffusers(official)
    adapter = _adapter(mid_block=preset == "v2")
    result = adapter.load_state_dict(converted, strict=False)
    assert result.unexpected_keys == []
    assert all(k.endswith("pos_embed.pe") for k in result.missing_keys)  # recomputed by diffusers itself
    # and back: the adapter's own state dict (with its pos_embed buffers) is an official module set again
    back = motion_module_from_diffusers(adapter.state_dict())
    motion = MotionModules(tiny_config(preset))
    motion.load_state_dict(back, strict=True)
    clean = {k.removeprefix("module."): v for k, v in official.items() if torch.is_tensor(v) and "pos_encoder" not in k}
    assert back.keys() == clean.keys() and all(torch.equal(back[k], clean[k]) for k in clean)


def test_diffusers_adapter_file_loads_as_v2(tmp_path):
    adapter = _adapter(mid_block=True)
    path = save(dict(adapter.state_dict()), tmp_path / "diffusion_pytorch_model.safetensors")
    motion = load_motion_modules(path)
    assert motion.config.name == "v2" and motion.config.position_encoding_length == 32


def test_unet_ldm_names_for_full_size_sd15():
    config = json.loads(package_data("sd15", "unet", "config.json").read_text())
    expected = {
        "conv_in.weight": "input_blocks.0.0.weight",
        "down_blocks.1.attentions.0.proj_in.weight": "input_blocks.4.1.proj_in.weight",
        "down_blocks.0.downsamplers.0.conv.bias": "input_blocks.3.0.op.bias",
        "down_blocks.3.resnets.1.conv2.weight": "input_blocks.11.0.out_layers.3.weight",
        "mid_block.resnets.1.norm1.weight": "middle_block.2.in_layers.0.weight",
        "mid_block.attentions.0.norm.weight": "middle_block.1.norm.weight",
        "up_blocks.0.upsamplers.0.conv.weight": "output_blocks.2.1.conv.weight",
        "up_blocks.1.upsamplers.0.conv.weight": "output_blocks.5.2.conv.weight",
        "up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_k.weight": "output_blocks.11.1.transformer_blocks.0.attn2.to_k.weight",
        "up_blocks.2.resnets.0.conv_shortcut.weight": "output_blocks.6.0.skip_connection.weight",
        "time_embedding.linear_2.bias": "time_embed.2.bias",
        "conv_norm_out.weight": "out.0.weight",
    }
    for name, ldm in expected.items():
        assert unet_name_to_ldm(name, config) == ldm


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_full_size_ldm_mapping_is_the_inverse_of_diffusers_converters(kind):
    """Key sets only, on the meta device: the full-size SD1.5/SDXL layouts map to LDM and back."""
    configs = {c: json.loads(package_data(kind, c, "config.json").read_text()) for c in ("unet", "vae")}
    with init_empty_weights(include_buffers=True):
        unet = UNet2DConditionModel.from_config(configs["unet"])
        vae = AutoencoderKL.from_config(configs["vae"])
    unet_sd, vae_sd = unet.state_dict(), vae.state_dict()
    assert convert_ldm_unet_checkpoint(unet_to_ldm(unet_sd, configs["unet"]), configs["unet"]).keys() == unet_sd.keys()
    assert convert_ldm_vae_checkpoint(vae_to_ldm(vae_sd), configs["vae"]).keys() == vae_sd.keys()
    if kind == "sdxl":
        with init_empty_weights(include_buffers=True):
            text_2 = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(str(package_data(kind, "text_encoder_2"))))
        state = text_2.state_dict()
        back = convert_open_clip_checkpoint(text_2, open_clip_to_ldm(state), prefix="conditioner.embedders.1.model.")
        assert back.keys() == state.keys()
    ldm_clip = clip_to_ldm({"encoder.layers.0.mlp.fc1.weight": torch.zeros(1)})
    assert list(convert_ldm_clip_checkpoint(ldm_clip)) == ["text_model.encoder.layers.0.mlp.fc1.weight"]


def test_processor_lora_keys_parse_and_format_both_ways():
    key = "mid_block.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.1.processor.to_out_lora.up.weight"
    target = "mid_block.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.1.to_out.0.weight"
    assert parse_processor_lora_key(key) == (target, "up")
    assert processor_lora_key(target, "up") == key
    unet = tiny_unet()
    params = dict(unet.named_parameters()) | dict(MotionModules(tiny_config("v2")).named_parameters())
    for state in (motion_lora_state_dict("v2"), domain_adapter_state_dict(unet)):
        for key in state:
            target, part = parse_processor_lora_key(key)
            assert target in params and processor_lora_key(target, part) == key
    for odd in ("x.processor.to_q_lora.alpha", "x.to_q_lora.down.weight", "x.processor.proj_in_lora.down.weight"):
        assert parse_processor_lora_key(odd) is None
    with pytest.raises(ValueError):
        processor_lora_key("x.to_out.weight", "down")
