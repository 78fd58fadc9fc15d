"""``--dtype auto``: the weight dtype for a device, from what the hardware does fast (measured, README "Precision").

- CUDA: float16 (tensor cores; the AnimateDiff release and diffusers' default for GPUs).
- CPU with AMX (Sapphire Rapids and later): bfloat16, whose matmuls run on the AMX tiles at several times the
  fp32 rate.
- CPU with AVX512_BF16 but no AMX: float32. Such a CPU has native bf16 dot products, but on the 2-core Xeon
  this project is developed on oneDNN's bf16 GEMMs and convolutions measured 0.6-0.8x the fp32 rate and a full
  UNet step was slower in bf16 (benchmarks/results.md), so bf16 there would cost fidelity and buy nothing.
- anything else: float32.

The rule is a table (``BF16_CPU_FEATURES``) over capability flags read from torch, so a test can mock them.
"""

from __future__ import annotations

import torch

# CPU features that make bf16 the faster precision (see the module docstring for why avx512_bf16 is not here).
BF16_CPU_FEATURES = frozenset({"amx"})


def cpu_features() -> frozenset[str]:
    """The bf16-relevant CPU features torch detects: ``amx`` (AMX tiles), ``avx512_bf16`` (AVX512 bf16 dot products)."""
    probes = {"amx": "_is_amx_tile_supported", "avx512_bf16": "_is_avx512_bf16_supported"}
    return frozenset(name for name, probe in probes.items() if getattr(torch.cpu, probe, lambda: False)())


def auto_dtype(device: str | torch.device, features: frozenset[str] | None = None) -> torch.dtype:
    """The dtype ``auto`` means on ``device`` (``features``: the CPU's, read from torch when None)."""
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.float16
    if kind == "cpu" and (cpu_features() if features is None else features) & BF16_CPU_FEATURES:
        return torch.bfloat16
    return torch.float32


def resolve_dtype(name: str, device: str | torch.device) -> torch.dtype:
    """``auto`` / ``float32`` / ``float16`` / ``bfloat16`` -> a torch dtype for ``device``."""
    return auto_dtype(device) if name == "auto" else getattr(torch, name)
