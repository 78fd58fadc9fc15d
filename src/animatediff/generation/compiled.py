"""``compile``: ``torch.compile`` the loaded UNet, motion modules included, in place on the instance.

A load option, not a generation setting: compiling belongs to the loaded model (``Animator.load(...,
compile=True)``, the CLI's ``--compile``); the pipeline records it in every sidecar (``"compile": true``).

``nn.Module.compile()`` wraps only this UNet instance's call (mode default, inductor); nothing global is patched.
The motion modules are forward hooks on the UNet's layers, so Dynamo traces them with the layers they hang on.
The first call of each new input shape compiles (minutes on a CPU); later calls reuse the compiled code.
LoRA merges change the weights in place and need no recompile (parameters are graph inputs). Outputs stay
within fp32 noise of eager (tests/test_compile.py); the gain is measured in benchmarks/bench_compile.py.

Where it cannot work it is refused before anything loads, with one line (``check``): a Python or platform
TorchDynamo does not support, a CPU without a C++ compiler, CUDA without Triton.
"""

from __future__ import annotations

import importlib.util

import torch

from ..errors import UserInputError
from . import feature_cache


def find_cpp_compiler() -> str | None:
    """The C++ compiler inductor would use for CPU code (``$CXX`` or g++), or None when there is none."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        return get_cpp_compiler()
    except Exception:  # inductor raises InvalidCxxCompiler (or fails to import) when none is found
        return None


def check(device: str | torch.device) -> None:
    """Raise ``UserInputError(field="compile")`` where ``torch.compile`` cannot run on ``device``."""
    import torch._dynamo

    def refuse(detail: str) -> None:
        raise UserInputError(detail, field="compile")

    if not torch._dynamo.is_dynamo_supported():
        refuse(f"torch.compile does not support this Python/platform with torch {torch.__version__}")
    kind = torch.device(device).type
    if kind == "cpu" and find_cpp_compiler() is None:
        refuse("torch.compile needs a C++ compiler on the CPU and none was found (install g++, or set CXX)")
    if kind == "cuda" and importlib.util.find_spec("triton") is None:
        refuse("torch.compile needs Triton on CUDA (pip install triton)")


def compile_unet(pipeline) -> None:
    """Compile ``pipeline``'s UNet in place (the AnimationPipeline's base UNet, hooks and all) and mark the pipeline."""
    check(pipeline.unet.device)
    if pipeline.motion is not None:  # fuse the motion modules' Q/K/V now, outside the graph (motion_module.qkv_weight)
        for module in pipeline.motion.modules():
            if hasattr(module, "qkv_weight"):
                module.qkv_weight()
    feature_cache.taps(pipeline.base.unet)  # cache_interval's hooks exist before tracing, so the graph has them
    pipeline.base.unet.compile()
    pipeline.compiled = True
