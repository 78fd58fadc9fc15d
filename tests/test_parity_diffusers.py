"""diffusers' AnimateDiff classes as a test oracle (the library itself never imports them).

diffusers' ``AnimateDiffTransformer3D`` pools the motion-module GroupNorm statistics over all frames of a
clip, while the official SD1.5 code normalises each frame on its own. So parity is asserted with our
``motion_groupnorm_across_frames=True`` switch, and the default (official, per-frame) is asserted to differ.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from diffusers import MotionAdapter, UNetMotionModel

from animatediff.weights.convert import motion_module_to_diffusers
from animatediff.inflation import AnimateDiffUNet
from animatediff.motion_module import MotionModules, sinusoidal_position_encoding
from animatediff.presets import MotionModuleConfig

from conftest import randomize_, tiny_motion_config, tiny_unet

CROSS_DIM = 32  # tiny_unet_config's cross_attention_dim


def diffusers_adapter(config: MotionModuleConfig, official_state_dict: dict[str, torch.Tensor]) -> MotionAdapter:
    """A diffusers ``MotionAdapter`` of the same tiny shape, loaded strictly from our weights."""
    adapter = MotionAdapter(
        block_out_channels=config.block_out_channels,
        motion_layers_per_block=config.layers_per_block,
        motion_num_attention_heads=config.num_attention_heads,
        motion_norm_num_groups=config.norm_num_groups,
        motion_max_seq_length=config.position_encoding_length,
        use_motion_mid_block=config.mid_block,
    )
    state_dict = motion_module_to_diffusers(official_state_dict)
    # diffusers keeps its recomputed sinusoid as a persistent buffer; it must equal ours, then we
    # hand it back so that the load can be strict for every other key.
    own_pe = {k: v for k, v in adapter.state_dict().items() if k.endswith("pos_embed.pe")}
    assert len(own_pe) == config.num_modules * config.num_transformer_blocks
    for key, pe in own_pe.items():
        torch.testing.assert_close(pe, sinusoidal_position_encoding(pe.shape[1], pe.shape[2]), rtol=0, atol=1e-6)
    assert not set(state_dict) & set(own_pe)
    adapter.load_state_dict({**state_dict, **own_pe}, strict=True)
    return adapter.eval()


def _build(preset: str, across_frames: bool = True, seed: int = 1):
    """(our AnimateDiffUNet, diffusers UNetMotionModel) sharing one 2-D UNet and random motion weights."""
    unet = tiny_unet()
    config = tiny_motion_config(preset, motion_groupnorm_across_frames=True)
    motion = randomize_(MotionModules(config), seed=seed)
    reference = UNetMotionModel.from_unet2d(unet, diffusers_adapter(config, motion.state_dict())).eval()
    if not across_frames:
        motion = _with_config(motion, dataclasses.replace(config, motion_groupnorm_across_frames=False))
    return AnimateDiffUNet(unet, motion).eval(), reference


def _with_config(motion: MotionModules, config: MotionModuleConfig) -> MotionModules:
    other = MotionModules(config)
    other.load_state_dict(motion.state_dict(), strict=True)
    return other


def _inputs(num_frames: int, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 4, num_frames, 8, 8, generator=g)
    text = torch.randn(batch, 7, CROSS_DIM, generator=g)  # one embedding per clip (CFG: [uncond, cond])
    return latents, text


def _run_both(ours, reference, num_frames: int, timestep=10):
    latents, text = _inputs(num_frames)
    with torch.no_grad():
        out = ours(latents, timestep, text)
        # diffusers wants the text already repeated per frame: (b f, tokens, dim)
        ref = reference(latents, timestep, encoder_hidden_states=text.repeat_interleave(num_frames, 0)).sample
    return out, ref


@pytest.mark.parametrize("preset", ["v2", "v3"])
def test_matches_diffusers_with_across_frames_groupnorm(preset):
    ours, reference = _build(preset)
    assert hasattr(reference.mid_block, "motion_modules") == (preset == "v2")
    for num_frames in (1, 4, 9):
        out, ref = _run_both(ours, reference, num_frames)
        assert out.shape == ref.shape == (2, 4, num_frames, 8, 8)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_parity_is_not_vacuous():
    """The random motion weights move the output far more than the tolerance above."""
    ours, _ = _build("v2")
    latents, text = _inputs(4)
    with torch.no_grad():
        with_motion = ours(latents, 10, text)
        ours.detach()
        without = ours(latents, 10, text)
    assert (with_motion - without).abs().max() > 0.1


@pytest.mark.parametrize("preset", ["v2", "v3"])
def test_official_per_frame_groupnorm_differs_from_diffusers(preset):
    """The known diffusers deviation: with the official per-frame GroupNorm the outputs differ."""
    ours, reference = _build(preset, across_frames=False)
    out, ref = _run_both(ours, reference, 4)
    assert (out - ref).abs().max() > 1e-3  # 100x the parity tolerance
    # ... and for a single frame the two normalisations coincide
    out, ref = _run_both(ours, reference, 1)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_pipeline_matches_diffusers_animatediff_pipeline():
    """End to end (CLIP text, CFG, DDIM with the AnimateDiff schedule, VAE decode) on tiny components:
    our AnimationPipeline vs diffusers' AnimateDiffPipeline, from the same initial latents."""
    pipeline = pytest.importorskip("animatediff.generation.pipeline")
    from diffusers import AnimateDiffPipeline

    from animatediff.sampling.schedulers import make_scheduler

    from tiny_models import tiny_base_model

    base = tiny_base_model()
    config = tiny_motion_config("v2", motion_groupnorm_across_frames=True)
    motion = randomize_(MotionModules(config), seed=3, std=0.05)
    reference = AnimateDiffPipeline(
        vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer,
        unet=base.unet, motion_adapter=diffusers_adapter(config, motion.state_dict()),
        scheduler=make_scheduler("ddim", "animatediff"),
    )  # builds its own UNetMotionModel (a copy of the 2-D UNet's weights)
    reference.set_progress_bar_config(disable=True)
    num_frames, steps = 5, 3
    latents = torch.randn(1, 4, num_frames, 8, 8, generator=torch.Generator().manual_seed(7))
    settings = pipeline.GenerationConfig(
        prompt="a cat walking on grass", negative_prompt="blurry", num_frames=num_frames, width=64, height=64,
        steps=steps, guidance_scale=7.5, seed=0, scheduler="ddim", scheduler_preset="animatediff",
    )
    with pipeline.AnimationPipeline(base, motion) as ours:
        result = ours.generate(settings, latents=latents.clone())
    with torch.no_grad():
        kwargs = dict(prompt=settings.prompt, negative_prompt=settings.negative_prompt, num_frames=num_frames,
                      height=64, width=64, num_inference_steps=steps, guidance_scale=7.5)
        ref_latents = reference(**kwargs, latents=latents.clone(), output_type="latent").frames  # (b, c, f, h, w)
        ref_frames = reference(**kwargs, latents=latents.clone(), output_type="pt").frames  # (b, f, 3, H, W)
    assert (result.latents - latents).abs().max() > 0.1  # it did denoise
    torch.testing.assert_close(result.latents, ref_latents, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(result.frames, ref_frames.transpose(1, 2), rtol=1e-4, atol=1e-4)  # -> (b, 3, f, H, W)
