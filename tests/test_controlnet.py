"""ControlNet per frame (generation/controlnet.py) on tiny real components: a ControlNetModel built from the
tiny UNet (``ControlNetModel.from_unet``, every weight randomised so the zero convolutions do something)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel
from PIL import Image

from animatediff.cli import main
from animatediff.errors import UserInputError
from animatediff.generation import controlnet
from animatediff.generation.controlnet import ControlNetProvider, ControlNetSpec, parse_controlnet_arg
from animatediff.generation.denoiser import UNetDenoiser
from animatediff.generation.pipeline import AnimationPipeline, GenerationConfig
from animatediff.inflation import AnimateDiffUNet
from animatediff.video_io import read_frames, save_video, sidecar_path

from conftest import randomize_, tiny_unet

SIZE, FRAMES = 32, 4


def tiny_controlnet(unet, seed: int = 3) -> ControlNetModel:
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(4, 8, 8, 16))  # 3 downsamplings: 8x
    return randomize_(net, seed=seed, std=0.1).eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory, base):
    d = tmp_path_factory.mktemp("control")
    g = np.random.default_rng(0)
    frames = g.integers(0, 256, (FRAMES, 40, 48, 3), dtype=np.uint8)  # another aspect: centre-cropped
    paths = {"video": str(save_video(frames, d / "hints")), "image": str(d / "one.png")}  # PNG folder: lossless
    Image.fromarray(frames[1]).save(paths["image"])
    save_video(np.repeat(frames[1:2], FRAMES, axis=0), d / "same")  # the image as a video
    paths["same"] = str(d / "same")
    for name, seed in (("cn", 3), ("cn2", 4)):
        tiny_controlnet(base.unet, seed).save_pretrained(d / name)
        paths[name] = str(d / name)
    return paths


@pytest.fixture
def pipe(base, motion):
    pipeline = AnimationPipeline(base, motion)
    yield pipeline
    pipeline.close()


def config(**overrides) -> GenerationConfig:
    return GenerationConfig(**{**dict(prompt="a cat walking", negative_prompt="blurry", num_frames=FRAMES, width=SIZE,
                                      height=SIZE, steps=2, seed=1), **overrides})


def net(files, name="cn", **settings) -> dict:
    return {"path": files[name], "video": files["video"], **settings}


def latents(pipe, **overrides) -> torch.Tensor:
    return pipe.generate(config(**overrides)).latents


def test_a_controlnet_changes_the_clip_and_zero_strength_equals_none(pipe, files):
    plain = latents(pipe)
    assert not torch.equal(latents(pipe, controlnets=[net(files)]), plain)
    assert torch.equal(latents(pipe, controlnets=[net(files, strength=0.0)]), plain)


def test_start_end_outside_the_steps_run_equals_none(pipe, files):
    plain = latents(pipe)
    # 2 steps: step i runs unless i/2 < start or (i+1)/2 > end; start 0.6 excludes both
    assert torch.equal(latents(pipe, controlnets=[net(files, start=0.6, end=1.0)]), plain)
    only_first = latents(pipe, controlnets=[net(files, start=0.0, end=0.5)])
    assert not torch.equal(only_first, plain) and not torch.equal(only_first, latents(pipe, controlnets=[net(files)]))


def test_guess_mode_with_cfg_runs_on_the_conditional_half_only(pipe, files):
    calls = []
    normal = latents(pipe, controlnets=[net(files)])
    model = pipe.controlnets[(files["cn"], None)]
    hook = model.register_forward_pre_hook(lambda _m, args: calls.append(args[0].shape[0]))
    try:
        guessed = latents(pipe, controlnets=[net(files)], guess_mode=True, guidance_scale=7.5)
    finally:
        hook.remove()
    assert calls == [FRAMES, FRAMES]  # per step: the conditional clip's frames, not 2 x FRAMES (diffusers crashes)
    assert not torch.equal(guessed, normal)


def test_one_image_equals_the_image_repeated_as_a_video(pipe, files):
    image = latents(pipe, controlnets=[{"path": files["cn"], "image": files["image"]}])
    video = latents(pipe, controlnets=[{"path": files["cn"], "video": files["same"]}])
    assert torch.equal(image, video)


def test_hint_videos_are_fitted_and_matched_in_length(files, caplog):
    caplog.set_level("INFO")
    spec = ControlNetSpec(path=files["cn"], video=files["video"])
    hint, info = controlnet.read_hint(spec, config(num_frames=FRAMES + 2))
    assert hint.shape == (FRAMES + 2, 3, SIZE, SIZE) and info["frames"] == FRAMES
    assert torch.equal(hint[-1], hint[FRAMES - 1]) and "repeating its last frame" in caplog.text
    assert controlnet.read_hint(spec, config(num_frames=2))[0].shape[0] == 2  # a longer video is cut


def _cond(stacked: torch.Tensor, batch: int = 1) -> dict:
    g = torch.Generator().manual_seed(5)
    return {"encoder_hidden_states": torch.randn(batch, 77, 32, generator=g),
            "control_hint": stacked[None].expand(batch, *stacked.shape), "control_uncond": torch.zeros(batch, dtype=torch.bool)}


def test_multi_controlnet_residuals_sum(base):
    unet = AnimateDiffUNet(tiny_unet(), None)
    a, b = tiny_controlnet(unet.unet, 3), tiny_controlnet(unet.unet, 4)
    hints = torch.rand(FRAMES, 2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    always = lambda: torch.tensor([500.0])  # noqa: E731
    pa = ControlNetProvider(a, 0, ControlNetSpec("a", strength=0.7), False, always)
    pb = ControlNetProvider(b, 1, ControlNetSpec("b", strength=1.3), False, always)
    x, t, cond = torch.randn(1, 4, FRAMES, 4, 4), torch.tensor(500), _cond(hints)
    with torch.no_grad():
        both = UNetDenoiser(unet, [pa, pb]).residuals(x, t, cond)
        one, two = UNetDenoiser(unet, [pa]).residuals(x, t, cond), UNetDenoiser(unet, [pb]).residuals(x, t, cond)
    for key in both:
        pairs = zip(both[key], one[key], two[key]) if isinstance(both[key], tuple) else [(both[key], one[key], two[key])]
        for s, r1, r2 in pairs:
            torch.testing.assert_close(s, r1 + r2, rtol=0, atol=1e-6)


def test_residual_path_equals_diffusers_unet_with_diffusers_controlnet():
    """Parity: our provider + denoiser on a clip == diffusers' UNet called on the folded (b f) batch with
    diffusers' ControlNetModel outputs (no motion module: the 2-D UNet per frame)."""
    unet = tiny_unet()
    cn = tiny_controlnet(unet)
    hints = torch.rand(FRAMES, 1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    x, t, cond = torch.randn(1, 4, FRAMES, 4, 4, generator=torch.Generator().manual_seed(3)), torch.tensor(321), _cond(hints)
    provider = ControlNetProvider(cn, 0, ControlNetSpec("a", strength=0.8), False, lambda: torch.tensor([321.0]))
    with torch.no_grad():
        ours = UNetDenoiser(AnimateDiffUNet(unet, None), [provider])(x, t, cond)
        folded = x.transpose(1, 2).reshape(FRAMES, 4, 4, 4)  # b c f h w -> (b f) c h w
        text = cond["encoder_hidden_states"].repeat_interleave(FRAMES, 0)
        down, mid = cn(folded, t, text, controlnet_cond=hints[:, 0], conditioning_scale=0.8, return_dict=False)
        theirs = unet(folded, t, text, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
    torch.testing.assert_close(ours, theirs.reshape(1, FRAMES, 4, 4, 4).transpose(1, 2), rtol=1e-5, atol=1e-5)


def test_context_windows_slice_the_hints_per_window(pipe, files):
    seen = []
    plain = latents(pipe, controlnets=[net(files)], num_frames=FRAMES)
    model = pipe.controlnets[(files["cn"], None)]
    hook = model.register_forward_pre_hook(lambda _m, args, kwargs: seen.append(kwargs["controlnet_cond"].clone()),
                                           with_kwargs=True)
    try:  # batched windows of 2 frames: each ControlNet call sees its window's hints, [uncond, cond]
        windowed = latents(pipe, controlnets=[net(files)], context="batched", context_length=2, context_overlap=0)
        one_window = latents(pipe, controlnets=[net(files)], context="static", context_length=FRAMES)
    finally:
        hook.remove()
    hint = controlnet.read_hint(ControlNetSpec(files["cn"], video=files["video"]), config())[0]
    assert torch.equal(seen[0], torch.cat([hint[0:2], hint[0:2]])) and torch.equal(seen[1], torch.cat([hint[2:4], hint[2:4]]))
    assert not torch.equal(windowed, plain)
    assert torch.equal(one_window, plain)  # one window over all frames == no windows, exactly


def test_parse_controlnet_arg():
    assert parse_controlnet_arg("cn.safetensors") == {"path": "cn.safetensors"}
    assert parse_controlnet_arg("C:\\m\\cn.safetensors:0.5") == {"path": "C:\\m\\cn.safetensors", "strength": 0.5}
    assert parse_controlnet_arg("cn:0.5:0.1:0.9") == {"path": "cn", "strength": 0.5, "start": 0.1, "end": 0.9}
    with pytest.raises(UserInputError, match="STRENGTH:START:END"):
        parse_controlnet_arg("cn:0.5:0.1")


@pytest.mark.parametrize("entry, message", [
    ({"strength": -1}, "must not be negative"), ({"start": 0.5, "end": 0.5}, "start < end"),
    ({"image": "x.png"}, "not both"), ({"scale": 1}, "unknown keys"),
])
def test_bad_entries_name_the_field(files, entry, message):
    with pytest.raises(UserInputError, match=message) as error:
        config(controlnets=[net(files, **entry)]).validate()
    assert error.value.field == "controlnets"


def test_loading_is_strict_and_refuses_sdxl(base, files, tmp_path):
    spec = ControlNetSpec(files["cn"])
    state = ControlNetModel.from_pretrained(files["cn"]).state_dict()
    from safetensors.torch import save_file

    save_file({**state, "extra.weight": torch.zeros(1)}, str(tmp_path / "extra.safetensors"))
    with pytest.raises(UserInputError, match="1 unexpected keys \\(extra.weight\\)"):
        controlnet.load_controlnet(ControlNetSpec(str(tmp_path / "extra.safetensors"), config=files["cn"]), base.unet,
                                   torch.float32, torch.device("cpu"))
    tiny_controlnet(tiny_unet(sdxl=True)).save_pretrained(tmp_path / "sdxl")
    with pytest.raises(UserInputError, match="an SDXL ControlNet with an SD1.5 base model"):
        controlnet.load_controlnet(ControlNetSpec(str(tmp_path / "sdxl")), base.unet, torch.float32, torch.device("cpu"))
    assert controlnet.load_controlnet(spec, base.unet, torch.float32, torch.device("cpu")) is not None


# ---- through the command line ---------------------------------------------------------------------------


def _argv(model_files, out, *extra):
    return ["-q", "generate", "a red circle", "--model", model_files["ldm"], "--model-config", model_files["folder"],
            "--motion-module", model_files["v2"], "--width", "32", "--height", "32", "--steps", "2", "--seed", "7",
            "--out", str(out), *extra]


def test_controlnet_from_a_control_video_through_the_cli(model_files, files, tmp_path):
    out = tmp_path / "clip.gif"
    assert main(_argv(model_files, out, "--frames", "4", "--controlnet", f"{files['cn']}:0.8:0:1", "--control-video",
                      files["video"], "--controlnet", f"{files['cn2']}:0.5", "--control-image", files["image"],
                      "--preprocess", "canny", "--guess-mode")) == 0
    assert read_frames(out).shape[0] == 4
    meta = json.loads(sidecar_path(out).read_text())
    assert [n["strength"] for n in meta["controlnets"]] == [0.8, 0.5] and meta["guess_mode"] is True
    hints = meta["inputs"]["controlnets"]
    assert hints[0]["video"] == files["video"] and len(hints[1]["image_sha256"]) == 64


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, base):
    import fixtures

    d = tmp_path_factory.mktemp("bad")
    (d / "empty").mkdir()
    (d / "text.mp4").write_text("not a video")
    (d / "text.png").write_text("not an image")
    tiny_controlnet(tiny_unet(sdxl=True)).save_pretrained(d / "sdxl")
    return {"empty": str(d / "empty"), "text.mp4": str(d / "text.mp4"), "text.png": str(d / "text.png"),
            "sdxl": str(d / "sdxl"), "corrupt": str(fixtures.write_corrupt(d / "corrupt.safetensors"))}


BAD = {
    "sdxl controlnet, sd15 base": (lambda f, b: ["--controlnet", b["sdxl"], "--control-video", f["video"]],
                                   "--controlnet", "an SDXL ControlNet with an SD1.5 base model"),
    "zero-frame control video": (lambda f, b: ["--controlnet", f["cn"], "--control-video", b["empty"]],
                                 "--control-video", "folder holds no PNG frames"),
    "unreadable control video": (lambda f, b: ["--controlnet", f["cn"], "--control-video", b["text.mp4"]],
                                 "--control-video", "cannot read it as a video"),
    "image that is not an image": (lambda f, b: ["--controlnet", f["cn"], "--control-image", b["text.png"]],
                                   "--control-image", "is not an image"),
    "corrupt controlnet file": (lambda f, b: ["--controlnet", b["corrupt"], "--control-image", f["image"]],
                                "corrupt.safetensors", "not a valid safetensors file"),
    "controlnet without hints": (lambda f, b: ["--controlnet", f["cn"]], "--controlnet", "needs a --control-video"),
    "more hints than controlnets": (lambda f, b: ["--control-image", f["image"]], "--controlnet", "1 control videos/images"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2_nothing_written(model_files, files, bad_files, tmp_path, capsys, case):
    extra, where, expected = BAD[case]
    assert main(_argv(model_files, tmp_path / "clip.gif", *extra(files, bad_files))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and where in err[0] and expected in err[0], err
    assert not any(tmp_path.iterdir())


def test_controlnets_and_video_keys_in_a_prompt_yaml(model_files, files, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"- dreambooth_path: \"{model_files['ldm']}\"\n  motion_module: \"{model_files['v2']}\"\n"
                      "  prompt: [\"a\"]\n  steps: 2\n  guidance_scale: 7.5\n  W: 32\n  H: 32\n  L: 4\n  seed: 1\n"
                      f"  video: \"{files['video']}\"\n  strength: 1.0\n  control_preprocess: canny\n"
                      f"  controlnets:\n    - path: \"{files['cn']}\"\n      strength: 0.5\n      end: 0.5\n")
    out = tmp_path / "samples"
    assert main(["-q", "generate", "--config", str(recipe), "--model-config", model_files["folder"], "--out", str(out)]) == 0
    meta = json.loads(sidecar_path(next(out.glob("*.gif"))).read_text())
    assert meta["controlnets"] == [{"path": files["cn"], "strength": 0.5, "end": 0.5}] and meta["video"] == files["video"]
    assert meta["inputs"]["controlnets"][0]["video"] == files["video"]  # no hints of its own: the video's frames
