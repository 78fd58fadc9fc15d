"""``--dtype auto`` (generation/precision.py): the selection rule with mocked CPU capabilities, and the sidecar
recording the device and dtypes a clip was really computed in."""

import pytest
import torch

from animatediff.cli import _dtype
from animatediff.generation import precision
from animatediff.generation.config import GenerationConfig
from animatediff.generation.pipeline import AnimationPipeline


@pytest.mark.parametrize("device, features, expected", [
    ("cuda", frozenset(), torch.float16),
    ("cuda:1", frozenset({"amx"}), torch.float16),
    ("cpu", frozenset({"amx", "avx512_bf16"}), torch.bfloat16),
    ("cpu", frozenset({"amx"}), torch.bfloat16),
    ("cpu", frozenset({"avx512_bf16"}), torch.bfloat16),  # native bf16 dot products: 2x fp32 here (module docstring)
    ("cpu", frozenset(), torch.float32),
    ("mps", frozenset({"amx"}), torch.float32),
])
def test_auto_dtype_rule(device, features, expected):
    assert precision.auto_dtype(device, features) == expected


def test_auto_reads_the_cpu_features_from_torch(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert precision.cpu_features() == {"amx", "avx512_bf16"}
    assert _dtype("auto", "cpu") == torch.bfloat16
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert _dtype("auto", "cpu") == torch.bfloat16 and _dtype("auto", "cuda") == torch.float16
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert _dtype("auto", "cpu") == torch.float32
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")  # an older torch without the probe: no AMX
    assert precision.cpu_features() == {"avx512_bf16"}
    assert _dtype("bfloat16", "cpu") == torch.bfloat16 and _dtype("float32", "cuda") == torch.float32


def test_api_takes_dtype_names_and_refuses_others():
    from animatediff.api import Animator
    from animatediff.errors import UserInputError

    assert precision.resolve_dtype("auto", "cpu") == precision.auto_dtype("cpu")
    with pytest.raises(UserInputError, match="must be one of auto, float32, float16, bfloat16") as e:
        Animator.load("no-such-model", dtype="float64")  # refused before the model is looked for
    assert e.value.field == "dtype"


def test_sidecar_records_device_and_dtypes(base, motion):
    config = GenerationConfig(prompt="a cat", num_frames=4, width=64, height=64, steps=1, seed=1)
    with AnimationPipeline(base, motion) as pipe:
        metadata = pipe.generate(config).metadata(fps=8)
    assert (metadata["device"], metadata["dtype"], metadata["vae_dtype"]) == ("cpu", "float32", "float32")
