"""The form, as data: every widget (name, label, kind, default) grouped in units, and the two conversions
form values -> a generation request, and a result's sidecar -> form values.

A unit is one tab or accordion of the page with its own ``to_settings`` (widget values -> API fields). A new
feature is one more ``Unit`` appended to ``UNITS`` (as image-to-video, SparseCtrl and IP-Adapter are): app.py
builds its widgets, the request gets its fields, and its labels name its errors. Picked files travel as
``("picker", label)`` and uploads as ``("image" | "video", path)`` in ``Request.uploads``; the studio resolves
and checks both (models.Catalog, safety.check_upload). No Gradio here: this module is plain
data and functions, tested without a browser.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import UserInputError
from ..sampling.context import FUSE_METHODS, SCHEDULES, windows
from ..sampling.freeinit import FILTERS
from ..sampling.freenoise import NOISE_TYPES, VIEW_SCHEDULES
from ..sampling.schedulers import SCHEDULER_PRESETS, SCHEDULERS, sampling_defaults
from .outputs import FORMATS

PRESET_DEFAULT = "(motion module's)"
SCHEDULER_DEFAULT = "(preset's)"
CONTEXT_AUTO = "auto"
NONE = "(none)"
LORA_SLOTS = 2  # LoRA and MotionLoRA rows in the LoRA tab
CONTROL_SLOTS = 2  # ControlNet units
KEYFRAME_SLOTS = 3  # SparseCtrl keyframe uploads (first / middle / last, or a three-sketch storyboard)
KEYFRAME_INDICES = (0, 8, -1)  # their default frames (negative: from the end)
IP_IMAGE_SLOTS = 2  # IP-Adapter reference images (two: keyframed travel)


@dataclass(frozen=True)
class Widget:
    """One input on the page. ``kind``: text, textarea, int, number, slider, dropdown, checkbox, table,
    video (upload), image (upload), or a picker role of models.ROLES (``picker:model``)."""

    name: str
    label: str
    kind: str
    default: Any = None
    choices: tuple = ()
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    info: str = ""
    row: str = ""  # neighbouring widgets with the same row name share a line of the page


@dataclass
class Request:
    """What one job runs: picked files (labels, resolved by the studio), API fields, output options."""

    prompt: str
    model: str | None = None  # picker labels
    motion_module: str | None = None
    loras: list[tuple[str, float]] = field(default_factory=list)
    motion_loras: list[tuple[str, float]] = field(default_factory=list)
    adapter: tuple[str, float] | None = None
    settings: dict = field(default_factory=dict)  # GenerationConfig fields
    uploads: dict = field(default_factory=dict)  # settings keys whose values are upload paths to check
    fps: float = 8
    format: str = "gif"


@dataclass(frozen=True)
class Unit:
    title: str
    widgets: tuple[Widget, ...]
    to_settings: Callable[[dict, Request], None]  # fill the request from {widget name: value}
    from_sidecar: Callable[[dict], dict] = lambda sidecar: {}  # {widget name: value} from a sidecar
    tab: bool = True  # its own tab (else part of the main column)


# ---- small converters ------------------------------------------------------------------------------------
def _whole(name: str, value):
    """A number widget's value as int when it is whole (a float like 64.5 is kept: validation names it)."""
    if value is None or value == "":
        return None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value


