import dataclasses

import pytest
import torch

from animatediff.errors import UserInputError
from animatediff.weights.load import check_motion_fits, load_base_model, load_motion_modules
from animatediff.motion_module import MotionModules

from conftest import tiny_motion_config, tiny_unet
from fixtures import PE_LENGTH, ldm_checkpoint, official_motion_state_dict, save, sparsectrl_state_dict, tiny_config
from tiny_models import save_diffusers_folder, tiny_base_model


def _assert_same_weights(a, b):
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        ma, mb = getattr(a, name), getattr(b, name)
        if ma is None:
            assert mb is None
            continue
        sa, sb = ma.state_dict(), mb.state_dict()
        assert sa.keys() == sb.keys(), name
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name


@pytest.mark.parametrize("sdxl", [False, True])
@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_single_file_round_trip_gives_exact_tensors(tmp_path, sdxl, suffix):
    base = tiny_base_model(sdxl=sdxl)
    configs = save_diffusers_folder(base, tmp_path / "configs")
    path = save(ldm_checkpoint(base), tmp_path / f"model{suffix}", wrapper="state_dict" if suffix == ".ckpt" else None)
    loaded = load_base_model(str(path), config_dir=configs)
    assert loaded.kind == ("sdxl" if sdxl else "sd15") and loaded.source == str(path)
    _assert_same_weights(base, loaded)
    if sdxl:  # OpenCLIP bigG pads with "!" (id 0)
        assert loaded.tokenizer_2.pad_token == "!" and loaded.tokenizer_2.pad_token_id == 0


def test_single_file_dtype_and_diffusers_folder(tmp_path):
    base = tiny_base_model()
    folder = save_diffusers_folder(base, tmp_path / "pipe")
    path = save(ldm_checkpoint(base), tmp_path / "m.safetensors")
    half = load_base_model(str(path), dtype=torch.float16, config_dir=folder)
    assert half.unet.dtype == torch.float16 and half.text_encoder.dtype == torch.float16
    _assert_same_weights(base, load_base_model(str(folder)))


def test_prediction_type_comes_from_the_scheduler_config(tmp_path):
    import json

    folder = save_diffusers_folder(tiny_base_model(), tmp_path / "pipe")
    assert load_base_model(str(folder)).prediction_type == "epsilon"  # no scheduler/: SD1.5's default
    (folder / "scheduler").mkdir()
    config = folder / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({"_class_name": "DDIMScheduler", "prediction_type": "v_prediction"}))
    assert load_base_model(str(folder)).prediction_type == "v_prediction"
    path = save(ldm_checkpoint(tiny_base_model()), tmp_path / "m.safetensors")
    assert load_base_model(str(path), config_dir=folder).prediction_type == "v_prediction"  # single file + its configs
    assert load_base_model(str(path), config_dir=folder).prediction_type == "v_prediction"
    config.write_text(json.dumps({"prediction_type": "sample"}))
    with pytest.raises(UserInputError, match="prediction_type 'sample' is not supported"):
        load_base_model(str(folder))


