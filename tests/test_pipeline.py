"""Text-to-video on tiny real SD1.5 / SDXL components: shapes, seeds, CFG batching, baselines, errors."""

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


@pytest.fixture(scope="module")
def base():
    return tiny_base_model()


@pytest.fixture(scope="module")
def motion():
    return randomize_(MotionModules(tiny_motion_config("v2")), std=0.1).eval()


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
    with pytest.raises(UserInputError, match="--latents"):
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


def test_sd15_text_is_clip_last_hidden_state_padded_to_77(pipe, base):
    ids = base.tokenizer("a cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = base.text_encoder(ids).last_hidden_state
    cond = pipe.encode_prompt("a cat")
    assert set(cond) == {"encoder_hidden_states"}
    torch.testing.assert_close(cond["encoder_hidden_states"], expected)
    assert pipe.encode_prompt("a cat", clip_skip=1)["encoder_hidden_states"].shape == expected.shape


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


def test_chunked_decode_equals_one_shot(pipe):
    latents = torch.randn(2, 4, 5, 4, 4, generator=torch.Generator().manual_seed(0))
    one_shot = pipe.decode_latents(latents, chunk_size=10)
    torch.testing.assert_close(pipe.decode_latents(latents, chunk_size=3), one_shot, atol=1e-5, rtol=1e-5)
    assert one_shot.shape == (2, 3, 5, 32, 32)


def test_fp16_vae_with_force_upcast_decodes_in_fp32_and_is_restored():
    base = tiny_base_model()
    pipeline = AnimationPipeline(base, motion=None)
    latents = torch.randn(1, 4, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    reference = pipeline.decode_latents(latents)
    base.vae.to(torch.float16)
    base.vae.register_to_config(force_upcast=True)
    torch.testing.assert_close(pipeline.decode_latents(latents), reference, atol=2e-3, rtol=0)  # only weight rounding
    assert base.vae.dtype == torch.float16


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
    pipeline = AnimationPipeline(base, motion)
    cond = pipeline.encode_prompt("a cat")
    assert cond["encoder_hidden_states"].shape == (1, 77, 32 + 32)  # both encoders' penultimate states
    assert cond["text_embeds"].shape == (1, 32)  # pooled, projected, from text_encoder_2
    batches, handle = count_unet_batches(base)
    try:
        result = pipeline.generate(config(negative_prompt="", steps=1))
    finally:
        handle.remove()
    assert result.frames.shape == (1, 3, FRAMES, SIZE, SIZE)
    assert result.config.scheduler_preset == "sdxl-beta" and result.config.scheduler == "euler"
    assert batches == [2 * FRAMES]
    assert pipeline._size_conditioning(result.config).tolist() == [[SIZE, SIZE, 0, 0, SIZE, SIZE]]
    _, uncond = pipeline._conditioning(result.config)
    assert (uncond["encoder_hidden_states"] == 0).all() and (uncond["text_embeds"] == 0).all()  # "" -> zeros


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
        (dict(width=30), r"--width 30: must be a positive multiple of 8"),
        (dict(height=0), r"--height 0"),
        (dict(num_frames=0), r"num_frames 0: must be at least 1"),
        (dict(steps=0), r"--steps 0"),
        (dict(decode_chunk_size=0), r"--decode-chunk-size 0"),
        (dict(scheduler="heun"), r"--scheduler heun"),
        (dict(scheduler_preset="sd3"), r"--scheduler-preset sd3"),
    ],
)
def test_invalid_options_name_the_option(pipe, overrides, message):
    with pytest.raises(UserInputError, match=message):
        pipe.generate(config(**overrides))


def test_too_many_frames_names_position_encoding_length(base):
    short = MotionModules(tiny_motion_config("v2", position_encoding_length=4))
    pipeline = AnimationPipeline(base, short)
    try:
        with pytest.raises(UserInputError, match=r"num_frames 5: exceeds the v2 motion module's position-encoding length 4 \(use --max-frames"):
            pipeline.generate(config(num_frames=5))
    finally:
        pipeline.close()


def test_motion_module_for_another_unet_is_refused(base):
    with pytest.raises(UserInputError, match="--motion-module"):
        AnimationPipeline(base, MotionModules(dataclasses.replace(tiny_motion_config("sdxl-beta"), block_out_channels=(32, 64, 64))))
