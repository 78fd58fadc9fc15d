"""Generation recipes: the official repository's prompt-config YAML (``configs/prompts/*.yaml``), read as-is.

A file is a list of jobs (the current format) or a mapping of named jobs (the July 2023 format, where
``motion_module`` may be a list). Each job becomes one ``GenerateJob`` per (motion module, prompt).

Precedence, one documented order: built-in defaults < recipe file < command-line flags given explicitly.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UserInputError

logger = logging.getLogger(__name__)

# Keys scripts/animate.py reads; anything else in a job is reported (not silently ignored).
OFFICIAL_KEYS = {
    "inference_config", "motion_module", "motion_module_lora_configs", "adapter_lora_path", "adapter_lora_scale",
    "dreambooth_path", "lora_model_path", "lora_alpha", "controlnet_path", "controlnet_config", "controlnet_images",
    "controlnet_image_indexs", "normalize_condition_images", "seed", "steps", "guidance_scale", "prompt", "n_prompt",
    "W", "H", "L",
    # July-2023 format extras
    "base", "path", "domain_lora_scale",
}


@dataclass
class GenerateJob:
    """Everything one clip needs: which files, which LoRAs, which settings, where to write it."""

    model: str | None  # None: the bundled demo family
    motion_module: str | None
    prompt: str
    negative_prompt: str = ""
    loras: list[tuple[str, float]] = field(default_factory=list)
    motion_loras: list[tuple[str, float]] = field(default_factory=list)
    adapter: tuple[str, float] | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # GenerationConfig fields
    out: Path | None = None
    where: str = ""  # "job ToonYou" for a job from a prompt YAML
    keys: dict[str, str] = field(default_factory=dict)  # field -> the YAML key it came from ("num_frames" -> "L")


def _resolve(path: str, recipe_dir: Path) -> str:
    """Official paths are relative to the repository root (the working directory); fall back to the recipe's folder."""
    if not path or Path(path).exists():
        return path
    candidate = recipe_dir / path
    return str(candidate) if candidate.exists() else path


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def slug(text: str, words: int = 10) -> str:
    """First words of a prompt as a file name, like the official ``<idx>-<prompt>.gif``."""
    cleaned = re.sub(r"[^\w\s-]", "", text).split()[:words]
    return "-".join(cleaned)[:120] or "animation"


def load_official_recipe(path: str | Path, model: str | None, overrides: dict[str, Any] | None = None) -> list[GenerateJob]:
    """Read an official prompt-config YAML into jobs. ``model`` is the base model for jobs whose
    ``dreambooth_path`` is empty (``None``: the bundled demo family); ``overrides`` are settings given explicitly
    on the command line."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserInputError(f"--config {path}: file not found") from None
    except yaml.YAMLError as e:
        raise UserInputError(f"--config {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if isinstance(raw, dict):
        entries = list(raw.values())
    elif isinstance(raw, list):
        entries = raw
    else:
        raise UserInputError(f"--config {path}: expected a list of jobs, got {type(raw).__name__}")
    overrides = dict(overrides or {})
    jobs: list[GenerateJob] = []
    for index, entry in enumerate(entries):
        where = f"--config {path}, job {index}"
        if not isinstance(entry, dict):
            raise UserInputError(f"{where}: expected a mapping of settings")
        unknown = set(entry) - OFFICIAL_KEYS
        if unknown:
            raise UserInputError(f"{where}: unknown keys {sorted(unknown)}")
        for required in ("prompt", "steps", "guidance_scale"):
            if required not in entry:
                raise UserInputError(f"{where}: missing required key {required!r}")
        if entry.get("controlnet_path"):
            raise UserInputError(f"{where}: SparseCtrl jobs (controlnet_path) are not supported by `generate` yet")
        if "domain_lora_scale" in entry:
            # The pre-2024-07 v3 configs spelled it so; the official script ignored it and used 1.0.
            logger.warning("%s: 'domain_lora_scale' is ignored as in the official script; use adapter_lora_scale", where)

        recipe_dir = path.parent
        dreambooth = _resolve(entry.get("dreambooth_path") or "", recipe_dir)
        job_model = dreambooth or model  # None: the bundled demo family, as `generate` without --model
        loras = []
        if entry.get("lora_model_path"):
            loras.append((_resolve(entry["lora_model_path"], recipe_dir), float(entry.get("lora_alpha", 0.8))))
        motion_loras = [
            (_resolve(item["path"], recipe_dir), float(item.get("alpha", 1.0)))
            for item in entry.get("motion_module_lora_configs") or []
        ]
        adapter = None
        if entry.get("adapter_lora_path"):
            adapter = (_resolve(entry["adapter_lora_path"], recipe_dir), float(entry.get("adapter_lora_scale", 1.0)))

        prompts = [str(p) for p in _as_list(entry["prompt"])]
        negatives = [str(p) for p in _as_list(entry.get("n_prompt", [""]))]
        if len(negatives) == 1:
            negatives = negatives * len(prompts)
        if len(negatives) != len(prompts):
            raise UserInputError(f"{where}: {len(prompts)} prompts but {len(negatives)} n_prompt entries")
        seeds = [int(s) for s in _as_list(entry.get("seed", -1))]
        if len(seeds) == 1:
            seeds = seeds * len(prompts)
        if len(seeds) != len(prompts):
            raise UserInputError(f"{where}: {len(prompts)} prompts but {len(seeds)} seeds")

        settings = {"steps": int(entry["steps"]), "guidance_scale": float(entry["guidance_scale"])}
        for key, name in (("W", "width"), ("H", "height"), ("L", "num_frames")):
            if key in entry:
                settings[name] = int(entry[key])
        settings.update(overrides)  # flags given explicitly win over the recipe
        for motion_module in _as_list(entry.get("motion_module") or None):
            for prompt, negative, seed in zip(prompts, negatives, seeds):
                job_settings = dict(settings)
                if "seed" not in overrides:
                    job_settings["seed"] = None if seed == -1 else seed  # -1: a fresh random seed, recorded in the sidecar
                jobs.append(
                    GenerateJob(
                        model=job_model,
                        motion_module=_resolve(motion_module, recipe_dir) if motion_module else None,
                        prompt=prompt,
                        negative_prompt=negative,
                        loras=list(loras),
                        motion_loras=list(motion_loras),
                        adapter=adapter,
                        settings=job_settings,
                    )
                )
    return jobs
