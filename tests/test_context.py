"""Context windows (sampling/context.py): the window schedules and fuse weights, the wrapper, the wiring."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from animatediff.sampling.context import FUSE_METHODS, SCHEDULES, fuse_weights, fusion_weights, windows


def _cases(schedule: str):
    """Every small (N, L, O, stride) plus a seeded sample of larger ones."""
    small = [(n, length, overlap, stride) for n in range(1, 21) for length in range(1, 9) for overlap in range(length)
             for stride in (1, 2, 3)]
    rng = random.Random(0)
    large = []
    for _ in range(200):
        length = rng.randint(1, 32)
        large.append((rng.randint(1, 300), length, rng.randrange(length), rng.randint(1, 4)))
    return [c for c in small + large if schedule != "batched" or c[3] == 1]


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_every_frame_is_covered_at_every_step(schedule):
    for n, length, overlap, stride in _cases(schedule):
        for step in (0, 1, 3, 6, 1000):
            for closed in (False, True) if schedule == "looped" else (False,):
                found = windows(n, step, length, overlap, schedule, stride, closed)
                case = (n, length, overlap, stride, step, closed)
                assert set(itertools.chain(*found)) == set(range(n)), case
                assert all(1 <= len(w) <= length and len(set(w)) == len(w) for w in found), case
                assert len({tuple(w) for w in found}) == len(found), case  # no window twice


def test_static_matches_the_documented_example_and_never_moves():
    expected = [list(range(s, s + 16)) for s in (0, 12, 24, 36, 48)]
    assert all(windows(64, step, 16, 4, "static") == expected for step in range(6))


def test_looped_wraps_and_moves_every_step():
    # ADE's example: N=64, L=16, O=4, step 1 shifts the grid by 32
    assert windows(64, 1, 16, 4, "looped") == [
        list(range(32, 48)), list(range(44, 60)), [*range(56, 64), *range(8)], list(range(4, 20)), list(range(16, 32))]
    wrapped = [w for step in range(8) for w in windows(64, step, 16, 4, "looped") if w != sorted(w)]
    assert wrapped and all(w[0] > w[-1] for w in wrapped)


def test_uniform_never_wraps_but_its_seams_move():
    seams = set()
    for n, length, overlap, stride in _cases("uniform")[::7]:
        for step in range(6):
            for w in windows(n, step, length, overlap, "uniform", stride):
                assert w == sorted(w) and len(set(w[i + 1] - w[i] for i in range(len(w) - 1))) <= 1, (n, length, w)
    for step in range(4):
        seams.add(tuple(w[0] for w in windows(64, step, 16, 4, "uniform")))
    assert len(seams) == 4


def test_closed_loop_overlaps_the_loop_seam():
    """Without closed_loop the window over the end may stop where the first begins; with it they share O frames."""
    for n in (40, 50, 64, 100):
        for step in range(6):
            found = windows(n, step, 16, 4, "looped", closed_loop=True)
            # every cyclic pair of neighbouring frames (n-1, 0 included) is together in some window
            for f in range(n):
                assert any(f in w and (f + 1) % n in w and w.index((f + 1) % n) == w.index(f) + 1 for w in found)


def test_batched_has_no_overlap():
    for n, length, overlap, _ in _cases("batched"):
        found = windows(n, 0, length, overlap, "batched")
        assert sorted(itertools.chain(*found)) == list(range(n))


def test_dilated_passes_span_further():
    found = windows(64, 0, 16, 4, "static", stride=3)
    assert [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30] in found
    assert max(w[-1] - w[0] for w in found) == 60  # dilation 4: 16 frames over 61
    assert windows(64, 0, 16, 4, "static", stride=1) == windows(64, 0, 16, 4, "static")


def test_short_clips_are_one_window():
    for schedule in SCHEDULES:
        assert windows(16, 3, 16, 4, schedule) == [list(range(16))]
        assert windows(5, 3, 16, 4, schedule) == [list(range(5))]


@pytest.mark.parametrize("bad", [dict(overlap=16), dict(overlap=-1), dict(length=0), dict(stride=0),
                                 dict(schedule="wavy"), dict(closed_loop=True, schedule="uniform"),
                                 dict(schedule="batched", stride=2)])
def test_windows_refuse_bad_arguments(bad):
    with pytest.raises(ValueError):
        windows(**{**dict(num_frames=64, step=0, length=16, overlap=4), **bad})


@pytest.mark.parametrize("method", FUSE_METHODS)
def test_fuse_weights_are_positive_and_normalised_per_frame(method):
    for length in range(1, 33):
        w = fuse_weights(length, method)
        assert w.shape == (length,) and bool((w > 0).all())
        assert torch.equal(w, w.flip(0))  # symmetric: no direction in time is preferred
    for schedule in SCHEDULES:
        for n, length, overlap, stride in _cases(schedule)[::10]:
            found = windows(n, 2, length, overlap, schedule, stride)
            weights = fusion_weights(found, n, method)
            total = torch.zeros(n, dtype=torch.float64)
            for window, weight in zip(found, weights):
                assert bool((weight > 0).all())
                total.index_add_(0, torch.tensor(window), weight)
            torch.testing.assert_close(total, torch.ones(n, dtype=torch.float64))
    once = fusion_weights([[0, 1, 2], [3, 4]], 5, method)  # a frame in one window gets weight 1.0 exactly
    assert all(bool((w == 1).all()) for w in once)


def test_fuse_weight_profiles():
    assert fuse_weights(6, "pyramid").tolist() == [1, 2, 3, 3, 2, 1]
    assert fuse_weights(5, "pyramid").tolist() == [1, 2, 3, 2, 1]
    assert fuse_weights(4, "flat").tolist() == [1, 1, 1, 1]
    assert fuse_weights(16, "gauss").argmax() in (7, 8) and fuse_weights(16, "relative").min() == pytest.approx(0.01)
    with pytest.raises(ValueError):
        fuse_weights(16, "triangle")


# ---- the wrapper ----------------------------------------------------------------------------------------
import json  # noqa: E402

from animatediff.cli import main  # noqa: E402
from animatediff.errors import UserInputError  # noqa: E402
from animatediff.generation.conditioning import PER_CLIP_NDIM  # noqa: E402
from animatediff.generation.pipeline import AnimationPipeline, GenerationConfig  # noqa: E402
from animatediff.motion_module import MotionModules  # noqa: E402
from animatediff.sampling.context import ContextOptions, ContextWindows, context_options  # noqa: E402
from animatediff.sampling.guidance import ClassifierFreeGuidance  # noqa: E402
from animatediff.sampling.loop import sample  # noqa: E402
from animatediff.sampling.schedulers import SCHEDULERS, make_scheduler  # noqa: E402
from animatediff.video_io import read_frames, sidecar_path  # noqa: E402

from conftest import randomize_, tiny_motion_config  # noqa: E402
from tiny_models import tiny_base_model  # noqa: E402


class FrameLocal:
    """A conditional model that treats each frame on its own (so windows must not change its output) and records
    the shapes it was called with. Per-frame ``encoder_hidden_states`` shift each frame by its own mean."""

    def __init__(self):
        self.calls = []

    def __call__(self, latents, t, cond):
        self.calls.append((tuple(latents.shape), {k: tuple(v.shape) for k, v in cond.items()}))
        shift = cond["encoder_hidden_states"].mean(dim=(-2, -1))  # (b,) per clip or (b, f) per frame
        shift = shift.view(latents.shape[0], 1, -1, 1, 1)
        return torch.sin(latents) * 2 + shift + cond["time_ids"].sum(-1).view(-1, 1, 1, 1, 1)


def _inputs(frames=20, batch=2, per_frame=True):
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(batch, 4, frames, 3, 3, generator=g)
    hidden = torch.randn(batch, frames, 5, 8, generator=g) if per_frame else torch.randn(batch, 5, 8, generator=g)
    return latents, {"encoder_hidden_states": hidden, "time_ids": torch.randn(batch, 6, generator=g)}


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("fuse", FUSE_METHODS)
def test_windows_slice_per_frame_conditioning_and_fuse_to_the_plain_result(schedule, fuse):
    """A frame-local model gives the same prediction windowed or not: every frame is covered, its conditioning is
    sliced with it, per-clip tensors pass through, and the fuse weights of each frame sum to 1."""
    latents, cond = _inputs()
    model = FrameLocal()
    stride = 1 if schedule == "batched" else 2
    wrapped = ContextWindows(model, ContextOptions(schedule, 6, 2, stride, fuse, schedule == "looped"), PER_CLIP_NDIM)
    for step, t in enumerate((torch.tensor(999), torch.tensor(500), torch.tensor(1))):
        torch.testing.assert_close(wrapped(latents, t, cond), model(latents, t, cond), rtol=1e-6, atol=1e-6)
        assert wrapped.step == step
    shapes = {call[0][2] for call in model.calls}
    assert max(shapes) == 20 and all(s <= 6 for s in shapes - {20})  # the windows never saw more than 6 frames
    assert all(c[1]["time_ids"] == (2, 6) for c in model.calls)  # per clip: unchanged


def test_frames_in_one_window_are_bit_identical_to_running_that_window():
    latents, cond = _inputs(frames=10)
    model = FrameLocal()
    out = ContextWindows(model, ContextOptions("batched", 4, 0), PER_CLIP_NDIM)(latents, torch.tensor(5), cond)
    for window in ([0, 1, 2, 3], [4, 5, 6, 7], [8, 9]):
        alone = model(latents[:, :, window], torch.tensor(5), {"encoder_hidden_states": cond["encoder_hidden_states"][:, window],
                                                               "time_ids": cond["time_ids"]})
        assert torch.equal(out[:, :, window], alone)


def test_context_batch_stacks_windows_in_one_call():
    latents, cond = _inputs(frames=20, per_frame=False)
    model = FrameLocal()
    options = ContextOptions("static", 6, 2, batch=3)  # windows [0-5] [4-9] [8-13] [12-17] [14-19]: calls of 3 and 2
    out = ContextWindows(model, options, PER_CLIP_NDIM)(latents, torch.tensor(5), cond)
    assert [c[0][0] for c in model.calls] == [6, 4]  # batch 2 x 3 windows, then 2 x 2
    torch.testing.assert_close(out, model(latents, torch.tensor(5), cond), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_every_scheduler_advances_the_window_step_once_per_step(scheduler):
    latents, cond = _inputs(frames=20, batch=1, per_frame=False)
    wrapped = ContextWindows(FrameLocal(), ContextOptions("uniform", 6, 2), PER_CLIP_NDIM)
    seen = []
    denoiser = lambda x, t: (seen.append(wrapped.step), wrapped(x, t, cond))[1] * 0.01  # noqa: E731
    out = sample(denoiser, make_scheduler(scheduler, "animatediff"), latents, 4, generator=torch.Generator().manual_seed(0))
    assert bool(torch.isfinite(out).all())
    assert wrapped.step == 3 and len(set(seen)) >= 3


# ---- in the pipeline ----------------------------------------------------------------------------------
SIZE = 16  # 16x16 pixels -> 2x2 latents


def config(**overrides) -> GenerationConfig:
    return GenerationConfig(**{**dict(prompt="a cat walking", negative_prompt="blurry", num_frames=12,
                                      width=SIZE, height=SIZE, steps=2, seed=1), **overrides})


@pytest.fixture(scope="module")
def motion():
    return randomize_(MotionModules(tiny_motion_config("v2", position_encoding_length=8)), std=0.1).eval()


@pytest.fixture
def pipe(base, motion):
    with AnimationPipeline(base, motion) as pipeline:
        yield pipeline


def test_one_window_over_all_frames_is_the_plain_path_bit_for_bit(pipe):
    plain = pipe.generate(config(num_frames=8, context="none"))
    for schedule in SCHEDULES:
        windowed = pipe.generate(config(num_frames=8, context=schedule, context_length=8))
        assert torch.equal(windowed.latents, plain.latents) and torch.equal(windowed.frames, plain.frames), schedule


@pytest.mark.parametrize("batch", [1, 2, 3, 4])
def test_cfg_is_batched_inside_each_window(pipe, base, batch):
    """UNet calls per step = ceil(windows / context_batch), each with [uncond, cond] x the window's frames."""
    batches: list[int] = []
    handle = base.unet.register_forward_pre_hook(lambda _m, args: batches.append(args[0].shape[0]))
    try:
        pipe.generate(config(context="static", context_length=4, context_overlap=1, context_batch=batch, guidance_scale=7.5))
    finally:
        handle.remove()
    found = windows(12, 0, 4, 1, "static")  # [0-3] [3-6] [6-9] [8-11]
    per_step = [2 * 4 * min(batch, len(found) - i) for i in range(0, len(found), batch)]
    assert batches == per_step * 2  # 2 steps


