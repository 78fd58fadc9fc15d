"""Video-to-video (generation/video_input.py + loop.sample's init/start_step) on tiny real components."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from animatediff.cli import main
from animatediff.errors import UserInputError
from animatediff.generation import vae as vae_io, video_input
from animatediff.generation.pipeline import AnimationPipeline, GenerationConfig
from animatediff.motion_module import MotionModules
from animatediff.sampling.schedulers import make_scheduler
from animatediff.video_io import read_frames, save_video, sidecar_path

from conftest import randomize_, tiny_motion_config

SIZE, FRAMES = 32, 3


@pytest.fixture(scope="module")
def pipe(base):
    pipeline = AnimationPipeline(base, randomize_(MotionModules(tiny_motion_config("v2")), std=0.1).eval())
    yield pipeline
    pipeline.close()


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("v2v")
    frames = np.random.default_rng(0).integers(0, 256, (5, 36, 40, 3), dtype=np.uint8)
    return {"png": str(save_video(frames, d / "input")), "gif": str(save_video(frames, d / "input.gif", fps=10))}


def config(clips, **overrides) -> GenerationConfig:
    return GenerationConfig(**{**dict(prompt="a cat walking", num_frames=FRAMES, width=SIZE, height=SIZE, steps=4, seed=1,
                                      guidance_scale=1.0, video=clips["png"], strength=1.0), **overrides})


def unet_inputs(pipe, cfg) -> tuple[list[torch.Tensor], list[float], torch.Tensor]:
    seen, ts = [], []

    def record(_module, args) -> None:
        seen.append(args[0].clone())
        ts.append(float(torch.as_tensor(args[1]).flatten()[0]))

    hook = pipe.base.unet.register_forward_pre_hook(record)
    try:
        result = pipe.generate(cfg)
    finally:
        hook.remove()
    return seen, ts, result.latents


@pytest.mark.parametrize("scheduler", ["ddim", "euler"])
def test_strength_one_starts_from_the_input_noised_to_the_first_timestep(pipe, clips, scheduler):
    """What holds at strength 1.0: every step of the plain schedule runs, with text-to-video's noise, from
    add_noise(z0, noise, t0), z0 a posterior sample drawn after the noise. It is not text-to-video itself: the
    input keeps the weight sqrt(alpha_bar(t0)) (DDIM) or enters as z0 + sigma_0 noise (Euler)."""
    cfg = config(clips, scheduler=scheduler)
    seen, ts, _ = unet_inputs(pipe, cfg)
    plain_seen, plain_ts, _ = unet_inputs(pipe, config(clips, scheduler=scheduler, video=None, strength=None))
    assert ts == plain_ts and len(ts) == 4

    g = torch.Generator("cpu").manual_seed(1)
    noise = torch.randn(1, 4, FRAMES, 4, 4, generator=g)
    frames = video_input.fit(video_input.read_video(clips["png"], "video")[0], SIZE, SIZE)[:FRAMES]
    z0 = vae_io.encode(pipe.base.vae, frames.permute(1, 0, 2, 3)[None], 16, generator=g, sample=True)
    s = make_scheduler(scheduler)
    s.set_timesteps(4)
    if hasattr(s, "set_begin_index"):
        s.set_begin_index(0)
    start = s.scale_model_input(s.add_noise(z0, noise, s.timesteps[:1]), s.timesteps[0])
    fold = lambda x: x.transpose(1, 2).reshape(FRAMES, 4, 4, 4)  # noqa: E731  b c f h w -> (b f) c h w
    torch.testing.assert_close(seen[0], fold(start), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(seen[0], plain_seen[0], atol=1e-3)


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "euler_a"])
def test_strength_runs_the_last_steps_of_the_schedule(pipe, clips, scheduler):
    _, ts, latents = unet_inputs(pipe, config(clips, scheduler=scheduler, strength=0.5))
    s = make_scheduler(scheduler)
    s.set_timesteps(4)
    assert ts == [float(t) for t in s.timesteps[2:]]
    assert latents.shape == (1, 4, FRAMES, 4, 4) and torch.isfinite(latents).all()
    again = pipe.generate(config(clips, scheduler=scheduler, strength=0.5)).latents
    assert torch.equal(latents, again)  # seeded: the VAE sample and the ancestral noise come from the seed


def test_strength_that_rounds_to_zero_steps_is_an_error(pipe, clips):
    with pytest.raises(UserInputError, match=r"runs int\(4 steps x 0.2\) = 0 steps") as error:
        pipe.generate(config(clips, strength=0.2))
    assert error.value.field == "strength"


@pytest.mark.parametrize("overrides, field", [
    (dict(strength=0), "strength"), (dict(strength=1.5), "strength"), (dict(video=None, strength=0.5), "strength"),
    (dict(freeinit_iterations=2), "video"),
])
def test_bad_settings_name_the_field(clips, overrides, field):
    with pytest.raises(UserInputError) as error:
        config(clips, **overrides).validate()
    assert error.value.field == field


def test_short_input_repeats_its_last_frame(pipe, clips):
    assert pipe.generate(config(clips, num_frames=7, strength=0.5)).latents.shape[2] == 7


# ---- through the command line ---------------------------------------------------------------------------


def _argv(model_files, out, *extra):
    return ["-q", "generate", "a red circle", "--model", model_files["ldm"], "--model-config", model_files["folder"],
            "--motion-module", model_files["v2"], "--width", "32", "--height", "32", "--steps", "4", "--seed", "7",
            "--out", str(out), *extra]


def test_video_to_video_through_the_cli_keeps_the_input_frame_count(model_files, clips, tmp_path):
    out = tmp_path / "clip.gif"
    assert main(_argv(model_files, out, "--video", clips["gif"], "--strength", "0.5")) == 0
    assert read_frames(out).shape[0] == 5  # no --frames: the input's count
    meta = json.loads(sidecar_path(out).read_text())
    video = meta["inputs"]["video"]
    assert (meta["num_frames"], meta["strength"], video["frames"], video["fps"], video["steps_run"]) == (5, 0.5, 5, 10.0, 2)
    assert len(video["sha256"]) == 64


@pytest.mark.parametrize("extra, expected", [
    (["--strength", "0.1"], "--strength 0.1: runs int(4 steps x 0.1) = 0 steps"),
    (["--strength", "0"], "--strength 0.0: must be a number in (0, 1]"),
    (["--strength", "1.5"], "--strength 1.5: must be a number in (0, 1]"),
])
def test_bad_strength_is_one_line_exit_2_nothing_written(model_files, clips, tmp_path, capsys, extra, expected):
    assert main(_argv(model_files, tmp_path / "clip.gif", "--video", clips["gif"], *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    assert not any(tmp_path.iterdir())


def test_unreadable_video_is_refused_before_any_model_loads(tmp_path, capsys):
    (tmp_path / "x.mp4").write_text("not a video")
    assert main(["-q", "generate", "a", "--model", str(tmp_path / "missing.safetensors"), "--video", str(tmp_path / "x.mp4"),
                 "--out", str(tmp_path / "o.gif")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--video" in err[0] and "cannot read it as a video" in err[0], err
