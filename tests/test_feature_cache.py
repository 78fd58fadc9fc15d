"""DeepCache-style feature caching (generation/feature_cache.py, the ``cache_interval`` / ``cache_branch`` fields)."""

from __future__ import annotations

import json

import pytest
import torch

from animatediff.cli import main
from animatediff.errors import UserInputError
from animatediff.generation.feature_cache import FeatureCache
from animatediff.generation.pipeline import AnimationPipeline, GenerationConfig
from animatediff.inflation import AnimateDiffUNet
from animatediff.motion_module import MotionModules
from animatediff.video_io import sidecar_path

from conftest import randomize_, tiny_motion_config
from tiny_models import tiny_base_model

SIZE = 32  # 4x4 latents


def config(**overrides) -> GenerationConfig:
    return GenerationConfig(**{**dict(prompt="a cat walking", negative_prompt="blurry", num_frames=4, width=SIZE,
                                      height=SIZE, steps=4, seed=1, scheduler="ddim"), **overrides})


@pytest.fixture
def pipe(base, motion):
    pipeline = AnimationPipeline(base, motion)
    yield pipeline
    pipeline.close()


def count_calls(module: torch.nn.Module) -> list:
    calls: list = []
    module.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls


def test_interval_1_builds_no_cache_and_is_bit_identical(pipe):
    plain = pipe.generate(config())
    off = pipe.generate(config(cache_interval=1, cache_branch=1))
    assert torch.equal(plain.latents, off.latents)
    assert off.config.cache_interval == 1  # recorded in the sidecar like every field


def test_interval_2_skips_the_deep_blocks_and_changes_the_output(pipe, base):
    plain = pipe.generate(config())
    deep, shallow = count_calls(base.unet.down_blocks[-1]), count_calls(base.unet.down_blocks[0])
    cached = pipe.generate(config(cache_interval=2))
    assert len(deep) == 2 and len(shallow) == 4  # 4 steps: full at steps 0 and 2, the ring at 1 and 3
    assert not torch.equal(cached.latents, plain.latents)
    assert torch.isfinite(cached.latents).all() and (cached.latents - plain.latents).abs().max() < plain.latents.abs().max()


def test_cache_resets_between_generations(pipe):
    first, second = pipe.generate(config(cache_interval=3)), pipe.generate(config(cache_interval=3))
    assert torch.equal(first.latents, second.latents)


@pytest.mark.parametrize("sdxl", [False, True])
@pytest.mark.parametrize("branch", [0, 1])
def test_the_ring_on_its_own_feature_equals_the_whole_unet(sdxl, branch):
    """Reusing the deep feature of the same inputs must give the full output: the partial forward is exact."""
    base = tiny_base_model(sdxl=sdxl)
    motion = randomize_(MotionModules(tiny_motion_config("sdxl-beta" if sdxl else "v2")), std=0.1).eval()
    unet = AnimateDiffUNet(base.unet, motion)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 3, 5, 6, generator=g)  # odd sizes: upsample_size is passed as diffusers does
    text = torch.randn(2, 7, base.unet.config.cross_attention_dim, generator=g)
    added = {"text_embeds": torch.randn(2, 32, generator=g), "time_ids": torch.randn(2, 6, generator=g)} if sdxl else None
    cache = FeatureCache(base.unet, 2, branch)
    with torch.no_grad():
        full = unet(latents, torch.tensor(500), text, added_cond_kwargs=added, unet_forward=lambda *a, **k: cache.full(0, *a, **k))
        ring = unet(latents, torch.tensor(500), text, added_cond_kwargs=added, unet_forward=lambda *a, **k: cache.cached(0, *a, **k))
        plain = unet(latents, torch.tensor(500), text, added_cond_kwargs=added)
    assert torch.equal(full, plain) and torch.allclose(ring, full, atol=1e-6, rtol=0)
    assert (cache.full_calls, cache.cached_calls) == (1, 1)


def test_the_ring_adds_controlnet_residuals_to_its_own_skips(base, motion):
    """ControlNet-style residuals (one per skip, plus the mid one) reach the ring's skips exactly as the whole UNet's."""
    unet = AnimateDiffUNet(base.unet, motion)
    g = torch.Generator().manual_seed(0)
    latents, text = torch.randn(2, 4, 3, 4, 4, generator=g), torch.randn(2, 7, 32, generator=g)
    shapes = []  # the skip samples' shapes, shallow to deep: conv_in's output, then every down block's res samples
    hooks = [base.unet.conv_in.register_forward_hook(lambda _m, _i, out: shapes.append(out.shape))]
    hooks += [b.register_forward_hook(lambda _m, _i, out: shapes.extend(r.shape for r in out[1])) for b in base.unet.down_blocks]
    mid = []
    hooks.append(base.unet.mid_block.register_forward_hook(lambda _m, _i, out: mid.append(out.shape)))
    with torch.no_grad():
        unet(latents, torch.tensor(500), text)
    for hook in hooks:
        hook.remove()
    folded = lambda shape: torch.randn(shape, generator=g)  # (b f, c, h, w) as UNetDenoiser folds them
    residuals = {"down_block_additional_residuals": tuple(folded(s) for s in shapes),
                 "mid_block_additional_residual": folded(mid[0])}
    cache = FeatureCache(base.unet, 2, 0)
    with torch.no_grad():
        full = unet(latents, torch.tensor(500), text, unet_forward=lambda *a, **k: cache.full(0, *a, **k), **residuals)
        ring = unet(latents, torch.tensor(500), text, unet_forward=lambda *a, **k: cache.cached(0, *a, **k), **residuals)
        plain = unet(latents, torch.tensor(500), text)
    assert torch.allclose(ring, full, atol=1e-6, rtol=0) and not torch.allclose(full, plain)


