"""The training loop shared by all four modes (paper Eq. 2 for images, Eq. 7 for clips).

One step: pixels ``(b, f, 3, H, W)`` -> frozen VAE, per frame -> latents ``(b, 4, f, h, w)`` x scaling factor
-> one timestep per clip, Gaussian noise, forward diffusion (linear betas) -> predict the noise -> MSE.
The mode (modes.py) only decides which parameters train and what is exported.

Determinism: data order, clip sampling, empty captions, VAE posterior samples, noise and timesteps are all
functions of ``(seed, step, rank)``, so a run interrupted at step k and resumed from its checkpoint
reproduces the uninterrupted loss sequence. Accelerate handles devices, processes (DDP) and mixed precision.
"""

from __future__ import annotations

import csv
import json
import os
import logging
import math
import resource
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import DDPMScheduler
from diffusers.optimization import get_scheduler
from tqdm.auto import tqdm

from ..components import BaseModel
from ..generation.config import GenerationConfig
from ..generation.pipeline import AnimationPipeline
from ..motion_module import MotionModules
from ..video_io import save_video
from . import export
from .config import TrainConfig
from .data import StepSampler, build_dataset, mix_seed
from .latent_cache import cache_latents, sample_latents
from .modes import Setup, build, enable_gradient_checkpointing, load_base
from .state import load_training_state, rng_states, set_rng_states

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    losses: dict[int, float] = field(default_factory=dict)  # step -> loss (mean over processes), this run only
    step: int = 0
    checkpoint: Path | None = None
    exported: Path | None = None
    interrupted: bool = False


class StopFlag:
    """Set by SIGINT/SIGTERM; the loop finishes the current step, saves, and returns."""

    def __init__(self):
        self.requested = False
        self._previous: dict[int, object] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame):
        logger.warning("received %s: saving a checkpoint after this step", signal.Signals(signum).name)
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def encode_text(base: BaseModel, captions: list[str], device: torch.device) -> torch.Tensor:
    tokens = base.tokenizer(captions, padding="max_length", max_length=base.tokenizer.model_max_length, truncation=True, return_tensors="pt")
    return base.text_encoder(tokens.input_ids.to(device))[0]  # (b, 77, dim)


def encode_pixels(vae, pixels: torch.Tensor, generator: torch.Generator, chunk: int = 16) -> torch.Tensor:
    """``(b, f, 3, H, W)`` in [-1, 1] -> latents ``(b, 4, f, H/8, W/8)`` = posterior sample x scaling factor."""
    b, f = pixels.shape[:2]
    frames = pixels.flatten(0, 1).to(vae.dtype)  # (b f) 3 H W
    latents = torch.cat([vae.encode(x).latent_dist.sample(generator) for x in frames.split(chunk)])
    latents = latents * vae.config.scaling_factor
    return latents.unflatten(0, (b, f)).transpose(1, 2).float()  # (b f) c h w -> b c f h w


def loss_weights(scheduler: DDPMScheduler, weighting: str, snr_gamma: float) -> torch.Tensor:
    """Per-timestep weights of the loss, normalised to mean 1 over the schedule (defined for the eps loss; a
    v-prediction base gets the same weights on its v loss).

    - ``none``: Eq. 7 as the paper and the official code train (uniform).
    - ``min-snr``: Hang et al. 2023, min(SNR, gamma) / SNR - down-weights the easy low-noise steps.
    - ``truncated-snr``: Salimans & Ho 2022, max(SNR, 1) / SNR = max(||x0 err||^2, ||eps err||^2) in eps terms,
      capped at gamma. Why: an eps error e at SNR s is an x0 error e / sqrt(s), so uniform weighting leaves a
      small model's x0 estimates poor at the high-noise steps where a clip's layout is decided. (On the demo
      family, 400 finetune steps with it barely helped; switching to v-prediction did: docs/demo-model.md.)
    """
    alphas = scheduler.alphas_cumprod.float()
    snr = alphas / (1 - alphas)
    if weighting == "none":
        weights = torch.ones_like(snr)
    elif weighting == "min-snr":
        weights = snr.clamp(max=snr_gamma) / snr
    elif weighting == "truncated-snr":
        weights = (1 / snr).clamp(min=1, max=snr_gamma)
    else:
        raise ValueError(f"unknown loss weighting {weighting!r}")
    return weights / weights.mean()


