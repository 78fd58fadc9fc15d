"""Text-to-video generation (paper §4, inference): the one function every interface calls.

    text --CLIP--> conditioning ----------------------------\\
    seed --randn--> latents (b, 4, f, h, w) --sample(CFG(inflated UNet))--> latents --VAE per frame--> frames

This file composes the pieces: conditioning.py (text -> conditioning), denoiser.py (how to call the UNet),
vae.py (latents <-> frames), and, below generation/, inflation.py (UNet + motion modules), guidance.py (CFG),
loop.py (the sampling loop), schedulers.py (noise schedules). Numerics follow the official
``pipeline_animation.py`` (§6 of the reference notes): one ``randn`` call for all latents, DDIM eta 0,
``latents / scaling_factor``, ``(x / 2 + 0.5).clamp(0, 1)``.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from dataclasses import dataclass, field

import torch

from ..components import BaseModel
from ..errors import UserInputError
from ..inflation import AnimateDiffUNet
from ..motion_module import MotionModules
from ..sampling.guidance import ClassifierFreeGuidance
from ..sampling.loop import Progress, sample
from ..sampling.schedulers import check_preset, check_scheduler, make_scheduler, sampling_defaults
from . import vae as vae_io
from .conditioning import encode_conditioning
from .denoiser import UNetDenoiser

logger = logging.getLogger(__name__)


@dataclass
class GenerationConfig:
    """Everything that determines a generated clip (recorded in the output's sidecar).

    ``scheduler``, ``steps`` and ``guidance_scale`` left as None take the preset's recommended values
    (``schedulers.SAMPLING_DEFAULTS``); ``scheduler_preset`` None takes the motion module's own preset
    (Lightning, AnimateLCM, SDXL beta) or "animatediff". ``seed`` None draws a random seed, which
    ``resolved()`` records."""

    prompt: str
    negative_prompt: str = ""
    num_frames: int = 16
    width: int = 512
    height: int = 512
    steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = None
    scheduler: str | None = None
    scheduler_preset: str | None = None
    decode_chunk_size: int = 16
    eta: float = 0.0
    clip_skip: int | None = None  # 1 = penultimate CLIP layer (diffusers convention)
    num_videos: int = 1  # clips per prompt, drawn from one generator

    def resolved(self, default_preset: str = "animatediff") -> "GenerationConfig":
        """A copy with every None filled in (preset, its sampling defaults, a random seed)."""
        preset = self.scheduler_preset or default_preset
        defaults = sampling_defaults(preset)  # UserInputError(field="scheduler_preset") for an unknown one
        return dataclasses.replace(
            self,
            scheduler_preset=preset,
            scheduler=self.scheduler or defaults.scheduler,
            steps=self.steps if self.steps is not None else defaults.steps,
            guidance_scale=self.guidance_scale if self.guidance_scale is not None else defaults.guidance_scale,
            seed=self.seed if self.seed is not None else random.SystemRandom().randrange(2**32),
        )

    def validate(self, vae_scale_factor: int | None = None, max_frames: int | None = None,
                 motion_name: str | None = None) -> None:
        """Raise ``UserInputError(detail, field=..., value=...)`` for the first value that cannot be generated.

        The one place generation settings are checked. Fields still None (before ``resolved()``) are skipped.
        What depends on the model comes as arguments: ``vae_scale_factor`` (width and height must be multiples
        of it, 8 for SD/SDXL) and ``max_frames``, the motion module's position-encoding length (``motion_name``
        for the message)."""

        def require(name: str, ok: bool, detail: str) -> None:
            if not ok:
                raise UserInputError(detail, field=name, value=getattr(self, name))

        def at_least(name: str, low: int) -> None:
            value = getattr(self, name)
            require(name, value is None or value >= low, "must be at least 1" if low else "must not be negative")

        whole = ("num_frames", "width", "height", "steps", "decode_chunk_size", "num_videos", "clip_skip", "seed")
        optional = ("steps", "guidance_scale", "seed", "clip_skip")  # None until resolved(); clip_skip None = off
        for name in whole + ("guidance_scale", "eta"):
            value = getattr(self, name)
            kinds, what = (int, "a whole number") if name in whole else ((int, float), "a number")
            require(name, (value is None and name in optional) or (isinstance(value, kinds) and not isinstance(value, bool)),
                    f"must be {what}")
        factor = vae_scale_factor or 1
        for name in ("width", "height"):
            value = getattr(self, name)
            require(name, value >= factor and value % factor == 0, f"must be a positive multiple of {factor}")
        at_least("num_frames", 1)
        if max_frames is not None:
            owner = f"the {motion_name} motion module's" if motion_name else "the motion module's"
            require("num_frames", self.num_frames <= max_frames,
                    f"exceeds {owner} position-encoding length {max_frames} (use max_frames to extend it)")
        for name in ("steps", "decode_chunk_size", "num_videos"):
            at_least(name, 1)
        for name in ("guidance_scale", "eta", "clip_skip"):
            at_least(name, 0)
        require("seed", self.seed is None or 0 <= self.seed < 2**64, "must be in 0 .. 2**64 - 1")  # torch.Generator's range
        if self.scheduler is not None:
            check_scheduler(self.scheduler)
        if self.scheduler_preset is not None:
            check_preset(self.scheduler_preset)


@dataclass
class GenerationResult:
    frames: torch.Tensor  # (batch, 3, num_frames, H, W) float32 in [0, 1], on the CPU
    latents: torch.Tensor  # (batch, 4, num_frames, H/8, W/8) float32, denoised, before VAE scaling
    seed: int
    config: GenerationConfig  # resolved: no None left except clip_skip
    timings: dict[str, float] = field(default_factory=dict)  # seconds: text, denoise, decode, total
    models: dict[str, str | None] = field(default_factory=dict)  # base model source, motion module preset

    def metadata(self, **extra) -> dict:
        """The settings to write next to the video (``video_io.save_video(..., metadata=...)``); ``extra``
        adds what only the caller knows (file paths, LoRAs, fps)."""
        return {**dataclasses.asdict(self.config), **self.models, "timings": self.timings, **extra}


class AnimationPipeline:
    """A base model (SD1.5 or SDXL) plus, optionally, a motion module set.

    ``motion=None`` gives the frame-by-frame image baseline: every frame is an independent image sample.
    ``denoiser.residual_providers`` is where ControlNet-like models plug in (denoiser.py)."""

    def __init__(self, base: BaseModel, motion: MotionModules | None = None):
        self.base = base
        self.motion = motion
        try:
            self.unet = AnimateDiffUNet(base.unet, motion)
        except ValueError as e:  # motion module built for another UNet layout
            raise UserInputError(str(e), field="motion_module") from None
        self.denoiser = UNetDenoiser(self.unet)
        self.vae_scale_factor = 2 ** (len(base.vae.config.block_out_channels) - 1)  # 8 for SD/SDXL

    def close(self) -> None:
        """Detach the motion modules from the base UNet (its hooks and any swapped GroupNorms). Call it (or
        use ``with AnimationPipeline(...) as pipe:``) before inflating the same UNet another way, e.g. when
        a training loop builds a pipeline only to sample validation clips."""
        self.unet.detach()

    def __enter__(self) -> "AnimationPipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def default_scheduler_preset(self) -> str:
        if self.motion is not None:
            return self.motion.config.scheduler_preset
        return "sdxl-beta" if self.base.is_sdxl else "animatediff"

    def validate(self, config: GenerationConfig) -> None:
        """``config.validate`` with this model's facts (VAE factor, position-encoding length)."""
        motion = self.motion
        config.validate(self.vae_scale_factor, motion.max_frames if motion is not None else None,
                        motion.config.name if motion is not None else None)

    # ---- latents ---------------------------------------------------------------------------------
    def latent_shape(self, config: GenerationConfig) -> tuple[int, ...]:
        f = self.vae_scale_factor
        return (config.num_videos, self.base.unet.config.in_channels, config.num_frames, config.height // f, config.width // f)

    def prepare_latents(self, config: GenerationConfig, latents: torch.Tensor | None = None,
                        generator: torch.Generator | None = None) -> torch.Tensor:
        """Initial noise ``(batch, 4, num_frames, H/8, W/8)``, fp32 on the UNet's device.

        Drawn first from ``torch.Generator("cpu").manual_seed(seed)`` in one ``randn`` call, in fp32 on the
        CPU, so a seed gives the same clip on every device. (The official script samples on CUDA with the
        global RNG instead; exact parity with it needs that RNG.) Given ``latents`` are checked and used."""
        shape = self.latent_shape(config)
        if latents is None:
            if generator is None:
                if config.seed is None:
                    raise ValueError("prepare_latents needs config.seed, a generator or latents")
                generator = torch.Generator("cpu").manual_seed(config.seed)
            latents = torch.randn(shape, generator=generator, dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise UserInputError(f"does not match the requested video {shape}", field="latents", value=tuple(latents.shape))
        return latents.to(device=self.unet.device, dtype=torch.float32)

    def decode_latents(self, latents: torch.Tensor, chunk_size: int = 16) -> torch.Tensor:
        """Latents ``(b, 4, f, h, w)`` -> frames ``(b, 3, f, H, W)`` in [0, 1], fp32 on the CPU (vae.decode)."""
        return vae_io.decode(self.base.vae, latents, chunk_size)

    # ---- generation ------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, config: GenerationConfig, latents: torch.Tensor | None = None,
                 progress: Progress | None = None) -> GenerationResult:
        """Generate ``config.num_videos`` clips. ``progress(step, total)`` is called after every denoising step."""
        config = config.resolved(self.default_scheduler_preset)
        self.validate(config)
        timings, start = {}, time.perf_counter()

        generator = torch.Generator("cpu").manual_seed(config.seed)  # latents first, then any step noise
        latents = self.prepare_latents(config, latents, generator)
        cond, uncond = encode_conditioning(self.base, config, self.unet.device, self.unet.dtype)
        timings["text"] = time.perf_counter() - start

        tick = time.perf_counter()
        scheduler = make_scheduler(config.scheduler, config.scheduler_preset, prediction_type=self.base.prediction_type)
        denoiser = ClassifierFreeGuidance(self.denoiser, cond, uncond, config.guidance_scale)
        latents = sample(denoiser, scheduler, latents, config.steps, generator=generator, eta=config.eta, progress=progress)
        timings["denoise"] = time.perf_counter() - tick

        tick = time.perf_counter()
        frames = self.decode_latents(latents, config.decode_chunk_size)
        timings["decode"] = time.perf_counter() - tick
        timings["total"] = time.perf_counter() - start
        logger.info("generated %d x %d frames at %dx%d in %.1fs", config.num_videos, config.num_frames,
                    config.width, config.height, timings["total"])
        models = {"base_model": self.base.source, "motion_preset": self.motion.config.name if self.motion is not None else None}
        return GenerationResult(frames=frames, latents=latents, seed=config.seed, config=config, timings=timings, models=models)


def generate(base: BaseModel, motion: MotionModules | None, config: GenerationConfig,
             latents: torch.Tensor | None = None, progress: Progress | None = None) -> GenerationResult:
    """One-shot convenience: build a pipeline, generate, and detach the motion modules again."""
    with AnimationPipeline(base, motion) as pipeline:
        return pipeline.generate(config, latents=latents, progress=progress)