def test_frames_beyond_the_encoding_switch_to_uniform_windows_and_say_so(pipe, caplog):
    caplog.set_level("INFO", logger="animatediff")
    result = pipe.generate(config(num_frames=12))  # the module's encoding holds 8
    assert (result.config.context, result.config.context_length, result.config.context_overlap) == ("uniform", 8, 2)
    lines = [r.getMessage() for r in caplog.records if r.name.endswith("context")]
    assert len(lines) == 1 and "12 frames exceed the v2 motion module's position-encoding length 8" in lines[0]
    assert result.frames.shape[2] == 12 and bool(torch.isfinite(result.latents).all())
    assert pipe.generate(config(num_frames=8)).config.context == "none"  # within the encoding: one pass
    assert pipe.generate(config(num_frames=12, closed_loop=True)).config.context == "looped"


def test_sdxl_windows_pass_per_clip_conditioning():
    base = tiny_base_model(sdxl=True)
    motion = randomize_(MotionModules(tiny_motion_config("sdxl-beta", position_encoding_length=4)), std=0.1).eval()
    with AnimationPipeline(base, motion) as pipeline:
        result = pipeline.generate(config(num_frames=7, negative_prompt="", steps=1, context_fuse="gauss"))
    assert result.config.context == "uniform" and result.frames.shape[2] == 7 and bool(torch.isfinite(result.latents).all())


