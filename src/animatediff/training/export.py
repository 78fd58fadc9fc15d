"""Checkpoints that never lose work: atomic saves of the trainable weights (official key layout) plus
the full training state for an exact resume.

Layout of ``output_dir``::

    checkpoints/step-000500/            one directory per save, renamed into place only when complete
        motion_module.safetensors       (or motion_lora / domain_adapter .safetensors, or unet/ for image)
        training_state.pt               optimiser, LR schedule, step, RNG states, raw LoRA weights
        run.json                        mode + model identity, checked by --resume
    latest                              a text file naming the newest complete checkpoint
    <mode>-final.safetensors            a copy of the last export (unet/ folder for image mode)

The exported files carry no ``module.`` prefix (we export from the module objects, never from the DDP
wrapper) and store the config as safetensors metadata.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..errors import UserInputError

logger = logging.getLogger(__name__)

WEIGHT_FILES = {
    "motion-module": "motion_module.safetensors",
    "motion-lora": "motion_lora.safetensors",
    "domain-adapter": "domain_adapter.safetensors",
    "image": "unet",  # a diffusers UNet folder (config.json + diffusion_pytorch_model.safetensors)
}


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(
    output_dir: Path, step: int, mode: str, weights: dict[str, torch.Tensor] | None, unet, metadata: dict[str, str],
    training_state: dict, run_info: dict, keep: int | None,
) -> Path:
    """Write ``checkpoints/step-{step}`` via a temporary directory and one rename; update ``latest``."""
    root = Path(output_dir) / "checkpoints"
    final = root / f"step-{step:06d}"
    tmp = root / f".step-{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if mode == "image":
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
    else:
        save_file(weights, str(tmp / WEIGHT_FILES[mode]), metadata=metadata)
    torch.save(training_state, tmp / "training_state.pt")
    (tmp / "run.json").write_text(json.dumps(run_info, indent=2))
    if final.exists():  # a save at the same step (e.g. signal right after a periodic save)
        shutil.rmtree(final)
    os.replace(tmp, final)
    write_text_atomic(Path(output_dir) / "latest", final.name)
    _prune(root, keep)
    logger.info("saved checkpoint %s", final)
    return final


def _prune(root: Path, keep: int | None) -> None:
    if not keep:
        return
    steps = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in steps[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def export_final(output_dir: Path, checkpoint: Path, mode: str) -> Path:
    """Copy the newest weights next to the checkpoints as ``<mode>-final...`` (atomically)."""
    source = checkpoint / WEIGHT_FILES[mode]
    if mode == "image":
        target = Path(output_dir) / "unet-final"
        tmp = Path(output_dir) / ".unet-final.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source, tmp)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
        return target
    target = Path(output_dir) / f"{mode}-final.safetensors"
    tmp = target.with_name(target.name + ".tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)
    return target


def find_checkpoint(resume: str | Path) -> Path:
    """``--resume`` accepts an output directory (its ``latest``) or one ``step-N`` checkpoint directory."""
    path = Path(resume)
    if (path / "training_state.pt").is_file():
        return path
    latest = path / "latest"
    if latest.is_file():
        checkpoint = path / "checkpoints" / latest.read_text().strip()
        if (checkpoint / "training_state.pt").is_file():
            return checkpoint
    raise UserInputError(f"--resume {path}: no checkpoint there (expected a training output dir or a checkpoints/step-N dir)")


def check_resumable(checkpoint: Path, run_info: dict) -> None:
    """Refuse a checkpoint from another mode or model (architecture) than this run."""
    saved = json.loads((checkpoint / "run.json").read_text())
    for key in ("mode", "base_model", "model_signature"):
        if saved.get(key) != run_info.get(key):
            raise UserInputError(f"--resume {checkpoint}: {key} is {saved.get(key)!r} there, {run_info.get(key)!r} in this run")
