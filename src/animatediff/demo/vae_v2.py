"""The demo family v2's VAE (issue 11, item 2: "room for shapes"): the same small ``AutoencoderKL`` as
:mod:`animatediff.demo.vae` (SD's 8x factor, 4 latent channels) on 128x128 images, so latents are 16x16 and an
object (radius 10-16 % of the frame) spans 3-5 latent pixels instead of 1-2.

- :func:`train` is resumable: :func:`save_state` / a ``checkpoint`` folder continue bit-exactly (weights,
  AdamW, LR schedule, the batch and posterior-sample generator); the rendered training pool is cached there.
- :func:`round_trip_accuracy` measures the ceiling the VAE puts on every generation: the project's attribute
  metric (``scores.attribute_accuracy``) on held-out world images before and after encode -> decode.

Objective as in v1: MSE + L1 of the reconstruction from a posterior sample + 1e-6 KL; then
``scaling_factor = 1 / std(latents)``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import scores, trainer_state, world
from .vae import VAEConfig, build_vae, latent_statistics, to_pixels

logger = logging.getLogger(__name__)


@dataclass
class VAE2Config:
    image_size: int = 128
    block_out_channels: tuple[int, ...] = (16, 32, 64, 64)  # 4 blocks -> 3 downsamplings: 128 -> 16
    layers_per_block: int = 1
    norm_num_groups: int = 8
    latent_channels: int = 4
    steps: int = 3000  # this session: 700 steps, resumed to 1500, then to 3000 (docs/demo-model.md, v2)
    max_seconds: float = 4800.0  # over all resumed runs together
    batch_size: int = 8
    learning_rate: float = 1e-3
    kl_weight: float = 1e-6
    l1_weight: float = 1.0
    pool_size: int = 3000  # rendered images: plain scenes, personal style, watermarked frames
    seed: int = 0


def render_pool(n: int, size: int, seed: int) -> np.ndarray:
    """uint8 ``(n, size, size, 3)``: scene i from ``rng([seed, i])``; 70 % plain images (1-3 objects), 10 %
    personal style, 20 % watermarked video-frame scenes at a random time of their motion."""
    images = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        kind = rng.choice(["image", "style", "video"], p=[0.7, 0.1, 0.2])
        spec = world.random_spec(rng, kind)
        if kind == "video":
            tau = float(rng.uniform())
            moved = tuple(dataclasses.replace(o, motion="static", direction="right", **dict(zip("xy", world.object_position(o, tau)))) for o in spec.objects)
            images[i] = world.add_watermark(world.make_image(dataclasses.replace(spec, objects=moved), size, size))
        else:
            images[i] = world.make_image(spec, size, size)
    return images


@dataclass
class VAE2State:
    vae: object
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR
    generator: torch.Generator
    config: VAE2Config
    step: int = 0
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def new_state(config: VAE2Config):
    torch.manual_seed(config.seed)
    vae = build_vae(VAEConfig(block_out_channels=config.block_out_channels, layers_per_block=config.layers_per_block,
                              norm_num_groups=config.norm_num_groups, latent_channels=config.latent_channels))
    vae.register_to_config(sample_size=config.image_size)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.learning_rate, weight_decay=0.0)

    def lr_lambda(step: int) -> float:  # cosine to 5 %, as v1
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, config.steps))))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    return VAE2State(vae.train(), optimizer, schedule, torch.Generator().manual_seed(config.seed), config)


def save_state(state: VAE2State, folder: Path) -> None:
    trainer_state.save(folder, dataclasses.asdict(state.config), state.vae, state)


def load_state(folder: Path, config: VAE2Config) -> VAE2State:
    state = new_state(config)
    trainer_state.restore(folder, dataclasses.asdict(config), state.vae, state, "VAE2Config")
    return state


def train(config: VAE2Config, checkpoint: Path | None = None, save_every_seconds: float = 600.0, stop_at: int | None = None) -> VAE2State:
    """Train (or continue from ``checkpoint/state.pt``) up to ``config.steps`` or ``config.max_seconds`` in all;
    then set ``scaling_factor`` = 1 / latent std. Saves every ``save_every_seconds`` and at the end."""
    state = load_state(checkpoint, config) if checkpoint is not None and (checkpoint / "state.pt").is_file() else new_state(config)
    pool_size = min(config.pool_size, max(64, config.steps * config.batch_size))
    cache = checkpoint / f"pool-{pool_size}.npy" if checkpoint is not None else None
    if cache is not None and cache.is_file():  # rendering is deterministic: the cache only saves time
        images = np.load(cache)
    else:
        images = render_pool(pool_size, config.image_size, config.seed)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.save(cache, images)
    data, vae = to_pixels(images), state.vae.train()
    started = last_save = time.perf_counter()
    while state.step < min(config.steps, stop_at or config.steps):  # stop_at: an interruption (tests)
        batch = data[torch.randint(0, len(data), (config.batch_size,), generator=state.generator)]
        posterior = vae.encode(batch).latent_dist
        reconstruction = vae.decode(posterior.sample(state.generator)).sample
        mse = (reconstruction - batch).square().mean()
        kl = posterior.kl().mean() / posterior.mean[0].numel()  # diffusers sums KL over (c, h, w): per element
        loss = mse + config.kl_weight * kl + config.l1_weight * (reconstruction - batch).abs().mean()
        trainer_state.step(state, vae, loss, mse, digits=6)
        now = time.perf_counter()
        if state.step % 50 == 0:
            logger.info("vae-v2 step %d/%d: mse %.5f", state.step, config.steps, float(np.mean(state.losses[-50:])))
        if checkpoint is not None and now - last_save > save_every_seconds:
            state.seconds += now - started
            started = last_save = now
            save_state(state, checkpoint)
        if state.seconds + now - started > config.max_seconds:
            logger.info("vae-v2: time budget of %.0f s reached at step %d", config.max_seconds, state.step)
            break
    state.seconds += time.perf_counter() - started
    if checkpoint is not None:
        save_state(state, checkpoint)
    vae.eval()
    _, std = latent_statistics(vae, data, torch.Generator().manual_seed(config.seed))
    vae.register_to_config(scaling_factor=1.0 / std)
    return state


@torch.no_grad()
def round_trip(vae, images: np.ndarray) -> np.ndarray:
    """uint8 ``(n, H, W, 3)`` -> encode (posterior mean) -> decode -> uint8."""
    out = []
    for chunk in to_pixels(images).split(16):
        decoded = vae.decode(vae.encode(chunk.to(vae.dtype)).latent_dist.mean).sample.float()
        out.append(((decoded.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def round_trip_accuracy(vae, num_images: int = 64, size: int = 128, seed: int = 77) -> dict:
    """The attribute metric on held-out world images (plain, 1-3 objects) before ("truth": the metric's own
    ceiling) and after a VAE round trip, overall and per attribute kind (colour, shape, background)."""
    specs = [world.random_spec(np.random.default_rng([seed, i]), "image") for i in range(num_images)]
    images = np.stack([world.make_image(s, size, size) for s in specs])
    decoded = round_trip(vae, images)
    result = {}
    for name, batch in (("truth", images), ("round_trip", decoded)):
        kinds: dict[str, list[float]] = {"colour": [], "shape": [], "background": []}
        totals = []
        for spec, image in zip(specs, batch):
            found = scores.attribute_accuracy(image, world.caption(spec, motion=False))
            totals.append(found["accuracy"])
            for key, value in found["attributes"].items():
                kinds["colour" if "(colour" in key else "shape" if "(shape" in key else "background"].append(value)
        result[name] = {"accuracy": round(float(np.mean(totals)), 4), **{k: round(float(np.mean(v)), 4) for k, v in kinds.items()}}
    result["mse"] = round(float(((decoded.astype(np.float32) - images) / 127.5).__pow__(2).mean()), 5)
    return result
