"""The small Python API: load components once, generate many times.

    from animatediff import Animator
    animator = Animator.load("path/to/sd15.safetensors", "mm_sd_v15_v2.ckpt")
    animator.set_loras(loras=[("style.safetensors", 0.8)], motion_loras=[("v2_lora_ZoomIn.ckpt", 1.0)])
    result = animator.generate("a corgi running on the beach", num_frames=16, seed=42)
    animator.save(result, "corgi.gif")

The command line and the web UI are thin layers over this class.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .weights.files import file_sha256
from .components import BaseModel
from .errors import UserInputError
from .weights.load import load_base_model, load_motion_modules
from .weights.lora import apply_domain_adapter, apply_lora, apply_motion_lora
from .motion_module import MotionModules
from .generation.config import GenerationConfig
from .generation.pipeline import AnimationPipeline, GenerationResult
from .video_io import save_video

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


# ---- cancelling a generation (the web UI's cancel button; issue 14) ----
class Cancelled(Exception):
    """Raised by a ``progress(step, total)`` callback to stop a generation after the step that just finished.

    Any exception from the callback ends ``Animator.generate`` within one denoising step and propagates; this
    one says "the user asked", so callers can tell it from a failure. The model is left as it was (LoRAs
    merged as set), ready for the next generation."""


@dataclass
class LoraSet:
    """The add-on weights merged into the model for the next generations, each ``(path, scale)``."""

    loras: list[tuple[str, float]] = field(default_factory=list)
    motion_loras: list[tuple[str, float]] = field(default_factory=list)
    adapter: tuple[str, float] | None = None


class Animator:
    """A loaded base model + motion module set, with LoRAs that can be swapped between generations."""

    def __init__(self, base: BaseModel, motion: MotionModules | None, sources: dict[str, str] | None = None):
        self.base = base
        self.motion = motion
        self.pipeline = AnimationPipeline(base, motion)
        self.sources = dict(sources or {})
        self._handles: list = []
        self.lora_set = LoraSet()
        self.defaults: dict = {}  # GenerationConfig fields the model is made for (the bundled demo: 64x64)
        self.sparsectrl: str | None = None  # the bundled family's SparseCtrl encoder: image-to-video uses it

    @classmethod
    def load(
        cls,
        model: str | None = None,
        motion_module: str | None = None,
        *,
        motion_preset: str | None = None,
        max_frames: int | None = None,
        dtype: torch.dtype | str = "auto",
        device: str | torch.device = "cpu",
        model_config: str | None = None,
        compile: bool = False,
    ) -> "Animator":
        """Load a base model (diffusers folder, cached repo id or single file) and a motion module file.
        ``model_config``: a folder of component configs for a single file that is not stock SD1.5/SDXL.
        ``model=None`` or a bundled name (``base``, ``personal``) loads the bundled demo family (demo/bundled.py).
        ``dtype``: a torch dtype or its name; ``"auto"`` (the default, as the CLI's ``--dtype auto``) picks by the
        device (generation/precision.py: float16 on CUDA, bfloat16 on CPUs with native bf16, else float32).
        ``compile``: torch.compile the UNet with its motion modules (generation/compiled.py; checked before loading)."""
        from .bundled import resolve
        from .generation import compiled

        if compile:
            compiled.check(device)

        if isinstance(dtype, str):
            from .generation.precision import resolve_dtype

            dtype = resolve_dtype(dtype, device)
        found = resolve(model, motion_module)
        model, motion_module = found.model, found.motion_module
        base = load_base_model(model, dtype=dtype, device=device, config_dir=model_config)
        motion = None
        if motion_module:
            # unet=: a module set built for another base (SDXL on SD1.5) is refused, naming the file
            motion = load_motion_modules(motion_module, preset=motion_preset, max_frames=max_frames, unet=base.unet, dtype=dtype)
            motion.to(device=device)
        animator = cls(base, motion, sources={"model": model, "motion_module": motion_module or ""})
        animator.defaults, animator.sparsectrl = found.defaults, found.sparsectrl
        if compile:  # speed: compiled in place on this instance
            compiled.compile_unet(animator.pipeline)
        return animator

    # ---- LoRAs -----------------------------------------------------------------------------------
    def set_loras(
        self,
        loras: list[tuple[str, float]] = (),
        motion_loras: list[tuple[str, float]] = (),
        adapter: tuple[str, float] | None = None,
    ) -> None:
        """Unmerge whatever was merged before, then merge these (official order: LoRA, adapter, MotionLoRAs)."""
        from .bundled import resolve_addons

        wanted = LoraSet(*resolve_addons(loras, motion_loras, adapter))  # bundled names (personal-lora, ZoomIn) -> files
        if wanted == self.lora_set:
            return
        self.clear_loras()
        try:
            for path, scale in wanted.loras:
                self._handles.append(apply_lora(self.base, path, scale))
            if wanted.adapter is not None:
                self._handles.append(apply_domain_adapter(self.base.unet, *wanted.adapter))
            if wanted.motion_loras and self.motion is None:
                raise UserInputError("needs a motion module (motion_module)", field="motion_loras")
            for path, alpha in wanted.motion_loras:
                self._handles.append(apply_motion_lora(self.motion, path, alpha))
        except Exception:
            self.clear_loras()  # never leave a half-merged model behind
            raise
        self.lora_set = wanted

    def clear_loras(self) -> None:
        for handle in reversed(self._handles):
            handle.unmerge()
        self._handles.clear()
        self.lora_set = LoraSet()

    # ---- generation ------------------------------------------------------------------------------
    def generate(
        self,
        prompt: str | GenerationConfig,
        *,
        latents: torch.Tensor | None = None,
        progress: Progress | None = None,
        **settings,
    ) -> GenerationResult:
        """Generate one clip; ``settings`` are ``GenerationConfig`` fields (num_frames, width, seed, ...).
        ``progress(step, total)`` is called after every denoising step; raising ``Cancelled`` from it stops here.

        ControlNets and video-to-video are fields too: ``controlnets=[{"path": ..., "strength": 0.8, "video": ...}]``,
        ``control_preprocess="canny"``, ``guess_mode=True``, ``video="in.mp4", strength=0.6`` (generation/controlnet.py,
        video_input.py); with a ``video`` and no ``num_frames``, the clip has the input's frame count (after
        resampling to ``video_fps`` when given).

        Image-to-video and IP-Adapter (image_input.py, ip_adapter.py): ``image="still.png", strength=0.8,
        image_strength=1.0, image_falloff=32``; ``ip_adapter=[{"path": "ip-adapter_sd15.bin", "scale": 0.7}],
        ip_adapter_image_encoder="image_encoder/", ip_images=[{"image": "a.png", "frame": 0}, {"image": "b.png",
        "frame": 15}]`` (several images travel across the frames). With the bundled family and its SparseCtrl encoder
        (v2), ``image=`` alone uses the encoder (keyframe at frame 0); ``sparsectrl=None`` or a blend setting
        (``image_strength``, ``image_falloff``, ``strength``) keeps the init-latent blend (bundled.image_to_video_settings).
        ``sparsectrl="sparsectrl-rgb"`` names the bundled encoder."""
        from .bundled import image_to_video_settings, sparsectrl_path

        if isinstance(settings.get("sparsectrl"), str):
            settings["sparsectrl"] = sparsectrl_path(settings["sparsectrl"])
        settings = image_to_video_settings(settings, self.sparsectrl)
        if settings.get("video") is not None and "num_frames" not in settings and not isinstance(prompt, GenerationConfig):
            from .generation.video_input import video_frame_count

            settings["num_frames"] = video_frame_count(settings["video"], settings.get("video_fps"))[0]
        config = prompt if isinstance(prompt, GenerationConfig) else GenerationConfig(prompt=prompt, **{**self.defaults, **settings})
        return self.pipeline.generate(config, latents=latents, progress=progress)

    def metadata(self, result: GenerationResult, fps: float) -> dict:
        """Everything needed to reproduce a clip: resolved settings, files with hashes, seed, LoRAs."""
        files = {name: {"path": path, "sha256": _hash_or_none(path)} for name, path in self.sources.items() if path}

        def weighted(items, key):
            return [{"path": p, key: s, "sha256": _hash_or_none(p)} for p, s in items]

        adapter = [self.lora_set.adapter] if self.lora_set.adapter else []
        return result.metadata(
            generator="animatediff", fps=fps, files=files, loras=weighted(self.lora_set.loras, "scale"),
            motion_loras=weighted(self.lora_set.motion_loras, "alpha"), adapter=(weighted(adapter, "scale") or [None])[0],
        )

    def save(self, result: GenerationResult, path: str | Path, fps: float = 8, overwrite: bool = False) -> Path:
        """Write the first clip (format from the extension) and its JSON sidecar, atomically. An existing target
        of another kind is refused unless ``overwrite`` (``video_io.check_output``), before anything is decoded.

        The frames stream: decoded ``decode_chunk_size`` at a time straight into the writer
        (``result.iter_frames``), so a long clip never holds all its frames; ``result.frames`` stays available
        (decoded on its first access). The sidecar is written after the frames, with the decode time."""
        return save_video(result.iter_frames(0), path, fps=fps, metadata=lambda: self.metadata(result, fps), overwrite=overwrite)


def _hash_or_none(path: str) -> str | None:
    return file_sha256(path) if Path(path).is_file() else None
