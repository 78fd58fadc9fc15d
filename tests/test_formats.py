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
        (kohya_lora_state_dict(sd15, rank=4), "k15.safetensors", "lora", "kohya", "sd15"),
        (kohya_lora_state_dict(sdxl, rank=4, style="ldm"), "kxl.safetensors", "lora", "kohya", "sdxl"),
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


# ---- every community LoRA format: its name, rank and layer count ---------------------------------------------
from fixtures import (  # noqa: E402
    diffusers_motion_state_dict, kohya_to_diffusers_lora, lokr_state_dict, loha_state_dict, motion_lora_state_dict as _mlora,
)


def _lora_cases():
    sd15, sdxl = tiny_base_model(), tiny_base_model(sdxl=True)
    kohya = kohya_lora_state_dict(sd15, rank=4, conv=True)
    layers = len({k.partition(".")[0] for k in kohya})
    peft = kohya_to_diffusers_lora(kohya, sd15, "peft")
    return {  # name: (state, version, format words, rank, layers, base)
        "kohya": (kohya, "kohya", "kohya LoRA", 4, layers, "sd15"),
        "loha": (loha_state_dict(sd15, rank=4, conv=True, tucker=True), "loha", "LyCORIS LoHa", 4, layers, "sd15"),
        "lokr": (lokr_state_dict(sd15, rank=2, mode="both", conv=True), "lokr", "LyCORIS LoKr", 2, layers, "sd15"),
        "lokr-full": (lokr_state_dict(sd15, mode="full"), "lokr", "LyCORIS LoKr", "full", layers - 8, "sd15"),
        "diffusers": (kohya_to_diffusers_lora(kohya, sd15), "diffusers", "diffusers LoRA", 4, layers, "sd15"),
        "diffusers-old": (kohya_to_diffusers_lora(kohya, sd15, "old"), "diffusers", "diffusers LoRA", 4, layers, "sd15"),
        "peft-unet": ({k: v for k, v in peft.items() if ".text_model." not in k}, "peft", "PEFT LoRA", 4, layers - 12, "sd15"),
        "peft-text": ({k: v for k, v in peft.items() if ".text_model." in k}, "peft", "PEFT LoRA", 4, 12, ""),
        "sdxl-diffusers": (kohya_to_diffusers_lora(kohya_lora_state_dict(sdxl, rank=8), sdxl), "diffusers", "diffusers LoRA", 8,
                           len({k.partition(".")[0] for k in kohya_lora_state_dict(sdxl)}), "sdxl"),
    }


@pytest.mark.parametrize("case", list(_lora_cases()))
def test_inspect_names_every_lora_format_rank_and_layers(tmp_path, case):
    state, version, words, rank, layers, base = _lora_cases()[case]
    description = describe_file(save(state, tmp_path / f"{case}.safetensors"))
    assert (description.kind, description.version, description.base) == ("lora", version, base)
    assert (description.details["rank"], description.details["layers"]) == (rank, layers)
    assert words in description.details["format"] and words in description.summary()
    assert description.num_params == sum(v.numel() for v in state.values())


def test_processor_format_lora_is_not_called_a_domain_adapter(tmp_path):
    """The official adapter holds q/k/v/out of attn1+attn2 in all 16 SD1.5 transformer blocks at rank 128; a
    processor-format LoRA without those sizes (and not named *adapter*) is what it is."""
    unet = tiny_unet()
    adapter = domain_adapter_state_dict(unet, rank=4)
    plain = describe_file(save({"unet." + k: v for k, v in adapter.items()}, tmp_path / "pytorch_lora_weights.safetensors"))
    assert (plain.kind, plain.version) == ("processor-lora", None)
    assert "processor-format LoRA (domain adapter layout)" in plain.summary() and "domain-adapter" not in plain.summary()
    assert (plain.details["rank"], plain.details["layers"]) == (4, len(adapter) // 2)
    named = describe_file(save(adapter, tmp_path / "v3_sd15_adapter.ckpt"))
    assert (named.kind, named.version) == ("domain-adapter", "v3")
    partial = {k: v for k, v in adapter.items() if ".attn1." in k}  # attn1 only: not the adapter's layout
    assert describe_file(save(partial, tmp_path / "my_adapter.ckpt")).kind == "processor-lora"
    # the official sizes, as shapes only (no tensors needed): 16 blocks, rank 128, cross-attention input 768
    blocks = [f"down_blocks.{i}.attentions.{j}" for i in range(3) for j in range(2)] + ["mid_block.attentions.0"] + \
             [f"up_blocks.{i}.attentions.{j}" for i in range(1, 4) for j in range(3)]
    shapes = {}
    for block in blocks:
        for attn in ("attn1", "attn2"):
            for proj in ("to_q", "to_k", "to_v", "to_out"):
                prefix = f"{block}.transformer_blocks.0.{attn}.processor.{proj}_lora"
                shapes[f"{prefix}.down.weight"] = (128, 768 if attn == "attn2" and proj in ("to_k", "to_v") else 320)
                shapes[f"{prefix}.up.weight"] = (320, 128)
    official = detect_kind(shapes)
    assert (official.kind, official.version, official.base, official.details["layers"]) == ("domain-adapter", "v3", "sd15", 128)


def test_diffusers_copy_of_animatelcm_is_animatelcm(tmp_path):
    """Every v2 release stores a position encoding in each transformer block (diffusers layout); diffusers' copy of
    AnimateLCM holds only part of them (AnimateLCM itself deleted them), which tells it apart."""
    from animatediff.weights.load import load_motion_modules

    complete = diffusers_motion_state_dict("v2")
    assert detect_kind(complete).version == "v2"
    for holds in (lambda block: not block.startswith("mid_block."), lambda block: block.startswith("mid_block.")):
        partial = diffusers_motion_state_dict("v2", pe_in=holds)
        description = describe_file(save(partial, tmp_path / "diffusion_pytorch_model.safetensors"))
        assert (description.kind, description.version) == ("motion-module", "animatelcm")
        assert "of 7 places" in description.details["position_encoding"]
        motion = load_motion_modules(tmp_path / "diffusion_pytorch_model.safetensors")
        assert motion.config.name == "animatelcm" and motion.config.position_encoding_length == 64
    assert load_motion_modules(save(complete, tmp_path / "v2.safetensors")).config.name == "v2"
    lightning = save(diffusers_motion_state_dict("v2", pe_in=lambda b: b.startswith("up_")), tmp_path / "animatediff_lightning_4step.safetensors")
    assert describe_file(lightning).version == "lightning"  # the file name still wins


def test_motion_lora_in_any_lora_format_is_reported_as_motion_lora():
    state = {"unet." + k.replace("processor.", "").replace("_lora.down.weight", ".lora_A.weight").replace("_lora.up.weight", ".lora_B.weight"): v
             for k, v in _mlora("v2").items()}
    assert detect_kind(state).kind == "motion-lora"
