"""Batch generation: many jobs, split across processes (one device each) with Accelerate, resumable.

    animatediff generate --jobs prompts.txt --out clips          # one process: jobs one after another
    accelerate launch -m animatediff generate --jobs prompts.txt --out clips            # N processes / GPUs
    accelerate launch -m animatediff generate --config official.yaml --model m.safetensors --out clips

Jobs come from an official prompt YAML (``--config``) or a jobs file (``--jobs``, :func:`read_jobs_file`). Job
``i`` is written to ``<i>-<first words of the prompt>[-seed<S>].gif`` in the output folder (the seed part when the
seed is fixed), so the same command run again finds its own outputs: a job whose output and settings sidecar exist
and whose sidecar holds the job's settings (every field the job sets, the files, the LoRAs, the fps) is finished
and skipped. An output written with other settings is refused before anything runs, unless ``overwrite``: a
batch never replaces a clip it did not mean to. Everything else follows ``video_io.check_output``.

Processes: every process reads the same jobs and checks the same outputs, waits for the others, then takes its
contiguous share of the unfinished jobs (``PartialState.split_between_processes``) on its own device
(``PartialState().device``: ``cuda:<local rank>``, or the CPU). The main process prints one summary at the end.
Without ``accelerate launch`` there is one process and the same code runs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import UserInputError
from .recipes import GenerateJob, slug
from .video_io import SIDECAR_IN_FOLDER, check_output, sidecar_path

logger = logging.getLogger(__name__)

JOB_KEYS = ("prompt", "negative_prompt", "seed")  # what one item of a YAML/JSON jobs file may set


def read_jobs_file(path: str | Path) -> list[dict[str, Any]]:
    """Prompts to generate: ``[{"prompt": str, "negative_prompt"?: str, "seed"?: int | None}, ...]``.

    ``.yaml``/``.yml``/``.json``: a list whose items are a prompt or a mapping with ``prompt`` and optionally
    ``negative_prompt`` and ``seed`` (-1: a fresh random seed). Any other file: one prompt per line; blank lines
    and lines starting with ``#`` are skipped. Raises ``UserInputError`` (field ``jobs``) naming the item."""
    from .generation.prompt_travel import load_yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserInputError("file not found", field="jobs", value=path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserInputError(f"cannot be read ({e})", field="jobs", value=path) from None
    if path.suffix.lower() not in (".yaml", ".yml", ".json"):
        items: list = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    else:
        try:
            items = load_yaml(text)  # JSON is YAML
        except Exception as e:  # noqa: BLE001 - yaml's errors and a duplicate key: one line either way
            raise UserInputError(f"not valid YAML/JSON ({str(e).splitlines()[0]})", field="jobs", value=path) from None
        if items is None:  # an empty file
            items = []
        if not isinstance(items, list):
            raise UserInputError("expected a list of prompts (or of mappings with 'prompt')", field="jobs", value=path)
    if not items:
        raise UserInputError("holds no prompts", field="jobs", value=path)
    return [_job_item(item, i, path) for i, item in enumerate(items)]


def _job_item(item: Any, index: int, path: Path) -> dict[str, Any]:
    def fail(detail: str) -> UserInputError:
        return UserInputError(f"item {index}: {detail}", field="jobs", value=path)

    if isinstance(item, str):
        item = {"prompt": item}
    if not isinstance(item, dict):
        raise fail(f"expected a prompt or a mapping with 'prompt', got {item!r:.40}")
    unknown = sorted(set(map(str, item)) - set(JOB_KEYS))
    if unknown:
        raise fail(f"unknown key {unknown[0]!r} (an item may set {', '.join(JOB_KEYS)}; the rest comes from the flags)")
    if not isinstance(item.get("prompt"), str) or not item["prompt"].strip():
        raise fail("needs a non-empty 'prompt'")
    if not isinstance(item.get("negative_prompt", ""), str):
        raise fail("'negative_prompt' must be text")
    seed = item.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not -1 <= seed < 2**64):
        raise fail(f"'seed' must be a whole number 0 .. 2**64-1 or -1, got {seed!r}")
    return {**item, "seed": None if seed == -1 else seed} if "seed" in item else item


def output_name(index: int, prompt: str, seed: int | None, suffix: str = ".gif") -> str:
    """Job ``index``'s file name: ``3-a-red-circle-seed42.gif`` (no seed part for a random seed)."""
    return f"{index}-{slug(prompt)}{'' if seed is None else f'-seed{seed}'}{suffix}"


