"""Prompt travel (frame-keyed prompts) and the per-frame motion knobs (motion scale, motion effect).

Prompt travel: a *prompt map* gives prompts at key frames; every frame's text embedding is interpolated between
the two keys around it, so the clip changes subject over time. Formats read (auto-detected):

- a mapping ``{0: "a red circle", 24: "a blue square"}`` (Python API, the official prompt YAML's ``prompt_map``,
  a ``--prompt-map-file`` of YAML or JSON; keys may be written ``"24"`` as in JSON);
- one line ``"0: a red circle | 24: a blue square"`` (``--prompt-map``);
- the A1111 extension's prompt box (sd-webui-animatediff): several lines, optional *head* lines, then ``N: text``
  lines, then optional *tail* lines; each key prompt becomes ``head, text, tail`` (head/tail lines joined with
  ", "). It is read from ``--prompt-map``, from a ``.txt`` ``--prompt-map-file``, and from the plain prompt
  itself when that has several lines one of which is ``N: text``. Deviations from A1111: keys are sorted (A1111
  keeps written order); ``8:open mouth`` (no space after the colon) is a key here, where A1111 silently makes it
  and every later line tail text (``16:9 ...``, a digit after the colon, stays text); a key line after the tail
  text is an error;
- animatediff-cli-prompt-travel's JSON config: ``prompt_map`` ``{"0": ..., "16": ...}``, ``head_prompt``,
  ``tail_prompt`` and ``n_prompt`` (the negative prompt) are read; its other keys are ignored with one warning.
  Its keys beyond the clip are an error here (CLI-PT drops them); it always wraps (give ``prompt_wrap``) and holds
  each key for ``prompt_fixed_ratio`` of the gap (not read: here the interpolation spans the whole gap);
- a JSON (or YAML flow) object ``{"0": "...", "16": "..."}`` as text, braces optional (ADE's plain form; its
  negative, decimal and range keys are refused). A file holding a bare frame mapping is read the same way.

A prompt map replaces the prompt (``prompt`` stays "", no PROMPT on the command line; both is an error).
``head_prompt``/``tail_prompt`` are joined to every key prompt (``head, text, tail``; commas where the parts meet are
not doubled). Keys are whole frame numbers ``0 <= key < num_frames``, each at most once; anything else is a
``UserInputError`` naming ``prompt_map``.

Interpolation, for frame i between keys a <= i < b: weight ``t = (i - a) / (b - a)`` (0 at a key: a key frame is
exactly the plain conditioning of its prompt). ``lerp``: ``(1 - t) E_a + t E_b``. ``slerp`` (A1111, CLI-PT and ADE's
algorithm): the whole tensor (77 x dim, all tokens) is one vector; with ``d = <E_a/|E_a|, E_b/|E_b|>``,
``|d| > 0.9995`` falls back to lerp, else ``(sin((1-t)W) E_a + sin(tW) E_b) / sin W``, ``W = acos d``, on the
unnormalised tensors. SDXL's pooled ``text_embeds`` are interpolated the same way with the same weight.
Before the first key and after the last the nearest key is held, unless ``prompt_wrap``: then those frames go from
the last key back to the first (distance taken modulo num_frames), so a looping clip closes. A
``negative_prompt_map`` travels the same way (head/tail are not added to it). The per-frame schedule (which keys,
which weight) is logged at debug level and written to the sidecar (``prompt_schedule``).

Motion knobs (ComfyUI-AnimateDiff-Evolved's scale and effect multivals), each a number or one number per frame:

- ``motion_scale``: every temporal attention's keys are multiplied by it, so the logits ``q_i . k_j / sqrt(d)`` are
  times ``s`` (an inverse temperature over frames: < 1 flattens attention toward the average of all frames, > 1
  sharpens it). Per frame, ``s_j`` scales the key of frame j: how strongly every frame attends to frame j.
- ``motion_effect``: each motion module's output is ``x (1 - e) + module(x) e`` (0: the module is skipped, the
  plain image model at that layer; 1: plain AnimateDiff; > 1 exaggerates). Per frame, ``e_i`` blends the output
  rows of frame i (the module still sees every frame). For v1 modules, whose ResNet GroupNorms pool over frames,
  0 removes the modules but not that pooling.

Both travel in the conditioning as ``(batch, num_frames)`` tensors (conditioning.py), so context windows slice
them with the text; the denoiser hands them to the modules for one UNet call (``MotionModules.controls``).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from ..errors import UserInputError

Config = Any  # a GenerationConfig (config.py imports this module to validate, so not imported here)
logger = logging.getLogger(__name__)

INTERPOLATIONS = ("lerp", "slerp")
SLERP_PARALLEL = 0.9995  # |cos| above this: slerp falls back to lerp (A1111, CLI-PT, ADE)
FILE_KEYS = {"prompt_map", "head_prompt", "tail_prompt", "negative_prompt_map", "n_prompt"}
_KEY_LINE = re.compile(r"^\s*([+-]?\d+(?:\.\d*)?)\s*:(?!\d)\s*(.*)$")  # "8: text", "8:text"; not "16:9 ..."
_WHOLE = re.compile(r"^\s*\+?\d+\s*$")


# ---- reading ---------------------------------------------------------------------------------------------
def _fail(detail: str, value: Any, field: str) -> UserInputError:
    return UserInputError(detail, field=field, value=value)


def frame_key(raw: Any, field: str = "prompt_map") -> int:
    """A key as written (``8``, ``"8"``) -> the frame number; UserInputError for a negative, fractional or other key."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        if raw < 0:
            raise _fail("a negative frame key (frames count from 0)", raw, field)
        return raw
    text = raw.strip() if isinstance(raw, str) else None
    shown = raw if text is None else text
    if text is not None and _WHOLE.match(text):
        return int(text)
    if text is not None and re.match(r"^-\d+$", text):
        raise _fail("a negative frame key (frames count from 0)", shown, field)
    if isinstance(raw, float) or (text is not None and re.match(r"^[+-]?(\d+\.\d*|\.\d+)$", text)):
        raise _fail("a fractional frame key (keys are whole frame numbers)", shown, field)
    raise _fail("not a frame number (keys are whole frame numbers: 0: a red circle | 16: a blue square)", shown, field)


