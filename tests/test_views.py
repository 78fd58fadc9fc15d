"""View windows: motion modules run on windows of frames fused per frame; spatial layers see every frame."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from animatediff.errors import UserInputError
from animatediff.generation.pipeline import AnimationPipeline, GenerationConfig
from animatediff.motion_module import MotionModules, VanillaTemporalModule
from animatediff.sampling.context import FUSE_METHODS, fuse_weights, windows
from animatediff.sampling.freenoise import VIEW_SCHEDULES, ViewPlan
from animatediff.sampling.loop import sample
from animatediff.sampling.schedulers import make_scheduler

from conftest import randomize_, tiny_motion_config

SCHEDULES = [s for s in VIEW_SCHEDULES if s != "none"]


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_every_frame_is_in_some_window_at_every_step(schedule):
    for frames in range(1, 40):
        for length in (1, 4, 7, 16):
            for overlap in range(length):
                for step in range(4):
                    found = windows(frames, step, length, overlap, schedule)
                    assert {i for w in found for i in w} == set(range(frames)), (frames, length, overlap, step)
                    assert all(len(w) <= length and len(set(w)) == len(w) for w in found)
                    if schedule != "looped":  # only looped wraps from the end back to the start
                        assert all(w == list(range(w[0], w[0] + len(w))) for w in found)


@pytest.mark.parametrize("method", FUSE_METHODS)
def test_fuse_weights_are_positive(method):
    for length in (1, 2, 7, 16):
        assert (fuse_weights(length, method) > 0).all()


@pytest.fixture(scope="module")
def module():
    torch.manual_seed(0)
    return randomize_(VanillaTemporalModule(32, tiny_motion_config("v2")), std=0.1).eval()


def frames_input(b: int = 2, f: int = 10) -> torch.Tensor:
    return torch.randn((b * f, 32, 3, 3), generator=torch.Generator().manual_seed(1))  # (b f) c h w


@torch.no_grad()
def test_one_view_of_all_frames_is_the_plain_module(module):
    x = frames_input()
    torch.testing.assert_close(module(x, 10, [(list(range(10)), torch.ones(10))]), module(x, 10), rtol=0, atol=0)


@torch.no_grad()
def test_a_frame_in_one_view_gets_that_view_alone_and_shared_frames_are_fused(module):
    x = frames_input()
    first, second = list(range(0, 6)), list(range(4, 10))
    w1, w2 = fuse_weights(6, "pyramid").float(), fuse_weights(6, "pyramid").float()
    out = module(x, 10, [(first, w1), (second, w2)]).view(2, 10, 32, 3, 3)
    frames = x.view(2, 10, 32, 3, 3)
    alone = [module(frames[:, idx].reshape(12, 32, 3, 3), 6).view(2, 6, 32, 3, 3) for idx in (first, second)]
    torch.testing.assert_close(out[:, :4], alone[0][:, :4])
    torch.testing.assert_close(out[:, 6:], alone[1][:, 2:])
    fused = (w1[4:, None, None, None] * alone[0][:, 4:] + w2[:2, None, None, None] * alone[1][:, :2]) / (w1[4:] + w2[:2])[:, None, None, None]
    torch.testing.assert_close(out[:, 4:6], fused)
    assert not torch.allclose(out, module(x, 10).view(2, 10, 32, 3, 3))


SIZE = 32


def config(**overrides) -> GenerationConfig:
    return GenerationConfig(**{**dict(prompt="a cat", negative_prompt="blurry", num_frames=6, width=SIZE, height=SIZE,
                                      steps=2, seed=3), **overrides})


@pytest.fixture(scope="module")
def pipe(base):
    pipeline = AnimationPipeline(base, randomize_(MotionModules(tiny_motion_config("v2")), std=0.1).eval())
    yield pipeline
    pipeline.close()


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_views_of_full_length_equal_no_views(pipe, schedule):
    plain = pipe.generate(config()).latents
    full = pipe.generate(config(view_context=schedule, view_length=6, view_overlap=2)).latents
    torch.testing.assert_close(full, plain, rtol=0, atol=0)
    windowed = pipe.generate(config(view_context=schedule, view_length=4, view_overlap=2)).latents
    assert not torch.allclose(windowed, plain)


def test_uniform_views_follow_the_sampling_step():
    plan = ViewPlan("uniform", 4, 1, "flat")
    seen = []
    scheduler = make_scheduler("ddim")
    denoiser = plan.track(lambda x, t: (seen.append(plan.step), torch.zeros_like(x))[1], scheduler)
    sample(denoiser, scheduler, torch.zeros(1, 4, 8, 2, 2), 3)
    assert seen == [0, 1, 2]
    plan.step = 1
    moved = plan(8)
    plan.step = 0
    assert [w for w, _ in moved] != [w for w, _ in plan(8)]


def test_views_let_a_clip_exceed_the_position_encoding(base):
    short = randomize_(MotionModules(tiny_motion_config("v2", position_encoding_length=4)), std=0.1).eval()
    with AnimationPipeline(base, short) as pipeline:
        with pytest.raises(UserInputError) as caught:
            pipeline.generate(config(num_frames=7, context="none"))
        assert caught.value.field == "num_frames"
        result = pipeline.generate(config(num_frames=7, view_context="static", view_length=4, view_overlap=1))
        assert result.latents.shape[2] == 7
        with pytest.raises(UserInputError) as caught:
            pipeline.generate(config(num_frames=7, view_context="static", view_length=5, view_overlap=1))
        assert caught.value.field == "view_length"


@pytest.mark.parametrize("overrides, field", [
    (dict(view_context="sliding"), "view_context"),
    (dict(view_context="uniform", view_fuse="max"), "view_fuse"),
    (dict(view_context="uniform", view_length=4, view_overlap=4), "view_overlap"),
    (dict(view_context="uniform", view_length=0), "view_length"),
    (dict(view_context="uniform", view_overlap=-1), "view_overlap"),
])
def test_bad_values_name_the_field(pipe, overrides, field):
    with pytest.raises(UserInputError) as caught:
        pipe.generate(config(**overrides))
    assert caught.value.field == field


# ---- the command line and the prompt YAML (bundled demo model) ------------------------------------------------
BAD_FLAGS = {
    "freeinit iterations 0": (["--freeinit-iterations", "0"], "--freeinit-iterations 0"),
    "unknown freeinit filter": (["--freeinit-filter", "lanczos"], "--freeinit-filter"),
    "unknown noise type": (["--noise-type", "freenoise"], "--noise-type"),
    "unknown view schedule": (["--view-context", "sliding"], "--view-context"),
    "view overlap >= length": (["--view-context", "static", "--view-length", "8", "--view-overlap", "8"], "--view-overlap 8"),
}


@pytest.mark.parametrize("case", list(BAD_FLAGS))
def test_bad_flag_is_one_error_line_exit_2_nothing_written(tmp_path, capsys, case):
    from animatediff.cli import main

    extra, words = BAD_FLAGS[case]
    assert main(["-q", "generate", "a red circle", "--frames", "4", "--steps", "1", "--out", str(tmp_path / "a.gif"), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], err
    assert not any(tmp_path.iterdir())


def test_cli_and_yaml_reach_every_field_and_the_sidecar_records_them(tmp_path):
    import json

    from animatediff.cli import main
    from animatediff.recipes import load_official_recipe
    from animatediff.video_io import sidecar_path

    out = tmp_path / "a.gif"
    flags = ["--noise-type", "shuffle", "--view-context", "looped", "--view-length", "4", "--view-overlap", "1", "--view-fuse",
             "flat", "--freeinit-iterations", "2", "--freeinit-filter", "gaussian", "--freeinit-spatial", "0.5",
             "--freeinit-temporal", "0.4", "--freeinit-fast"]
    assert main(["-q", "generate", "a red circle", "--frames", "6", "--steps", "2", "--seed", "1", "--out", str(out), *flags]) == 0
    meta = json.loads(sidecar_path(out).read_text())
    expected = dict(noise_type="shuffle", view_context="looped", view_length=4, view_overlap=1, view_fuse="flat",
                    freeinit_iterations=2, freeinit_filter="gaussian", freeinit_spatial=0.5, freeinit_temporal=0.4, freeinit_fast=True)
    assert {k: meta[k] for k in expected} == expected

    recipe = tmp_path / "long.yaml"
    recipe.write_text("- prompt: a red circle\n  steps: 2\n  guidance_scale: 7.5\n"
                      + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in expected.items()))
    (job,) = load_official_recipe(recipe, None)
    assert {k: job.settings[k] for k in expected} == expected
    recipe.write_text("- prompt: a red circle\n  steps: 2\n  guidance_scale: 7.5\n  freeinit_fast: 3\n")
    with pytest.raises(UserInputError, match="freeinit_fast 3: expected true or false"):
        load_official_recipe(recipe, None)
    fields = {f.name for f in dataclasses.fields(GenerationConfig)}
    assert set(expected) <= fields


def test_per_frame_motion_scale_and_effect_follow_the_views(pipe):
    """Per-frame motion_scale/motion_effect are sliced to each view's frames: a full-length view equals no views,
    and windows that are shorter than the clip run (each window sees its own frames' values)."""
    controls = dict(motion_scale=[0.8, 1.0, 1.2, 1.4, 1.1, 0.9], motion_effect=[1.0, 0.5, 0.0, 1.0, 0.7, 1.0])
    plain = pipe.generate(config(**controls)).latents
    full = pipe.generate(config(**controls, view_context="static", view_length=6, view_overlap=2)).latents
    torch.testing.assert_close(full, plain, rtol=0, atol=0)
    windowed = pipe.generate(config(**controls, view_context="static", view_length=4, view_overlap=2)).latents
    assert torch.isfinite(windowed).all() and not torch.equal(windowed, plain)
