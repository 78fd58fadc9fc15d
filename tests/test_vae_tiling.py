"""Tiled, sliced VAE decode/encode (generation/vae.py ``tile``, the ``vae_tiling`` field): diffusers' tiling
switched on only for the call, equal to untiled decoding where a frame fits one tile, the right shapes where
it does not, and the flag end to end."""

from __future__ import annotations

import json

import pytest
import torch

from animatediff.cli import main
from animatediff.errors import UserInputError
from animatediff.generation import vae as vae_io
from animatediff.generation.config import GenerationConfig
from animatediff.video_io import sidecar_path

from tiny_models import tiny_vae


@pytest.fixture(scope="module")
def vae():
    return tiny_vae()


def _latents(h: int, w: int, frames: int = 3, seed: int = 0, b: int = 2) -> torch.Tensor:
    return torch.randn(b, 4, frames, h, w, generator=torch.Generator().manual_seed(seed))  # (b, 4, f, h, w)


def test_a_frame_within_one_tile_decodes_as_untiled(vae):
    latents = _latents(4, 4)  # 32x32 pixels
    untiled = vae_io.decode(vae, latents, chunk_size=4)
    tiled = vae_io.decode(vae, latents, chunk_size=4, tile=32)  # one tile per frame: slicing only, one frame per call
    torch.testing.assert_close(tiled, untiled, rtol=1e-5, atol=1e-5)
    frames = torch.rand(1, 3, 2, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(vae_io.encode(vae, frames, sample=False, tile=32), vae_io.encode(vae, frames, sample=False),
                               rtol=1e-5, atol=1e-5)


def test_multi_tile_frames_keep_their_size_and_the_vae_its_settings(vae):
    latents = _latents(10, 7, frames=2, b=1)  # 80x56 pixels in 32-pixel tiles: neither side a multiple of the tile
    before = vae.use_tiling, vae.use_slicing, vae.tile_sample_min_size, vae.tile_latent_min_size
    seen = []
    original = vae.decoder.forward
    vae.decoder.forward = lambda z, *a, **k: (seen.append(tuple(z.shape)), original(z, *a, **k))[1]
    try:
        tiled = vae_io.decode(vae, latents, chunk_size=4, tile=32)
    finally:
        del vae.decoder.forward
    assert tiled.shape == (1, 3, 2, 80, 56) and 0 <= tiled.min() and tiled.max() <= 1
    assert max(s[0] for s in seen) == 1 and max(s[2] for s in seen) <= 4 and max(s[3] for s in seen) <= 4  # one frame, one tile
    assert (vae.use_tiling, vae.use_slicing, vae.tile_sample_min_size, vae.tile_latent_min_size) == before
    chunks = vae_io.decode_chunks(vae, latents, 4, tile=32)
    next(chunks)
    assert vae.use_tiling and vae.tile_sample_min_size == 32  # on while the stream is open ...
    chunks.close()
    assert (vae.use_tiling, vae.use_slicing, vae.tile_sample_min_size) == before[:3]  # ... and off once it closes
    frames = torch.rand(1, 3, 1, 80, 56, generator=torch.Generator().manual_seed(1))
    assert vae_io.encode(vae, frames, tile=32, generator=torch.Generator().manual_seed(0)).shape == (1, 4, 1, 10, 7)


def test_vae_tiling_must_be_a_bool():
    config = GenerationConfig(prompt="a cat", num_frames=4, width=64, height=64, steps=1, vae_tiling="yes")
    with pytest.raises(UserInputError) as error:
        config.validate(8)
    assert error.value.field == "vae_tiling" and str(error.value).startswith("vae_tiling yes:")


def test_cli_flag_reaches_the_decode_and_the_sidecar(tmp_path, monkeypatch):
    tiles = []
    original = vae_io.decode_chunks
    monkeypatch.setattr(vae_io, "decode_chunks", lambda *a, **k: (tiles.append(k.get("tile")), original(*a, **k))[1])
    out = tmp_path / "clip.gif"
    assert main(["-q", "generate", "a red circle", "--frames", "4", "--steps", "1", "--seed", "1", "--vae-tiling",
                 "--out", str(out)]) == 0
    assert tiles == [vae_io.TILE] and json.loads(sidecar_path(out).read_text())["vae_tiling"] is True
