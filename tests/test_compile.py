"""``compile`` (generation/compiled.py): torch.compile of the loaded UNet, a load option recorded in the sidecar."""

from __future__ import annotations

import json

import pytest
import torch

from animatediff.cli import main
from animatediff.generation import compiled
from animatediff.generation.pipeline import AnimationPipeline, GenerationConfig
from animatediff.video_io import sidecar_path


def test_refused_in_one_line_without_a_cpp_compiler_before_loading(tmp_path, capsys, monkeypatch):
    from animatediff.api import Animator

    monkeypatch.setattr(compiled, "find_cpp_compiler", lambda: None)
    monkeypatch.setattr(Animator, "load", lambda *a, **k: pytest.fail("loaded before --compile was checked"))
    out = tmp_path / "clip.gif"
    assert main(["-q", "generate", "a red circle", "--device", "cpu", "--compile", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --compile: torch.compile needs a C++ compiler on the CPU and none was found "
                   "(install g++, or set CXX)"]
    assert not any(tmp_path.iterdir())


def test_the_flag_compiles_the_loaded_unet_and_the_sidecar_says_so(tmp_path, monkeypatch):
    compiled_unets = []

    def fake_compile(pipeline):  # the real compile takes minutes on a CPU (see the slow test below)
        compiled_unets.append(pipeline.base.unet)
        pipeline.compiled = True

    monkeypatch.setattr(compiled, "find_cpp_compiler", lambda: "g++")
    monkeypatch.setattr(compiled, "compile_unet", fake_compile)
    out = tmp_path / "clip.gif"
    assert main(["-q", "generate", "a red circle", "--frames", "4", "--steps", "1", "--seed", "1", "--device", "cpu",
                 "--compile", "--out", str(out)]) == 0
    assert len(compiled_unets) == 1 and json.loads(sidecar_path(out).read_text())["compile"] is True
    assert main(["-q", "generate", "a red circle", "--frames", "4", "--steps", "1", "--seed", "1", "--device", "cpu",
                 "--out", str(tmp_path / "plain.gif")]) == 0
    assert json.loads(sidecar_path(tmp_path / "plain.gif").read_text())["compile"] is False


@pytest.mark.slow
def test_compiled_equals_eager_within_fp32_noise(base, motion, monkeypatch):
    """A real torch.compile of the tiny model (about 2 minutes on 2 shared cores: inductor builds C++ kernels).
    Feature caching still reuses under it: its taps were on the UNet before it was traced."""
    from animatediff.generation.feature_cache import FeatureCache

    config = GenerationConfig(prompt="a cat", negative_prompt="blurry", num_frames=4, width=32, height=32, steps=3, seed=1)
    cached_config = GenerationConfig(**{**vars(config), "cache_interval": 2})
    with AnimationPipeline(base, motion) as pipe:
        eager, eager_cached = pipe.generate(config).latents, pipe.generate(cached_config).latents
        compiled.compile_unet(pipe)
        result = pipe.generate(config)
        ring_calls = []
        ring = FeatureCache.cached
        monkeypatch.setattr(FeatureCache, "cached", lambda self, *a, **k: (ring_calls.append(1), ring(self, *a, **k))[1])
        cached = pipe.generate(cached_config)
    assert pipe.compiled and len(ring_calls) == 1
    assert (result.latents - eager).abs().max() < 1e-4 * eager.abs().max()
    assert (cached.latents - eager_cached).abs().max() < 1e-4 * eager.abs().max()
