"""AnimateDiff: animate personalised Stable Diffusion models with a plug-in motion module."""

from .inflation import AnimateDiffUNet
from .motion_module import MotionModules
from .presets import MOTION_PRESETS, MotionModuleConfig, get_preset

__all__ = ["AnimateDiffUNet", "MotionModules", "MotionModuleConfig", "MOTION_PRESETS", "get_preset"]
__version__ = "0.1.0"
