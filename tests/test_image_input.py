"""Image-to-video (generation/image_input.py) and video-to-video resampling (video_fps) on tiny real components."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from animatediff.api import Animator
from animatediff.cli import main
from animatediff.errors import UserInputError
from animatediff.generation import image_input, video_input
from animatediff.generation.pipeline import AnimationPipeline, GenerationConfig
from animatediff.sampling.schedulers import make_scheduler
from animatediff.video_io import read_frames, save_video, sidecar_path
from animatediff.weights.files import file_sha256

SIZE, FRAMES = 32, 4


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("i2v")
    g = np.random.default_rng(0)
    paths = {"still": d / "still.png", "wide": d / "wide.png", "blue": d / "blue.png", "text": d / "text.png"}
    Image.fromarray(g.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(paths["still"])
    wide = np.zeros((32, 64, 3), np.uint8)
    wide[:, :16], wide[:, 48:], wide[:, 16:48] = (255, 0, 0), (255, 0, 0), (0, 0, 255)  # red sides, blue centre
    Image.fromarray(wide).save(paths["wide"])
    Image.fromarray(np.full((32, 32, 3), (0, 0, 255), np.uint8)).save(paths["blue"])
    paths["text"].write_text("not an image")
    frames = g.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    paths["gif"] = save_video(frames, d / "input.gif", fps=10)
    paths["png"] = save_video(frames, d / "frames")
    return {k: str(v) for k, v in paths.items()}


@pytest.fixture(scope="module")
def pipe(base, motion):
    pipeline = AnimationPipeline(base, motion)
    yield pipeline
    pipeline.close()


def config(files, **overrides) -> GenerationConfig:
    return GenerationConfig(**{**dict(prompt="a cat walking", num_frames=FRAMES, width=SIZE, height=SIZE, steps=4, seed=1,
                                      guidance_scale=1.0, image=files["still"]), **overrides})


def first_unet_input(pipe, cfg) -> tuple[torch.Tensor, torch.Tensor]:
    seen = []
    hook = pipe.base.unet.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()) if not seen else None)
    try:
        result = pipe.generate(cfg)
    finally:
        hook.remove()
    return seen[0], result.latents


def test_weights_fall_off_linearly(files):
    assert image_input.weights(config(files)) == [1 - i / 32 for i in range(FRAMES)]  # defaults: A1111's scale 32
    assert image_input.weights(config(files, image_strength=0.5, image_falloff=2)) == [0.5, 0.25, 0.0, 0.0]


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_start_latent_is_the_documented_blend_and_frame_0_the_noised_image_latent(pipe, files, strength):
    """Frame 0 at full image strength starts at add_noise(z, noise_0, t_s), z the still's posterior mean (as
    video-to-video of the still would, with the mean); every frame k at add_noise(a_k z + (1 - a_k) n_k, ...)."""
    seen, _ = first_unet_input(pipe, config(files, strength=strength, scheduler="ddim", image_falloff=3))
    g = torch.Generator("cpu").manual_seed(1)
    noise = torch.randn(1, 4, FRAMES, 4, 4, generator=g)
    blend = torch.randn(1, 4, FRAMES, 4, 4, generator=g)  # drawn after the initial noise
    z = image_input.image_latent(pipe.base.vae, files["still"], SIZE, SIZE)  # (1, 4, 1, 4, 4)
    s = make_scheduler("ddim")
    s.set_timesteps(4)
    t = s.timesteps[4 - video_input.steps_to_run(4, strength):][:1]
    a = torch.tensor([1, 2 / 3, 1 / 3, 0]).view(1, 1, -1, 1, 1)
    expected = s.add_noise(a * z + (1 - a) * blend, noise, t)
    fold = lambda x: x.transpose(1, 2).reshape(FRAMES, 4, 4, 4)  # noqa: E731  b c f h w -> (b f) c h w
    torch.testing.assert_close(seen, fold(expected), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(seen[0], s.add_noise(z[:, :, 0], noise[:, :, 0], t)[0], rtol=1e-5, atol=1e-5)


def test_the_still_is_centre_cropped_not_stretched(pipe, files):
    """A 2:1 image with red sides and a blue centre, for a square clip: the crop keeps only the blue centre."""
    wide = image_input.image_latent(pipe.base.vae, files["wide"], SIZE, SIZE)
    blue = image_input.image_latent(pipe.base.vae, files["blue"], SIZE, SIZE)
    torch.testing.assert_close(wide, blue, rtol=1e-4, atol=1e-4)


def test_image_to_video_through_the_api_equals_the_pipeline(base, motion, files):
    animator = Animator(base, motion)
    try:
        result = animator.generate("a cat walking", num_frames=FRAMES, width=SIZE, height=SIZE, steps=4, seed=1,
                                   guidance_scale=1.0, image=files["still"], strength=0.75, image_strength=0.9)
        again = animator.pipeline.generate(config(files, strength=0.75, image_strength=0.9))
    finally:
        animator.pipeline.close()
    assert torch.equal(result.latents, again.latents) and torch.isfinite(result.latents).all()
    info = result.models["inputs"]["image"]
    assert info["sha256"] == file_sha256(files["still"]) and info["steps_run"] == 3 and info["image_weights"][0] == 0.9


@pytest.mark.parametrize("overrides, field", [
    (dict(image_strength=0), "image_strength"), (dict(image_strength=1.5), "image_strength"),
    (dict(image_falloff=0), "image_falloff"), (dict(strength=0), "strength"), (dict(strength=1.5), "strength"),
    (dict(video="x.gif"), "image"), (dict(image=None, image_strength=0.5), "image_strength"),
    (dict(image=None, strength=0.5), "strength"), (dict(freeinit_iterations=2), "image"),
    (dict(image=None, video_fps=8), "video_fps"),
])
def test_bad_settings_name_the_field(files, overrides, field):
    with pytest.raises(UserInputError) as error:
        config(files, **overrides).validate()
    assert error.value.field == field


@pytest.mark.parametrize("what", ["image", "video"])
def test_a_default_strength_that_rounds_to_zero_steps_is_an_error(files, what):
    """steps 1 and the default strength 0.8: int(0.8) = 0 steps would return the noised input (diffusers' B4)."""
    inputs = {"image": files["still"]} if what == "image" else {"image": None, "video": files["png"]}
    with pytest.raises(UserInputError, match=r"runs int\(1 steps x 0.8\) = 0 steps") as error:
        config(files, steps=1, **inputs).validate()
    assert error.value.field == "strength"


def test_resampling_indices():
    assert video_input.resample_indices(5, 10, 5) == [0, 2, 4]
    assert video_input.resample_indices(3, 4, 8) == [0, 0, 1, 1, 2]
    assert video_input.resampled_count(90, 30, 8) == 24


def test_video_is_resampled_to_video_fps(pipe, files, tmp_path):
    """10 fps -> 5 fps takes input frames 0, 2, 4: the same start as giving those frames as the input."""
    cfg = config(files, image=None, video=files["gif"], video_fps=5, num_frames=3, strength=0.5)
    seen, result = first_unet_input(pipe, cfg)
    raw = video_input.read_video(files["gif"], "video")[0]
    manual = config(files, image=None, video=str(save_video(raw[[0, 2, 4]], tmp_path / "resampled")), num_frames=3,
                    strength=0.5)
    assert torch.equal(seen, first_unet_input(pipe, manual)[0])


# ---- through the command line ---------------------------------------------------------------------------


def _argv(model_files, out, *extra, frames=("--frames", "4")):
    return ["-q", "generate", "a red circle", "--model", model_files["ldm"], "--model-config", model_files["folder"],
            "--motion-module", model_files["v2"], "--width", "32", "--height", "32", "--steps", "4", "--seed", "7",
            *frames, "--out", str(out), *extra]


def test_image_to_video_through_the_cli(model_files, files, tmp_path):
    out = tmp_path / "clip.gif"
    assert main(_argv(model_files, out, "--image", files["still"], "--strength", "0.5", "--image-falloff", "8")) == 0
    assert read_frames(out).shape[0] == 4
    meta = json.loads(sidecar_path(out).read_text())
    assert (meta["image"], meta["strength"], meta["image_falloff"]) == (files["still"], 0.5, 8.0)
    image = meta["inputs"]["image"]
    assert image["sha256"] == file_sha256(files["still"]) and image["image_weights"] == [1.0, 0.875, 0.75, 0.625]


def test_video_fps_through_the_cli_sets_the_frame_count(model_files, files, tmp_path):
    out = tmp_path / "clip.gif"
    assert main(_argv(model_files, out, "--video", files["gif"], "--video-fps", "5", "--strength", "0.5", frames=())) == 0
    assert read_frames(out).shape[0] == 3  # 5 frames at 10 fps -> 3 at 5 fps
    assert json.loads(sidecar_path(out).read_text())["inputs"]["video"]["resampled_to_fps"] == 5


BAD = {
    "an image that is not an image": (lambda f: ["--image", f["text"]], "--image", "is not an image"),
    "a missing image": (lambda f: ["--image", f["still"] + ".missing"], "--image", "no such file"),
    "image strength 0": (lambda f: ["--image", f["still"], "--image-strength", "0"], "--image-strength 0.0", "(0, 1]"),
    "image strength above 1": (lambda f: ["--image", f["still"], "--image-strength", "1.5"], "--image-strength 1.5", "(0, 1]"),
    "strength 0": (lambda f: ["--image", f["still"], "--strength", "0"], "--strength 0.0", "(0, 1]"),
    "strength above 1": (lambda f: ["--image", f["still"], "--strength", "1.5"], "--strength 1.5", "(0, 1]"),
    "strength of zero steps": (lambda f: ["--image", f["still"], "--strength", "0.2"], "--strength 0.2", "= 0 steps"),
    "image and video": (lambda f: ["--image", f["still"], "--video", f["gif"]], "--image", "not both"),
    "video fps of a png folder": (lambda f: ["--video", f["png"], "--video-fps", "4"], "--video-fps 4", "states no frame rate"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2_nothing_written(model_files, files, tmp_path, capsys, case):
    extra, where, expected = BAD[case]
    assert main(_argv(model_files, tmp_path / "clip.gif", *extra(files))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and where in err[0] and expected in err[0], err
    assert not any(tmp_path.iterdir())


def test_image_keys_in_a_prompt_yaml(model_files, files, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"- dreambooth_path: \"{model_files['ldm']}\"\n  motion_module: \"{model_files['v2']}\"\n"
                      "  prompt: [\"a\"]\n  steps: 4\n  guidance_scale: 1.0\n  W: 32\n  H: 32\n  L: 4\n  seed: 1\n"
                      f"  image: \"{files['still']}\"\n  strength: 0.5\n  image_strength: 0.8\n  image_falloff: 4\n")
    out = tmp_path / "samples"
    assert main(["-q", "generate", "--config", str(recipe), "--model-config", model_files["folder"], "--out", str(out)]) == 0
    meta = json.loads(sidecar_path(next(out.glob("*.gif"))).read_text())
    assert (meta["image"], meta["image_strength"], meta["image_falloff"]) == (files["still"], 0.8, 4.0)
    assert meta["inputs"]["image"]["image_weights"] == [0.8, 0.6, 0.4, 0.2]
