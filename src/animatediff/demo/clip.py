"""A contrastive text encoder for the demo family (issue 11, item 1): a small ``CLIPTextModel`` with the real CLIP
tokenizer, trained with a small conv image tower on the demo world's image-caption pairs (CLIP's symmetric
InfoNCE loss, learned temperature), then frozen for the base model exactly as SD freezes CLIP.

The image tower is not part of the generation path (SD has no image tower); it is kept as the report's
CLIP-score stand-in: ``ClipTowers.similarity(images, texts)``.

- :func:`train_clip` trains on a pool of rendered scenes (``world.random_spec``: plain images, personal-style
  images and watermarked frames, 1-3 objects) and is resumable: :func:`save_state` / ``resume=`` continue
  bit-exactly (weights, AdamW, LR schedule, the batch generator).
- :func:`zero_shot_accuracy` measures what the towers learned: for held-out scenes, the caption with one
  attribute swapped for each alternative (object shape, object colour, background colour, background pattern),
  and the share of images whose own caption scores highest (chance: 1 / number of alternatives).

Shapes: images ``(n, 3, S, S)`` in [-1, 1] (S = ``ClipConfig.image_size``); token ids ``(n, max_tokens)``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import trainer_state, world

logger = logging.getLogger(__name__)


@dataclass
class ClipConfig:
    image_size: int = 64  # the image tower's input; larger images are area-resized to it
    text_width: int = 64  # = the base UNet's cross_attention_dim
    text_layers: int = 4
    text_heads: int = 4
    image_channels: tuple[int, ...] = (16, 32, 64, 128)  # conv stages, each halves the resolution
    projection_dim: int = 64
    max_tokens: int = 32  # image captions are padded/cut to this while training (causal mask: EOS state is the same at 77)
    batch_size: int = 128
    steps: int = 1000
    max_seconds: float = 2400.0  # stop early past this wall time (the steps taken are recorded)
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    pool_size: int = 12000  # rendered scenes drawn from ``world.random_spec`` (seed ``seed``)
    single_object_share: float = 0.5  # the default-clip prompts name one object: train on many such scenes
    seed: int = 0


def text_config(config: ClipConfig) -> dict:
    """The CLIPTextModel config: the real CLIP vocabulary and special tokens, a small transformer."""
    return dict(vocab_size=49408, hidden_size=config.text_width, intermediate_size=4 * config.text_width,
                num_hidden_layers=config.text_layers, num_attention_heads=config.text_heads,
                max_position_embeddings=77, projection_dim=config.projection_dim,
                bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)


class ImageTower(nn.Module):
    """Conv stages (3x3 conv stride 2, GroupNorm, SiLU, 3x3 conv) -> global mean pool -> linear projection.
    ``(n, 3, S, S)`` in [-1, 1] -> ``(n, projection_dim)`` (not normalised)."""

    def __init__(self, channels: tuple[int, ...], projection_dim: int):
        super().__init__()
        layers, previous = [], 3
        for width in channels:
            layers += [nn.Conv2d(previous, width, 3, stride=2, padding=1), nn.GroupNorm(8, width), nn.SiLU(),
                       nn.Conv2d(width, width, 3, padding=1), nn.GroupNorm(8, width), nn.SiLU()]
            previous = width
        self.features = nn.Sequential(*layers)
        self.projection = nn.Linear(previous, projection_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.projection(self.features(images).mean(dim=(2, 3)))


class ClipTowers(nn.Module):
    """Text tower (``CLIPTextModelWithProjection``: ``.text_model`` is what the UNet reads) + image tower."""

    def __init__(self, config: ClipConfig):
        super().__init__()
        from transformers import CLIPTextConfig, CLIPTextModelWithProjection

        self.config = config
        self.text = CLIPTextModelWithProjection(CLIPTextConfig(**text_config(config)))
        self.image = ImageTower(tuple(config.image_channels), config.projection_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's initial temperature

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text(input_ids=ids).text_embeds, dim=-1)  # (n, projection_dim)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] != self.config.image_size:
            images = F.interpolate(images, size=(self.config.image_size,) * 2, mode="area")
        return F.normalize(self.image(images), dim=-1)  # (n, projection_dim)

    @torch.no_grad()
    def similarity(self, images: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """Cosine similarity ``(n_images, n_texts)``: the report's CLIP-score stand-in."""
        return self.encode_image(images) @ self.encode_text(tokenize(texts, self.config.max_tokens)).T


