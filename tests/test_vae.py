"""Frames <-> latents through the tiny real VAE: layout, chunking, seeds, fp16 upcast."""

from __future__ import annotations

import pytest
import torch

from animatediff.generation import vae as vae_io

from tiny_models import tiny_vae

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
