"""Training of the AnimateDiff stages (issue 3): image finetune, domain adapter, motion module, MotionLoRA.

    from animatediff.training import load_config, train
    result = train(load_config("motion-module", "tiny-motion-module", {"base_model": ..., "video_folder": ...}))

Files: config.py (TrainConfig, recipes), data.py (videos/images, deterministic sampling), lora_layers.py,
modes.py (what trains per mode), loop.py (the one loop), export.py (checkpoints), cli.py.
"""

from .config import MODES, TrainConfig, load_config
from .loop import TrainResult, train

__all__ = ["MODES", "TrainConfig", "TrainResult", "load_config", "train"]