def training_loss(model, base: BaseModel, scheduler: DDPMScheduler, batch: dict, generator: torch.Generator, device,
                  weights: torch.Tensor | None = None, condition: Callable | None = None) -> torch.Tensor:
    """Eq. 7: || eps - eps_theta(z_t, t, tau(y)) ||^2 with one timestep per clip (``weights``: per timestep;
    the target is v instead of eps for a v-prediction base). ``condition(latents, pixels, generator)``: extra
    model inputs (sparsectrl mode), drawn after the noise and timesteps."""
    with torch.no_grad():
        # the generator lives on the CPU: every draw (posterior sample, noise, t) is the same on any device
        if "latent_mean" in batch:  # cache_latents (latent_cache.py)
            latents = sample_latents(batch, base.vae.config.scaling_factor, generator, device)
        else:
            latents = encode_pixels(base.vae, batch["pixel_values"].to(device), generator)
        text = encode_text(base, batch["caption"], device)
    noise = torch.randn(latents.shape, generator=generator).to(device)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator).to(device)
    noisy = scheduler.add_noise(latents, noise, timesteps)  # sqrt(a_t) z0 + sqrt(1 - a_t) eps
    extra = condition(latents, batch["pixel_values"].to(device), generator) if condition is not None else {}
    prediction = model(noisy, timesteps, text, **extra)
    # v-prediction bases (scheduler config prediction_type): v = sqrt(a_t) eps - sqrt(1 - a_t) z0
    target = noise if base.prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, timesteps)
    if weights is None:
        return F.mse_loss(prediction.float(), target.float())
    per_clip = (prediction.float() - target.float()).pow(2).flatten(1).mean(1)  # (b,)
    return (per_clip * weights.to(device)[timesteps]).mean()


def make_optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                             eps=config.adam_epsilon, weight_decay=config.weight_decay)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB -> MiB (process peak RSS)


class MetricsLog:
    """CSV (always) and TensorBoard (when installed) on the main process."""

    FIELDS = ("step", "loss", "lr", "clips_per_s", "peak_memory_mb", "time")

    def __init__(self, output_dir: Path, enabled: bool, start_step: int = 0):
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        self.path = output_dir / "train_log.csv"
        if self.path.exists():  # a resume: rows past the checkpoint were logged by the run that stopped after it
            with self.path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= start_step]
            tmp = self.path.with_suffix(".tmp")
            with tmp.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=self.FIELDS)
                writer.writeheader()
                writer.writerows(rows)
            os.replace(tmp, self.path)
        new = not self.path.exists()
        self.file = self.path.open("a", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=self.FIELDS)
        if new:
            self.writer.writeheader()
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(output_dir / "tensorboard"))
        except ImportError:
            logger.debug("tensorboard not installed: logging to CSV only")

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        self.writer.writerow(row)
        self.file.flush()
        if self.tb is not None:
            for key in ("loss", "lr", "clips_per_s", "peak_memory_mb"):
                self.tb.add_scalar(f"train/{key}", row[key], row["step"])

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.tb is not None:
                self.tb.close()


def validate(config: TrainConfig, base: BaseModel, motion: MotionModules | None, step: int, output_dir: Path) -> None:
    """Sample the fixed prompts/seeds with the generation pipeline and save GIFs.

    The pipeline hooks the motion modules into the training UNet a second time for the duration (the training
    hooks pass through while it samples) and is closed afterwards, so no hooks pile up between validations."""
    folder = output_dir / "samples" / f"step-{step:06d}"
    folder.mkdir(parents=True, exist_ok=True)
    num_frames = config.validation_num_frames if motion is not None else 1
    with AnimationPipeline(base, motion) as pipeline:
        for i, prompt in enumerate(config.validation_prompts):
            for seed in config.validation_seeds:
                result = pipeline.generate(GenerationConfig(
                    prompt=prompt, num_frames=num_frames, width=config.validation_size, height=config.validation_size,
                    steps=config.validation_inference_steps, guidance_scale=config.validation_guidance_scale, seed=seed,
                    scheduler_preset="animatediff",
                ))
                save_video(result.frames[0], folder / f"{i}-seed{seed}.gif", fps=8)
    logger.info("validation samples in %s", folder)