# ---- resume: is a job's output already there, with its settings? ---------------------------------------------
def expected_record(job: GenerateJob, config, fps: float) -> dict[str, Any]:
    """What the sidecar of job's finished output holds: every GenerationConfig field the job sets (None ones are
    filled in at generation time: any value there matches), the model files, the LoRAs, the fps."""
    from .bundled import resolve

    found = resolve(job.model, job.motion_module, job.loras, job.motion_loras, job.adapter)  # as Animator.load does
    fields = {name: value for name, value in dataclasses.asdict(config).items() if value is not None}
    return _plain({
        "settings": fields, "model": found.model, "motion_module": found.motion_module or None,
        "loras": [[p, s] for p, s in found.loras], "motion_loras": [[p, s] for p, s in found.motion_loras],
        "adapter": list(found.adapter) if found.adapter else None, "fps": fps,
    })


def recorded_record(sidecar: dict[str, Any], fields) -> dict[str, Any]:
    """The same view of a written sidecar (``Animator.metadata``)."""
    files = sidecar.get("files") or {}
    adapter = sidecar.get("adapter")
    return _plain({
        "settings": {name: sidecar.get(name) for name in fields},
        "model": (files.get("model") or {}).get("path"), "motion_module": (files.get("motion_module") or {}).get("path"),
        "loras": [[x.get("path"), x.get("scale")] for x in sidecar.get("loras") or []],
        "motion_loras": [[x.get("path"), x.get("alpha")] for x in sidecar.get("motion_loras") or []],
        "adapter": [adapter.get("path"), adapter.get("scale")] if adapter else None,
        "fps": sidecar.get("fps_requested", sidecar.get("fps")),
    })


def _plain(value: Any) -> Any:
    """As the sidecar writer stores it (JSON, paths as text), so both sides compare alike."""
    return json.loads(json.dumps(value, default=str))


def _read_sidecar(out: Path) -> dict | None:
    side = out / SIDECAR_IN_FOLDER if out.suffix == "" else sidecar_path(out)
    if not out.exists() or not side.is_file():
        return None  # not written, or stopped before its sidecar (written last): not finished
    try:
        found = json.loads(side.read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) and found.get("generator") == "animatediff" else None


def job_state(job: GenerateJob, config, fps: float) -> tuple[str, str]:
    """``("new" | "finished" | "different", detail)`` of job's output ``job.out``; ``detail`` names the first
    setting that differs."""
    sidecar = _read_sidecar(Path(job.out))
    if sidecar is None:
        return "new", ""
    wanted = expected_record(job, config, fps)
    found = recorded_record(sidecar, wanted["settings"])
    if found == wanted:
        return "finished", ""
    for key in wanted:
        if key == "settings":
            for name, value in wanted["settings"].items():
                if found["settings"][name] != value:
                    return "different", f"{name} {found['settings'][name]!r} there, {value!r} now"
        elif found[key] != wanted[key]:
            return "different", f"{key} {found[key]!r} there, {wanted[key]!r} now"
    return "different", ""


_BATCH_ENTRY = re.compile(r"\d+-[\w-]+(\.gif|\.webp|\.mp4)?(\.json)?")  # <i>-<slug>[-seed<S>][.gif][.json]


def check_batch_folder(folder: Path, overwrite: bool = False) -> None:
    """A batch writes into a new folder, an empty one, or one holding only a batch's own outputs
    (``<i>-<words>.gif`` and their sidecars, a re-run resumes there); a folder of anything else is the user's and
    is refused (``UserInputError`` field ``out``) unless ``overwrite`` (which still replaces only our outputs)."""
    if not folder.is_dir():
        return
    foreign = sorted(p.name for p in folder.iterdir() if not _BATCH_ENTRY.fullmatch(p.name))
    if foreign and not overwrite:
        examples = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise UserInputError(f"the folder exists and holds {len(foreign)} entries that are not this program's batch "
                             f"outputs ({examples}); choose a new folder, or overwrite to write beside them (they "
                             "are never touched; nothing was written)", field="out", value=folder)


def plan(jobs: list[GenerateJob], configs: list, fps: float, overwrite: bool = False) -> list[int]:
    """Indices of the jobs still to run; every output target is checked (``check_output``) first, and an output
    written with other settings is refused (``UserInputError`` field ``out``) unless ``overwrite``."""
    for folder in sorted({Path(job.out).parent for job in jobs}):
        check_batch_folder(folder, overwrite)
    pending = []
    for i, (job, config) in enumerate(zip(jobs, configs)):
        state, detail = job_state(job, config, fps)
        if state == "finished":
            continue
        if state == "different" and not overwrite:
            raise UserInputError(f"exists, written with other settings ({detail}); nothing was "
                                 "written: choose another output folder, or overwrite to replace it", field="out", value=job.out)
        check_output(job.out, overwrite=overwrite)
        pending.append(i)
    return pending


