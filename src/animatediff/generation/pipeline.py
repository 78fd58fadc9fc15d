"""Text-to-video generation (paper §4, inference): the one function every interface calls.

    text --CLIP--> conditioning ----------------------------\\
    seed --randn--> latents (b, 4, f, h, w) --sample(CFG(inflated UNet))--> latents --VAE per frame--> frames

The pieces live elsewhere: inflation.py (UNet + motion modules), guidance.py (CFG), sampling.py (the
loop), schedulers.py (noise schedules). Numerics follow the official ``pipeline_animation.py`` (§6 of
the reference notes): one ``randn`` call for all latents, DDIM eta 0, ``latents / scaling_factor``,
``(x / 2 + 0.5).clamp(0, 1)``.
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
from ..sampling.guidance import ClassifierFreeGuidance, Conditioning
from ..inflation import AnimateDiffUNet
from ..motion_module import MotionModules
from ..sampling.loop import Progress, sample
from ..sampling.schedulers import SAMPLING_DEFAULTS, SCHEDULER_PRESETS, SCHEDULERS, make_scheduler

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
        if preset not in SAMPLING_DEFAULTS:
            raise UserInputError(f"--scheduler-preset {preset}: unknown; choose one of {', '.join(SCHEDULER_PRESETS)}")
        defaults = SAMPLING_DEFAULTS[preset]
        return dataclasses.replace(
            self,
            scheduler_preset=preset,
            scheduler=self.scheduler or defaults.scheduler,
            steps=self.steps if self.steps is not None else defaults.steps,
            guidance_scale=self.guidance_scale if self.guidance_scale is not None else defaults.guidance_scale,
            seed=self.seed if self.seed is not None else random.SystemRandom().randrange(2**32),
        )


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

    ``motion=None`` gives the frame-by-frame image baseline: every frame is an independent image sample."""

    def __init__(self, base: BaseModel, motion: MotionModules | None = None):
        self.base = base
        self.motion = motion
        try:
            self.unet = AnimateDiffUNet(base.unet, motion)
        except ValueError as e:  # motion module built for another UNet layout
            raise UserInputError(f"--motion-module: {e}") from None
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

    # ---- validation ------------------------------------------------------------------------------
    def validate(self, config: GenerationConfig) -> None:
        """Raise ``UserInputError`` naming the option for any value this model cannot generate."""
        factor = self.vae_scale_factor
        for option, value in (("--width", config.width), ("--height", config.height)):
            if value < factor or value % factor:
                raise UserInputError(f"{option} {value}: must be a positive multiple of {factor}")
        if config.num_frames < 1:
            raise UserInputError("must be at least 1", field="num_frames", value=config.num_frames)
        max_frames = self.motion.max_frames if self.motion is not None else None
        if max_frames is not None and config.num_frames > max_frames:
            raise UserInputError(
                f"exceeds the {self.motion.config.name} motion module's position-encoding length {max_frames} "
                f"(use --max-frames to extend)", field="num_frames", value=config.num_frames
            )
        if config.steps is not None and config.steps < 1:
            raise UserInputError(f"--steps {config.steps}: must be at least 1")
        if config.guidance_scale is not None and config.guidance_scale < 0:
            raise UserInputError(f"--guidance-scale {config.guidance_scale}: must not be negative")
        if config.decode_chunk_size < 1:
            raise UserInputError(f"--decode-chunk-size {config.decode_chunk_size}: must be at least 1")
        if config.num_videos < 1:
            raise UserInputError(f"--num-videos {config.num_videos}: must be at least 1")
        if config.eta < 0:
            raise UserInputError(f"--eta {config.eta}: must not be negative")
        if config.clip_skip is not None and config.clip_skip < 0:
            raise UserInputError(f"--clip-skip {config.clip_skip}: must not be negative")
        if config.scheduler is not None and config.scheduler not in SCHEDULERS:
            raise UserInputError(f"--scheduler {config.scheduler}: unknown; choose one of {', '.join(SCHEDULERS)}")
        if config.scheduler_preset is not None and config.scheduler_preset not in SCHEDULER_PRESETS:
            raise UserInputError(
                f"--scheduler-preset {config.scheduler_preset}: unknown; choose one of {', '.join(SCHEDULER_PRESETS)}"
            )

    # ---- text ------------------------------------------------------------------------------------
    def _tokenize(self, tokenizer, prompt: str, device: torch.device) -> torch.Tensor:
        ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        full_length = len(tokenizer(prompt).input_ids)
        if full_length > tokenizer.model_max_length:
            logger.warning("prompt is %d tokens; CLIP reads only the first %d", full_length, tokenizer.model_max_length)
        return ids.to(device)  # (1, 77)

    @torch.no_grad()
    def encode_prompt(self, prompt: str, clip_skip: int | None = None, zeros: bool = False) -> Conditioning:
        """The UNet's text conditioning for one prompt, batch 1.

        SD1.5: CLIP's last hidden state (or an earlier layer, ``clip_skip``), ``(1, 77, 768)``.
        SDXL: both encoders' penultimate hidden states side by side ``(1, 77, 768 + 1280)`` and the pooled
        ``text_embeds`` of text_encoder_2. ``zeros`` returns all-zero tensors of those shapes (SDXL's
        ``force_zeros_for_empty_prompt`` for an empty negative prompt)."""
        device, dtype = self.unet.device, self.unet.dtype
        if not self.base.is_sdxl:
            encoder = self.base.text_encoder
            out = encoder(self._tokenize(self.base.tokenizer, prompt, encoder.device), output_hidden_states=bool(clip_skip))
            hidden = out.last_hidden_state
            if clip_skip:  # an earlier layer still goes through the final LayerNorm, as in diffusers/A1111
                final_norm = getattr(encoder, "text_model", encoder).final_layer_norm  # transformers 5 flattened it
                hidden = final_norm(out.hidden_states[-(clip_skip + 1)])
            cond = {"encoder_hidden_states": hidden}
        else:
            hiddens, pooled = [], None
            for tokenizer, encoder in ((self.base.tokenizer, self.base.text_encoder), (self.base.tokenizer_2, self.base.text_encoder_2)):
                out = encoder(self._tokenize(tokenizer, prompt, encoder.device), output_hidden_states=True)
                hiddens.append(out.hidden_states[-(2 + (clip_skip or 0))])  # penultimate layer, no final norm
                pooled = out[0]  # text_encoder_2 (with projection): text_embeds (1, proj_dim)
            cond = {"encoder_hidden_states": torch.cat(hiddens, dim=-1), "text_embeds": pooled}
        cond = {k: v.to(device=device, dtype=dtype) for k, v in cond.items()}
        return {k: torch.zeros_like(v) for k, v in cond.items()} if zeros else cond

    def _size_conditioning(self, config: GenerationConfig) -> torch.Tensor:
        # SDXL micro-conditioning: original size, crop top-left, target size -> (1, 6)
        h, w = config.height, config.width
        return torch.tensor([[h, w, 0, 0, h, w]], device=self.unet.device, dtype=self.unet.dtype)

    def _conditioning(self, config: GenerationConfig) -> tuple[Conditioning, Conditioning | None]:
        cond = self.encode_prompt(config.prompt, config.clip_skip)
        uncond = None
        if config.guidance_scale > 1:
            # Why zeros: diffusers' SDXL pipelines (and the official sdxl branch) use zero embeddings, not
            # the encoded "", for an empty negative prompt (force_zeros_for_empty_prompt).
            zeros = self.base.is_sdxl and not config.negative_prompt
            uncond = self.encode_prompt(config.negative_prompt, config.clip_skip, zeros=zeros)
        if self.base.is_sdxl:
            time_ids = self._size_conditioning(config)
            cond["time_ids"] = time_ids
            if uncond is not None:
                uncond["time_ids"] = time_ids
        repeat = lambda c: {k: v.repeat(config.num_videos, *[1] * (v.ndim - 1)) for k, v in c.items()}  # noqa: E731
        return repeat(cond), (repeat(uncond) if uncond is not None else None)

    def _model(self, latents: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """Conditional model for guidance.py: fp32 latents in, the UNet in its own dtype, fp32 eps out."""
        added = {"text_embeds": cond["text_embeds"], "time_ids": cond["time_ids"]} if "time_ids" in cond else None
        eps = self.unet(latents.to(self.unet.dtype), t, cond["encoder_hidden_states"], added_cond_kwargs=added)
        return eps.to(latents.dtype)

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
            raise UserInputError(f"--latents: shape {tuple(latents.shape)} does not match the requested video {shape}")
        return latents.to(device=self.unet.device, dtype=torch.float32)

    # ---- decoding --------------------------------------------------------------------------------
    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, chunk_size: int = 16) -> torch.Tensor:
        """Latents ``(b, 4, f, h, w)`` -> frames ``(b, 3, f, H, W)`` in [0, 1], fp32 on the CPU, decoding
        ``chunk_size`` frames per VAE call (the official code decodes one at a time; frames are independent)."""
        vae = self.base.vae
        original_dtype = vae.dtype
        # SDXL's VAE overflows in fp16 (config.force_upcast); decode it in fp32 for the duration.
        upcast = original_dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
        b, c, f, h, w = latents.shape
        x = latents.transpose(1, 2).reshape(b * f, c, h, w) / vae.config.scaling_factor  # b c f h w -> (b f) c h w
        try:
            if upcast:
                vae.to(torch.float32)
            decoded = [vae.decode(chunk.to(device=vae.device, dtype=vae.dtype)).sample.float().cpu()
                       for chunk in x.split(chunk_size)]
        finally:
            if upcast:
                vae.to(original_dtype)
        frames = torch.cat(decoded)
        frames = frames.reshape(b, f, *frames.shape[1:]).transpose(1, 2)  # (b f) c H W -> b c f H W
        return (frames / 2 + 0.5).clamp(0, 1)

    # ---- generation ------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, config: GenerationConfig, latents: torch.Tensor | None = None,
                 progress: Progress | None = None) -> GenerationResult:
        """Generate ``config.num_videos`` clips. ``progress(step, total)`` is called after every denoising step."""
        self.validate(config)
        config = config.resolved(self.default_scheduler_preset)
        self.validate(config)
        timings, start = {}, time.perf_counter()

        generator = torch.Generator("cpu").manual_seed(config.seed)  # latents first, then any step noise
        latents = self.prepare_latents(config, latents, generator)
        cond, uncond = self._conditioning(config)
        timings["text"] = time.perf_counter() - start

        tick = time.perf_counter()
        scheduler = make_scheduler(config.scheduler, config.scheduler_preset, prediction_type=self.base.prediction_type)
        denoiser = ClassifierFreeGuidance(self._model, cond, uncond, config.guidance_scale)
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
