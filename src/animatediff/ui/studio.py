"""The web UI's service layer: a form request -> a checked plan -> a queued job -> ``Animator`` -> a saved file.

Everything the page and the scripted API do goes through ``Studio``; the Gradio callbacks in app.py only
translate widgets. ``submit`` checks everything it can before queueing (picked names, uploads, every
``GenerationConfig`` field), so a bad value is one line at once, not after a wait in the queue.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserInputError
from ..generation.config import GenerationConfig
from .form import FIELD_LABELS, NONE, Request, request_from, values_from_sidecar
from .jobs import CANCELLED, DONE, FAILED, RUNNING, WAITING, Job, JobQueue, QueueFull
from .models import Catalog, ModelCache
from .outputs import FORMATS, Outputs
from .safety import IMAGE_TYPES, MAX_UPLOAD_BYTES, VIDEO_TYPES, check_upload, refuse

logger = logging.getLogger(__name__)

_CONFIG_FIELDS = {f.name for f in dataclasses.fields(GenerationConfig)} - {"prompt"}
_FILE_FIELDS = {"video", "controlnets", "image", "sparsectrl", "keyframes", "ip_adapter", "ip_adapter_image_encoder",
                "ip_images"}  # fields that name files: only through uploads and pickers
_UPLOADED = ("video", "image", "keyframes", "ip_images")  # fields a past result cannot refill (the page's uploads)
_API_KEYS = {"model", "motion_module", "loras", "motion_loras", "adapter", "fps", "format"}


@dataclass
class Plan:
    """A checked request: files resolved to server paths, fields validated."""

    prompt: str
    model: str
    motion_module: str | None
    bundled: bool
    loras: list[tuple[str, float]] = field(default_factory=list)
    motion_loras: list[tuple[str, float]] = field(default_factory=list)
    adapter: tuple[str, float] | None = None
    settings: dict = field(default_factory=dict)
    fps: float = 8
    format: str = "gif"


@dataclass
class Outcome:
    path: Path
    seed: int
    seconds: float


def describe(error: BaseException) -> str:
    """One line for the page: a ``UserInputError`` with its field named as the widget, anything else briefly
    (the traceback goes to the server log only)."""
    if isinstance(error, UserInputError):
        return "error: " + error.render(FIELD_LABELS.get(error.field, error.field))
    if isinstance(error, QueueFull):
        return str(error)
    text = str(error).strip().splitlines()
    return f"error: internal error ({type(error).__name__}{': ' + text[0] if text else ''}); see the server log"


class Studio:
    def __init__(self, catalog: Catalog, outputs: Outputs, *, device: str = "cpu", dtype=None, max_queue: int = 8,
                 upload_roots: list[Path] = (), max_upload_bytes: int = MAX_UPLOAD_BYTES):
        self.catalog, self.outputs = catalog, outputs
        self.cache = ModelCache(device, dtype)
        self.upload_roots = [Path(p) for p in upload_roots]
        self.max_upload_bytes = max_upload_bytes
        self.queue = JobQueue(self._run, max_queue=max_queue, describe_error=describe)

    # ---- requests -> plans ---------------------------------------------------------------------------
    def submit_form(self, values: list, owner: str | None = None) -> Job:
        return self.queue.submit(self.plan(request_from(values)), owner)

    def submit_api(self, prompt: str, settings: dict | None, owner: str | None = None) -> Job:
        """The scripted endpoint: ``settings`` holds GenerationConfig fields plus model, motion_module (picker
        labels), loras / motion_loras (``[[label, scale], ...]``), adapter (``[label, scale]``), fps, format."""
        settings = dict(settings or {})
        if not isinstance(prompt, str):
            raise UserInputError("must be text", field="prompt", value=prompt)
        for key, value in settings.items():
            if key in _FILE_FIELDS and value not in (None, "", [], {}):
                raise refuse("file inputs come only through the page's uploads (paths are never opened)", key, value)
            elif key not in _CONFIG_FIELDS and key not in _API_KEYS:
                raise UserInputError("unknown setting", field=key, value=value)
        request = Request(prompt=prompt, model=settings.pop("model", None), motion_module=settings.pop("motion_module", None),
                          loras=[tuple(x) for x in settings.pop("loras", [])],
                          motion_loras=[tuple(x) for x in settings.pop("motion_loras", [])],
                          adapter=tuple(settings.pop("adapter")) if settings.get("adapter") else None,
                          fps=settings.pop("fps", 8), format=settings.pop("format", "gif"))
        settings.pop("adapter", None)
        request.settings = settings
        return self.queue.submit(self.plan(request), owner)

    def plan(self, r: Request) -> Plan:
        """Resolve pickers and uploads and validate every field (``UserInputError`` naming the field)."""
        catalog = self.catalog
        model = catalog.entry("model", r.model or catalog.default("model"))
        if model is None:
            raise UserInputError("no base model to use (put one in --models-dir)", field="model")
        motion = catalog.entry("motion_module", r.motion_module) if r.motion_module else None
        if motion is not None and (why := motion.fits(model)):
            raise UserInputError(why, field="motion_module", value=r.motion_module)
        if motion is None and model.bundled:
            motion = catalog.entry("motion_module", catalog.default("motion_module"))
        plan = Plan(prompt=r.prompt, model=model.path, motion_module=motion.path if motion else None, bundled=model.bundled,
                    fps=r.fps, format=r.format)
        plan.loras = [(catalog.resolve("loras", label, model), _scale("loras", s)) for label, s in r.loras]
        plan.motion_loras = [(catalog.resolve("motion_loras", label, model), _scale("motion_loras", s)) for label, s in r.motion_loras]
        if r.adapter is not None:
            plan.adapter = (catalog.resolve("adapter", r.adapter[0], model), _scale("adapter", r.adapter[1]))
        if plan.motion_loras and plan.motion_module is None:
            raise UserInputError("needs a motion module", field="motion_loras")
        settings = dict(r.settings)
        for key, value in r.uploads.items():
            settings[key] = self._files(key, value, model)
        if r.format not in FORMATS:
            raise UserInputError(f"choose one of {', '.join(FORMATS)}", field="format", value=r.format)
        if not isinstance(r.fps, (int, float)) or isinstance(r.fps, bool) or not 0 < r.fps <= 240:
            raise UserInputError("must be a number of frames per second, more than 0", field="fps", value=r.fps)
        defaults = _bundled_defaults() if model.bundled else {}
        try:
            config = GenerationConfig(prompt=r.prompt, **{**defaults, **settings})
        except TypeError as e:  # an unknown keyword
            raise UserInputError(f"unknown setting ({e})", field="settings") from None
        if not r.prompt and not config.prompt_map:
            raise UserInputError("give a prompt (or fill the prompt travel table)", field="prompt")
        config.validate(vae_scale_factor=8)
        plan.settings = settings
        return plan

    def _files(self, key: str, value, model):
        """Picker labels (``("picker", label)``, listed under role ``key``) and uploads (``("video" | "image", path)``)
        anywhere in a field's value (ControlNet units, keyframes, IP-Adapters ...) -> checked server paths."""
        if isinstance(value, tuple):
            if value[0] == "picker":
                return self.catalog.resolve(key, value[1], model)
            return self._check_upload(value, key)
        if isinstance(value, list):
            return [self._files(key, item, model) for item in value]
        if isinstance(value, dict):
            return {k: self._files(key, item, model) for k, item in value.items()}
        return value

    def _check_upload(self, value, field_name: str) -> str:
        kind, path = value
        types = VIDEO_TYPES if kind == "video" else IMAGE_TYPES
        return check_upload(path, field_name, types, self.upload_roots, self.max_upload_bytes)

    # ---- the worker ------------------------------------------------------------------------------------
    def _run(self, job: Job) -> Outcome:
        plan: Plan = job.payload
        start = time.monotonic()
        path = self.outputs.new_path(plan.prompt, plan.format, job.id)
        try:
            with self.cache.use(plan.model, plan.motion_module, plan.bundled) as animator:
                animator.set_loras(plan.loras, plan.motion_loras, plan.adapter)
                result = animator.generate(plan.prompt, progress=job.report, **plan.settings)
                # overwrite: the name was claimed by new_path (our empty placeholder file), nothing else is there
                animator.save(result, path, fps=plan.fps, overwrite=bool(FORMATS[plan.format]))
        except BaseException:
            self.outputs.release(path)
            raise
        return Outcome(path, result.seed, time.monotonic() - start)

    # ---- what the page shows ---------------------------------------------------------------------------
    def status(self, job: Job) -> str:
        if job.state == WAITING:
            return f"job {job.id}: waiting, position {self.queue.position(job)} in the queue"
        if job.state == RUNNING:
            if not job.total:
                return f"job {job.id}: starting (loading the model)"
            eta = job.eta()
            return f"job {job.id}: step {job.step}/{job.total}" + (f", ETA {eta:.0f} s" if eta is not None else "")
        if job.state == DONE:
            out: Outcome = job.result
            return f"job {job.id}: done in {out.seconds:.1f} s, seed {out.seed}: {out.path.name}"
        if job.state == CANCELLED:
            return f"job {job.id}: cancelled" + (f" after step {job.step} of {job.total}" if job.total else " before it started")
        return job.error or f"job {job.id}: failed"

    def settings_of(self, name: str) -> tuple[dict, list[str]]:
        """Widget values from a past result's sidecar (pickers as labels), and notes on what could not be set."""
        result = self.outputs.resolve(name)
        if not result.exists():
            raise UserInputError("no such result", field="history", value=name)
        sidecar = self.outputs.sidecar(result)
        values = values_from_sidecar(sidecar)
        notes = [f"{FIELD_LABELS[k]}: upload again (uploads are not kept)" for k in _UPLOADED if sidecar.get(k)]
        for widget, value in list(values.items()):
            if isinstance(value, tuple) and value[0] == "path":
                label = self._label_of(value[1])
                if label is None:
                    notes.append(f"{widget}: {Path(value[1]).name} is not in the model list")
                    del values[widget]
                else:
                    values[widget] = label
        return values, notes

    def _label_of(self, path: str) -> str | None:
        for entries in self.catalog.entries.values():
            for label, entry in entries.items():
                if entry.path == path or Path(entry.path).resolve() == Path(path).resolve():
                    return label
        return None

    def close(self) -> None:
        self.queue.close()


def _scale(field_name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserInputError("the weight must be a number", field=field_name, value=value)
    return float(value)


def _bundled_defaults() -> dict:
    from ..bundled import generation_defaults

    return generation_defaults()


__all__ = ["Studio", "Plan", "Outcome", "describe", "NONE", "DONE", "FAILED", "CANCELLED"]