def test_cached_hub_repo_loads_offline(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    repo = tmp_path / "hub" / "models--someone--tiny-sd"
    commit = "0" * 40
    save_diffusers_folder(tiny_base_model(), repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert load_base_model("someone/tiny-sd").kind == "sd15"
    with pytest.raises(UserInputError, match="someone/absent.*never attempted"):
        load_base_model("someone/absent")


def test_single_file_key_mismatches_are_user_errors(tmp_path):
    base = tiny_base_model()
    configs = save_diffusers_folder(base, tmp_path / "configs")
    good = ldm_checkpoint(base)
    missing = {k: v for k, v in good.items() if "input_blocks.1.1.proj_in" not in k}
    extra = {**good, "model.diffusion_model.input_blocks.1.2.temporal.weight": torch.zeros(2)}
    wrong_vae = {k: v for k, v in good.items() if not k.startswith("first_stage_model.decoder.conv_in")}
    for name, state, message in [("missing", missing, "missing keys.*proj_in"), ("extra", extra, "no known layer.*temporal"),
                                 ("vae", wrong_vae, "VAE.*missing.*decoder.conv_in")]:
        path = save(state, tmp_path / f"{name}.safetensors")
        with pytest.raises(UserInputError, match=f"{name}.safetensors.*{message}"):
            load_base_model(str(path), config_dir=configs)
    sdxl_into_sd15 = save(ldm_checkpoint(tiny_base_model(sdxl=True)), tmp_path / "xl.safetensors")
    with pytest.raises(UserInputError, match="xl.safetensors"):
        load_base_model(str(sdxl_into_sd15), config_dir=configs)  # SDXL keys against SD1.5 configs
    not_sd = save(official_motion_state_dict("v3"), tmp_path / "mm.safetensors")
    with pytest.raises(UserInputError, match="mm.safetensors: not an SD1.5 or SDXL"):
        load_base_model(str(not_sd))
    with pytest.raises(UserInputError, match="nowhere: no such file"):
        load_base_model("./nowhere")


@pytest.mark.parametrize("preset", list(PE_LENGTH))
def test_official_motion_modules_load_strictly_with_detected_preset(tmp_path, preset):
    state = official_motion_state_dict(preset, config_entry=True)
    name = "animatediff_lightning_4step_comfyui.safetensors" if preset == "lightning" else f"{preset}.ckpt"
    motion = load_motion_modules(save(state, tmp_path / name))
    assert motion.config.name == preset
    assert motion.config.block_out_channels == tiny_config(preset).block_out_channels
    assert motion.config.position_encoding_length == {"animatelcm": 64}.get(preset, PE_LENGTH[preset])
    loaded = motion.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in loaded) and len(loaded) == len([k for k, v in state.items() if "pos_encoder" not in k and torch.is_tensor(v)])


def test_motion_module_variants_wrappers_prefix_and_max_frames(tmp_path):
    state = official_motion_state_dict("v3")
    for path in (save(state, tmp_path / "a.ckpt", wrapper="state_dict"),
                 save(official_motion_state_dict("v3", module_prefix=True), tmp_path / "ddp.ckpt"),
                 save(official_motion_state_dict("v3", with_pe=False), tmp_path / "nope.safetensors")):
        assert load_motion_modules(path).config.name == "v3"
    motion = load_motion_modules(state, max_frames=128)  # a PE shorter than the clip is never a problem
    assert motion.max_frames == 128 and motion.down_blocks[0].motion_modules[0].temporal_transformer.transformer_blocks[0].attention_blocks[0].pos_encoder.pe.shape[1] == 128
    assert load_motion_modules(state, preset="v1").config.name == "v1"
    exact = tiny_motion_config("v3")
    assert load_motion_modules(state, config=exact).config == exact


def test_motion_module_errors_name_the_file(tmp_path):
    sdxl = save(official_motion_state_dict("sdxl-beta"), tmp_path / "mm_sdxl_v10_beta.ckpt")
    with pytest.raises(UserInputError, match="mm_sdxl_v10_beta.ckpt: .*does not fit"):
        load_motion_modules(sdxl, unet=tiny_unet())
    motion = load_motion_modules(sdxl)
    with pytest.raises(UserInputError, match="mm_sdxl_v10_beta.ckpt"):
        check_motion_fits(tiny_unet(), motion)
    broken = official_motion_state_dict("v2")
    broken.pop(next(k for k in broken if k.endswith("proj_in.weight")))
    with pytest.raises(UserInputError, match="broken.ckpt: motion module.*1 missing keys"):
        load_motion_modules(save(broken, tmp_path / "broken.ckpt"))
    with pytest.raises(UserInputError, match="ctrl.ckpt: this is a sparsectrl file"):
        load_motion_modules(save(sparsectrl_state_dict(tiny_unet()), tmp_path / "ctrl.ckpt"))
    with pytest.raises(UserInputError, match="base.safetensors: this is a sd15-checkpoint"):
        load_motion_modules(save(ldm_checkpoint(tiny_base_model()), tmp_path / "base.safetensors"))


def test_diffusers_motion_adapter_layout_file_and_folder(tmp_path):
    from animatediff.weights.convert import motion_module_to_diffusers

    state = official_motion_state_dict("v2")
    converted = motion_module_to_diffusers(state)
    single = load_motion_modules(save(converted, tmp_path / "adapter.safetensors"))
    folder = tmp_path / "adapter"
    folder.mkdir()
    save(converted, folder / "diffusion_pytorch_model.safetensors")
    (folder / "config.json").write_text('{"_class_name": "MotionAdapter"}')
    for motion in (single, load_motion_modules(folder)):
        assert motion.config.name == "v2"
        loaded = motion.state_dict()
        assert all(torch.equal(loaded[k], state[k]) for k in loaded)