def _add(prompts: dict[int, str], raw_key: Any, text: Any, field: str) -> None:
    key = frame_key(raw_key, field)
    if key in prompts:
        raise _fail("a frame keyed twice", key, field)
    if not isinstance(text, str):
        raise _fail("a key's prompt must be text", text, field)
    if not text.strip():
        raise _fail("empty prompt for this frame", key, field)
    prompts[key] = text.strip()


def _join(*parts: str) -> str:
    """``head, text, tail``: the non-empty parts, without doubled commas where they meet."""
    parts = (p.strip().strip(",").strip() for p in parts if p)
    return ", ".join(p for p in parts if p)


def _parse_box(text: str, field: str) -> tuple[dict[int, str], str, str]:
    """The A1111 prompt box: head lines, ``N: text`` lines, tail lines -> (map, head, tail)."""
    prompts: dict[int, str] = {}
    head, tail = [], []
    for line in (ln.strip() for ln in text.splitlines()):
        if not line:
            continue
        match = _KEY_LINE.match(line)
        if match is None:
            (tail if prompts else head).append(line)
        elif tail:
            raise _fail("a key line after the tail text (head lines, then 'N: text' lines, then tail lines)", line, field)
        else:
            _add(prompts, match.group(1), match.group(2), field)
    if not prompts:
        raise _fail("no 'N: text' line", text, field)
    return prompts, ", ".join(head), ", ".join(tail)


def _parse_line(text: str, field: str) -> dict[int, str]:
    """``"0: a red circle | 24: a blue square"``."""
    prompts: dict[int, str] = {}
    for entry in text.split("|"):
        key, sep, prompt = entry.partition(":")
        if not sep or not key.strip():
            raise _fail("expected 'FRAME: prompt' entries separated by '|' (e.g. 0: a red circle | 16: a blue square)",
                        entry.strip(), field)
        _add(prompts, key, prompt, field)
    return prompts


