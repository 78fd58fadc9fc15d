"""Training of the AnimateDiff stages (issue 3): image finetune, domain adapter, motion module, MotionLoRA.

    from animatediff.training import load_config, train
    result = train(load_config("motion-module", "tiny-motion-module", {"base_model": ..., "video_folder": ...}))

Files: config.py (TrainConfig, recipes), data.py (videos/images, deterministic sampling), lora_layers.py,
modes.py (what trains per mode), loop.py (the one loop), export.py (checkpoints), cli.py.
"""

from importlib import import_module

_EXPORTS = {"MODES": "config", "TrainConfig": "config", "load_config": "config", "TrainResult": "loop", "train": "loop"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):  # imported on first use: `animatediff --help` need not load the training loop
    if name not in _EXPORTS:
        raise AttributeError(f"module 'animatediff.training' has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