@pytest.mark.parametrize("field, value, match", [
    ("context", "wavy", "unknown context schedule"), ("context_fuse", "triangle", "unknown fuse method"),
    ("context_overlap", 16, r"must be less than context_length \(16\)"), ("context_length", 0, "at least 1"),
    ("context_length", 40, "exceeds the v3 motion module's position-encoding length 32"),
    ("context_batch", 1.5, "whole number"), ("closed_loop", "yes", "true or false"),
])
def test_bad_settings_name_their_field(field, value, match):
    settings = {"num_frames": 64, "context": "uniform", "context_length": 16, field: value}
    with pytest.raises(UserInputError, match=match) as error:
        GenerationConfig(prompt="x", **settings).validate(max_frames=32, motion_name="v3")
    assert error.value.field == field


def test_settings_that_contradict_each_other():
    with pytest.raises(UserInputError, match="only the looped schedule loops") as error:
        context_options(GenerationConfig(prompt="x", context="static", closed_loop=True))
    assert error.value.field == "closed_loop"
    with pytest.raises(UserInputError, match="batched windows do not overlap") as error:
        context_options(GenerationConfig(prompt="x", context="batched", context_stride=2))
    assert error.value.field == "context_stride"
    GenerationConfig(prompt="x", num_frames=64).validate(max_frames=32)  # automatic windows: no error