def parse_prompt_map(value: Any, field: str = "prompt_map") -> tuple[dict[int, str], str, str]:
    """Any supported form (module docstring) -> (``{frame: prompt}``, head text, tail text). Raises
    ``UserInputError(field=field)`` for a malformed map, a negative or fractional key, a key given twice, an empty
    prompt. Keys are not checked against the clip length here (``check_config`` does)."""
    if isinstance(value, dict):
        prompts: dict[int, str] = {}
        for key, text in value.items():
            _add(prompts, key, text, field)
        if not prompts:
            raise _fail("an empty prompt map", value, field)
        return prompts, "", ""
    if not isinstance(value, str):
        raise _fail("expected a mapping of frame -> prompt or text like '0: a red circle | 16: a blue square'", value, field)
    text = value.strip()
    if text.startswith(("{", '"')):  # a JSON (or YAML flow) object; ADE's plain form leaves out the braces
        try:
            mapping = load_yaml(text if text.startswith("{") else "{" + text + "}")
        except yaml.YAMLError as e:
            raise _fail(f"not a JSON object of frame -> prompt ({str(e).splitlines()[0]})", text[:60], field) from None
        except UserInputError as e:
            raise _fail(e.detail, text[:60], field) from None
        if not isinstance(mapping, dict):
            raise _fail("not a JSON object of frame -> prompt", text[:60], field)
        return parse_prompt_map(mapping, field)
    if "\n" in text:
        return _parse_box(text, field)
    if not text:
        raise _fail("an empty prompt map", value, field)
    return _parse_line(text, field), "", ""


def is_prompt_box(prompt: str) -> bool:
    """Whether a plain prompt is the A1111 prompt-travel box: several lines, one of them ``N: text``."""
    lines = [ln for ln in prompt.strip().splitlines() if ln.strip()]
    return len(lines) > 1 and any(_KEY_LINE.match(ln) for ln in lines)


class _StrictLoader(yaml.SafeLoader):
    """YAML's own rule, which PyYAML does not enforce: a mapping's keys are unique (``8: a`` twice is an error)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *defaults" may be overridden by the keys after it
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float)) and not isinstance(key, bool):
                if key in seen:
                    raise UserInputError(f"key {key!r} is given twice (line {key_node.start_mark.line + 1})")
                seen.add(key)
        return super().construct_mapping(node, deep)


def load_yaml(text: str):
    """``yaml.safe_load`` that refuses duplicate mapping keys (UserInputError); JSON is YAML, so it reads both."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass


