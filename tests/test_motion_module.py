import torch

from animatediff.inflation import AnimateDiffUNet
from animatediff.motion_module import MotionModules, sinusoidal_position_encoding
from animatediff.presets import MOTION_PRESETS

from conftest import randomize_, tiny_motion_config, tiny_unet


def _inputs(b=1, f=4, seed=0, cross_dim=32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 4, f, 8, 8, generator=g)
    text = torch.randn(b, 7, cross_dim, generator=g)
    return x, text


def _per_frame_2d(unet, x, t, text):
    b, c, f, h, w = x.shape
    frames = x.transpose(1, 2).reshape(b * f, c, h, w)
    out = unet(frames, t, encoder_hidden_states=text.repeat_interleave(f, 0)).sample
    return out.reshape(b, f, c, h, w).transpose(1, 2)


def test_full_size_key_and_parameter_counts():
    for name, n_modules, n_params in [("v1", 20, 417_137_600), ("v2", 21, 453_209_280), ("v3", 20, 417_137_600)]:
        config = MOTION_PRESETS[name]
        assert config.num_modules == n_modules
        # count analytically (22 C^2 + 21 C per module) without allocating 1.8 GB
        channels = config.block_out_channels
        per_block = [(c, config.layers_per_block) for c in channels] + [(c, config.layers_per_block + 1) for c in channels[::-1]]
        if config.mid_block:
            per_block.append((channels[-1], 1))
        assert sum(n * (22 * c * c + 21 * c) for c, n in per_block) == n_params


def test_tiny_state_dict_uses_official_key_names():
    motion = MotionModules(tiny_motion_config("v2"))
    keys = set(motion.state_dict())
    prefix = "down_blocks.0.motion_modules.0.temporal_transformer."
    expected = {
        prefix + "norm.weight", prefix + "proj_in.bias", prefix + "proj_out.weight",
        prefix + "transformer_blocks.0.attention_blocks.1.to_out.0.weight",
        prefix + "transformer_blocks.0.ff.net.0.proj.weight", prefix + "transformer_blocks.0.ff.net.2.bias",
        prefix + "transformer_blocks.0.norms.1.weight", prefix + "transformer_blocks.0.ff_norm.bias",
        "mid_block.motion_modules.0.temporal_transformer.norm.weight",
        "up_blocks.1.motion_modules.1.temporal_transformer.proj_in.weight",
    }
    assert expected <= keys
    assert not any(k.endswith("to_q.bias") or "pos_encoder" in k for k in keys)
    assert len(keys) == 26 * (2 * 1 + 2 * 2 + 1)


def test_zero_initialised_module_leaves_every_frame_equal_to_2d_unet():
    unet = tiny_unet()
    x, text = _inputs(f=4)
    for preset in ("v1", "v2", "v3"):
        model = AnimateDiffUNet(unet, MotionModules(tiny_motion_config(preset)))
        with torch.no_grad():
            out = model(x, 10, text)
            ref = _per_frame_2d(unet, x, 10, text) if preset != "v1" else None
        if ref is not None:
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        model.detach()


def test_hooks_are_inert_for_plain_2d_calls_and_keys_unchanged():
    unet = tiny_unet()
    keys_before = set(unet.state_dict())
    model = AnimateDiffUNet(unet, randomize_(MotionModules(tiny_motion_config("v1"))))
    assert set(unet.state_dict()) == keys_before
    x, text = _inputs(f=1)
    frames = x[:, :, 0]
    fresh = tiny_unet()
    with torch.no_grad():
        torch.testing.assert_close(unet(frames, 5, encoder_hidden_states=text).sample, fresh(frames, 5, encoder_hidden_states=text).sample)


def test_random_module_mixes_frames_and_is_frame_equivariant():
    unet = tiny_unet()
    motion = randomize_(MotionModules(tiny_motion_config("v3", position_encoding_length=None)))
    model = AnimateDiffUNet(unet, motion)
    x, text = _inputs(f=4)
    with torch.no_grad():
        out = model(x, 10, text)
        ref = _per_frame_2d(unet, x, 10, text)
        assert (out - ref).abs().max() > 1e-3
        # without a position encoding, temporal attention is permutation-equivariant over frames
        perm = torch.tensor([2, 0, 3, 1])
        torch.testing.assert_close(model(x[:, :, perm], 10, text), out[:, :, perm], atol=1e-4, rtol=1e-4)
        # with it, frames are told apart
        model.attach(randomize_(MotionModules(tiny_motion_config("v3"))))
        out_pe = model(x, 10, text)
        assert (model(x[:, :, perm], 10, text) - out_pe[:, :, perm]).abs().max() > 1e-4


def test_v1_pools_resnet_groupnorm_across_frames_v2_does_not():
    """Two frames, the second an affine copy of the first: per-frame GroupNorm maps both to the same
    output, statistics pooled over frames (v1) do not."""
    unet = tiny_unet()
    frame = torch.randn(1, 32, 8, 8)
    clip = torch.cat([frame, frame * 2 + 3])  # (b f) c h w with b=1, f=2
    for preset, expect_equal in (("v2", True), ("v1", False)):
        model = AnimateDiffUNet(unet, MotionModules(tiny_motion_config(preset)))
        norm = unet.down_blocks[0].resnets[0].norm1
        with torch.no_grad(), model.frames(2):
            out = norm(clip)
        assert torch.allclose(out[0], out[1], atol=1e-4) == expect_equal, preset
        if preset == "v1":  # equals GroupNorm on the 5-D tensor, as the official v1 code computes it
            ref = torch.nn.functional.group_norm(clip.view(1, 2, 32, 8, 8).transpose(1, 2), 8, norm.weight, norm.bias, norm.eps)
            torch.testing.assert_close(out, ref.transpose(1, 2).reshape(2, 32, 8, 8))
        model.detach()
    assert type(unet.down_blocks[0].resnets[0].norm1) is torch.nn.GroupNorm  # detach restores the original


def test_sdxl_motion_groupnorm_pools_across_frames():
    motion = MotionModules(tiny_motion_config("sdxl-beta"))
    module = motion.down_blocks[0].motion_modules[0].temporal_transformer
    x = torch.randn(2 * 3, 32, 4, 4)  # (b f) c h w, b=2, f=3
    normed = module._group_norm(x, 3)
    ref = torch.nn.functional.group_norm(x.view(2, 3, 32, 4, 4).transpose(1, 2), 8, module.norm.weight, module.norm.bias, 1e-6)
    torch.testing.assert_close(normed, ref.transpose(1, 2).reshape(6, 32, 4, 4))


def test_position_encoding_is_the_vaswani_sinusoid_and_extends():
    pe = sinusoidal_position_encoding(32, 320)
    assert pe.shape == (1, 32, 320)
    torch.testing.assert_close(pe[0, 5, 0], torch.sin(torch.tensor(5.0)))
    torch.testing.assert_close(pe[0, 5, 1], torch.cos(torch.tensor(5.0)))
    torch.testing.assert_close(sinusoidal_position_encoding(64, 320)[:, :32], pe)


def test_too_many_frames_is_a_clear_error():
    model = AnimateDiffUNet(tiny_unet(), MotionModules(tiny_motion_config("v1")))  # PE 24
    x, text = _inputs(f=25)
    try:
        model(x, 1, text)
    except ValueError as e:
        assert "25 frames" in str(e) and "24" in str(e)
    else:
        raise AssertionError("expected ValueError")