def train(
    config: TrainConfig,
    base: BaseModel | None = None,
    motion: MotionModules | None = None,
    resume: str | Path | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train ``config.mode`` for ``config.max_train_steps`` steps (or until SIGINT/SIGTERM); returns the losses."""
    accelerator = Accelerator(mixed_precision=config.mixed_precision, gradient_accumulation_steps=config.gradient_accumulation_steps)
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    # every process looks before any data or model is read, and before the main process writes anything
    output_dir = export.check_output_dir(config.output_dir, config.overwrite)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        export.claim_output_dir(output_dir)

    dataset = build_dataset(config)  # validates the data before any model is loaded
    base = base if base is not None else load_base(config.base_model)
    setup: Setup = build(config, base, motion)
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(setup)
    run_info = {"mode": config.mode, "base_model": config.base_model, "model_signature": setup.signature(base)}

    start_step, state = 0, None
    if resume is not None:
        checkpoint = export.find_checkpoint(resume)
        export.check_resumable(checkpoint, run_info)
        state = load_training_state(checkpoint / "training_state.pt")  # weights_only=True; a pickle is refused
        setup.restore(config, checkpoint, state.get("raw_trainable"))
        start_step = state["step"]
        logger.info("resuming from %s at step %d", checkpoint, start_step)

    weight_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(accelerator.mixed_precision, torch.float32)
    for frozen in base.text_encoders + [base.vae]:
        frozen.to(device)
    if config.cache_latents:
        cache_latents(dataset, base.vae, device)  # in the VAE's own precision, before the cast below
    if weight_dtype != torch.float32:
        for frozen in base.text_encoders + [base.vae]:  # frozen: half precision is enough (as diffusers' scripts do)
            frozen.to(device, dtype=weight_dtype)
    params = [p for p in setup.trainable.parameters() if p.requires_grad]
    optimizer = make_optimizer(config, params)
    lr_scheduler = get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=config.lr_warmup_steps, num_training_steps=config.max_train_steps)
    model, optimizer = accelerator.prepare(setup.model, optimizer)  # DDP wrap / device / autocast
    model.train()
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        lr_scheduler.load_state_dict(state["lr_scheduler"])
        if accelerator.scaler is not None and state.get("grad_scaler"):
            accelerator.scaler.load_state_dict(state["grad_scaler"])
        set_rng_states(state["rng"])
    noise_scheduler = DDPMScheduler(num_train_timesteps=config.num_train_timesteps, beta_start=config.beta_start,
                                    beta_end=config.beta_end, beta_schedule=config.beta_schedule)
    weights = None if config.loss_weighting == "none" else loss_weights(noise_scheduler, config.loss_weighting, config.snr_gamma)

    accum = config.gradient_accumulation_steps
    sampler = StepSampler(len(dataset), config.batch_size, config.seed, rank, world, start_step=start_step * accum)
    loader = torch.utils.data.DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, num_workers=config.num_workers,
                                         persistent_workers=config.num_workers > 0, worker_init_fn=_ignore_interrupts)
    batches = iter(loader)
    log = MetricsLog(output_dir, accelerator.is_main_process, start_step)
    result = TrainResult(step=start_step)
    metadata = {"format": "pt", "animatediff_mode": config.mode, "animatediff_train_config": json.dumps(config.to_dict())}

    def save(step: int) -> Path:
        training_state = {
            "step": step, "optimizer": optimizer.state_dict(), "lr_scheduler": lr_scheduler.state_dict(),
            "grad_scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
            "rng": rng_states(), "raw_trainable": setup.raw_state(), "config": config.to_dict(),
        }
        return export.save_checkpoint(output_dir, step, config.mode, setup.export_state(config), base.unet,
                                      {**metadata, "step": str(step)}, training_state, run_info, config.checkpoints_total_limit)

    bar = tqdm(total=config.max_train_steps, initial=start_step, desc=f"train {config.mode}", disable=not accelerator.is_main_process)
    step = start_step
    with StopFlag() as stop:
        while step < config.max_train_steps:
            started = time.perf_counter()
            losses = []
            for micro in range(accum):
                generator = torch.Generator().manual_seed(mix_seed(config.seed, 2, step * accum + micro, rank))
                batch = next(batches)
                # Why frames(): gradient checkpointing re-runs hooked layers inside backward(), and the motion
                # hooks must still know the frame count there (it is reset when forward() returns).
                with accelerator.accumulate(model), setup.model.denoiser.frames(config.frames_per_sample):
                    loss = training_loss(model, base, noise_scheduler, batch, generator, device, weights, setup.condition)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and config.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(params, config.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                losses.append(loss.detach())
            lr_scheduler.step()
            step += 1
            loss_value = accelerator.reduce(torch.stack(losses).mean(), reduction="mean").item()
            if not math.isfinite(loss_value):
                logger.error("non-finite loss %s at step %d", loss_value, step)
            result.losses[step] = loss_value
            elapsed = time.perf_counter() - started
            row = {"step": step, "loss": loss_value, "lr": lr_scheduler.get_last_lr()[0],
                   "clips_per_s": config.batch_size * world * accum / elapsed, "peak_memory_mb": _peak_memory_mb(device), "time": time.time()}
            if step % config.log_every == 0:
                log.write(row)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", clips_s=f"{row['clips_per_s']:.2f}")
            if on_step is not None:
                on_step(step, loss_value)
            stopping = _any_process(accelerator, stop.requested)
            if step % config.checkpointing_steps == 0 or stopping or step == config.max_train_steps:
                if accelerator.is_main_process:
                    result.checkpoint = save(step)
                accelerator.wait_for_everyone()
            if config.validation_steps and step % config.validation_steps == 0 and accelerator.is_main_process:
                validate(config, base, setup.motion, step, output_dir)
            if stopping:
                result.interrupted = True
                break
    bar.close()
    log.close()
    result.step = step
    if accelerator.is_main_process and result.checkpoint is not None:
        result.exported = export.export_final(output_dir, result.checkpoint, config.mode)
        logger.info("exported %s", result.exported)
    accelerator.wait_for_everyone()
    if setup.model.lora is not None:
        setup.model.lora.detach()  # leave the caller's base model as it was given
    return result


def _ignore_interrupts(_worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C to the main process, which finishes the step and saves."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _any_process(accelerator: Accelerator, flag: bool) -> bool:
    """All processes must stop at the same step (else DDP's all-reduce waits forever)."""
    if accelerator.num_processes == 1:
        return flag
    return bool(accelerator.reduce(torch.tensor(float(flag), device=accelerator.device), reduction="sum").item() > 0)
