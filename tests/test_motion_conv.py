"""The §5.3 ablation preset (conv-ablation, motion_conv.py): parameter parity with the transformer module, identity
at initialisation, frames that interact, and the train -> export -> strict load -> generate round trip."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from accelerate import init_empty_weights
from safetensors.torch import load_file, save_file

from animatediff.errors import UserInputError
from animatediff.inflation import AnimateDiffUNet
from animatediff.motion_module import MotionModules, VanillaTemporalModule
from animatediff.presets import MOTION_PRESETS

from conftest import randomize_, tiny_motion_config, tiny_unet
from tiny_models import save_diffusers_folder, tiny_base_model

torch.set_num_threads(1)  # the machine is shared


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---- parameter parity (paper: "ensured that the two model parameters were closely aligned") -----------------
@pytest.mark.parametrize("channels, layers", [((32, 64, 96, 96), 1), ((320, 640, 1280, 1280), 2)], ids=["demo", "sd15"])
def test_parameter_count_is_within_5_percent_of_the_transformer_module(channels, layers):
    counts = {}
    for preset in ("v3", "conv-ablation"):
        config = dataclasses.replace(MOTION_PRESETS[preset], block_out_channels=channels, layers_per_block=layers)
        with init_empty_weights():  # meta tensors: SD1.5 size costs no memory
            counts[preset] = {c: _count(VanillaTemporalModule(c, config)) for c in sorted(set(channels))}
            counts[preset]["set"] = _count(MotionModules(config))
    for key, transformer in counts["v3"].items():
        conv = counts["conv-ablation"][key]
        assert abs(conv / transformer - 1) <= 0.05, (key, conv, transformer)
    for c in set(channels):  # the documented formulas (motion_conv.py), per module
        assert (counts["v3"][c], counts["conv-ablation"][c]) == (22 * c * c + 21 * c, 22 * c * c + 23 * c)


# ---- identity at initialisation, interaction once trained ---------------------------------------------
def _latents(f: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 4, f, 8, 8, generator=g), torch.randn(1, 7, 32, generator=g)


def test_fresh_conv_module_gives_the_image_model_per_frame_exactly():
    unet = tiny_unet()
    motion = MotionModules(tiny_motion_config("conv-ablation")).eval()
    assert any(".temporal_conv." in k for k in motion.state_dict())  # the ablation, not the transformer
    x, text = _latents()
    with torch.no_grad():
        inflated = AnimateDiffUNet(unet, motion)(x, 500, text)
        plain = AnimateDiffUNet(unet)(x, 500, text)  # no motion module: every frame on its own
    assert torch.equal(inflated, plain)


def _perturb_proj_out_(motion: MotionModules, seed: int = 3) -> MotionModules:
    """As if trained: non-zero proj_out everywhere, all else as initialised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in motion.named_parameters():
            if ".proj_out." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return motion


def test_frames_interact_once_proj_out_is_nonzero():
    unet = tiny_unet()
    motion = _perturb_proj_out_(MotionModules(tiny_motion_config("conv-ablation"))).eval()
    x, text = _latents()
    changed = x.clone()
    changed[:, :, 0] += 1.0  # frame 0 only
    with torch.no_grad():
        model = AnimateDiffUNet(unet, motion)
        before, after = model(x, 500, text), model(changed, 500, text)
        plain = AnimateDiffUNet(unet)
        plain_before, plain_after = plain(x, 500, text), plain(changed, 500, text)
    assert torch.equal(plain_before[:, :, 1], plain_after[:, :, 1])  # the image model keeps frames apart
    assert (before[:, :, 1] - after[:, :, 1]).abs().max() > 1e-4  # the conv module carries frame 0 into frame 1


def test_one_module_sees_two_frames_each_way_where_attention_sees_all():
    """Two kernel-3 convolutions per module: frame 0 reaches frames 1-2, not frame 4; attention reaches them all."""
    x = torch.randn(6, 32, 4, 4)  # (b f) c h w, 6 frames
    changed = x.clone()
    changed[0] += torch.randn(32, 4, 4)  # not a constant: the per-frame GroupNorm would remove it
    outputs = {}
    for preset in ("conv-ablation", "v3"):
        module = randomize_(VanillaTemporalModule(32, tiny_motion_config(preset)), std=0.1).eval()
        with torch.no_grad():
            outputs[preset] = (module(x, 6) - module(changed, 6)).abs().flatten(1).amax(1)  # per frame
    conv, attention = outputs["conv-ablation"], outputs["v3"]
    assert conv[1] > 1e-4 and conv[2] > 1e-4
    assert conv[4] < 1e-6 and conv[5] < 1e-6
    assert attention[4] > 1e-4


# ---- train -> export -> strict load -> generate -------------------------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from animatediff.demo.world import write_dataset

    return write_dataset(tmp_path_factory.mktemp("videos"), 2, num_frames=6, height=32, width=32)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> dict:
    """``animatediff train motion-module --motion_preset conv-ablation``, 2 steps on the tiny base."""
    from animatediff.training.cli import main as train_main

    root = tmp_path_factory.mktemp("conv")
    base_dir = save_diffusers_folder(tiny_base_model(), root / "base")
    out = root / "run"
    assert train_main(["motion-module", "--config", "tiny-motion-module", "--motion_preset", "conv-ablation",
                       "--base_model", str(base_dir), "--caption_file", str(data), "--size", "32", "--num_frames", "4",
                       "--max_train_steps", "2", "--checkpointing_steps", "2", "--num_workers", "0", "--batch_size", "1",
                       "--output_dir", str(out)]) == 0
    return {"base": base_dir, "exported": out / "motion-module-final.safetensors", "root": root}