# ---- through the command line ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import fixtures
    from tiny_models import save_diffusers_folder

    d = tmp_path_factory.mktemp("models")
    tiny = tiny_base_model()
    return {"ldm": str(fixtures.save(fixtures.ldm_checkpoint(tiny), d / "tiny_sd15.safetensors")),
            "folder": str(save_diffusers_folder(tiny, d / "tiny_sd15_diffusers")),
            "v2": str(fixtures.save(fixtures.official_motion_state_dict("v2"), d / "mm_sd_v15_v2.ckpt"))}


def _argv(files, out, *extra):
    return ["-q", "generate", "a red circle", "--model", files["ldm"], "--model-config", files["folder"],
            "--motion-module", files["v2"], "--width", "32", "--height", "32", "--steps", "2", "--seed", "7",
            "--out", str(out), *extra]


def test_a_40_frame_clip_through_the_cli(files, tmp_path):
    out = tmp_path / "clip.gif"
    assert main(_argv(files, out, "--frames", "40", "--context-fuse", "flat", "--context-batch", "2")) == 0
    assert read_frames(out).shape[0] == 40
    meta = json.loads(sidecar_path(out).read_text())
    assert {k: meta[k] for k in ("context", "context_length", "context_overlap", "context_fuse", "context_batch")} == \
        {"context": "uniform", "context_length": 16, "context_overlap": 4, "context_fuse": "flat", "context_batch": 2}