def _multival(name: str, text: str):
    """``1`` or ``1, 0.8, 0.6`` (one per frame) -> float or list; empty -> None."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise UserInputError("expected a number or comma-separated numbers, one per frame", field=name, value=text) from None
    return values[0] if len(values) == 1 else values


def _choice(value, unset: str):
    return None if value in (None, "", unset) else value


# ---- units -------------------------------------------------------------------------------------------------
def _main_settings(v: dict, r: Request) -> None:
    r.prompt = v["prompt"] or ""
    r.model, r.motion_module = _choice(v["model"], NONE), _choice(v["motion_module"], NONE)
    s = r.settings
    s["negative_prompt"] = v["negative_prompt"] or ""
    for name in ("num_frames", "width", "height", "steps"):
        s[name] = _whole(name, v[name])
    s["guidance_scale"] = v["guidance_scale"]
    seed = _whole("seed", v["seed"])
    s["seed"] = None if seed == -1 else seed  # -1: a fresh random seed, recorded in the sidecar
    s["scheduler_preset"] = _choice(v["scheduler_preset"], PRESET_DEFAULT)
    s["scheduler"] = _choice(v["scheduler"], SCHEDULER_DEFAULT)
    r.fps = v["fps"]
    r.format = v["format"]


def _main_from_sidecar(sc: dict) -> dict:
    out = {k: sc[k] for k in ("prompt", "negative_prompt", "num_frames", "width", "height", "steps",
                              "guidance_scale", "seed", "fps") if k in sc}
    out["scheduler_preset"] = sc.get("scheduler_preset") or PRESET_DEFAULT
    out["scheduler"] = sc.get("scheduler") or SCHEDULER_DEFAULT
    return out


def _bundled_generation_defaults() -> dict:
    """The bundled family's generation defaults (its demo.json: size, steps, guidance), or {} without a bundle.
    The page opens on the bundled model, so its widgets start at what that family is made for."""
    from .. import bundled

    return bundled.generation_defaults() if bundled.is_available() else {}


BUNDLED_DEFAULTS = _bundled_generation_defaults()

MAIN = Unit("Text to video", (
    Widget("prompt", "Prompt", "textarea", "a red circle bouncing on a blue striped background"),
    Widget("negative_prompt", "Negative prompt", "text", ""),
    Widget("model", "Base model", "picker:model", row="models"),
    Widget("motion_module", "Motion module", "picker:motion_module", row="models"),
    Widget("num_frames", "Frames", "int", 16, minimum=1, row="size"),
    Widget("fps", "FPS", "number", 8, minimum=1, row="size"),
    Widget("width", "Width", "int", BUNDLED_DEFAULTS.get("width", 512), step=8, row="size"),
    Widget("height", "Height", "int", BUNDLED_DEFAULTS.get("height", 512), step=8, row="size"),
    Widget("scheduler_preset", "Preset", "dropdown", PRESET_DEFAULT, (PRESET_DEFAULT, *SCHEDULER_PRESETS),
           info="Lightning / AnimateLCM set steps, CFG and scheduler together", row="sampling"),
    Widget("steps", "Steps", "int", BUNDLED_DEFAULTS.get("steps", 25), minimum=1, row="sampling"),
    Widget("guidance_scale", "Guidance (CFG)", "number", BUNDLED_DEFAULTS.get("guidance_scale", 7.5), minimum=0, row="sampling"),
    Widget("scheduler", "Scheduler", "dropdown", SCHEDULER_DEFAULT, (SCHEDULER_DEFAULT, *SCHEDULERS), row="sampling"),
    Widget("seed", "Seed", "int", -1, info="-1: random (the seed used is recorded)", row="out"),
    Widget("format", "Output format", "dropdown", "gif", tuple(FORMATS), row="out"),
), _main_settings, _main_from_sidecar, tab=False)


def _lora_settings(v: dict, r: Request) -> None:
    for kind, target in (("lora", r.loras), ("motion_lora", r.motion_loras)):
        for i in range(1, LORA_SLOTS + 1):
            label = _choice(v[f"{kind}_{i}"], NONE)
            if label is not None:
                target.append((label, float(v[f"{kind}_{i}_scale"])))
    if _choice(v["adapter"], NONE) is not None:
        r.adapter = (v["adapter"], float(v["adapter_scale"]))


def _lora_from_sidecar(sc: dict) -> dict:
    """Sidecar paths -> ``{widget: path}``; the studio turns paths back into picker labels."""
    out = {}
    for kind, key, scale in (("lora", "loras", "scale"), ("motion_lora", "motion_loras", "alpha")):
        items = sc.get(key) or []
        for i in range(1, LORA_SLOTS + 1):
            item = items[i - 1] if i <= len(items) else None
            out[f"{kind}_{i}"] = ("path", item["path"]) if item else NONE
            out[f"{kind}_{i}_scale"] = item[scale] if item else 1.0
    adapter = sc.get("adapter")
    out["adapter"] = ("path", adapter["path"]) if adapter else NONE
    out["adapter_scale"] = adapter["scale"] if adapter else 1.0
    return out


LORAS = Unit("LoRAs", (
    *(w for i in range(1, LORA_SLOTS + 1) for w in (
        Widget(f"lora_{i}", f"LoRA {i}", "picker:loras", row=f"lora{i}"),
        Widget(f"lora_{i}_scale", f"LoRA {i} weight", "slider", 0.8, minimum=-2, maximum=2, step=0.05, row=f"lora{i}"))),
    *(w for i in range(1, LORA_SLOTS + 1) for w in (
        Widget(f"motion_lora_{i}", f"MotionLoRA {i}", "picker:motion_loras", row=f"mlora{i}"),
        Widget(f"motion_lora_{i}_scale", f"MotionLoRA {i} alpha", "slider", 1.0, minimum=0, maximum=2, step=0.05, row=f"mlora{i}"))),
    Widget("adapter", "Domain adapter", "picker:adapter", row="adapter"),
    Widget("adapter_scale", "Domain adapter weight", "slider", 1.0, minimum=0, maximum=2, step=0.05, row="adapter"),
), _lora_settings, _lora_from_sidecar)

_LONG_FIELDS = ("context", "context_length", "context_overlap", "context_stride", "context_fuse", "closed_loop", "context_batch",
                "noise_type", "view_context", "view_length", "view_overlap", "view_fuse", "freeinit_iterations",
                "freeinit_filter", "freeinit_spatial", "freeinit_temporal", "freeinit_fast")


def _long_settings(v: dict, r: Request) -> None:
    s = r.settings
    s["context"] = _choice(v["context"], CONTEXT_AUTO)
    for name in ("context_length", "context_overlap", "context_stride", "context_batch", "view_length", "view_overlap"):
        s[name] = _whole(name, v[name])
    if s["context_length"] == 0:
        s["context_length"] = None  # 0: the default (16, or the encoding length)
    if v["context_overlap"] in (-1, -1.0):
        s["context_overlap"] = None  # -1: a quarter of the length
    iterations = _whole("freeinit_iterations", v["freeinit_iterations"])
    s["freeinit_iterations"] = None if iterations in (None, 0) else iterations  # 0: off
    for name in ("context_fuse", "closed_loop", "noise_type", "view_context", "view_fuse", "freeinit_filter",
                 "freeinit_spatial", "freeinit_temporal", "freeinit_fast"):
        s[name] = v[name]


def _long_from_sidecar(sc: dict) -> dict:
    out = {k: sc[k] for k in _LONG_FIELDS if k in sc}
    out["context"] = sc.get("context") or CONTEXT_AUTO
    out["context_length"] = sc.get("context_length") or 0
    out["context_overlap"] = -1 if sc.get("context_overlap") is None else sc["context_overlap"]
    out["freeinit_iterations"] = sc.get("freeinit_iterations") or 0
    return out


LONG = Unit("Long video", (
    Widget("context", "Context schedule", "dropdown", CONTEXT_AUTO, (CONTEXT_AUTO, "none", *SCHEDULES),
           info="auto: uniform windows beyond the motion module's encoding length"),
    Widget("context_length", "Context length", "int", 0, minimum=0, info="0: 16, or the encoding length"),
    Widget("context_overlap", "Context overlap", "int", -1, minimum=-1, info="-1: a quarter of the length"),
    Widget("context_stride", "Context stride", "int", 1, minimum=1),
    Widget("context_fuse", "Context fuse", "dropdown", "pyramid", FUSE_METHODS),
    Widget("closed_loop", "Loop (closed loop)", "checkbox", False),
    Widget("context_batch", "Windows per UNet call", "int", 1, minimum=1),
    Widget("noise_type", "FreeNoise noise", "dropdown", "plain", NOISE_TYPES),
    Widget("view_context", "View windows", "dropdown", "none", VIEW_SCHEDULES),
    Widget("view_length", "View length", "int", 16, minimum=1),
    Widget("view_overlap", "View overlap", "int", 4, minimum=0),
    Widget("view_fuse", "View fuse", "dropdown", "pyramid", FUSE_METHODS),
    Widget("freeinit_iterations", "FreeInit iterations", "int", 0, minimum=0, info="0: off"),
    Widget("freeinit_filter", "FreeInit filter", "dropdown", "butterworth", FILTERS),
    Widget("freeinit_spatial", "FreeInit spatial stop", "slider", 0.25, minimum=0, maximum=1, step=0.125),
    Widget("freeinit_temporal", "FreeInit temporal stop", "slider", 0.25, minimum=0, maximum=1, step=0.125),
    Widget("freeinit_fast", "FreeInit coarse-to-fine", "checkbox", False),
), _long_settings, _long_from_sidecar)

TRAVEL_COLUMNS = ("frame", "prompt")


def table_rows(value) -> list[list]:
    """A Gradio table value (a pandas DataFrame, a dict with "data", or rows) -> rows."""
    if value is None:
        return []
    if hasattr(value, "values") and hasattr(value, "columns"):
        return value.values.tolist()
    if isinstance(value, dict):
        return list(value.get("data") or [])
    return list(value)


def _travel_settings(v: dict, r: Request) -> None:
    prompt_map = {}
    for row in table_rows(v["prompt_map"]):
        frame, text = (list(row) + [None, None])[:2]
        if (frame in (None, "") or (isinstance(frame, float) and math.isnan(frame))) and not text:
            continue  # an empty row
        try:
            key = int(float(frame))
        except (TypeError, ValueError):
            raise UserInputError("each row needs a frame number", field="prompt_map", value=frame) from None
        prompt_map[key] = str(text or "")
    if prompt_map:
        r.settings["prompt_map"] = prompt_map
    s = r.settings
    s["prompt_interpolation"], s["prompt_wrap"] = v["prompt_interpolation"], v["prompt_wrap"]
    s["head_prompt"], s["tail_prompt"] = v["head_prompt"] or "", v["tail_prompt"] or ""
    s["motion_scale"] = _multival("motion_scale", v["motion_scale"])
    s["motion_effect"] = _multival("motion_effect", v["motion_effect"])


def _travel_from_sidecar(sc: dict) -> dict:
    travel = sc.get("prompt_map")
    if isinstance(travel, str):
        travel = None  # the text form is expanded in the sidecar's own keys; the table shows dicts only
    rows = [[int(k), v] for k, v in sorted((travel or {}).items(), key=lambda kv: int(kv[0]))]
    out = {"prompt_map": rows or [["", ""]]}
    for k in ("prompt_interpolation", "prompt_wrap", "head_prompt", "tail_prompt"):
        if k in sc:
            out[k] = sc[k]
    for k in ("motion_scale", "motion_effect"):
        value = sc.get(k)
        out[k] = "" if value is None else ", ".join(map(str, value)) if isinstance(value, list) else str(value)
    return out


TRAVEL = Unit("Prompt travel & motion", (
    Widget("prompt_map", "Prompt travel (frame, prompt)", "table", [["", ""]], TRAVEL_COLUMNS,
           info="rows of frame and prompt; when filled, they replace the prompt"),
    Widget("prompt_interpolation", "Interpolation", "dropdown", "lerp", ("lerp", "slerp")),
    Widget("prompt_wrap", "Travel back to the first prompt (loops)", "checkbox", False),
    Widget("head_prompt", "Head prompt", "text", ""),
    Widget("tail_prompt", "Tail prompt", "text", ""),
    Widget("motion_scale", "Motion scale", "text", "", info="1 = unchanged; one number or one per frame, comma-separated"),
    Widget("motion_effect", "Motion effect", "text", "", info="0 = image model, 1 = unchanged; one number or one per frame"),
), _travel_settings, _travel_from_sidecar)


def _video_settings(v: dict, r: Request) -> None:
    if v["video"]:
        r.uploads["video"] = ("video", v["video"])
        r.settings["strength"] = v["strength"]


VIDEO = Unit("Video to video", (
    Widget("video", "Input video", "video"),
    Widget("strength", "Strength", "slider", 0.8, minimum=0.05, maximum=1, step=0.05,
           info="the last int(steps x strength) steps run"),
), _video_settings, lambda sc: {"strength": sc["strength"]} if sc.get("video") and sc.get("strength") is not None else {})


def _control_settings(v: dict, r: Request) -> None:
    nets = []
    for i in range(1, CONTROL_SLOTS + 1):
        label = _choice(v[f"controlnet_{i}"], NONE)
        if label is None:
            continue
        net = {"path": ("picker", label), "strength": v[f"controlnet_{i}_strength"],
               "start": v[f"controlnet_{i}_start"], "end": v[f"controlnet_{i}_end"]}
        if v[f"controlnet_{i}_video"]:
            net["video"] = ("video", v[f"controlnet_{i}_video"])
        elif v[f"controlnet_{i}_image"]:
            net["image"] = ("image", v[f"controlnet_{i}_image"])
        nets.append(net)
    if nets:
        r.uploads["controlnets"] = nets  # picker labels and uploads resolved by the studio
    r.settings["control_preprocess"] = v["control_preprocess"]
    r.settings["guess_mode"] = v["guess_mode"]


CONTROL = Unit("ControlNet", (
    *(w for i in range(1, CONTROL_SLOTS + 1) for w in (
        Widget(f"controlnet_{i}", f"ControlNet {i}", "picker:controlnets"),
        Widget(f"controlnet_{i}_video", f"ControlNet {i} hint video", "video"),
        Widget(f"controlnet_{i}_image", f"ControlNet {i} hint image", "image"),
        Widget(f"controlnet_{i}_strength", f"ControlNet {i} strength", "slider", 1.0, minimum=0, maximum=2, step=0.05),
        Widget(f"controlnet_{i}_start", f"ControlNet {i} start", "slider", 0.0, minimum=0, maximum=1, step=0.05),
        Widget(f"controlnet_{i}_end", f"ControlNet {i} end", "slider", 1.0, minimum=0, maximum=1, step=0.05))),
    Widget("control_preprocess", "Hint preprocessing", "dropdown", "none", ("none", "canny")),
    Widget("guess_mode", "Guess mode", "checkbox", False),
), _control_settings, lambda sc: {k: sc[k] for k in ("control_preprocess", "guess_mode") if k in sc})

# ---- image-to-video, SparseCtrl, IP-Adapter (issue 12) ------------------------------------------------------
def _image_settings(v: dict, r: Request) -> None:
    if not v["image"]:
        return
    r.uploads["image"] = ("image", v["image"])
    if _choice(v["sparsectrl"], NONE) is None:  # with an encoder the still is its frame-0 keyframe: no init blend
        r.settings["image_strength"], r.settings["image_falloff"] = v["image_strength"], v["image_falloff"]
        r.settings["strength"] = v["image_denoise"]


def _image_from_sidecar(sc: dict) -> dict:
    if not sc.get("image"):
        return {}
    defaults = {"image_strength": 1.0, "image_falloff": 32, "strength": 0.8}
    return {("image_denoise" if k == "strength" else k): d if sc.get(k) is None else sc[k] for k, d in defaults.items()}


IMAGE = Unit("Image to video", (
    Widget("image", "Still image", "image", info="animated from frame 0; with a SparseCtrl RGB encoder it is the "
                                                  "encoder's frame-0 keyframe instead of the start latent"),
    Widget("image_strength", "Image weight in frame 0", "slider", 1.0, minimum=0.05, maximum=1, step=0.05, row="blend"),
    Widget("image_falloff", "Image falloff (frames)", "number", 32, minimum=1, row="blend",
           info="the image's weight falls to 0 over these frames"),
    Widget("image_denoise", "Image-to-video strength", "slider", 0.8, minimum=0.05, maximum=1, step=0.05,
           info="the last int(steps x strength) steps run"),
), _image_settings, _image_from_sidecar)


def _sparsectrl_settings(v: dict, r: Request) -> None:
    keyframes = [{"image": ("image", v[f"keyframe_{i}"]), "index": _whole("keyframes", v[f"keyframe_{i}_index"])}
                 for i in range(1, KEYFRAME_SLOTS + 1) if v[f"keyframe_{i}"]]
    if keyframes:  # without an encoder too: the library names what is missing
        r.uploads["keyframes"] = keyframes
    label = _choice(v["sparsectrl"], NONE)
    if label is None:
        return
    r.uploads["sparsectrl"] = ("picker", label)
    s = r.settings
    s["sparsectrl_scale"] = _multival("sparsectrl_scale", v["sparsectrl_scale"])
    s["sparsectrl_start"], s["sparsectrl_end"] = v["sparsectrl_start"], v["sparsectrl_end"]
    s["sparsectrl_normalize"] = v["sparsectrl_normalize"]


def _sparsectrl_from_sidecar(sc: dict) -> dict:
    if not sc.get("sparsectrl"):
        return {"sparsectrl": NONE}
    out = {"sparsectrl": ("path", sc["sparsectrl"])}
    keys = list(sc.get("keyframes") or [])
    if sc.get("image") and keys and keys[0].get("image") == sc["image"] and keys[0].get("index") == 0:
        keys = keys[1:]  # the still, recorded as the frame-0 keyframe: it is the image tab's upload
    for i, key in enumerate(keys[:KEYFRAME_SLOTS], start=1):
        out[f"keyframe_{i}_index"] = key.get("index", 0)
    scale = sc.get("sparsectrl_scale", 1.0)
    out["sparsectrl_scale"] = ", ".join(map(str, scale)) if isinstance(scale, list) else str(scale)
    for k in ("sparsectrl_start", "sparsectrl_end", "sparsectrl_normalize"):
        if k in sc:
            out[k] = sc[k]
    return out


SPARSECTRL = Unit("SparseCtrl", (
    Widget("sparsectrl", "SparseCtrl encoder", "picker:sparsectrl", info="RGB: images; scribble: sketches"),
    *(w for i, index in zip(range(1, KEYFRAME_SLOTS + 1), KEYFRAME_INDICES) for w in (
        Widget(f"keyframe_{i}", f"Keyframe {i}", "image", row=f"key{i}"),
        Widget(f"keyframe_{i}_index", f"Keyframe {i} frame", "int", index, row=f"key{i}",
               info="negative: counted from the end"))),
    Widget("sparsectrl_scale", "SparseCtrl scale", "text", "1", info="one number or one per frame, comma-separated"),
    Widget("sparsectrl_start", "SparseCtrl start", "slider", 0.0, minimum=0, maximum=1, step=0.05, row="range"),
    Widget("sparsectrl_end", "SparseCtrl end", "slider", 1.0, minimum=0, maximum=1, step=0.05, row="range"),
    Widget("sparsectrl_normalize", "Normalize keyframes (official normalize_condition_images)", "checkbox", False),
), _sparsectrl_settings, _sparsectrl_from_sidecar)


def _ip_settings(v: dict, r: Request) -> None:
    images = [{"image": ("image", v[f"ip_image_{i}"]), "frame": _whole("ip_images", v[f"ip_image_{i}_frame"])}
              for i in range(1, IP_IMAGE_SLOTS + 1) if v[f"ip_image_{i}"]]
    if images:
        r.uploads["ip_images"] = images
    label = _choice(v["ip_adapter"], NONE)
    if label is not None:
        r.uploads["ip_adapter"] = [{"path": ("picker", label), "scale": v["ip_adapter_scale"]}]
    encoder = _choice(v["ip_adapter_image_encoder"], NONE)
    if encoder is not None and label is not None:  # an encoder alone is no request for an IP-Adapter
        r.uploads["ip_adapter_image_encoder"] = ("picker", encoder)


def _ip_from_sidecar(sc: dict) -> dict:
    adapters = sc.get("ip_adapter") or []
    if not adapters:
        return {"ip_adapter": NONE}
    first = adapters[0] if isinstance(adapters[0], dict) else {"path": adapters[0]}
    out = {"ip_adapter": ("path", first["path"]), "ip_adapter_scale": first.get("scale", 1.0)}
    if sc.get("ip_adapter_image_encoder"):
        out["ip_adapter_image_encoder"] = ("path", sc["ip_adapter_image_encoder"])
    for i, key in enumerate((sc.get("ip_images") or [])[:IP_IMAGE_SLOTS], start=1):
        out[f"ip_image_{i}_frame"] = key.get("frame", 0) if isinstance(key, dict) else 0
    return out


IP_ADAPTER = Unit("IP-Adapter", (
    Widget("ip_adapter", "IP-Adapter", "picker:ip_adapter", row="ip"),
    Widget("ip_adapter_scale", "IP-Adapter scale", "slider", 1.0, minimum=0, maximum=2, step=0.05, row="ip"),
    Widget("ip_adapter_image_encoder", "IP-Adapter image encoder", "picker:ip_adapter_image_encoder",
           info="a CLIPVisionModelWithProjection folder in --models-dir"),
    *(w for i in range(1, IP_IMAGE_SLOTS + 1) for w in (
        Widget(f"ip_image_{i}", f"Reference image {i}", "image", row=f"ip{i}"),
        Widget(f"ip_image_{i}_frame", f"Reference image {i} frame", "int", 0 if i == 1 else 15, minimum=0, row=f"ip{i}",
               info="several images travel between their frames"))),
), _ip_settings, _ip_from_sidecar)

# The page, in order. A new feature: one more Unit here.
UNITS: list[Unit] = [MAIN, LORAS, LONG, TRAVEL, VIDEO, CONTROL, IMAGE, SPARSECTRL, IP_ADAPTER]


def widgets() -> list[Widget]:
    return [w for unit in UNITS for w in unit.widgets]


# Errors name config fields; the page names its widgets (as cli.FIELD_FLAGS names flags).
FIELD_LABELS = {w.name: w.label for w in widgets()}
FIELD_LABELS.update({"loras": "LoRA", "motion_loras": "MotionLoRA", "adapter": "Domain adapter", "controlnets": "ControlNet",
                     "video": "Input video", "out": "Output", "history": "Past result", "max_queue": "--max-queue",
                     "keyframes": "SparseCtrl keyframes", "ip_images": "IP-Adapter reference images"})


def request_from(values: list) -> Request:
    """The widget values, in ``widgets()`` order, as a request (raises ``UserInputError`` naming a field)."""
    names = [w.name for w in widgets()]
    if len(values) != len(names):
        raise UserInputError(f"expected {len(names)} form values, got {len(values)}", field="form")
    named = dict(zip(names, values))
    request = Request(prompt="")
    for unit in UNITS:
        unit.to_settings(named, request)
    request.settings = {k: v for k, v in request.settings.items() if v is not None}
    return request


def values_from_sidecar(sidecar: dict) -> dict:
    """``{widget name: value}`` for the widgets a sidecar has values for (pickers get ``("path", file)``)."""
    flat = dict(sidecar)
    for key in ("model", "motion_module"):  # the sidecar's files section holds the picked base and module
        item = (sidecar.get("files") or {}).get(key)
        flat[key] = ("path", item["path"]) if item else None
    values = {}
    for unit in UNITS:
        values.update(unit.from_sidecar(flat))
    for key in ("model", "motion_module"):
        if flat[key] is not None:
            values[key] = flat[key]
    return values


def windows_text(num_frames, context, length, overlap, closed_loop) -> str:
    """A small picture of the first step's context windows (``0-15 ▕████░░░░▏``) for the long-video tab."""
    try:
        n = int(num_frames or 0)
        length = int(length or 0) or 16
        overlap = length // 4 if overlap in (None, -1) else int(overlap)
        schedule = {CONTEXT_AUTO: "uniform", "none": None}.get(context, context)
        if schedule is None or n <= length:
            return f"{n} frames in one pass (no windows)"
        found = windows(n, 0, length, overlap, schedule, closed_loop=bool(closed_loop and schedule == "looped"))
    except (TypeError, ValueError) as e:
        return f"(no picture: {e})"
    scale = max(1, -(-n // 64))  # one character per `scale` frames, at most 64 wide
    lines = [f"{len(found)} windows of {length} frames (overlap {overlap}), first step:"]
    for w in found[:12]:
        bar = "".join("█" if any(f // scale == c for f in w) else "·" for c in range(-(-n // scale)))
        lines.append(f"{w[0]:>4}-{w[-1]:<4} {bar}")
    if len(found) > 12:
        lines.append(f"... {len(found) - 12} more")
    return "```\n" + "\n".join(lines) + "\n```"


MOTION_PRESETS = {"lightning": "lightning", "animatelcm": "animatelcm", "sdxl-beta": "sdxl-beta"}  # module version -> preset


def preset_values(preset: str, motion_version: str | None, bundled: bool) -> tuple[int, float, str]:
    """Steps, guidance and scheduler set together when the preset changes (Lightning: 4 steps, CFG 1, Euler;
    AnimateLCM: 6, 1.5, LCM); the default preset is the motion module's. The scheduler shows "the preset's"."""
    if preset == PRESET_DEFAULT:
        preset = MOTION_PRESETS.get(motion_version, "animatediff")
    defaults = sampling_defaults(preset)
    if preset == "animatediff" and bundled and BUNDLED_DEFAULTS:  # the bundled family: its own few steps and guidance
        return BUNDLED_DEFAULTS["steps"], BUNDLED_DEFAULTS["guidance_scale"], SCHEDULER_DEFAULT
    return defaults.steps, defaults.guidance_scale, SCHEDULER_DEFAULT
