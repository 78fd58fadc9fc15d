"""The training configuration: one flat, typed dataclass and its three layers of precedence.

``defaults (this file) < recipe YAML < command-line overrides``. A recipe or override naming a key that
is not a field below is an error, never silently ignored (the official repository's YAMLs overwrite each
other and the CLI; we have one layer order and a closed key set).

Official numerics (official-animatediff.md §5): linear betas 0.00085 -> 0.012 over 1000 steps, AdamW
(0.9, 0.999, eps 1e-8, weight decay 1e-2), grad-norm clip 1.0, constant LR, 10% empty captions, 16 frames
at stride 4, 256 px.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from ..components import package_data
from ..errors import UserInputError
from ..presets import CAMERA_MOVES, MOTION_PRESETS

MODES = ("image", "domain-adapter", "motion-module", "motion-lora", "sparsectrl")
LOSS_WEIGHTINGS = ("none", "min-snr", "truncated-snr")


@dataclass
class TrainConfig:
    mode: str = "motion-module"
    # ---- models -----------------------------------------------------------------------------------
    base_model: str | None = None  # diffusers folder or single .safetensors/.ckpt file (SD1.5)
    motion_module: str | None = None  # motion-module: optional init (finetune); motion-lora: required
    motion_preset: str = "v3"  # architecture of a freshly initialised motion module set (conv-ablation: the paper's §5.3 ablation)
    domain_adapter: str | None = None  # motion-module / motion-lora: merged into the frozen UNet at scale 1
    lora_rank: int = 64  # motion-lora (official ~64) and domain-adapter (official ~128)
    lora_alpha: float | None = None  # LoRA scale = alpha / rank; None -> scale 1 (the official merge convention)
    sparsectrl_flavour: str = "rgb"  # sparsectrl mode: rgb (VAE latents) | scribble (edges of the frames)
    sparsectrl_max_keyframes: int = 3  # sparsectrl mode: each clip is conditioned at 1 .. this many random frames
    # ---- data ---------------------------------------------------------------------------------------
    video_folder: str | None = None  # WebVid layout: {video_folder}/{videoid}.mp4
    caption_file: str | None = None  # CSV (videoid,name | path,caption) or JSONL (path, caption)
    image_folder: str | None = None  # image mode / domain adapter: images (+ optional same-name .txt captions)
    num_frames: int = 16
    stride: int = 4
    size: int = 256
    hflip: bool = False
    caption_dropout: float = 0.1  # fraction of empty captions (classifier-free guidance)
    camera_move: str | None = None  # motion-lora augmentation: one of CAMERA_MOVES
    camera_move_strength: float = 0.25  # training.augment.camera_move's strength, in [0, 1)
    num_workers: int = 2
    cache_latents: bool = False  # encode every frame with the frozen VAE once, at start (latent_cache.py)
    # ---- optimisation -------------------------------------------------------------------------------
    max_train_steps: int = 100_000
    batch_size: int = 4  # per process
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    lr_scheduler: str = "constant"  # any diffusers.optimization scheduler name
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    seed: int = 42
    mixed_precision: str = "no"  # no | bf16 | fp16 (Accelerate)
    gradient_checkpointing: bool = False
    # ---- noise schedule (official: "linear", not SD's "scaled_linear") -----------------------------------
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "linear"
    loss_weighting: str = "none"  # none (official Eq. 7) | min-snr | truncated-snr: per-timestep loss weights (loop.loss_weights)
    snr_gamma: float = 5.0  # min-snr's gamma; truncated-snr's cap on the weight
    # ---- outputs ------------------------------------------------------------------------------------
    output_dir: str = "outputs/train"  # new, empty, or an earlier training output (export.check_output_dir)
    overwrite: bool = False  # also write into another non-empty folder (only training's own file names are replaced)
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = 3  # keep the newest N step checkpoints (None: keep all)
    export_pos_encoding: bool = True  # write pos_encoder.pe buffers so release-era official loaders accept the file
    log_every: int = 1
    validation_steps: int = 0  # 0: no validation
    validation_prompts: list[str] = field(default_factory=lambda: ["a dog running on the beach", "fireworks over a city at night"])
    validation_seeds: list[int] = field(default_factory=lambda: [42])
    validation_num_frames: int = 16
    validation_size: int = 256
    validation_inference_steps: int = 25
    validation_guidance_scale: float = 8.0

    def validate(self) -> None:
        """Check every value (the one place TrainConfig is validated). Closed sets of names are matched
        case-insensitively and stored lower-case (``V2`` -> ``v2``). Raises ``UserInputError`` naming the field."""

        def bad(key: str, why: str, show_value: bool = True):
            if show_value:
                raise UserInputError(why, field=key, value=getattr(self, key))
            raise UserInputError(why, field=key)

        if self.mode not in MODES:
            bad("mode", f"not one of {', '.join(MODES)}")
        if str(self.motion_preset).lower() not in MOTION_PRESETS:
            bad("motion_preset", f"unknown motion module preset; choose one of {', '.join(MOTION_PRESETS)}")
        self.motion_preset = self.motion_preset.lower()
        if self.mode == "motion-lora" and not self.motion_module:
            bad("motion_module", "motion-lora trains LoRA on an existing motion module; give its file", show_value=False)
        if self.mode == "sparsectrl" and not self.motion_module:  # training/sparsectrl.py
            bad("motion_module", "sparsectrl trains an encoder for an existing motion module; give its file", show_value=False)
        if self.sparsectrl_flavour not in ("rgb", "scribble"):
            bad("sparsectrl_flavour", "not rgb or scribble")
        if self.sparsectrl_max_keyframes < 1:
            bad("sparsectrl_max_keyframes", "must be >= 1")
        if self.camera_move is not None and self.camera_move not in CAMERA_MOVES:
            bad("camera_move", f"not one of {', '.join(CAMERA_MOVES)}")
        if self.cache_latents and (self.hflip or self.camera_move is not None or self.mode == "sparsectrl"):
            why = "hflip" if self.hflip else "camera_move" if self.camera_move is not None else "sparsectrl mode"
            bad("cache_latents", f"cannot be used with {why} (it needs new pixels at every step); turn one off")
        if not 1 <= self.lora_rank <= 1024:
            bad("lora_rank", "outside 1..1024")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            bad("mixed_precision", "not no, bf16 or fp16")
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            bad("loss_weighting", f"not one of {', '.join(LOSS_WEIGHTINGS)}")
        if self.snr_gamma <= 0:
            bad("snr_gamma", "must be > 0")
        if not 0.0 <= self.caption_dropout <= 1.0:
            bad("caption_dropout", "outside [0, 1]")
        for key in ("num_frames", "stride", "size", "batch_size", "max_train_steps", "gradient_accumulation_steps", "checkpointing_steps"):
            if getattr(self, key) < 1:
                bad(key, "must be >= 1")
        if self.image_folder is None and self.caption_file is None and self.video_folder is None:
            bad("video_folder", "no training data given (video_folder/caption_file, or image_folder)", show_value=False)

    @property
    def lora_scale(self) -> float:
        return 1.0 if self.lora_alpha is None else self.lora_alpha / self.lora_rank

    @property
    def frames_per_sample(self) -> int:
        """Image objective (image, domain-adapter) trains on single frames; the others on clips."""
        return 1 if self.mode in ("image", "domain-adapter") else self.num_frames

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_FIELD_TYPES = typing.get_type_hints(TrainConfig)


def coerce(key: str, value, source: str):
    """Check and convert one recipe/CLI value to the field's type (YAML reads ``1e-4`` as a string)."""
    hint = _FIELD_TYPES[key]
    allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None:
        if type(None) in allowed:
            return None
        raise UserInputError(f"{source}: {key} may not be empty")
    base = typing.get_origin(hint) or hint
    for kind in allowed:
        origin = typing.get_origin(kind) or kind
        if origin is type(None):
            continue
        if origin is list:
            if isinstance(value, list):
                return value
            continue
        if origin is bool:
            if isinstance(value, bool):
                return value
            continue
        if origin is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
            try:
                return float(value)
            except ValueError:
                continue
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if origin is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise UserInputError(f"{source}: {key}={value!r} is not a valid {getattr(base, '__name__', hint)}")


