"""Frames <-> latents through the tiny real VAE: layout, chunking, seeds, fp16 upcast, streamed uint8 decoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from animatediff import video_io
from animatediff.generation import vae as vae_io

from tiny_models import tiny_base_model, tiny_vae

SEED = torch.Generator().manual_seed


@pytest.fixture(scope="module")
def vae():
    return tiny_vae()


def clip(seed: int = 0) -> torch.Tensor:
    return torch.rand(2, 3, 5, 32, 32, generator=SEED(seed))  # (b, 3, f, H, W) in [0, 1]


def test_encode_decode_round_trip_shapes_range_and_seed(vae):
    frames = clip()
    latents = vae_io.encode(vae, frames, generator=SEED(1))
    assert latents.shape == (2, 4, 5, 4, 4) and latents.dtype == torch.float32
    decoded = vae_io.decode(vae, latents)
    assert decoded.shape == frames.shape and decoded.dtype == torch.float32
    assert 0 <= decoded.min() and decoded.max() <= 1
    assert torch.equal(vae_io.encode(vae, frames, generator=SEED(1)), latents)  # same seed, same posterior draw
    assert not torch.equal(vae_io.encode(vae, frames, generator=SEED(2)), latents)
    mode = vae_io.encode(vae, frames, sample=False)
    assert torch.equal(vae_io.encode(vae, frames, sample=False, generator=SEED(2)), mode)  # the mode draws nothing
    assert torch.equal(vae_io.decode(vae, mode), vae_io.decode(vae, mode))


def test_encode_is_the_vae_per_frame_in_the_video_layout(vae):
    frames = clip(3)
    latents = vae_io.encode(vae, frames, chunk_size=3, sample=False)
    with torch.no_grad():
        for j in range(2):
            for i in range(5):
                image = frames[j : j + 1, :, i] * 2 - 1  # (1, 3, H, W) in [-1, 1]
                expected = vae.encode(image).latent_dist.mode() * vae.config.scaling_factor
                torch.testing.assert_close(latents[j : j + 1, :, i], expected, atol=1e-5, rtol=1e-5)


def test_chunked_decode_equals_one_shot(vae):
    latents = torch.randn(2, 4, 5, 4, 4, generator=SEED(0))
    one_shot = vae_io.decode(vae, latents, chunk_size=10)
    torch.testing.assert_close(vae_io.decode(vae, latents, chunk_size=3), one_shot, atol=1e-5, rtol=1e-5)
    assert one_shot.shape == (2, 3, 5, 32, 32)


def test_fp16_vae_with_force_upcast_runs_in_fp32_and_is_restored():
    vae = tiny_vae()
    latents = torch.randn(1, 4, 2, 4, 4, generator=SEED(0))
    frames = clip()[:1, :, :2]
    reference_frames, reference_latents = vae_io.decode(vae, latents), vae_io.encode(vae, frames, sample=False)
    vae.to(torch.float16)
    vae.register_to_config(force_upcast=True)
    torch.testing.assert_close(vae_io.decode(vae, latents), reference_frames, atol=2e-3, rtol=0)  # only weight rounding
    torch.testing.assert_close(vae_io.encode(vae, frames, sample=False), reference_latents, atol=2e-3, rtol=0)
    assert vae.dtype == torch.float16
    stream = vae_io.decode_uint8(vae, latents, chunk_size=1)
    next(stream)
    assert vae.dtype == torch.float32  # upcast while the stream is open ...
    stream.close()
    assert vae.dtype == torch.float16  # ... and restored when its consumer closes it (save_video does on failure)


# ---- streamed decoding: uint8 chunks, bit-identical to the whole clip ----------------------------------
def uint8_of(frames: torch.Tensor) -> np.ndarray:
    """What the writers stored before streaming: ``video_io.to_uint8_frames`` of one clip ``(3, f, H, W)``."""
    return video_io.to_uint8_frames(frames)


def test_streamed_uint8_chunks_equal_the_whole_decode_bit_for_bit(vae):
    latents = torch.randn(2, 4, 5, 4, 4, generator=SEED(4))  # 10 frames in (b f) order: chunks of 3 span both clips
    whole = vae_io.decode(vae, latents, chunk_size=3)
    for clip in range(2):
        chunks = list(vae_io.decode_uint8(vae, latents, chunk_size=3, clip=clip))
        assert all(c.dtype == np.uint8 and c.shape[1:] == (32, 32, 3) and len(c) <= 3 for c in chunks)
        np.testing.assert_array_equal(np.concatenate(chunks), uint8_of(whole[clip]))
    assert torch.equal(torch.cat(list(vae_io.decode_chunks(vae, latents, chunk_size=3))),
                       whole.transpose(1, 2).flatten(0, 1))  # b c f H W -> (b f) c H W


def test_streaming_one_clip_decodes_only_its_chunks(vae):
    latents = torch.randn(2, 4, 5, 4, 4, generator=SEED(5))
    calls = []
    handle = vae.decoder.register_forward_pre_hook(lambda _m, args: calls.append(args[0].shape[0]))
    try:
        list(vae_io.decode_uint8(vae, latents, chunk_size=3, clip=0))  # frames 0-4: chunks [0-2] [3-5]
    finally:
        handle.remove()
    assert calls == [3, 3]


def test_generation_streams_the_frames_it_used_to_return(tmp_path):
    """``result.iter_frames`` (what Animator.save writes) and ``result.frames`` are the frames generation
    returned before streaming: ``decode(vae, latents)`` of the same latents; a GIF of either is the same file."""
    from animatediff.generation.pipeline import AnimationPipeline, GenerationConfig

    base = tiny_base_model()
    pipeline = AnimationPipeline(base)
    config = GenerationConfig(prompt="a cat", num_frames=5, width=32, height=32, steps=1, seed=3, decode_chunk_size=2)
    streamed = pipeline.generate(config)
    assert streamed._frames is None and "decode" not in streamed.timings  # nothing decoded yet
    chunks = list(streamed.iter_frames())
    assert [len(c) for c in chunks] == [2, 2, 1] and "decode" in streamed.timings
    before = vae_io.decode(base.vae, streamed.latents, chunk_size=2)  # the old eager decode
    np.testing.assert_array_equal(np.concatenate(chunks), uint8_of(before[0]))
    whole = pipeline.generate(config)
    assert torch.equal(whole.frames, before)  # decoded on first access, bit-identical
    np.testing.assert_array_equal(np.concatenate(list(whole.iter_frames())), uint8_of(before[0]))  # from the kept frames
    gif_streamed = video_io.save_video(streamed.iter_frames(), tmp_path / "streamed.gif")
    gif_whole = video_io.save_video(before[0], tmp_path / "whole.gif")
    assert gif_streamed.read_bytes() == gif_whole.read_bytes()
