"""The UNet adapter: dtypes, and residual providers (the ControlNet / SparseCtrl plug-in point)."""

from __future__ import annotations

import pytest
import torch

from animatediff.generation.denoiser import UNetDenoiser
from animatediff.generation.pipeline import AnimationPipeline, GenerationConfig
from animatediff.inflation import AnimateDiffUNet
from animatediff.motion_module import MotionModules

from conftest import randomize_, tiny_motion_config, tiny_unet

B, F, H, W = 2, 3, 4, 4
T = torch.tensor(400)


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


def inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 4, F, H, W, generator=g), {"encoder_hidden_states": torch.randn(B, 77, 32, generator=g)}


def residual_shapes(unet, h: int, w: int) -> tuple[list[tuple[int, ...]], tuple[int, ...]]:
    """(down, mid) residual shapes of one 2-D UNet call, (C, h', w') each: read off the skip connections."""
    down, mid = [], []
    hooks = [unet.conv_in.register_forward_hook(lambda _m, _i, out: down.append(out.shape[1:]))]
    hooks += [block.register_forward_hook(lambda _m, _i, out: down.extend(r.shape[1:] for r in out[1])) for block in unet.down_blocks]
    hooks.append(unet.mid_block.register_forward_hook(lambda _m, _i, out: mid.append(out.shape[1:])))
    with torch.no_grad():
        unet(torch.zeros(1, 4, h, w), 0, encoder_hidden_states=torch.zeros(1, 77, unet.config.cross_attention_dim))
    for hook in hooks:
        hook.remove()
    return down, mid[0]


def provider_of(down: list[torch.Tensor], mid: torch.Tensor, calls: list | None = None):
    """A provider returning fixed 5-D residuals (batch, C, num_frames, h', w'), repeated over the call's batch."""

    def provider(latents, t, cond):
        if calls is not None:
            calls.append((latents.shape[0], cond["encoder_hidden_states"].shape[0]))
        n = latents.shape[0] // down[0].shape[0]
        return {"down_block_additional_residuals": tuple(r.repeat(n, 1, 1, 1, 1) for r in down),
                "mid_block_additional_residual": mid.repeat(n, 1, 1, 1, 1)}

    return provider


def random_residuals(unet, seed: int, scale: float = 0.5):
    g = torch.Generator().manual_seed(seed)
    down, mid = residual_shapes(unet, H, W)
    video = lambda shape: torch.randn(B, shape[0], F, *shape[1:], generator=g) * scale  # noqa: E731  (b, C, f, h', w')
    return [video(s) for s in down], video(mid)


def test_fp32_in_unet_dtype_inside_fp32_out(motion):
    bf16 = tiny_unet().to(torch.bfloat16)
    half_motion = MotionModules(motion.config).to(torch.bfloat16)
    half_motion.load_state_dict(motion.state_dict())
    inflated = AnimateDiffUNet(bf16, half_motion)
    seen = []
    hook = bf16.register_forward_pre_hook(lambda _m, args: seen.append(args[0].dtype))
    latents, cond = inputs()
    with torch.no_grad():
        out = UNetDenoiser(inflated)(latents, T, {k: v.to(torch.bfloat16) for k, v in cond.items()})
    hook.remove()
    assert seen == [torch.bfloat16] and out.dtype == torch.float32 and out.shape == latents.shape


def test_without_providers_it_is_the_inflated_unet_call(unet, motion):
    inflated = AnimateDiffUNet(unet, motion)
    try:
        latents, cond = inputs()
        with torch.no_grad():
            assert torch.equal(UNetDenoiser(inflated)(latents, T, cond), inflated(latents, T, cond["encoder_hidden_states"]))
    finally:
        inflated.detach()


def test_zero_residuals_change_nothing_and_others_do(unet, motion):
    inflated = AnimateDiffUNet(unet, motion)
    try:
        latents, cond = inputs()
        down, mid = random_residuals(unet, 1)
        zeros = provider_of([torch.zeros_like(r) for r in down], torch.zeros_like(mid))
        with torch.no_grad():
            plain = UNetDenoiser(inflated)(latents, T, cond)
            assert torch.equal(UNetDenoiser(inflated, [zeros])(latents, T, cond), plain)  # bit-identical
            assert (UNetDenoiser(inflated, [provider_of(down, mid)])(latents, T, cond) - plain).abs().max() > 1e-2
    finally:
        inflated.detach()


def test_residuals_reach_the_2d_unet_per_frame_in_order(unet):
    """No motion: the adapter's call equals diffusers' UNet on the (b f) batch with the residuals folded the
    same way as the latents (frame i of clip j at row j * F + i), so diffusers accepts them through our wrapper."""
    latents, cond = inputs(2)
    down, mid = random_residuals(unet, 3)
    fold = lambda x: x.transpose(1, 2).flatten(0, 1)  # noqa: E731  b c f h w -> (b f) c h w
    with torch.no_grad():
        ours = UNetDenoiser(AnimateDiffUNet(unet), [provider_of(down, mid)])(latents, T, cond)
        reference = unet(fold(latents), T, encoder_hidden_states=cond["encoder_hidden_states"].repeat_interleave(F, 0),
                         down_block_additional_residuals=tuple(fold(r) for r in down),
                         mid_block_additional_residual=fold(mid)).sample
    torch.testing.assert_close(fold(ours), reference, rtol=0, atol=0)


def test_providers_are_summed(unet):
    latents, cond = inputs()
    (d1, m1), (d2, m2) = random_residuals(unet, 4), random_residuals(unet, 5)
    denoiser = AnimateDiffUNet(unet)
    with torch.no_grad():
        two = UNetDenoiser(denoiser, [provider_of(d1, m1), provider_of(d2, m2)])(latents, T, cond)
        one = UNetDenoiser(denoiser, [provider_of([a + b for a, b in zip(d1, d2)], m1 + m2)])(latents, T, cond)
    torch.testing.assert_close(two, one, rtol=0, atol=0)


def test_pipeline_providers_see_the_guidance_batch():
    from tiny_models import tiny_base_model

    base = tiny_base_model()
    motion = randomize_(MotionModules(tiny_motion_config("v2")), std=0.1).eval()
    config = GenerationConfig(prompt="a cat", negative_prompt="blurry", num_frames=F, width=32, height=32, steps=2, seed=1,
                              guidance_scale=7.5)
    down, mid = residual_shapes(base.unet, H, W)
    calls = []
    zeros = provider_of([torch.zeros(1, s[0], F, *s[1:]) for s in down], torch.zeros(1, mid[0], F, *mid[1:]), calls)
    with AnimationPipeline(base, motion) as pipeline:
        plain = pipeline.generate(config).latents
        pipeline.denoiser.residual_providers.append(zeros)
        with_zero_residuals = pipeline.generate(config).latents
    assert torch.equal(with_zero_residuals, plain)
    assert calls == [(2, 2)] * 2  # [uncond, cond] latents and conditioning, once per step
