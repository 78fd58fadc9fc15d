import pytest
import torch

from animatediff.weights.convert import motion_module_to_diffusers
from animatediff.errors import UserInputError
from animatediff.weights.detect import describe_file, detect_kind, is_diffusers_motion_layout

from conftest import tiny_unet
from fixtures import (
    PE_LENGTH, domain_adapter_state_dict, kohya_lora_state_dict, ldm_checkpoint, motion_lora_state_dict,
    official_motion_state_dict, save, sparsectrl_state_dict, tiny_config,
)
from tiny_models import save_diffusers_folder, tiny_base_model


def _params(state):
    return sum(v.numel() for k, v in state.items() if torch.is_tensor(v) and "pos_encoder" not in k)


@pytest.mark.parametrize("preset", list(PE_LENGTH))
def test_motion_module_versions(tmp_path, preset):
    state = official_motion_state_dict(preset, config_entry=True)
    name = "animatediff_lightning_8step_comfyui.safetensors" if preset == "lightning" else f"mm_{preset}.ckpt"
    description = describe_file(save(state, tmp_path / name))
    assert (description.kind, description.version) == ("motion-module", preset)
    assert description.base == ("sdxl" if preset == "sdxl-beta" else "sd15")
    assert description.num_params == _params(state)
    assert description.details["num_modules"] == tiny_config(preset).num_modules
    assert "motion-module" in description.summary() and "M parameters" in description.summary()


def test_diffusers_layout_and_prefixed_motion_modules(tmp_path):
    d = detect_kind(motion_module_to_diffusers(official_motion_state_dict("v2")))
    assert (d.kind, d.version, d.details["layout"]) == ("motion-module", "v2", "diffusers")
    d = detect_kind(official_motion_state_dict("v1", module_prefix=True))
    assert (d.kind, d.version) == ("motion-module", "v1")


def test_one_diffusers_layout_rule_for_motion_modules_and_motion_loras():
    official, lora = official_motion_state_dict("v2", module_prefix=True), motion_lora_state_dict("v2")
    assert is_diffusers_motion_layout(motion_module_to_diffusers(official))
    assert is_diffusers_motion_layout({"unet." + k: v for k, v in motion_module_to_diffusers(lora).items()})
    sd15 = tiny_base_model()
    others = (official, lora, domain_adapter_state_dict(sd15.unet), kohya_lora_state_dict(sd15), ldm_checkpoint(sd15))
    assert not any(is_diffusers_motion_layout(state) for state in others)


def test_every_other_kind(tmp_path):
    sd15, sdxl = tiny_base_model(), tiny_base_model(sdxl=True)
    cases = [
        (motion_lora_state_dict("v2", rank=4), "lora.ckpt", "motion-lora", "v2", "sd15"),
        (domain_adapter_state_dict(sd15.unet, rank=4), "adapter.ckpt", "domain-adapter", "v3", "sd15"),
        (sparsectrl_state_dict(sd15.unet, "rgb"), "rgb.ckpt", "sparsectrl", "rgb", "sd15"),
        (sparsectrl_state_dict(sd15.unet, "scribble"), "scribble.ckpt", "sparsectrl", "scribble", "sd15"),
        (kohya_lora_state_dict(sd15, rank=4), "k15.safetensors", "lora", None, "sd15"),
        (kohya_lora_state_dict(sdxl, rank=4, style="ldm"), "kxl.safetensors", "lora", None, "sdxl"),
        (ldm_checkpoint(sd15), "sd15.safetensors", "sd15-checkpoint", None, "sd15"),
        (ldm_checkpoint(sdxl), "sdxl.safetensors", "sdxl-checkpoint", None, "sdxl"),
        (dict(tiny_unet().state_dict()), "unet.safetensors", "diffusers-unet", None, "sd15"),
        ({"foo.bar": torch.zeros(3)}, "odd.safetensors", "unknown", None, ""),
    ]
    for state, name, kind, version, base in cases:
        description = describe_file(save(state, tmp_path / name))
        assert (description.kind, description.version, description.base) == (kind, version, base), name
        assert description.num_params == sum(v.numel() for v in state.values()), name
    assert describe_file(tmp_path / "lora.ckpt").details["rank"] == 4


def test_folders(tmp_path):
    folder = save_diffusers_folder(tiny_base_model(sdxl=True), tmp_path / "pipe")
    description = describe_file(folder)
    assert (description.kind, description.base) == ("diffusers-folder", "sdxl") and description.num_params > 0
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    save(motion_module_to_diffusers(official_motion_state_dict("v3")), adapter / "diffusion_pytorch_model.safetensors")
    (adapter / "config.json").write_text('{"_class_name": "MotionAdapter"}')
    description = describe_file(adapter)
    assert (description.kind, description.details["config_class"]) == ("motion-module", "MotionAdapter")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match="empty: folder is neither"):
        describe_file(tmp_path / "empty")
