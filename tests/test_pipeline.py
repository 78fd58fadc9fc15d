"""Text-to-video on tiny real SD1.5 / SDXL components: shapes, seeds, CFG batching, baselines, validation.

Text encoding, the UNet adapter and the VAE have their own files: test_conditioning, test_denoiser, test_vae."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from animatediff.errors import UserInputError
from animatediff.motion_module import MotionModules
from animatediff.generation.pipeline import AnimationPipeline, GenerationConfig, generate

from conftest import randomize_, tiny_motion_config
from tiny_models import tiny_base_model

SIZE, FRAMES = 32, 3  # 32x32 pixels -> 4x4 latents


def config(**overrides) -> GenerationConfig:
    return GenerationConfig(**{**dict(prompt="a cat walking", negative_prompt="blurry", num_frames=FRAMES,
                                      width=SIZE, height=SIZE, steps=1, seed=1), **overrides})


@pytest.fixture
def pipe(base, motion):
    pipeline = AnimationPipeline(base, motion)
    yield pipeline
    pipeline.close()


def count_unet_batches(base) -> tuple[list[int], object]:
    batches: list[int] = []
    handle = base.unet.register_forward_pre_hook(lambda _m, args: batches.append(args[0].shape[0]))
    return batches, handle


def test_generates_video_in_unit_range(pipe):
    steps = []
    result = pipe.generate(config(steps=2), progress=lambda i, n: steps.append((i, n)))
    assert result.frames.shape == (1, 3, FRAMES, SIZE, SIZE) and result.frames.dtype == torch.float32
    assert 0 <= result.frames.min() and result.frames.max() <= 1
    assert result.latents.shape == (1, 4, FRAMES, SIZE // 8, SIZE // 8)
    assert steps == [(1, 2), (2, 2)]
    assert set(result.timings) == {"text", "denoise", "decode", "total"}
    assert result.seed == 1
    metadata = result.metadata(fps=8)
    assert metadata["prompt"] == "a cat walking" and metadata["steps"] == 2 and metadata["fps"] == 8
    assert metadata["base_model"] == "tiny-sd15" and metadata["motion_preset"] == "v2"


def test_seeds_are_reproducible(pipe):
    a, b, c = (pipe.generate(config(seed=s)).frames for s in (7, 7, 8))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("overrides", [dict(scheduler="euler_a"), dict(scheduler="ddim", eta=1.0)])
def test_stochastic_samplers_take_their_noise_from_the_seed(pipe, overrides):
    a, b = (pipe.generate(config(steps=2, guidance_scale=1.0, **overrides)).frames for _ in range(2))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_missing_seed_is_drawn_and_recorded(pipe):
    result = pipe.generate(config(seed=None, steps=1))
    assert isinstance(result.seed, int) and result.config.seed == result.seed
    torch.testing.assert_close(pipe.generate(config(seed=result.seed, steps=1)).frames, result.frames)


def test_initial_latents_are_the_official_cpu_draw(pipe):
    cfg = config(seed=42, num_videos=2)
    expected = torch.randn((2, 4, FRAMES, SIZE // 8, SIZE // 8), generator=torch.Generator().manual_seed(42))
    torch.testing.assert_close(pipe.prepare_latents(cfg), expected, rtol=0, atol=0)


def test_explicit_latents_are_honoured(pipe):
    latents = torch.randn((1, 4, FRAMES, SIZE // 8, SIZE // 8), generator=torch.Generator().manual_seed(3))
    from_latents = pipe.generate(config(seed=99), latents=latents).frames
    torch.testing.assert_close(from_latents, pipe.generate(config(seed=3)).frames)  # DDIM eta 0: noise only from latents
    with pytest.raises(UserInputError, match=r"^latents \(1, 4, 2, 4, 4\): does not match"):
        pipe.generate(config(), latents=latents[:, :, :2])


def test_cfg_is_one_batched_unet_call(pipe, base):
    batches, handle = count_unet_batches(base)
    try:
        pipe.generate(config(guidance_scale=7.5, steps=2))
        assert batches == [2 * FRAMES] * 2  # [uncond, cond] x frames, once per step
        batches.clear()
        pipe.generate(config(guidance_scale=1.0, steps=2))
        assert batches == [FRAMES] * 2  # no guidance: conditional branch only
    finally:
        handle.remove()


def test_frame_by_frame_baseline_equals_image_model_per_frame(base):
    pipeline = AnimationPipeline(base, motion=None)
    latents = torch.randn((1, 4, FRAMES, SIZE // 8, SIZE // 8), generator=torch.Generator().manual_seed(5))
    video = pipeline.generate(config(steps=2), latents=latents).frames
    for i in range(FRAMES):
        image = pipeline.generate(config(steps=2, num_frames=1), latents=latents[:, :, i : i + 1]).frames
        torch.testing.assert_close(video[:, :, i : i + 1], image, atol=1e-4, rtol=1e-4)


def test_v_prediction_base_samples_with_a_v_prediction_scheduler(base, motion, monkeypatch):
    import animatediff.generation.pipeline as pipeline_module

    made = []
    real = pipeline_module.make_scheduler
    monkeypatch.setattr(pipeline_module, "make_scheduler", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    base.prediction_type = "v_prediction"
    try:
        with AnimationPipeline(base, motion) as pipeline:
            v = pipeline.generate(config(steps=2)).frames
    finally:
        base.prediction_type = "epsilon"
    with AnimationPipeline(base, motion) as pipeline:
        eps = pipeline.generate(config(steps=2)).frames
    assert [m.config.prediction_type for m in made] == ["v_prediction", "epsilon"]
    assert not torch.allclose(v, eps)


def test_bf16_models_generate(motion):
    base = tiny_base_model()
    for module in (base.unet, base.vae, base.text_encoder):
        module.to(torch.bfloat16)
    bf16_motion = MotionModules(motion.config).to(torch.bfloat16)
    bf16_motion.load_state_dict(motion.state_dict())
    result = generate(base, bf16_motion, config(steps=1))
    assert result.frames.dtype == torch.float32 and torch.isfinite(result.frames).all()
    assert result.latents.dtype == torch.float32  # scheduler math stays in fp32


def test_sdxl_tiny_base_runs():
    base = tiny_base_model(sdxl=True)
    motion = randomize_(MotionModules(tiny_motion_config("sdxl-beta")), std=0.1).eval()
    batches, handle = count_unet_batches(base)
    try:
        with AnimationPipeline(base, motion) as pipeline:
            result = pipeline.generate(config(negative_prompt="", steps=1))
    finally:
        handle.remove()
    assert result.frames.shape == (1, 3, FRAMES, SIZE, SIZE)
    assert result.config.scheduler_preset == "sdxl-beta" and result.config.scheduler == "euler"
    assert batches == [2 * FRAMES]


def test_preset_defaults_fill_unset_options(base):
    lightning = randomize_(MotionModules(tiny_motion_config("lightning")), std=0.1)
    cfg = config(steps=None, guidance_scale=None, scheduler=None).resolved(lightning.config.scheduler_preset)
    assert (cfg.scheduler, cfg.steps, cfg.guidance_scale) == ("euler", 4, 1.0)
    cfg = config(scheduler_preset="animatelcm", steps=4, guidance_scale=None).resolved()
    assert (cfg.scheduler, cfg.steps, cfg.guidance_scale) == ("lcm", 4, 1.5)
    result = generate(base, lightning, config(guidance_scale=None))
    assert result.config.scheduler_preset == "lightning" and result.config.guidance_scale == 1.0


def test_module_generate_detaches_hooks(base, motion):
    generate(base, motion, config(steps=1))
    assert not base.unet.down_blocks[0].attentions[0]._forward_hooks


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(width=30), r"^width 30: must be a positive multiple of 8$"),
        (dict(height=0), r"^height 0: must be a positive multiple of 8$"),
        (dict(width="64"), r"^width 64: must be a whole number$"),
        (dict(num_frames=0), r"^num_frames 0: must be at least 1$"),
        (dict(steps=0), r"^steps 0: must be at least 1$"),
        (dict(guidance_scale=-1.0), r"^guidance_scale -1.0: must not be negative$"),
        (dict(decode_chunk_size=0), r"^decode_chunk_size 0: must be at least 1$"),
        (dict(num_videos=0), r"^num_videos 0: must be at least 1$"),
        (dict(eta=-0.5), r"^eta -0.5: must not be negative$"),
        (dict(clip_skip=-1), r"^clip_skip -1: must not be negative$"),
        (dict(seed=-1), r"^seed -1: must be in 0 .. 2\*\*64 - 1$"),
        (dict(seed=2**64), r"^seed 18446744073709551616: must be in 0"),
        (dict(scheduler="heun"), r"^scheduler heun: unknown; choose one of ddim"),
        (dict(scheduler_preset="sd3"), r"^scheduler_preset sd3: unknown; choose one of animatediff"),
    ],
)
def test_invalid_settings_name_the_config_field(pipe, overrides, message):
    with pytest.raises(UserInputError, match=message) as error:
        pipe.generate(config(**overrides))
    (field, value), = overrides.items()
    assert (error.value.field, error.value.value) == (field, value)
    assert "--" not in str(error.value)  # library messages name fields, the CLI maps them to its flags


def test_largest_seed_is_accepted(pipe):
    assert pipe.generate(config(seed=2**64 - 1)).seed == 2**64 - 1


def test_settings_are_validated_once_per_generation(pipe, monkeypatch):
    calls = []
    real = GenerationConfig.validate
    monkeypatch.setattr(GenerationConfig, "validate", lambda self, *a, **k: calls.append(self) or real(self, *a, **k))
    pipe.generate(config(steps=None, guidance_scale=None))
    assert len(calls) == 1 and calls[0].steps == 25 and calls[0].guidance_scale == 7.5  # after resolved()


def test_validate_takes_the_model_facts_as_arguments():
    cfg = config(num_frames=40, width=36, context="none")  # one pass: no context windows
    cfg.validate()  # no model facts: nothing model-dependent to refuse
    with pytest.raises(UserInputError, match=r"^width 36: must be a positive multiple of 8$"):
        cfg.validate(vae_scale_factor=8)
    with pytest.raises(UserInputError, match=r"^num_frames 40: exceeds the motion module's position-encoding length 32 "
                                             r"\(use max_frames to extend it\)$"):
        cfg.validate(max_frames=32)


def test_too_many_frames_names_position_encoding_length(base):
    short = MotionModules(tiny_motion_config("v2", position_encoding_length=4))
    with AnimationPipeline(base, short) as pipeline:
        with pytest.raises(UserInputError, match=r"^num_frames 5: exceeds the v2 motion module's position-encoding length 4 "
                                                 r"\(use max_frames to extend it\)$"):
            pipeline.generate(config(num_frames=5, context="none"))


def test_motion_module_for_another_unet_is_refused(base):
    with pytest.raises(UserInputError, match="^motion_module: motion module .* does not fit this UNet") as error:
        AnimationPipeline(base, MotionModules(dataclasses.replace(tiny_motion_config("sdxl-beta"), block_out_channels=(32, 64, 64))))
    assert error.value.field == "motion_module"
