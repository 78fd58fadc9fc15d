"""AnimateDiff: animate personalised Stable Diffusion models with a plug-in motion module.

Public API (see README): ``Animator`` (load once, generate many times), and the pieces it is built from."""

from .api import Animator
from .components import BaseModel
from .errors import UserInputError
from .inflation import AnimateDiffUNet
from .weights.load import load_base_model, load_motion_modules
from .weights.lora import apply_domain_adapter, apply_lora, apply_motion_lora
from .motion_module import MotionModules
from .generation.config import GenerationConfig
from .generation.pipeline import AnimationPipeline, GenerationResult
from .presets import MOTION_PRESETS, MotionModuleConfig, get_preset
from .video_io import read_frames, save_video

__all__ = [
    "Animator", "AnimationPipeline", "AnimateDiffUNet", "BaseModel", "GenerationConfig", "GenerationResult",
    "MotionModules", "MotionModuleConfig", "MOTION_PRESETS", "UserInputError", "apply_domain_adapter", "apply_lora",
    "apply_motion_lora", "get_preset", "load_base_model", "load_motion_modules", "read_frames", "save_video",
]
__version__ = "0.1.0"
