"""Generation recipes: the official repository's prompt-config YAML (``configs/prompts/*.yaml``), read as-is.

Two formats (README "Official prompt configs" lists every key read):
- the current one (since Dec 2023): a list of jobs, the model in ``dreambooth_path``;
- the July-2023 one: a mapping of named jobs, the model in ``path`` (a single-file model, or a LoRA merged
  at ``lora_alpha`` on top of ``base`` when ``base`` is given) and ``motion_module`` usually a list.
Both read the same keys. Each job becomes one ``GenerateJob`` per (motion module, prompt). Every value is
type-checked here, and an error names the file, the job and the YAML key (``job ToonYou, W '64px': ...``);
range checks (``W`` a multiple of 8, ``L`` within the motion module) stay with the library, whose errors the
CLI maps back to the YAML key through ``GenerateJob.keys``. Unknown keys are warned about once.

Precedence, one documented order: built-in defaults < recipe file < command-line flags given explicitly.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UserInputError
from .generation.prompt_travel import INTERPOLATIONS, load_yaml, parse_prompt_map

logger = logging.getLogger(__name__)

SEED_MAX = 2**64 - 1  # torch.Generator.manual_seed takes 0 .. 2**64-1; -1 means a fresh random seed
READ_KEYS = {
    "motion_module", "motion_module_lora_configs", "adapter_lora_path", "adapter_lora_scale", "dreambooth_path",
    "lora_model_path", "lora_alpha", "seed", "steps", "guidance_scale", "prompt", "n_prompt", "W", "H", "L",
    "path", "base",  # July 2023
} | {  # extensions: prompt travel and motion scale/effect (GenerationConfig fields; generation/prompt_travel.py)
    "prompt_map", "negative_prompt_map", "head_prompt", "tail_prompt", "prompt_interpolation", "prompt_wrap",
    "motion_scale", "motion_effect",
}
# Our extension: GenerationConfig fields a job may carry by name, key -> kind (``_Job.typed``; ranges and choices
# are checked by the library).
FIELD_KEYS = {
    # context windows
    "context": "name", "context_length": "count", "context_overlap": "whole", "context_stride": "count",
    "context_fuse": "name", "closed_loop": "flag", "context_batch": "count",
    # FreeNoise, view windows, FreeInit
    "noise_type": "name", "view_context": "name", "view_length": "count", "view_overlap": "whole", "view_fuse": "name",
    "freeinit_iterations": "count", "freeinit_filter": "name", "freeinit_spatial": "number", "freeinit_temporal": "number",
    "freeinit_fast": "flag",
    # ControlNet and video-to-video (paths: "video" and "controlnets", read by _control_inputs)
    "control_preprocess": "name", "guess_mode": "flag", "strength": "number",
    # image-to-video, video resampling, IP-Adapter (paths: "image", "ip_adapter", "ip_adapter_image_encoder",
    # "ip_images", read by _image_inputs)
    "image_strength": "number", "image_falloff": "number", "video_fps": "number",
}
READ_KEYS |= set(FIELD_KEYS) | {"video", "controlnets"} | {"image", "ip_adapter", "ip_adapter_image_encoder", "ip_images"}
# SparseCtrl, the official keys (read by _sparsectrl_inputs)
READ_KEYS |= {"controlnet_path", "controlnet_images", "controlnet_image_indexs", "normalize_condition_images"}
# Accepted without effect: the architecture is detected from the motion module file (--motion-preset forces
# one), the SparseCtrl flavour from the encoder file (controlnet_config: latent_condition / image_condition).
UNUSED_KEYS = {"inference_config", "controlnet_config"}
WARNED_KEYS = {"domain_lora_scale", "init_image"}
REQUIRED_KEYS = ("prompt", "steps", "guidance_scale")
_MISSING = object()


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


def slug(text: str, words: int = 10) -> str:
    """First words of a prompt as a file name, like the official ``<idx>-<prompt>.gif``."""
    cleaned = re.sub(r"[^\w\s-]", "", text).split()[:words]
    return "-".join(cleaned)[:120] or "animation"


def _show(value) -> str:
    return "null" if value is None else repr(value)


class _Job:
    """One job of the YAML with typed reads; every error names the file, the job and the key. A key with no value
    (``key:``) counts as not given, except for the required ``prompt``, ``steps`` and ``guidance_scale``."""

    def __init__(self, path: Path, name: str, values: dict):
        self.path, self.name, self.values = path, name, values

    def fail(self, key: str, why: str, value=_MISSING) -> UserInputError:
        value = self.values.get(key, _MISSING) if value is _MISSING else value
        shown = "" if value is _MISSING else f" {_show(value)}"
        return UserInputError(f"job {self.name}, {key}{shown}: {why}", field="config", value=self.path)

    def given(self, key: str) -> bool:
        return self.values.get(key) is not None

    def path_value(self, key: str) -> str:
        """A file path; "" when not given."""
        value = self.values.get(key)
        if value is None:
            return ""
        if not isinstance(value, str):
            raise self.fail(key, "expected a file path")
        return value.strip()

    def number(self, key: str, default: float | None = None, value=_MISSING, shown_key: str | None = None) -> float | None:
        """A finite number; a string that reads as one is taken too (YAML 1.1 reads ``1e-1`` as a string)."""
        value = self.values.get(key) if value is _MISSING else value
        if value is None:
            return default
        if not isinstance(value, bool) and isinstance(value, (int, float, str)):
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            if math.isfinite(number):
                return number
        raise self.fail(shown_key or key, "expected a number (e.g. 7.5)", value)

    def count(self, key: str) -> int | None:
        """A positive whole number, or None when not given."""
        value = self.values.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self.fail(key, "expected a positive whole number")
        return value

    def typed(self, key: str, kind: str):
        """A GenerationConfig field: ``name`` (text, lower-cased), ``count`` (whole >= 1), ``whole`` (>= 0),
        ``number`` or ``flag`` (true/false); ranges and choices are checked by the library."""
        value = self.values[key]
        if kind == "name":
            if not isinstance(value, str):
                raise self.fail(key, "expected a name")
            return value.strip().lower()
        if kind == "flag":
            if not isinstance(value, bool):
                raise self.fail(key, "expected true or false")
            return value
        if kind == "number":
            return self.number(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if kind == "count" else 0):
            raise self.fail(key, "expected a positive whole number" if kind == "count" else "expected a whole number (0 or more)")
        return value

    def texts(self, key: str, allow_empty: bool) -> list[str]:
        """Text or a list of text; ``[""]`` when not given."""
        value = self.values.get(key)
        if value is None:
            return [""]
        items = value if isinstance(value, list) else [value]
        if not items:
            raise self.fail(key, "empty list; give at least one")
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise self.fail(f"{key}[{i}]" if isinstance(value, list) else key, "expected text", item)
            if not allow_empty and not item.strip():
                raise self.fail(f"{key}[{i}]" if isinstance(value, list) else key, "empty prompt", item)
        return items

    def seeds(self) -> list[int | None]:
        """Seeds as ints; -1 (a fresh random seed) becomes None. Default: one random seed."""
        value = self.values.get("seed")
        if value is None:
            return [None]
        items = value if isinstance(value, list) else [value]
        if not items:
            raise self.fail("seed", "empty list; give a seed, a list of seeds, or -1 for random")
        seeds = []
        for i, item in enumerate(items):
            key = f"seed[{i}]" if isinstance(value, list) else "seed"
            if isinstance(item, bool) or not isinstance(item, int):
                raise self.fail(key, "expected a whole number (0 .. 2**64-1, or -1 for random)", item)
            if item != -1 and not 0 <= item <= SEED_MAX:
                raise self.fail(key, f"outside 0 .. {SEED_MAX} (-1: a random seed)", item)
            seeds.append(None if item == -1 else item)
        return seeds

    def motion_loras(self) -> list[tuple[str, float]]:
        key = "motion_module_lora_configs"
        value = self.values.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(key, "expected a list of {path, alpha} entries")
        found = []
        for i, item in enumerate(value):
            if not isinstance(item, dict) or not isinstance(item.get("path"), str) or not item["path"].strip():
                raise self.fail(f"{key}[{i}]", "expected {path: FILE, alpha: NUMBER}", item)
            found.append((item["path"], self.number(key, 1.0, value=item.get("alpha"), shown_key=f"{key}[{i}].alpha")))
        return found

    def travel_settings(self) -> dict[str, Any]:
        """The prompt-travel and motion-knob keys given (GenerationConfig field names), type-checked."""
        found: dict[str, Any] = {}
        for key in ("prompt_map", "negative_prompt_map"):
            if self.given(key):
                try:
                    parse_prompt_map(self.values[key], key)  # a mapping or text; keys checked against L later
                except UserInputError as e:
                    raise self.fail(key, e.detail, e.value if e.has_value else _MISSING) from None
                found[key] = self.values[key]
        for key in ("head_prompt", "tail_prompt"):
            if self.given(key):
                if not isinstance(self.values[key], str):
                    raise self.fail(key, "expected text")
                found[key] = self.values[key]
        if self.given("prompt_interpolation"):
            value = self.values["prompt_interpolation"]
            if not isinstance(value, str) or value.lower() not in INTERPOLATIONS:
                raise self.fail("prompt_interpolation", f"expected {' or '.join(INTERPOLATIONS)}")
            found["prompt_interpolation"] = value.lower()
        if self.given("prompt_wrap"):
            if not isinstance(self.values["prompt_wrap"], bool):
                raise self.fail("prompt_wrap", "expected true or false")
            found["prompt_wrap"] = self.values["prompt_wrap"]
        for key in ("motion_scale", "motion_effect"):
            value = self.values.get(key)
            if isinstance(value, list):
                found[key] = [self.number(key, value=v, shown_key=f"{key}[{i}]") for i, v in enumerate(value)]
            elif value is not None:
                found[key] = self.number(key)
        return found

    def motion_modules(self) -> list[str | None]:
        """One path or a list of paths (the July-2023 configs list v14 and v15); [None] when not given."""
        value = self.values.get("motion_module")
        if value is None or value == "":
            return [None]
        items = value if isinstance(value, list) else [value]
        if not items:
            raise self.fail("motion_module", "empty list; give a motion module file (or leave the key out)")
        for i, item in enumerate(items):
            if not isinstance(item, str) or not item.strip():
                raise self.fail(f"motion_module[{i}]" if isinstance(value, list) else "motion_module", "expected a file path", item)
        return [item.strip() for item in items]


def _resolve(path: str, recipe_dir: Path) -> str:
    """Official paths are relative to the repository root (the working directory); fall back to the recipe's folder."""
    if not path or Path(path).exists():
        return path
    candidate = recipe_dir / path
    return str(candidate) if candidate.exists() else path


