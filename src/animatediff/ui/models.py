"""The model pickers: what ``--models-dir`` and the bundled demo family hold, and one loaded model at a time.

Every file is described by ``weights.detect.describe_file`` (what ``animatediff inspect`` prints): its kind,
version and base (SD1.5/SDXL) decide which picker lists it and with which base models it may be combined.
Pickers send labels; ``Catalog.path`` maps a label back to the file (``safety.pick``), so a client can never
name a path. ``ModelCache`` keeps the last loaded ``Animator`` and a lock: a job holds the lock from
``set_loras`` to the saved file, so concurrent requests never see each other's LoRAs.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .. import bundled
from ..errors import UserInputError
from ..presets import CAMERA_MOVES
from ..weights.detect import FileDescription, describe_file
from ..weights.files import read_keys
from .safety import pick

logger = logging.getLogger(__name__)

# picker (a config field) -> the kinds of file it lists
ROLES = {
    "model": ("diffusers-folder", "sd15-checkpoint", "sdxl-checkpoint"),
    "motion_module": ("motion-module",),
    "loras": ("lora",),
    "motion_loras": ("motion-lora",),
    "adapter": ("domain-adapter", "processor-lora"),
    "controlnets": ("controlnet",),
    "sparsectrl": ("sparsectrl",),
    "ip_adapter": ("ip-adapter",),
    "ip_adapter_image_encoder": ("clip-image-encoder",),
}
WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
_BASE_NAMES = {"sd15": "SD1.5", "sdxl": "SDXL"}
_STOCK_CHANNELS = {"sd15-checkpoint": (320, 640, 1280, 1280), "sdxl-checkpoint": (320, 640, 1280)}


@dataclass
class Entry:
    """One pickable file: ``label`` is what the client sees and sends back."""

    label: str
    path: str
    kind: str
    version: str | None
    base: str  # sd15 | sdxl | "" (unknown)
    channels: tuple[int, ...] | None = None  # UNet block widths, where known: tells the demo family from real SD1.5
    bundled: bool = False

    def fits(self, model: "Entry | None") -> str | None:
        """Why this add-on cannot go with base ``model`` (one line), or None when it can."""
        if model is None:
            return None
        if self.base and model.base and self.base != model.base:
            return f"is for {_BASE_NAMES.get(self.base, self.base)}; {model.label} is {_BASE_NAMES.get(model.base, model.base)}"
        if self.channels and model.channels and tuple(self.channels) != tuple(model.channels):
            return f"is built for UNet channels {list(self.channels)}; {model.label} has {list(model.channels)}"
        return None


def _describe(path: Path, label: str, is_bundled: bool = False) -> Entry | None:
    try:
        found = describe_file(path)
    except (UserInputError, OSError, ValueError, RuntimeError) as e:  # not a model: not listed
        found = _ip_adapter_part(path)
        if found is None:
            logger.info("models: skipping %s (%s)", path, str(e).splitlines()[0])
            return None
    if found.kind == "unknown":
        found = _ip_adapter_part(path) or found
    kind = found.kind
    if kind == "sparsectrl" and not found.details.get("motion_modules"):
        kind = "controlnet"  # a ControlNet has the SparseCtrl condition encoder but no motion modules
    channels = found.details.get("block_out_channels") or _STOCK_CHANNELS.get(kind)
    if kind == "sparsectrl":  # its residuals add to the base's down blocks: the widths must match
        channels = _sparsectrl_channels(path) or _STOCK_CHANNELS.get(f"{found.base}-checkpoint")
    if kind == "diffusers-folder" and (path / "unet" / "config.json").is_file():
        channels = json.loads((path / "unet" / "config.json").read_text()).get("block_out_channels")
    return Entry(label, str(path), kind, found.version, found.base, tuple(channels) if channels else None, is_bundled)


def _ip_adapter_part(path: Path) -> FileDescription | None:
    """An IP-Adapter file (kind base/plus/full, base from its cross-attention width) or a CLIP image encoder
    folder (``CLIPVisionModelWithProjection``), which ``inspect`` does not describe; None for anything else."""
    if path.is_dir():
        config = path / "config.json"
        try:
            found = json.loads(config.read_text()) if config.is_file() else {}
        except (OSError, ValueError):
            return None
        if "CLIPVisionModelWithProjection" not in (found.get("architectures") or []):
            return None
        return FileDescription("clip-image-encoder", f"projection {found.get('projection_dim', '?')}", 0, "", {})
    from ..generation import ip_adapter

    try:
        state = ip_adapter.read_adapter(str(path))  # strict about the two groups; pickles with weights_only
        kind = ip_adapter.kind_of(state["image_proj"], str(path))
        widths = {tuple(v.shape)[-1] for k, v in state["ip_adapter"].items() if k.endswith("to_k_ip.weight")}
    except UserInputError:
        return None
    return FileDescription("ip-adapter", kind, 0, "sdxl" if 2048 in widths else "sd15", {})  # as SparseCtrl


def _sparsectrl_channels(path: Path) -> tuple[int, ...] | None:
    """A ``.safetensors`` SparseCtrl's block widths from its header (``.ckpt`` files are not read twice)."""
    if path.suffix.lower() != ".safetensors":
        return None
    keys = read_keys(path)
    widths, i = [], 0
    while (shape := keys.get(f"down_blocks.{i}.resnets.0.conv2.weight")) is not None:
        widths.append(shape[0])
        i += 1
    return tuple(widths) or None


