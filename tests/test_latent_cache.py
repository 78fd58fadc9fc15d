"""cache_latents: the frozen VAE's posterior of every training frame is computed once (training/latent_cache.py)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from animatediff.errors import UserInputError
from animatediff.training import load_config, train
from animatediff.training.data import build_dataset
from animatediff.training.latent_cache import cache_latents

from tiny_models import tiny_base_model

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from animatediff.demo.world import write_dataset

    return write_dataset(tmp_path_factory.mktemp("videos"), 3, num_frames=10, height=32, width=32)


def _config(mode: str, data: Path, out: Path, **overrides):
    values = dict(caption_file=str(data), size=32, num_frames=4, max_train_steps=2, checkpointing_steps=2, num_workers=0,
                  output_dir=str(out), batch_size=1, caption_dropout=0.5)
    return load_config(mode, f"tiny-{mode}", {**values, **overrides})


def test_cached_items_are_the_posteriors_of_the_frames_the_pixel_path_samples(data, tmp_path):
    config = _config("motion-module", data, tmp_path / "x")
    pixels, cached = build_dataset(config), build_dataset(config)
    vae = tiny_base_model().vae
    cache_latents(cached, vae, "cpu")
    for key in [(0, 11), (2, 5), (1, 123)]:
        a, b = pixels[key], cached[key]
        assert a["caption"] == b["caption"]  # the same draws in the same order (clip start, caption dropout)
        with torch.no_grad():
            posterior = vae.encode(a["pixel_values"]).latent_dist  # the 4 sampled frames
        assert b["latent_mean"].shape == (4, 4, 4, 4)
        torch.testing.assert_close(b["latent_mean"], posterior.mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(b["latent_std"], posterior.std, rtol=1e-4, atol=1e-5)
    assert len({random.Random(s).random() < 0.5 for s in range(20)}) == 2  # caption dropout really varies


@pytest.mark.parametrize("mode", ["motion-module", "domain-adapter"])
def test_training_from_the_cache_matches_training_from_pixels(mode, data, tmp_path):
    plain = train(_config(mode, data, tmp_path / "plain", max_train_steps=3), base=tiny_base_model())
    cached = train(_config(mode, data, tmp_path / "cached", max_train_steps=3, cache_latents=True), base=tiny_base_model())
    # the same noise draws from the same generator: only the VAE's batching differs
    assert list(plain.losses) == list(cached.losses) == [1, 2, 3]
    for step in plain.losses:
        assert cached.losses[step] == pytest.approx(plain.losses[step], rel=1e-3)


@pytest.mark.parametrize("overrides, why", [
    ({"hflip": True}, "hflip"),
    ({"camera_move": "ZoomIn", "mode": "motion-lora", "motion_module": "m.safetensors"}, "camera_move"),
])
def test_cache_is_refused_with_per_step_pixel_augmentations(overrides, why, data, tmp_path):
    mode = overrides.pop("mode", "motion-module")
    with pytest.raises(UserInputError, match=f"cache_latents.*{why}"):
        _config(mode, data, tmp_path / "x", cache_latents=True, **overrides).validate()


def test_cli_refuses_the_cache_with_hflip_in_one_line(data, tmp_path, capsys):
    from animatediff.cli import main

    code = main(["train", "motion-module", "--config", "tiny-motion-module", "--caption_file", str(data),
                 "--output_dir", str(tmp_path / "out"), "--cache_latents", "--hflip", "true"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: --cache_latents") and "hflip" in err[0]
    assert not (tmp_path / "out").exists()