def _read_file(path: Path) -> list[tuple[str, Any]]:
    """(job name, job) pairs: the list format's jobs are named by their index."""
    try:
        raw = load_yaml(path.read_text())  # safe_load that refuses a key given twice
    except FileNotFoundError:
        raise UserInputError("file not found", field="config", value=path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserInputError(f"cannot be read ({e})", field="config", value=path) from None
    except yaml.YAMLError as e:
        raise UserInputError(f"not valid YAML ({str(e).splitlines()[0]})", field="config", value=path) from None
    except UserInputError as e:  # a duplicate key
        raise UserInputError(e.detail, field="config", value=path) from None
    if isinstance(raw, dict):  # July 2023: name -> job
        named = [(str(name), job) for name, job in raw.items()]
    elif isinstance(raw, list):
        named = [(str(i), job) for i, job in enumerate(raw)]
    else:
        raise UserInputError(f"expected a list of jobs (or named jobs), got {_show(raw)[:40]}", field="config", value=path)
    if not named:
        raise UserInputError("holds no jobs", field="config", value=path)
    for name, job in named:
        if not isinstance(job, dict):
            raise UserInputError(f"job {name}: expected a mapping of settings, got {_show(job)[:40]}", field="config", value=path)
    return named


def _warn_unknown_keys(path: Path, named: list[tuple[str, dict]]) -> None:
    """One warning per unknown key for the whole file (a typo repeated in every job is one mistake)."""
    unknown: dict[str, list[str]] = {}
    for name, job in named:
        for key in job:
            if key not in READ_KEYS | UNUSED_KEYS | WARNED_KEYS:
                unknown.setdefault(str(key), []).append(name)
    for key, names in unknown.items():
        logger.warning("%s: ignoring unknown key %r (job %s)", path, key, ", ".join(names))


def load_official_recipe(path: str | Path, model: str | None, overrides: dict[str, Any] | None = None) -> list[GenerateJob]:
    """Read an official prompt-config YAML (either format) into jobs. ``model`` is the base model for jobs that
    name none (``None``: the bundled demo family); ``overrides`` are settings given explicitly on the command
    line. Raises ``UserInputError`` (field ``config``) naming the job and the key of the first bad value."""
    path = Path(path)
    named = _read_file(path)
    _warn_unknown_keys(path, named)
    jobs: list[GenerateJob] = []
    for name, values in named:
        jobs += _read_job(_Job(path, name, values), model, dict(overrides or {}))
    return jobs


def _read_job(job: _Job, model: str | None, overrides: dict[str, Any]) -> list[GenerateJob]:
    where = f"job {job.name}"
    travels = job.given("prompt_map")  # then the map is the prompt: "prompt" is not required, and not allowed
    for required in REQUIRED_KEYS:
        if required not in job.values and not (travels and required == "prompt"):
            raise UserInputError(f"{where}: missing required key {required!r}", field="config", value=job.path)
    if "domain_lora_scale" in job.values:
        # The pre-2024-07 v3 configs spelled it so; the official script ignored it and used 1.0.
        logger.warning("%s, %s: 'domain_lora_scale' is ignored as in the official script; use adapter_lora_scale", job.path, where)
    if "init_image" in job.values:
        logger.warning("%s, %s: init_image is not supported yet; the clip is generated from noise", job.path, where)

    recipe_dir = job.path.parent
    keys: dict[str, str] = {}
    # The model: dreambooth_path (current format) or path (July 2023: a LoRA on top of base when base is given).
    dreambooth, path, base = job.path_value("dreambooth_path"), job.path_value("path"), job.path_value("base")
    if dreambooth and path:
        raise job.fail("path", "give either path (July 2023 format) or dreambooth_path, not both")
    loras: list[tuple[str, float]] = []
    lora_alpha = job.number("lora_alpha", 0.8)  # the official default
    model_key = "dreambooth_path" if dreambooth else "base" if base else "path" if path else None
    job_model = _resolve(dreambooth or base or path, recipe_dir) or model  # None: the bundled demo family
    if path and base:
        loras.append((_resolve(path, recipe_dir), lora_alpha))
        keys["loras"] = "path"
    if job.path_value("lora_model_path"):
        loras.append((_resolve(job.path_value("lora_model_path"), recipe_dir), lora_alpha))
        keys["loras"] = "path, lora_model_path" if "loras" in keys else "lora_model_path"
    if model_key:
        keys["model"] = model_key
    motion_loras = [(_resolve(p, recipe_dir), alpha) for p, alpha in job.motion_loras()]
    if motion_loras:
        keys["motion_loras"] = "motion_module_lora_configs"
    adapter = None
    if job.path_value("adapter_lora_path"):
        adapter = (_resolve(job.path_value("adapter_lora_path"), recipe_dir), job.number("adapter_lora_scale", 1.0))
        keys["adapter"] = "adapter_lora_path"

    if travels and job.given("prompt"):
        raise job.fail("prompt_map", "give either prompt or prompt_map, not both", _MISSING)
    if not travels and job.values["prompt"] is None:
        raise job.fail("prompt", "no prompt given")
    prompts = job.texts("prompt", allow_empty=False)  # [""] with a prompt map
    negatives = job.texts("n_prompt", allow_empty=True)
    if len(negatives) == 1:
        negatives = negatives * len(prompts)
    if len(negatives) != len(prompts):
        raise UserInputError(f"{where}, n_prompt: {len(prompts)} prompts but {len(negatives)} n_prompt entries (give 1 or "
                             f"{len(prompts)})", field="config", value=job.path)
    seeds = job.seeds()
    if len(seeds) == 1:
        seeds = seeds * len(prompts)
    if len(seeds) != len(prompts):
        raise UserInputError(f"{where}, seed: {len(prompts)} prompts but {len(seeds)} seeds (give 1 or {len(prompts)})",
                             field="config", value=job.path)

    for key in ("steps", "guidance_scale"):
        if job.values[key] is None:
            raise job.fail(key, "no value given")
    settings = {"steps": job.count("steps"), "guidance_scale": job.number("guidance_scale")}
    keys.update(steps="steps", guidance_scale="guidance_scale", seed="seed", prompt="prompt", negative_prompt="n_prompt")
    for key, name in (("W", "width"), ("H", "height"), ("L", "num_frames")):
        if job.given(key):
            settings[name] = job.count(key)
            keys[name] = key
    for key, kind in FIELD_KEYS.items():
        if job.given(key):
            settings[key], keys[key] = job.typed(key, kind), key
    settings.update(_control_inputs(job, recipe_dir, keys))
    settings.update(_image_inputs(job, recipe_dir, keys))
    settings.update(_sparsectrl_inputs(job, recipe_dir, keys))
    travel = job.travel_settings()
    settings.update(travel)
    keys.update({name: name for name in travel})
    for name in overrides:  # flags given explicitly win over the recipe; errors about them name the flag
        keys.pop(name, None)
    settings.update(overrides)

    jobs = []
    for motion_module in job.motion_modules():
        for prompt, negative, seed in zip(prompts, negatives, seeds):
            job_settings = dict(settings) if "seed" in overrides else {**settings, "seed": seed}  # None: random, recorded
            jobs.append(GenerateJob(
                model=job_model, motion_module=_resolve(motion_module, recipe_dir) if motion_module else None,
                prompt=prompt, negative_prompt=negative, loras=list(loras), motion_loras=list(motion_loras), adapter=adapter,
                settings=job_settings, where=where,
                keys={**keys, **({"motion_module": "motion_module"} if motion_module else {})},
            ))
    return jobs


def _control_inputs(job: _Job, recipe_dir: Path, keys: dict[str, str]) -> dict[str, Any]:
    """``video`` (a path) and ``controlnets`` (a list of mappings with ``path`` and optional ``strength``, ``start``,
    ``end``, ``video`` or ``image``, ``config``), paths relative to the YAML; values are checked by the library."""
    settings: dict[str, Any] = {}
    if job.given("video"):
        settings["video"], keys["video"] = _resolve(job.path_value("video"), recipe_dir), "video"
    if job.given("controlnets"):
        nets = job.values["controlnets"]
        if not isinstance(nets, list) or not all(isinstance(n, dict) and isinstance(n.get("path"), str) for n in nets):
            raise job.fail("controlnets", "expected a list of mappings, each with a path")
        for i, net in enumerate(nets):
            for name in ("path", "video", "image", "config"):
                if net.get(name) is not None and not isinstance(net[name], str):
                    raise job.fail(f"controlnets[{i}].{name}", "expected a file path", net[name])
        settings["controlnets"] = [{**n, **{k: _resolve(n[k], recipe_dir) for k in ("path", "video", "image", "config")
                                            if n.get(k)}} for n in nets]
        keys["controlnets"] = "controlnets"
    return settings


def _image_inputs(job: _Job, recipe_dir: Path, keys: dict[str, str]) -> dict[str, Any]:
    """``image`` and ``ip_adapter_image_encoder`` (paths), ``ip_adapter`` (a list of ``{path, scale}``) and
    ``ip_images`` (a list of ``{image, frame}``), paths relative to the YAML; values are checked by the library."""
    settings: dict[str, Any] = {}
    for key in ("image", "ip_adapter_image_encoder"):
        if job.given(key):
            settings[key], keys[key] = _resolve(job.path_value(key), recipe_dir), key
    for key, path_key, other, kind in (("ip_adapter", "path", "scale", "number"), ("ip_images", "image", "frame", "whole")):
        if not job.given(key):
            continue
        entries = job.values[key]
        if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get(path_key), str) for e in entries):
            raise job.fail(key, f"expected a list of mappings, each with {path_key} (and {other})")
        for i, entry in enumerate(entries):
            value = entry.get(other)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int if kind == "whole" else (int, float))):
                raise job.fail(f"{key}[{i}].{other}", "expected a whole number" if kind == "whole" else "expected a number", value)
        settings[key] = [{**e, path_key: _resolve(e[path_key], recipe_dir)} for e in entries]
        keys[key] = key
    return settings


