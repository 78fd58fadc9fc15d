"""``--dtype auto``: the weight dtype for a device, from what the hardware does fast (measured, README "Precision").

- CUDA: float16 (tensor cores; the AnimateDiff release and diffusers' default for GPUs).
- CPU with native bf16 (AMX on Sapphire Rapids and later, or AVX512_BF16 on Cooper Lake / Zen 4 and later):
  bfloat16. On a quiet 2-core AMD EPYC with AVX512_BF16 (no AMX), bf16 GEMMs run at 400-410 GFLOP/s vs 160-190
  in fp32, and a full-size UNet + motion module call (16 frames, CFG, 16x16 latents) takes 6.7 s in bf16 vs
  13.7 s in fp32 (benchmarks/results.md); on a 2-core Xeon with AMX, 1890 vs 290 GFLOP/s and 3.2 vs 10.5 s
  (benchmarks/results_amx.json). Fidelity after a 25-step DDIM
  sample is in the README ("Speed and memory"). An earlier measurement under heavy load from other jobs had
  bf16 slower; it did not reproduce on the quiet machine.
- anything else: float32.

The rule is a table (``BF16_CPU_FEATURES``) over capability flags read from torch, so a test can mock them.
"""

from __future__ import annotations

import torch

# CPU features that make bf16 the faster precision (measured: module docstring).
BF16_CPU_FEATURES = frozenset({"amx", "avx512_bf16"})


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


DTYPE_NAMES = ("auto", "float32", "float16", "bfloat16")


def resolve_dtype(name: str, device: str | torch.device) -> torch.dtype:
    """``auto`` / ``float32`` / ``float16`` / ``bfloat16`` -> a torch dtype for ``device``.

    Raises UserInputError (field ``dtype``) for any other name."""
    if name not in DTYPE_NAMES:
        from ..errors import UserInputError

        raise UserInputError(f"must be one of {', '.join(DTYPE_NAMES)}", field="dtype", value=name)
    return auto_dtype(device) if name == "auto" else getattr(torch, name)
