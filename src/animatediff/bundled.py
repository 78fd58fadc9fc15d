"""Bundled names -> files of the demo family shipped in ``animatediff/data/demo``, and its generation defaults.

Layout of the bundle (written by ``python -m animatediff.demo.build``)::

    demo.json                      training settings, steps, times, losses, sizes; generation defaults
    base/                          diffusers folder: unet, vae, text_encoder, tokenizer, scheduler, model_index.json
    personal/                      the full finetune on the personal style set (DreamBooth analog), same layout
    personal-lora.safetensors      kohya LoRA on the personal style set
    domain_adapter.safetensors     official v3 adapter layout (processor LoRA on spatial attention)
    motion_module.safetensors      official v3 key layout
    motion_loras/<Move>.safetensors  the eight camera MotionLoRAs (official processor layout)
    sparsectrl_rgb.safetensors     optional (v2 has it): a SparseCtrl RGB encoder, official keys, recorded in
                                   demo.json's "sparsectrl"; ``generate --image`` with the bundled family uses it

A name is only looked up in the bundle when no file or folder of that name exists, so explicit paths always
win (a local folder called ``personal`` is still loaded as that folder).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from .components import package_data
from .errors import UserInputError
from .presets import CAMERA_MOVES

MODELS = ("base", "personal")
LORAS = ("personal-lora",)
ADAPTERS = ("domain-adapter",)
MOTION_MODULES = ("demo",)
SPARSECTRLS = ("sparsectrl-rgb",)
NO_SPARSECTRL = "none"  # --sparsectrl none: image-to-video by the init-latent blend even where the family has an encoder
# Settings that only the init-latent blend reads: given explicitly, they ask for the blend, not the bundled encoder.
BLEND_FIELDS = ("image_strength", "image_falloff", "strength")


def demo_root() -> Path:
    """The bundle folder; ``ANIMATEDIFF_DEMO_DIR`` points elsewhere (e.g. a freshly rebuilt bundle)."""
    return Path(os.environ.get("ANIMATEDIFF_DEMO_DIR") or package_data("demo"))


def is_available() -> bool:
    """True when the bundle is installed (base model, motion module and metadata)."""
    root = demo_root()
    return (root / "demo.json").is_file() and (root / "base" / "unet").is_dir() and (root / "motion_module.safetensors").is_file()


def metadata() -> dict:
    return _metadata(demo_root() / "demo.json")


@lru_cache(maxsize=4)
def _metadata(path: Path) -> dict:
    if not path.is_file():
        raise UserInputError(f"{path}: the bundled demo model is not installed; run `make demo-model` or pass --model")
    return json.loads(path.read_text())


def generation_defaults() -> dict:
    """GenerationConfig fields the bundled family is made for (family v2: its native 128x128, 16 frames, few DDIM steps)."""
    return dict(metadata()["generation_defaults"])


def _bundled(field: str, name: str, relative: str) -> str:
    path = demo_root() / relative
    if not path.exists():
        raise UserInputError(f"bundled file {path} is missing; run `make demo-model`", field=field, value=name)
    return str(path)


def _resolve(field: str, names: tuple[str, ...], relative: str, name: str) -> str:
    """A bundled ``name`` -> its file (``relative`` may use ``{name}``); an existing path or unknown name is kept.
    ``field``: the config field the name came from, for errors."""
    if Path(name).expanduser().exists() or name not in names:
        return name
    return _bundled(field, name, relative.format(name=name))


def model_path(name: str) -> str:
    """``base`` / ``personal`` -> the bundled diffusers folder; anything else is returned unchanged."""
    return _resolve("model", MODELS, "{name}", name)


def motion_module_path(name: str) -> str:
    return _resolve("motion_module", MOTION_MODULES, "motion_module.safetensors", name)


def lora_path(name: str) -> str:
    return _resolve("loras", LORAS, "{name}.safetensors", name)


def adapter_path(name: str) -> str:
    return _resolve("adapter", ADAPTERS, "domain_adapter.safetensors", name)


def motion_lora_path(name: str) -> str:
    return _resolve("motion_loras", CAMERA_MOVES, "motion_loras/{name}.safetensors", name)


def sparsectrl_path(name: str) -> str:
    """``sparsectrl-rgb`` -> the bundled SparseCtrl encoder; anything else is returned unchanged."""
    if name in SPARSECTRLS and not Path(name).expanduser().exists() and not (demo_root() / "sparsectrl_rgb.safetensors").is_file():
        raise UserInputError("the bundled family has no SparseCtrl encoder (family v2's package-v2 stage writes "
                             "sparsectrl_rgb.safetensors)", field="sparsectrl", value=name)
    return _resolve("sparsectrl", SPARSECTRLS, "sparsectrl_rgb.safetensors", name)


def family_sparsectrl() -> str | None:
    """The bundled family's SparseCtrl encoder file when its ``demo.json`` records one that is there; else None
    (the v1 family: image-to-video keeps the init-latent blend)."""
    entry = metadata().get("sparsectrl")
    path = demo_root() / entry["file"] if entry else None
    return str(path) if path is not None and path.is_file() else None


def image_to_video_settings(given: dict, encoder: str | None) -> dict:
    """GenerationConfig fields ``given`` explicitly, with ``sparsectrl`` = the family's ``encoder`` added when they
    animate an ``image`` and name no encoder (``sparsectrl``, even None) and none of the blend's settings
    (:data:`BLEND_FIELDS`); otherwise ``given`` unchanged. The image then is the RGB keyframe at frame 0."""
    if encoder is None or given.get("image") is None or "sparsectrl" in given or any(given.get(f) is not None for f in BLEND_FIELDS):
        return given
    return {**given, "sparsectrl": encoder}


NAMES = (*MODELS, *MOTION_MODULES, *LORAS, *ADAPTERS, *CAMERA_MOVES, *SPARSECTRLS)  # every name a generate flag takes as bundled


def bundled_file(name: str) -> str:
    """Any bundled name (``base``, ``demo``, ``personal-lora``, ``domain-adapter``, ``ZoomIn`` ...) -> its file or
    folder, resolved by the same function as the ``generate`` flag that takes it; an existing path or an unknown
    name is returned unchanged (``animatediff inspect``). The names of the kinds do not overlap."""
    for resolve_kind in (model_path, motion_module_path, lora_path, adapter_path, motion_lora_path, sparsectrl_path):
        found = resolve_kind(name)
        if found != name:
            return found
    return name


def is_bundled_model(model: str | None) -> bool:
    """No model, or a bundled model name that is not also an existing path: the bundled family (with its motion
    module unless another is given)."""
    return model is None or (model in MODELS and not Path(model).expanduser().exists())


@dataclass
class Resolved:
    """What ``animatediff generate`` should load, after bundled names are replaced by files."""

    model: str
    motion_module: str | None
    loras: list[tuple[str, float]] = field(default_factory=list)
    motion_loras: list[tuple[str, float]] = field(default_factory=list)
    adapter: tuple[str, float] | None = None
    defaults: dict = field(default_factory=dict)  # GenerationConfig fields; flags given explicitly override them
    sparsectrl: str | None = None  # the family's SparseCtrl encoder, for image-to-video (image_to_video_settings)


def resolve(model: str | None, motion_module: str | None, loras=(), motion_loras=(), adapter=None) -> Resolved:
    """Resolve the generate options. No ``model`` (or a bundled model name) means the bundled family: its
    motion module unless one is given, and its demo.json defaults (128x128, 16 frames). Paths pass through unchanged."""
    bundled_model = is_bundled_model(model)
    if model is None and not is_available():
        raise UserInputError("required (the bundled demo model is not installed; run `make demo-model`)", field="model")
    resolved = Resolved(
        model=model_path(model) if model else _bundled("model", "base", "base"),
        motion_module=motion_module_path(motion_module) if motion_module else None,
    )
    resolved.loras, resolved.motion_loras, resolved.adapter = resolve_addons(loras, motion_loras, adapter)
    if bundled_model:
        resolved.motion_module = resolved.motion_module or _bundled("motion_module", "demo", "motion_module.safetensors")
        resolved.defaults = generation_defaults()
        resolved.sparsectrl = family_sparsectrl()
        _one_thread()
    return resolved


def resolve_addons(loras=(), motion_loras=(), adapter=None) -> tuple[list, list, tuple | None]:
    """Bundled names among ``(name_or_path, scale)`` LoRAs, MotionLoRAs and the adapter -> files."""
    return ([(lora_path(p), s) for p, s in loras], [(motion_lora_path(p), s) for p, s in motion_loras],
            (adapter_path(adapter[0]), adapter[1]) if adapter else None)


def _one_thread() -> None:
    """The bundled model's ops are tiny (8x8 latents, 32-96 channels): a second intra-op thread gains nothing,
    and on a busy machine every op then waits for both threads to get a core (measured ~10x slower on a shared
    2-core box). An explicit OMP_NUM_THREADS is respected."""
    if "OMP_NUM_THREADS" not in os.environ:
        import torch

        torch.set_num_threads(1)


__all__ = ["MODELS", "LORAS", "ADAPTERS", "CAMERA_MOVES", "SPARSECTRLS", "NAMES", "sparsectrl_path", "family_sparsectrl",
           "image_to_video_settings", "bundled_file", "Resolved", "resolve", "resolve_addons", "demo_root", "is_available",
           "metadata", "generation_defaults", "model_path", "motion_module_path", "lora_path", "adapter_path",
           "motion_lora_path"]