# ---- SparseCtrl (generation/sparsectrl.py): the official keys ------------------------------------------------
def _sparsectrl_inputs(job: _Job, recipe_dir: Path, keys: dict[str, str]) -> dict[str, Any]:
    """``controlnet_path`` -> ``sparsectrl``; image i of ``controlnet_images`` at frame ``controlnet_image_indexs[i]``
    (default ``[0]``; images beyond the indices are ignored, as in the official script) -> ``keyframes``;
    ``normalize_condition_images`` -> ``sparsectrl_normalize``. Paths relative to the YAML as everywhere."""
    if not job.path_value("controlnet_path"):
        for key in ("controlnet_images", "controlnet_image_indexs", "normalize_condition_images"):
            if job.given(key):
                raise job.fail(key, "needs controlnet_path (a SparseCtrl encoder)")
        return {}
    settings = {"sparsectrl": _resolve(job.path_value("controlnet_path"), recipe_dir)}
    keys["sparsectrl"] = "controlnet_path"
    images = job.values.get("controlnet_images")
    images = [images] if isinstance(images, str) else images
    if not images or not isinstance(images, list) or not all(isinstance(i, str) and i.strip() for i in images):
        raise job.fail("controlnet_path", "a SparseCtrl job needs controlnet_images (the keyframe image paths)")
    indices = job.values.get("controlnet_image_indexs", [0])
    if not isinstance(indices, list) or not indices or not all(isinstance(i, int) and not isinstance(i, bool) for i in indices):
        raise job.fail("controlnet_image_indexs", "expected a list of frame indices (whole numbers, -1 = last frame)")
    if len(indices) > len(images):
        raise job.fail("controlnet_image_indexs", f"{len(indices)} indices but only {len(images)} controlnet_images")
    if len(images) > len(indices):
        logger.info("%s, job %s: %d controlnet_images beyond the %d indices are ignored (as in the official script)",
                    job.path, job.name, len(images) - len(indices), len(indices))
    settings["keyframes"] = [{"image": _resolve(image.strip(), recipe_dir), "index": index} for image, index in zip(images, indices)]
    keys["keyframes"] = "controlnet_images/controlnet_image_indexs"
    if job.given("normalize_condition_images"):
        settings["sparsectrl_normalize"], keys["sparsectrl_normalize"] = job.typed("normalize_condition_images", "flag"), \
            "normalize_condition_images"
    return settings