def test_freeinit_passes_each_start_a_fresh_cache(pipe, base):
    """2 passes x 3 steps: whole UNet at steps 0 and 2 of each pass (a running count would give 0, 2, 4: 3 calls)."""
    settings = dict(cache_interval=2, freeinit_iterations=2, steps=3)
    deep = count_calls(base.unet.down_blocks[-1])
    first, second = pipe.generate(config(**settings)), pipe.generate(config(**settings))
    assert len(deep) == 2 * 4 and torch.equal(first.latents, second.latents) and torch.isfinite(first.latents).all()


def test_steps_windows_and_new_passes():
    """Call k of a step is slot k (one context window); a timestep going up starts a new pass (FreeInit)."""
    cache = FeatureCache(tiny_base_model().unet, 2)
    plan = []
    for t in (900, 900, 700, 700, 500, 500, 900, 700):
        forward = cache.forward_for(torch.tensor([t]))
        plan.append((forward.func.__name__, forward.args[0]))
        cache.features[forward.args[0]] = torch.zeros(1)  # what a full call would keep
    assert plan == [("full", 0), ("full", 1), ("cached", 0), ("cached", 1), ("full", 0), ("full", 1), ("full", 0), ("cached", 0)]


def test_each_fixed_context_window_reuses_its_own_feature(pipe, base):
    """Static windows: 6 frames in windows [0-3] [2-5] -> two UNet calls per step, each with its own cache slot."""
    windowed = dict(num_frames=6, context="static", context_length=4, context_overlap=2)
    deep = count_calls(base.unet.down_blocks[-1])
    cached = pipe.generate(config(cache_interval=2, **windowed))
    assert len(deep) == 4  # 2 windows x full steps 0 and 2
    plain = pipe.generate(config(**windowed))
    assert torch.isfinite(cached.latents).all() and not torch.equal(cached.latents, plain.latents)


def test_moving_windows_are_refused(pipe):
    with pytest.raises(UserInputError) as error:
        pipe.generate(config(cache_interval=2, num_frames=6, context="uniform", context_length=4))
    assert error.value.field == "cache_interval" and "static or batched" in str(error.value)


@pytest.mark.parametrize("field, value, words", [
    ("cache_interval", 0, "cache_interval 0: must be at least 1"),
    ("cache_interval", 1.5, "cache_interval 1.5: must be a whole number"),
    ("cache_branch", -1, "cache_branch -1: must not be negative"),
])
def test_bad_values_name_the_field(field, value, words):
    with pytest.raises(UserInputError) as error:
        config(**{field: value}).validate(8)
    assert str(error.value) == words


def test_branch_beyond_the_unet_is_refused(pipe):
    with pytest.raises(UserInputError) as error:
        pipe.generate(config(cache_interval=2, cache_branch=2))
    assert str(error.value).startswith("cache_branch 2: this UNet has 2 down blocks")


@pytest.mark.parametrize("flags, line", [
    (["--cache-interval", "0"], "error: --cache-interval 0: must be at least 1"),
    (["--cache-interval", "2", "--cache-branch", "-1"], "error: --cache-branch -1: must not be negative"),
    (["--cache-interval", "2", "--context", "uniform", "--frames", "20", "--context-length", "8"],
     "error: --cache-interval 2: uniform context windows move every step"),
])
def test_cli_bad_values_are_one_line_exit_2_nothing_written(tmp_path, capsys, flags, line):
    out = tmp_path / "clip.gif"
    assert main(["-q", "generate", "a red circle", "--frames", "4", "--steps", "2", *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(line), err
    assert not any(tmp_path.iterdir())


def test_cli_flag_reaches_the_sidecar(tmp_path):
    out = tmp_path / "clip.gif"
    assert main(["-q", "generate", "a red circle", "--frames", "4", "--steps", "3", "--seed", "1", "--cache-interval", "2",
                 "--out", str(out)]) == 0
    sidecar = json.loads(sidecar_path(out).read_text())
    assert (sidecar["cache_interval"], sidecar["cache_branch"]) == (2, 0)
