"""AnimateDiff: animate personalised Stable Diffusion models with a plug-in motion module.

Public API (see README): ``Animator`` (load once, generate many times), and the pieces it is built from.
The names are imported on first use (PEP 562), so ``import animatediff.cli`` does not pay for torch and diffusers
before the command line has checked its arguments."""

from importlib import import_module

_EXPORTS = {
    "Animator": "api", "BaseModel": "components", "UserInputError": "errors", "AnimateDiffUNet": "inflation",
    "load_base_model": "weights.load", "load_motion_modules": "weights.load", "apply_domain_adapter": "weights.lora",
    "apply_lora": "weights.lora", "apply_motion_lora": "weights.lora", "MotionModules": "motion_module",
    "GenerationConfig": "generation.config", "AnimationPipeline": "generation.pipeline",
    "GenerationResult": "generation.pipeline", "MOTION_PRESETS": "presets", "MotionModuleConfig": "presets",
    "get_preset": "presets", "read_frames": "video_io", "save_video": "video_io",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'animatediff' has no attribute {name!r}")
    value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # next time without __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