# ---- running ------------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """One job of a batch: ``written`` (with the seed used and seconds) or ``skipped`` (finished before)."""

    index: int
    out: str
    status: str
    seed: int | None = None
    seconds: float = 0.0
    process: int = 0


def generate_jobs(jobs: list[GenerateJob], configs: list, *, load: Callable[[GenerateJob], Any], fps: float,
                  overwrite: bool = False, progress: Callable | None = None, context: Callable | None = None,
                  tag: str = "") -> list[Outcome]:
    """Run ``jobs`` in order, reusing the loaded model while consecutive jobs share it. ``load(job)`` returns an
    ``Animator`` for the job's model files; ``progress(steps)`` makes a step callback; ``context(job)`` wraps each
    job (the CLI names the recipe's keys in errors)."""
    animator, loaded, outcomes = None, None, []
    for job, config in zip(jobs, configs):
        with (context or (lambda _: nullcontext()))(job):
            key = (job.model, job.motion_module)
            if key != loaded:
                animator = None  # free the previous model before loading the next one
                logger.info("%sloading %s + %s", tag, job.model, job.motion_module or "no motion module")
                animator, loaded = load(job), key
            animator.set_loras(job.loras, job.motion_loras, job.adapter)
            start = time.perf_counter()
            result = animator.generate(config, progress=progress(config.steps or 0) if progress else None)
            path = animator.save(result, job.out, fps=fps, overwrite=overwrite)
        seconds = time.perf_counter() - start
        logger.info("%swrote %s (seed %d, %.1f s)", tag, path, result.seed, seconds)
        outcomes.append(Outcome(-1, str(path), "written", result.seed, seconds))
    return outcomes


def process_state():
    """Accelerate's ``PartialState`` (one process without ``accelerate launch``). Processes without CUDA, or
    launched with ``ACCELERATE_USE_CPU=1``, join over gloo on the CPU (PartialState reads no such variable itself)."""
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())


def same_on_every_process(value: Any, state) -> Any:
    """The main process's ``value`` on every process (e.g. a default folder name with the time in it)."""
    if state.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value])[0]


def run_batch(jobs: list[GenerateJob], configs: list, *, load: Callable[[GenerateJob, str], Any], fps: float,
              overwrite: bool = False, device: str | None = None, state=None, **options) -> list[Outcome] | None:
    """Plan, split and run a batch; returns every job's ``Outcome`` (in job order) on the main process, None on
    the others. ``load(job, device)`` loads a job's model on this process's ``device`` (default:
    ``state.device``); ``options`` go to :func:`generate_jobs`. Bad input (any job, any output) is refused by
    every process before any model loads."""
    state = state or process_state()
    device = device or str(state.device)
    pending = plan(jobs, configs, fps, overwrite)
    state.wait_for_everyone()  # all have checked the outputs before any process writes one
    tag = f"[process {state.process_index + 1}/{state.num_processes}] " if state.num_processes > 1 else ""
    with state.split_between_processes(pending) as mine:
        logger.info("%s%d of %d jobs to run here (%d finished before), on %s", tag, len(mine), len(jobs),
                    len(jobs) - len(pending), device)
        done = generate_jobs([jobs[i] for i in mine], [configs[i] for i in mine], load=lambda job: load(job, device),
                             fps=fps, overwrite=overwrite, tag=tag, **options)
        for i, outcome in zip(mine, done):
            outcome.index, outcome.process = i, state.process_index
    if state.num_processes > 1:
        from accelerate.utils import gather_object

        done = gather_object([dataclasses.asdict(o) for o in done])
        done = [Outcome(**o) for o in done]
    if not state.is_main_process:
        return None
    written = {o.index: o for o in done}
    return [written.get(i) or Outcome(i, str(job.out), "skipped") for i, job in enumerate(jobs)]


def summary(outcomes: list[Outcome], seconds: float, processes: int) -> str:
    """One line: how many jobs were written and skipped, by how many processes, and the time."""
    written = [o for o in outcomes if o.status == "written"]
    where = {str(Path(o.out).parent) for o in outcomes}
    return (f"batch: {len(outcomes)} jobs, {len(written)} written, {len(outcomes) - len(written)} finished before "
            f"(skipped); {processes} process{'es' if processes > 1 else ''}, {seconds:.1f} s; in {', '.join(sorted(where))}")