def _candidates(root: Path):
    """Weight files and diffusers folders under ``root`` (a folder with unet/ or a model config is one entry)."""
    for folder, dirs, files in os.walk(root, followlinks=False):
        here = Path(folder)
        if here != root and any((here / name).exists() for name in ("unet", "model_index.json", "config.json")):
            dirs.clear()
            yield here
            continue
        dirs.sort()
        for name in sorted(files):
            if name.lower().endswith(WEIGHT_SUFFIXES):
                yield here / name


class Catalog:
    """Everything the pickers list, by role; ``refresh`` rescans ``models_dir``."""

    def __init__(self, models_dir: str | os.PathLike | None = None, include_bundled: bool = True):
        self.models_dir = Path(models_dir).resolve() if models_dir else None
        self.include_bundled = include_bundled and bundled.is_available()
        self.entries: dict[str, dict[str, Entry]] = {}
        self.refresh()

    def refresh(self) -> None:
        entries: dict[str, dict[str, Entry]] = {role: {} for role in ROLES}
        for entry in self._bundled() + self._scanned():
            for role, kinds in ROLES.items():
                if entry.kind in kinds:
                    entries[role].setdefault(entry.label, entry)
        self.entries = entries

    def _bundled(self) -> list[Entry]:
        if not self.include_bundled:
            return []
        root = bundled.demo_root()
        files = [(f"{name} (bundled)", root / name) for name in bundled.MODELS]
        files += [("demo (bundled)", root / "motion_module.safetensors"), ("personal-lora (bundled)", root / "personal-lora.safetensors"),
                  ("domain-adapter (bundled)", root / "domain_adapter.safetensors")]
        files += [(f"{move} (bundled)", root / "motion_loras" / f"{move}.safetensors") for move in CAMERA_MOVES]
        files += [(f"{name} (bundled)", root / "sparsectrl_rgb.safetensors") for name in bundled.SPARSECTRLS]  # family v2
        return [e for label, path in files if path.exists() and (e := _describe(path, label, True))]

    def _scanned(self) -> list[Entry]:
        if self.models_dir is None or not self.models_dir.is_dir():
            return []
        found = []
        for path in _candidates(self.models_dir):
            if path.is_symlink() and self.models_dir not in path.resolve().parents:
                logger.warning("models: skipping %s (a link out of %s)", path, self.models_dir)
                continue
            label = str(path.relative_to(self.models_dir))
            entry = _describe(path, label)
            if entry is not None:
                entry.label = f"{label} [{entry.kind}{' ' + entry.version if entry.version else ''}, " \
                              f"{_BASE_NAMES.get(entry.base, entry.base or '?')}]"
                found.append(entry)
        return found

    def labels(self, role: str, model_label: str | None = None) -> list[str]:
        """The labels of ``role``; with a base model, only those that fit it (others would be refused)."""
        model = self.entries["model"].get(model_label) if model_label else None
        return [label for label, e in self.entries[role].items() if e.fits(model) is None]

    def default(self, role: str) -> str | None:
        """The bundled entry (the family the page opens with), else the first listed."""
        labels = list(self.entries[role])
        preferred = {"model": "base (bundled)", "motion_module": "demo (bundled)"}.get(role)
        return preferred if preferred in labels else (labels[0] if labels and role in ("model", "motion_module") else None)

    def entry(self, role: str, label: str | None) -> Entry | None:
        """The entry a client picked (``safety.pick``: unlisted values and paths are refused and logged)."""
        path = pick(label, {k: k for k in self.entries[role]}, role)
        return None if path is None else self.entries[role][path]

    def resolve(self, role: str, label: str | None, model: Entry | None) -> str | None:
        """The file of a picked add-on, refused with the one-line reason when it does not fit ``model``."""
        entry = self.entry(role, label)
        if entry is None:
            return None
        why = entry.fits(model)
        if why:
            raise UserInputError(why, field=role, value=label)
        return entry.path


class ModelCache:
    """The loaded ``Animator`` (one at a time: a new base/motion pair replaces it) behind one lock."""

    def __init__(self, device: str = "cpu", dtype=None):
        self.device, self.dtype = device, dtype
        self.lock = threading.Lock()
        self._key = None
        self._animator = None

    @contextmanager
    def use(self, model: str, motion_module: str | None, is_bundled: bool = False):
        """Hold the lock while the caller sets LoRAs, generates and saves with the returned ``Animator``."""
        from ..api import Animator
        import torch

        with self.lock:
            key = (model, motion_module)
            if key != self._key:
                self._animator = self._key = None  # free the old model before loading the next
                logger.info("loading %s + %s", model, motion_module or "no motion module")
                kwargs = {"dtype": self.dtype} if self.dtype is not None else {}
                self._animator = Animator.load(model, motion_module, device=self.device, **kwargs)
                if is_bundled:  # as bundled.resolve does: its defaults, and one thread for its tiny ops
                    self._animator.defaults = bundled.generation_defaults()
                    if "OMP_NUM_THREADS" not in os.environ:
                        torch.set_num_threads(1)
                self._key = key
            yield self._animator