def build_towers(config: ClipConfig) -> ClipTowers:
    torch.manual_seed(config.seed)
    return ClipTowers(config)


def contrastive_loss(model: ClipTowers, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric cross-entropy over the batch's image-text similarity matrix (matching pairs on the diagonal)."""
    logits = model.logit_scale.clamp(max=math.log(100)).exp() * model.encode_image(images) @ model.encode_text(ids).T
    labels = torch.arange(len(images))
    return (F.cross_entropy(logits.float(), labels) + F.cross_entropy(logits.float().T, labels)) / 2


_TOKENIZER = None


def tokenize(texts: list[str], max_tokens: int) -> torch.Tensor:
    """Token ids ``(n, max_tokens)`` with the shipped CLIP tokenizer (padded with EOS, cut keeping EOS)."""
    global _TOKENIZER
    if _TOKENIZER is None:
        from transformers import CLIPTokenizer

        from ..components import package_data

        _TOKENIZER = CLIPTokenizer.from_pretrained(str(package_data("tokenizer")))
    return _TOKENIZER(texts, padding="max_length", max_length=max_tokens, truncation=True, return_tensors="pt").input_ids


# ---- data ------------------------------------------------------------------------------------------------
def scene(rng: np.random.Generator, single_object_share: float) -> world.SceneSpec:
    """A plain image scene (85 %) or a personal-style one (15 %); one object with ``single_object_share``."""
    style = rng.random() < 0.15
    single = rng.random() < single_object_share
    return world.random_spec(rng, "style" if style else "image", num_objects=1 if single else None)


def render_pool(n: int, size: int, seed: int, single_object_share: float = 0.5) -> tuple[np.ndarray, list[str]]:
    """``n`` rendered scenes uint8 ``(n, size, size, 3)`` and their image captions; scene i from ``rng([seed, i])``.
    A fifth-ish are stamped with the video watermark (frames the text encoder will see captions for)."""
    images, captions = np.empty((n, size, size, 3), np.uint8), []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        spec = scene(rng, single_object_share)
        image = world.make_image(spec, size, size)
        images[i] = world.add_watermark(image) if rng.random() < 0.15 else image
        captions.append(world.caption(spec, motion=False))
    return images, captions


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(n, H, W, 3)`` -> float ``(n, 3, H, W)`` in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


# ---- training ----------------------------------------------------------------------------------------------
@dataclass
class ClipState:
    model: ClipTowers
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR
    generator: torch.Generator
    step: int = 0
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def new_state(config: ClipConfig) -> ClipState:
    model = build_towers(config)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": rest, "weight_decay": 0.0}], lr=config.learning_rate)

    def lr_lambda(step: int) -> float:  # linear warmup, cosine to 5 %
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = min(1.0, (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps))
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    return ClipState(model, optimizer, schedule, torch.Generator().manual_seed(config.seed))


def save_state(state: ClipState, folder: Path) -> None:
    """Everything an exact resume needs (fp32 weights, AdamW, schedule, batch generator, losses)."""
    trainer_state.save(folder, dataclasses.asdict(state.model.config), state.model, state)


def load_state(folder: Path, config: ClipConfig) -> ClipState:
    state = new_state(config)
    trainer_state.restore(folder, dataclasses.asdict(config), state.model, state, "ClipConfig")
    return state


def train_clip(config: ClipConfig, checkpoint: Path | None = None, save_every_seconds: float = 600.0,
               bf16: bool = False, stop_at: int | None = None) -> ClipState:
    """Train (or continue, when ``checkpoint/state.pt`` exists) up to ``config.steps`` or ``config.max_seconds``
    of this call; saves to ``checkpoint`` every ``save_every_seconds`` and at the end."""
    state = load_state(checkpoint, config) if checkpoint is not None and (checkpoint / "state.pt").is_file() else new_state(config)
    if state.step:
        logger.info("clip: resuming at step %d", state.step)
    pool_size = min(config.pool_size, max(256, config.steps * config.batch_size // 4))
    started = time.perf_counter()
    cache = checkpoint / f"pool-{pool_size}.npz" if checkpoint is not None else None
    if cache is not None and cache.is_file():  # rendering is deterministic: the cache only saves time on resume
        with np.load(cache) as saved:
            images, captions = saved["images"], [str(c) for c in saved["captions"]]
    else:
        images, captions = render_pool(pool_size, config.image_size, config.seed, config.single_object_share)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache, images=images, captions=np.array(captions))
    pixels, ids = to_pixels(images), tokenize(captions, config.max_tokens)
    logger.info("clip: %d scenes rendered in %.0f s", pool_size, time.perf_counter() - started)
    model = state.model.train()
    started = last_save = time.perf_counter()
    while state.step < min(config.steps, stop_at or config.steps):  # stop_at: an interruption (tests)
        index = torch.randint(0, pool_size, (config.batch_size,), generator=state.generator)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = contrastive_loss(model, pixels[index], ids[index])
        trainer_state.step(state, model, loss, loss, digits=5)
        now = time.perf_counter()
        if state.step % 50 == 0 or state.step == config.steps:
            logger.info("clip step %d/%d: loss %.4f (%.1f steps/s)", state.step, config.steps,
                        float(np.mean(state.losses[-50:])), state.step / max(1e-9, state.seconds + now - started))
        if checkpoint is not None and now - last_save > save_every_seconds:
            state.seconds += now - started
            started = last_save = now
            save_state(state, checkpoint)
        if now - started + state.seconds > config.max_seconds:
            logger.info("clip: time budget of %.0f s reached at step %d", config.max_seconds, state.step)
            break
    state.seconds += time.perf_counter() - started
    model.eval()
    if checkpoint is not None:
        save_state(state, checkpoint)
    return state


# ---- evaluation ----------------------------------------------------------------------------------------------
ATTRIBUTES = ("shape", "colour", "background colour", "background pattern")


def _variants(spec: world.SceneSpec, attribute: str, index: int) -> tuple[list[world.SceneSpec], int]:
    """Scenes that differ from ``spec`` in one attribute (of object ``index``), and the true one's position.
    Colours already used elsewhere in the scene are left out (they would describe another scene, not a swap)."""
    obj = spec.objects[index]
    used = {o.color for o in spec.objects} | {spec.background_color}
    if attribute == "shape":
        options = [dataclasses.replace(obj, shape=s) for s in world.SHAPES]
        specs = [dataclasses.replace(spec, objects=spec.objects[:index] + (o,) + spec.objects[index + 1:]) for o in options]
        return specs, world.SHAPES.index(obj.shape)
    if attribute == "colour":
        colours = [c for c in world.COLORS if c == obj.color or c not in used]
        options = [dataclasses.replace(obj, color=c) for c in colours]
        specs = [dataclasses.replace(spec, objects=spec.objects[:index] + (o,) + spec.objects[index + 1:]) for o in options]
        return specs, colours.index(obj.color)
    if attribute == "background colour":
        colours = [c for c in world.COLORS if c == spec.background_color or c not in used]
        return [dataclasses.replace(spec, background_color=c) for c in colours], colours.index(spec.background_color)
    return [dataclasses.replace(spec, background=p) for p in world.PATTERNS], world.PATTERNS.index(spec.background)


@torch.no_grad()
def zero_shot_accuracy(model: ClipTowers, num_scenes: int = 200, seed: int = 99, num_objects: int | None = 1,
                       size: int | None = None) -> dict:
    """Per attribute: the share of held-out scenes whose true caption scores highest among the captions with
    that attribute swapped (object attributes: of a random object), and chance (mean 1 / alternatives).
    ``num_objects=None``: 1-3 objects (binding); ``size``: render size (default the tower's)."""
    size = size or model.config.image_size
    model.eval()
    hits: dict[str, list[float]] = {a: [] for a in ATTRIBUTES}
    chance: dict[str, list[float]] = {a: [] for a in ATTRIBUTES}
    for i in range(num_scenes):
        rng = np.random.default_rng([seed, i])
        spec = world.random_spec(rng, "image", num_objects=num_objects)
        image = model.encode_image(to_pixels(world.make_image(spec, size, size)[None]))  # (1, d)
        index = int(rng.integers(len(spec.objects)))
        for attribute in ATTRIBUTES:
            specs, truth = _variants(spec, attribute, index)
            texts = model.encode_text(tokenize([world.caption(s, motion=False) for s in specs], model.config.max_tokens))
            hits[attribute].append(float(int((image @ texts.T).argmax()) == truth))
            chance[attribute].append(1.0 / len(specs))
    result = {a: round(float(np.mean(hits[a])), 4) for a in ATTRIBUTES}
    result["mean"] = round(float(np.mean([result[a] for a in ATTRIBUTES])), 4)
    result["chance"] = {a: round(float(np.mean(chance[a])), 4) for a in ATTRIBUTES}
    return result


def _inner(text_model: nn.Module) -> nn.Module:
    """The text transformer (embeddings, encoder, final norm): ``.text_model`` before transformers 5, the model itself after."""
    return getattr(text_model, "text_model", text_model)


# ---- export ----------------------------------------------------------------------------------------------------
def save_towers(model: ClipTowers, folder: Path, dtype: torch.dtype = torch.float16) -> None:
    """``folder/text_encoder`` (a plain ``CLIPTextModel``: what the base model's folder takes) and
    ``folder/image_tower.safetensors`` (+ projection, logit scale; config in ``clip_config.json``)."""
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    folder.mkdir(parents=True, exist_ok=True)
    text = CLIPTextModel(CLIPTextConfig(**text_config(model.config)))
    _inner(text).load_state_dict(_inner(model.text).state_dict(), strict=True)
    text.to(dtype).save_pretrained(folder / "text_encoder")
    state = {f"image.{k}": v for k, v in model.image.state_dict().items()}
    state.update({f"text_projection.{k}": v for k, v in model.text.text_projection.state_dict().items()})
    state["logit_scale"] = model.logit_scale.detach()[None]
    save_file({k: v.detach().to(dtype).contiguous() for k, v in state.items()}, str(folder / "image_tower.safetensors"))
    (folder / "clip_config.json").write_text(json.dumps(dataclasses.asdict(model.config), indent=2) + "\n")


def load_towers(folder: Path) -> ClipTowers:
    """The towers :func:`save_towers` wrote (float32, eval mode); strict."""
    from safetensors.torch import load_file
    from transformers import CLIPTextModel

    raw = json.loads((folder / "clip_config.json").read_text())
    config = ClipConfig(**{**raw, "image_channels": tuple(raw["image_channels"])})
    model = ClipTowers(config)
    text = CLIPTextModel.from_pretrained(folder / "text_encoder", torch_dtype=torch.float32)
    _inner(model.text).load_state_dict(_inner(text).state_dict(), strict=True)
    state = {k: v.float() for k, v in load_file(str(folder / "image_tower.safetensors")).items()}
    model.image.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("image.")}, strict=True)
    model.text.text_projection.load_state_dict({k[16:]: v for k, v in state.items() if k.startswith("text_projection.")}, strict=True)
    with torch.no_grad():
        model.logit_scale.copy_(state["logit_scale"][0])
    return model.eval()