def read_prompt_map_file(path: str | Path) -> dict[str, Any]:
    """A ``--prompt-map-file`` -> GenerationConfig fields (``prompt_map``, ``head_prompt``, ``tail_prompt``,
    ``negative_prompt_map``, and ``negative_prompt`` from CLI-PT's ``n_prompt``).

    ``.txt``: the A1111 prompt box (or the one-line form). Otherwise YAML or JSON: a mapping with ``prompt_map``
    (our format and animatediff-cli-prompt-travel's), or a bare ``{frame: prompt}`` mapping. UserInputError
    (field ``prompt_map_file``) for a file that cannot be read or holds no prompt map."""
    field = "prompt_map_file"
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserInputError("file not found", field=field, value=path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserInputError(f"cannot be read ({e})", field=field, value=path) from None
    if path.suffix.lower() == ".txt":
        return {"prompt_map": text}
    try:
        data = load_yaml(text)
    except yaml.YAMLError as e:
        raise UserInputError(f"not valid YAML or JSON ({str(e).splitlines()[0]})", field=field, value=path) from None
    except UserInputError as e:
        raise UserInputError(e.detail, field=field, value=path) from None
    if not isinstance(data, dict) or not data:
        raise UserInputError("expected a mapping with prompt_map (or of frame -> prompt)", field=field, value=path)
    if "prompt_map" not in data:
        return {"prompt_map": data}  # a bare frame mapping; its keys are checked as prompt_map keys
    ignored = sorted(str(k) for k in data if k not in FILE_KEYS)
    if ignored:
        logger.warning("%s: reading only the prompt keys; ignoring %s", path, ", ".join(ignored))
    fields: dict[str, Any] = {"prompt_map": data["prompt_map"]}
    for key in ("head_prompt", "tail_prompt", "negative_prompt_map"):
        if data.get(key) is not None:
            fields[key] = data[key]
    negative = data.get("n_prompt")  # CLI-PT: a list holding the negative prompt
    if isinstance(negative, list) and len(negative) == 1:
        negative = negative[0]
    if negative is not None:
        if not isinstance(negative, str):
            raise UserInputError("n_prompt: expected text or a list of one text", field=field, value=path)
        fields["negative_prompt"] = negative
    return fields


# ---- the schedule ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PromptSchedule:
    """Key prompts and, per frame, which two keys it lies between and the weight of the second."""

    prompts: dict[int, str]  # key frame -> full prompt (head, text, tail)
    num_frames: int
    wrap: bool = False
    name: str = "prompt"  # for the log: "prompt" or "negative prompt"

    def frames(self) -> list[tuple[int, int, float]]:
        """``(from_key, to_key, t)`` for every frame: the embedding is ``interp(E[from], E[to], t)``, t in [0, 1)."""
        keys = sorted(self.prompts)
        n = self.num_frames
        out = []
        for i in range(n):
            before = [k for k in keys if k <= i]
            after = [k for k in keys if k > i]
            if before and before[-1] == i:
                out.append((i, i, 0.0))
            elif before and after:
                a, b = before[-1], after[0]
                out.append((a, b, (i - a) / (b - a)))
            elif self.wrap and len(keys) > 1:  # from the last key around the end of the clip to the first
                a, b = keys[-1], keys[0]
                out.append((a, b, ((i - a) % n) / (b + n - a)))
            else:  # hold the nearest key
                k = before[-1] if before else after[0]
                out.append((k, k, 0.0))
        return out

    def table(self) -> list[dict[str, Any]]:
        return [{"frame": i, "from": a, "to": b, "weight": round(t, 6)} for i, (a, b, t) in enumerate(self.frames())]


def prompt_schedules(config: Config) -> tuple[PromptSchedule | None, PromptSchedule | None]:
    """(positive, negative) schedules of a config; None where that prompt does not travel."""
    positive = negative = None
    source = config.prompt_map if config.prompt_map is not None else config.prompt if is_prompt_box(config.prompt) else None
    if source is not None:
        field = "prompt_map" if config.prompt_map is not None else "prompt"
        prompts, head, tail = parse_prompt_map(source, field)
        head, tail = _join(config.head_prompt, head), _join(tail, config.tail_prompt)
        positive = PromptSchedule({k: _join(head, p, tail) for k, p in prompts.items()}, config.num_frames, config.prompt_wrap)
    if config.negative_prompt_map is not None:
        prompts, head, tail = parse_prompt_map(config.negative_prompt_map, "negative_prompt_map")
        negative = PromptSchedule({k: _join(head, p, tail) for k, p in prompts.items()}, config.num_frames, config.prompt_wrap,
                                  name="negative prompt")
    return positive, negative


# ---- interpolation -----------------------------------------------------------------------------------------
def lerp(v0: torch.Tensor, v1: torch.Tensor, t: float) -> torch.Tensor:
    if t == 0:
        return v0
    return ((1 - t) * v0.float() + t * v1.float()).to(v0.dtype)


def slerp(v0: torch.Tensor, v1: torch.Tensor, t: float, threshold: float = SLERP_PARALLEL) -> torch.Tensor:
    """Whole-tensor spherical interpolation (module docstring); lerp when the tensors are (anti)parallel or zero."""
    if t == 0:
        return v0
    a, b = v0.float(), v1.float()
    na, nb = a.norm(), b.norm()
    if na == 0 or nb == 0:
        return lerp(v0, v1, t)
    dot = ((a / na) * (b / nb)).sum().clamp(-1, 1)
    if dot.abs() > threshold:
        return lerp(v0, v1, t)
    omega = torch.acos(dot)
    return ((torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)).to(v0.dtype)


def travel(schedule: PromptSchedule, embeddings: dict[int, dict[str, torch.Tensor]], method: str) -> dict[str, torch.Tensor]:
    """Per-frame conditioning from each key's ``{name: (1, ...)}`` embeddings -> ``{name: (1, num_frames, ...)}``.
    A key frame gets its key's tensors unchanged."""
    interp = slerp if method == "slerp" else lerp
    frames = schedule.frames()
    for i, (a, b, t) in enumerate(frames):
        logger.debug("%s travel frame %d: %s", schedule.name, i, f"key {a}" if t == 0 else f"key {a} -> key {b}, weight {t:.4f}")
    names = embeddings[frames[0][0]].keys()
    return {name: torch.stack([interp(embeddings[a][name], embeddings[b][name], t) for a, b, t in frames], dim=1)
            for name in names}  # (1, ...) per frame -> (1, num_frames, ...)


# ---- motion knobs -------------------------------------------------------------------------------------------
def motion_conditioning(config: Config, device: torch.device) -> dict[str, torch.Tensor]:
    """``motion_scale`` / ``motion_effect`` as ``(1, num_frames)`` float32 tensors ({} for those not given)."""
    out = {}
    for name in ("motion_scale", "motion_effect"):
        value = getattr(config, name)
        if value is not None:
            values = list(value) if isinstance(value, (list, tuple)) else [value] * config.num_frames
            out[name] = torch.tensor([values], dtype=torch.float32, device=device)  # (1, num_frames)
    return out


# ---- checks and the sidecar --------------------------------------------------------------------------------
def _check_multival(config: Config, name: str) -> None:
    value = getattr(config, name)
    if value is None:
        return
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(item) or item < 0:
            raise UserInputError("expected a number >= 0 or one such number per frame", field=name, value=value)
    if isinstance(value, (list, tuple)) and len(items) != config.num_frames:
        raise UserInputError(f"{len(items)} values for {config.num_frames} frames (give one number, or one per frame)",
                             field=name, value=value)


def check_config(config: Config) -> None:
    """Validate the prompt-travel and motion-knob fields (called by ``GenerationConfig.validate``)."""
    if config.prompt_interpolation not in INTERPOLATIONS:
        raise UserInputError(f"unknown interpolation (use {' or '.join(INTERPOLATIONS)})", field="prompt_interpolation",
                             value=config.prompt_interpolation)
    if not isinstance(config.prompt_wrap, bool):
        raise UserInputError("expected true or false", field="prompt_wrap", value=config.prompt_wrap)
    for name in ("head_prompt", "tail_prompt"):
        if not isinstance(getattr(config, name), str):
            raise UserInputError("expected text", field=name, value=getattr(config, name))
    if config.prompt_map is not None and config.prompt.strip():
        raise UserInputError("give either a prompt or a prompt map, not both", field="prompt_map")
    if config.negative_prompt_map is not None and config.negative_prompt.strip():
        raise UserInputError("give either a negative prompt or a negative prompt map, not both", field="negative_prompt_map")
    positive, negative = prompt_schedules(config)  # parse errors name the field
    if positive is None and (config.head_prompt.strip() or config.tail_prompt.strip()):
        name = "head_prompt" if config.head_prompt.strip() else "tail_prompt"
        raise UserInputError("applies to the key prompts of a prompt map, and there is none", field=name, value=getattr(config, name))
    for schedule, field in ((positive, "prompt_map" if config.prompt_map is not None else "prompt"), (negative, "negative_prompt_map")):
        if schedule is not None:
            beyond = [k for k in sorted(schedule.prompts) if k >= config.num_frames]
            if beyond:
                raise UserInputError(f"a key past the clip's last frame ({config.num_frames} frames: 0 .. {config.num_frames - 1})",
                                     field=field, value=beyond[0])
    for name in ("motion_scale", "motion_effect"):
        _check_multival(config, name)


def sidecar(config: Config) -> dict[str, Any]:
    """``{"prompt_schedule": {...}}`` for a travelling prompt (key prompts and the per-frame table), else {}."""
    positive, negative = prompt_schedules(config)
    if positive is None and negative is None:
        return {}
    describe = lambda s: None if s is None else {"keys": dict(sorted(s.prompts.items())), "frames": s.table()}  # noqa: E731
    return {"prompt_schedule": {"interpolation": config.prompt_interpolation, "wrap": config.prompt_wrap,
                                "prompt": describe(positive), "negative_prompt": describe(negative)}}
