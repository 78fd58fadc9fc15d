"""Text-to-video generation (paper §4, inference): the one function every interface calls.

    text --CLIP--> conditioning ----------------------------\\
    seed --randn--> latents (b, 4, f, h, w) --sample(CFG(inflated UNet))--> latents --VAE per frame--> frames
                                                                          (on demand, chunk by chunk)

This file composes the pieces: conditioning.py (text -> conditioning), denoiser.py (how to call the UNet),
vae.py (latents <-> frames), and, below generation/, inflation.py (UNet + motion modules), guidance.py (CFG),
loop.py (the sampling loop), schedulers.py (noise schedules). Numerics follow the official
``pipeline_animation.py`` (§6 of the reference notes): one ``randn`` call for all latents, DDIM eta 0,
``latents / scaling_factor``, ``(x / 2 + 0.5).clamp(0, 1)``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch

from ..components import BaseModel
from ..errors import UserInputError
from ..inflation import AnimateDiffUNet
from ..motion_module import MotionModules
from ..sampling.context import resolve_context, with_context
from ..sampling.guidance import ClassifierFreeGuidance
from ..sampling.freeinit import FreeInit, sample_freeinit
from ..sampling.freenoise import ViewPlan, noise_window, reschedule_noise
from ..sampling.loop import Progress, sample
from ..sampling.schedulers import make_scheduler
from ..video_io import to_uint8
from . import controlnet, feature_cache, image_input, ip_adapter, prompt_travel, sparsectrl, vae as vae_io, video_input
from .conditioning import PER_CLIP_NDIM, encode_conditioning
from .config import GenerationConfig
from .denoiser import UNetDenoiser

logger = logging.getLogger(__name__)


@dataclass
class GenerationResult:
    """One generation: the denoised latents, and the frames decoded from them only when asked for.

    ``frames`` is decoded on first access and kept (12 bytes per pixel of the whole batch: fine for short
    clips); ``iter_frames`` streams one clip as uint8 chunks without keeping them, which is what
    ``Animator.save`` and the CLI use, so a long clip's frames are never all in memory. Both decode the same
    VAE chunks, so they give the same pixels. ``timings["decode"]`` (and the decode's share of ``"total"``)
    is filled in by the first decode that completes."""

    latents: torch.Tensor  # (batch, 4, num_frames, H/8, W/8) float32, denoised, before VAE scaling
    seed: int
    config: GenerationConfig  # resolved: no None left except clip_skip
    timings: dict[str, float] = field(default_factory=dict)  # seconds: text, denoise, decode, total
    models: dict[str, str | None] = field(default_factory=dict)  # base model source, motion module preset
    # decode(clip) -> chunks (n, 3, H, W) float32 in [0, 1] of that clip (all clips when None): vae.decode_chunks
    decoder: Callable[[int | None], Iterator[torch.Tensor]] | None = field(default=None, repr=False)
    _frames: torch.Tensor | None = field(default=None, repr=False)

    @property
    def frames(self) -> torch.Tensor:
        """``(batch, 3, num_frames, H, W)`` float32 in [0, 1], on the CPU; decoded on first access, then kept."""
        if self._frames is None:
            tick = time.perf_counter()
            b, _, f = self.latents.shape[:3]
            frames = torch.cat(list(self.decoder(None)))  # (b f) 3 H W
            self._frames = frames.reshape(b, f, *frames.shape[1:]).transpose(1, 2)  # (b f) c H W -> b c f H W
            self._record_decode(time.perf_counter() - tick)
        return self._frames

    def iter_frames(self, clip: int = 0) -> Iterator[np.ndarray]:
        """Clip ``clip``'s frames as uint8 chunks ``(n, H, W, 3)`` (``n <= config.decode_chunk_size``), decoded
        one chunk at a time and not kept (``video_io.save_video`` takes this iterator); from ``frames`` when
        those were already decoded. Equal, bit for bit, to ``to_uint8_frames(result.frames[clip])``."""
        if self._frames is not None:
            for chunk in self._frames[clip].split(self.config.decode_chunk_size, dim=1):  # (3, n, H, W)
                yield to_uint8(chunk.transpose(0, 1))
            return
        seconds = 0.0  # decoding time only, not the writer's time between chunks
        with closing(self.decoder(clip)) as chunks:
            while True:
                tick = time.perf_counter()
                chunk = next(chunks, None)
                if chunk is None:
                    break
                frames = to_uint8(chunk)
                seconds += time.perf_counter() - tick
                yield frames
        self._record_decode(seconds)

    def _record_decode(self, seconds: float) -> None:
        if "decode" not in self.timings:
            self.timings["decode"] = seconds
            self.timings["total"] = self.timings.get("total", 0.0) + seconds

    def metadata(self, **extra) -> dict:
        """The settings to write next to the video (``video_io.save_video(..., metadata=...)``); ``extra``
        adds what only the caller knows (file paths, LoRAs, fps)."""
        return {**dataclasses.asdict(self.config), **prompt_travel.sidecar(self.config), **self.models,
                "timings": self.timings, **extra}


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
        self.controlnets: dict = {}  # loaded ControlNets by (path, config), kept between generations
        self.ip_adapter_cache: dict = {}  # the IP-Adapter image encoder, kept between generations
        self.sparsectrls: dict = {}  # the loaded SparseCtrl encoder by path (sparsectrl.py)
        self.vae_scale_factor = 2 ** (len(base.vae.config.block_out_channels) - 1)  # 8 for SD/SDXL
        self.compiled = False  # speed: torch.compile'd in place (compiled.py), recorded in the sidecar

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
        """Generate ``config.num_videos`` clips. ``progress(step, total)`` is called after every denoising step.
        Returns the latents; the VAE decodes frames only when ``result.frames`` or ``result.iter_frames`` asks."""
        config = config.resolved(self.default_scheduler_preset)
        self.validate(config)
        config = resolve_context(config, self.motion)  # context None -> what runs (logged when windows turn on)
        timings, start = {}, time.perf_counter()

        generator = torch.Generator("cpu").manual_seed(config.seed)  # latents first, then any step noise
        latents = self.prepare_latents(config, latents, generator)
        latents = reschedule_noise(latents, config.noise_type, *noise_window(config), config.seed)
        cond, uncond = encode_conditioning(self.base, config, self.unet.device, self.unet.dtype)
        timings["text"] = time.perf_counter() - start

        tick = time.perf_counter()
        scheduler = make_scheduler(config.scheduler, config.scheduler_preset, prediction_type=self.base.prediction_type)
        # issue 12: video-to-video init latents (VAE draws after the noise) and ControlNet hints in the conditioning
        init, start_step, video = video_input.init_latents(self.base.vae, config, generator)
        cond, uncond, nets, hints = controlnet.prepare(self.base, config, cond, uncond,
                                                       lambda: scheduler.timesteps[start_step * scheduler.order:], self.controlnets)
        # issue 12: image-to-video init blend (drawn after the noise), IP-Adapter image tokens per frame
        image = None
        if init is None:
            init, start_step, image = image_input.init_latents(self.base.vae, config, generator)
        cond, uncond, ip_attached, ip_info = ip_adapter.prepare(self.base, config, cond, uncond, self.ip_adapter_cache)
        cond, uncond, sparse, keyframes = sparsectrl.prepare(self.base, config, cond, uncond,  # SparseCtrl: same pattern
                                                             lambda: scheduler.timesteps[start_step * scheduler.order:], self.sparsectrls)
        nets = [*nets, *sparse]
        cache = feature_cache.for_config(config, self.unet.unet)  # speed: a fresh DeepCache-style cache, None when off
        unet_model = UNetDenoiser(self.unet, [*self.denoiser.residual_providers, *nets], cache) if nets or cache else self.denoiser
        model = with_context(unet_model, config, {**PER_CLIP_NDIM, **controlnet.PER_CLIP_NDIM, **ip_adapter.PER_CLIP_NDIM,
                                                  **sparsectrl.PER_CLIP_NDIM})
        denoiser = ClassifierFreeGuidance(model, cond, uncond, config.guidance_scale)
        views = ViewPlan.from_fields(config)  # None: the motion modules see all frames at once
        with self.unet.views(views), ip_attached:
            denoiser = views.track(denoiser, scheduler) if views is not None else denoiser
            if init is not None:  # video-/image-to-video: the truncated schedule from the noised input
                latents = sample(denoiser, scheduler, latents, config.steps, generator=generator, eta=config.eta,
                                 progress=progress, init=init, start_step=start_step)
            else:
                latents = sample_freeinit(denoiser, scheduler, latents, config.steps, FreeInit.from_fields(config),
                                          generator=generator, eta=config.eta, progress=progress)
        timings["denoise"] = time.perf_counter() - tick

        timings["total"] = time.perf_counter() - start  # the decode adds its share when it runs (GenerationResult)
        logger.info("generated %d x %d frames at %dx%d in %.1fs", config.num_videos, config.num_frames,
                    config.width, config.height, timings["total"])
        models = {"base_model": self.base.source, "motion_preset": self.motion.config.name if self.motion is not None else None}
        # speed: the device and dtypes this clip was really computed in (--dtype auto resolves per machine)
        models.update(device=str(self.unet.device), dtype=str(self.unet.dtype).removeprefix("torch."),
                      vae_dtype=str(vae_io.decode_dtype(self.base.vae)).removeprefix("torch."), compile=self.compiled)
        if video or hints or keyframes:  # input files with hashes, frame counts, the video's fps
            models["inputs"] = {"video": video, "controlnets": hints, **({"sparsectrl": keyframes} if keyframes else {})}
        if image or ip_info:  # issue 12: the still and the IP-Adapter files and images, with hashes
            models.setdefault("inputs", {}).update({k: v for k, v in (("image", image), ("ip_adapter", ip_info)) if v})
        tile = vae_io.TILE if config.vae_tiling else None  # speed: tiled, sliced VAE
        decoder = partial(vae_io.decode_chunks, self.base.vae, latents, config.decode_chunk_size, tile=tile)  # frames on demand
        return GenerationResult(latents=latents, seed=config.seed, config=config, timings=timings, models=models, decoder=decoder)


def generate(base: BaseModel, motion: MotionModules | None, config: GenerationConfig,
             latents: torch.Tensor | None = None, progress: Progress | None = None) -> GenerationResult:
    """One-shot convenience: build a pipeline, generate, and detach the motion modules again."""
    with AnimationPipeline(base, motion) as pipeline:
        return pipeline.generate(config, latents=latents, progress=progress)