def shipped_recipes() -> list[str]:
    return sorted(p.stem for p in package_data("recipes").glob("*.yaml"))


def resolve_recipe(name_or_path: str) -> Path:
    """A recipe file path, or the name of a shipped recipe (``tiny-motion-module``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = package_data("recipes", f"{name_or_path.removesuffix('.yaml')}.yaml")
    if shipped.is_file():
        return shipped
    raise UserInputError(f"--config: {name_or_path} is neither a file nor a shipped recipe ({', '.join(shipped_recipes())})")


def load_config(mode: str, recipe: str | None = None, overrides: dict | None = None) -> TrainConfig:
    """defaults < recipe < overrides; unknown keys and mismatched modes are errors."""
    values: dict = {"mode": mode}
    names = {f.name for f in fields(TrainConfig)}
    if recipe is not None:
        path = resolve_recipe(recipe)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise UserInputError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise UserInputError(f"{path}: a recipe must be a mapping of key: value")
        unknown = sorted(set(data) - names)
        if unknown:
            raise UserInputError(f"{path}: unknown key(s) {', '.join(unknown)}")
        if data.get("mode", mode) != mode:
            raise UserInputError(f"{path}: recipe is for mode {data['mode']!r}, not {mode!r}")
        values.update({k: coerce(k, v, str(path)) for k, v in data.items()})
    for key, value in (overrides or {}).items():
        if key not in names:
            raise UserInputError(f"--{key}: unknown option")
        values[key] = coerce(key, value, f"--{key}")
    config = TrainConfig(**values)
    try:
        config.validate()
    except UserInputError as e:
        if recipe is not None and e.field in data and e.field not in (overrides or {}):
            raise UserInputError(e.render(f"{path}: {e.field}")) from None  # the recipe's value: name the file
        raise
    return config