def test_flags_reach_the_config_through_a_prompt_yaml(files, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"- dreambooth_path: \"{files['ldm']}\"\n  motion_module: \"{files['v2']}\"\n  prompt: [\"a\"]\n"
                      "  steps: 2\n  guidance_scale: 7.5\n  W: 32\n  H: 32\n  L: 36\n  seed: 1\n"
                      "  context: Looped\n  context_length: 12\n  closed_loop: true\n")
    out = tmp_path / "samples"
    assert main(["-q", "generate", "--config", str(recipe), "--model-config", files["folder"], "--out", str(out),
                 "--context-overlap", "3"]) == 0
    meta = json.loads(sidecar_path(next(out.glob("*.gif"))).read_text())
    assert (meta["context"], meta["context_length"], meta["context_overlap"], meta["closed_loop"]) == ("looped", 12, 3, True)


BAD = {
    "context length above the encoding": (["--frames", "40", "--context-length", "40"], "--context-length 40: exceeds"),
    "overlap not below the length": (["--frames", "40", "--context-overlap", "16"], "--context-overlap 16: must be less"),
    "unknown schedule": (["--context", "wavy"], "--context: invalid choice"),
    "unknown fuse method": (["--context-fuse", "triangle"], "--context-fuse: invalid choice"),
    "closed loop with static": (["--context", "static", "--closed-loop"], "--closed-loop"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2_nothing_written(files, tmp_path, capsys, case):
    extra, expected = BAD[case]
    assert main(_argv(files, tmp_path / "clip.gif", *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    assert not any(tmp_path.iterdir())


def test_bad_yaml_values_name_the_job_and_key(files, tmp_path, capsys):
    for line, expected in (("context_length: '16'", "job 0, context_length '16': expected a positive whole number"),
                           ("context_length: 40", "job 0, context_length 40: exceeds the v2 motion module's")):
        recipe = tmp_path / "r.yaml"
        recipe.write_text(f"- dreambooth_path: \"{files['ldm']}\"\n  motion_module: \"{files['v2']}\"\n  prompt: [\"a\"]\n"
                          f"  steps: 2\n  guidance_scale: 7.5\n  W: 32\n  H: 32\n  L: 40\n  {line}\n")
        assert main(["-q", "generate", "--config", str(recipe), "--model-config", files["folder"],
                     "--out", str(tmp_path / "samples")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err
        assert not (tmp_path / "samples").exists()


def test_the_demo_makes_a_64_frame_clip_with_no_model_flags(tmp_path):
    out = tmp_path / "long.gif"
    assert main(["-q", "generate", "a red circle bouncing on a blue striped background", "--frames", "64", "--steps", "2",
                 "--seed", "3", "--out", str(out)]) == 0
    assert read_frames(out).shape[0] == 64
    assert json.loads(sidecar_path(out).read_text())["context"] == "uniform"