def test_trained_export_loads_strictly_and_generates_a_clip(trained):
    from animatediff.cli import main as animatediff_main
    from animatediff.weights.detect import describe_file
    from animatediff.weights.load import load_motion_modules

    state = load_file(str(trained["exported"]))
    expected = set(MotionModules(dataclasses.replace(MOTION_PRESETS["conv-ablation"], block_out_channels=(32, 64),
                                                     layers_per_block=1, norm_num_groups=8)).state_dict())
    assert set(state) == expected  # exactly the module's keys: no pe buffers, no transformer keys
    assert any(v.abs().max() > 0 for k, v in state.items() if ".proj_out." in k)  # it trained

    description = describe_file(trained["exported"])
    assert (description.kind, description.version) == ("motion-module", "conv-ablation")
    assert "§5.3 ablation" in description.summary()
    for preset in ("conv-ablation", None):  # forced, and recognised from the keys
        motion = load_motion_modules(str(trained["exported"]), preset=preset)
        assert motion.config.name == "conv-ablation" and set(motion.state_dict()) == expected
        assert all(torch.equal(motion.state_dict()[k], state[k]) for k in state)

    clip = trained["root"] / "clip.gif"
    assert animatediff_main(["-q", "generate", "a red circle", "--model", str(trained["base"]), "--motion-module",
                             str(trained["exported"]), "--motion-preset", "conv-ablation", "--frames", "4", "--width", "32",
                             "--height", "32", "--steps", "2", "--out", str(clip)]) == 0
    assert clip.is_file()
    sidecar = json.loads(clip.with_name(clip.name + ".json").read_text())  # clip.gif.json (video_io.sidecar_path)
    assert sidecar["motion_preset"] == "conv-ablation"


def test_resume_continues_the_conv_ablation_run_bit_exactly(data, tmp_path):
    from animatediff.training import load_config, train

    def config(out, steps):
        return load_config("motion-module", "tiny-motion-module", dict(
            motion_preset="conv-ablation", caption_file=str(data), size=32, num_frames=4, max_train_steps=steps,
            checkpointing_steps=1, checkpoints_total_limit=None, num_workers=0, batch_size=1, output_dir=str(out)))

    full = train(config(tmp_path / "full", 3), base=tiny_base_model())
    resumed = train(config(tmp_path / "resumed", 3), base=tiny_base_model(), resume=tmp_path / "full" / "checkpoints" / "step-000001")
    assert {k: v for k, v in full.losses.items() if k > 1} == resumed.losses and len(resumed.losses) == 2
    a, b = load_file(str(full.exported)), load_file(str(resumed.exported))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- refusals ---------------------------------------------------------------------------------------------
def test_strict_load_refuses_a_missing_key_and_the_wrong_preset(trained, tmp_path, capsys):
    from animatediff.cli import main as animatediff_main
    from animatediff.weights.load import load_motion_modules

    state = load_file(str(trained["exported"]))
    short = tmp_path / "short.safetensors"
    save_file({k: v for k, v in state.items() if not k.endswith("blocks.0.convs.1.conv.weight")}, str(short))
    with pytest.raises(UserInputError, match="missing keys"):
        load_motion_modules(str(short), preset="conv-ablation")
    with pytest.raises(UserInputError, match="temporal-convolution") as error:  # a transformer preset on the ablation
        load_motion_modules(str(trained["exported"]), preset="v3")
    assert error.value.field == "motion_preset"
    transformer = tmp_path / "v3.safetensors"
    save_file(randomize_(MotionModules(tiny_motion_config("v3"))).state_dict(), str(transformer))
    with pytest.raises(UserInputError, match="temporal-transformer"):  # and the ablation preset on a transformer file
        load_motion_modules(str(transformer), preset="conv-ablation")

    capsys.readouterr()
    assert animatediff_main(["generate", "x", "--model", str(trained["base"]), "--motion-module", str(trained["exported"]),
                             "--motion-preset", "v3", "--frames", "4", "--width", "32", "--height", "32", "--steps", "1",
                             "--out", str(tmp_path / "no.gif")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "conv-ablation" in err[-1] and "Traceback" not in "".join(err)
    assert not (tmp_path / "no.gif").exists()


def test_motion_lora_training_refuses_the_conv_ablation(trained, data, tmp_path):
    from animatediff.training import load_config
    from animatediff.training.modes import build
    from animatediff.weights.load import load_motion_modules

    config = load_config("motion-lora", "tiny-motion-lora", dict(motion_module=str(trained["exported"]), caption_file=str(data),
                                                                 output_dir=str(tmp_path / "o")))
    with pytest.raises(UserInputError, match="no temporal attention"):
        build(config, tiny_base_model(), load_motion_modules(str(trained["exported"])))
