"""The ``animatediff`` command line: a thin layer over ``api.Animator`` and the recipe readers.

    animatediff generate "PROMPT" --model PATH --motion-module PATH [--lora F:S]... [--out clip.gif]
    animatediff generate --config official_prompts.yaml --model PATH
    [accelerate launch -m] animatediff generate --jobs prompts.txt --out clips   (batch.py: split, resumable)
    animatediff inspect FILE_OR_BUNDLED_NAME...
    animatediff train MODE --config recipe.yaml
    animatediff eval CLIP...
    animatediff ui [--host 127.0.0.1] [--port 7860] [--models-dir DIR] [--outputs DIR] [--max-queue 8]

Bad input ends with one ``error: ...`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import sys
import time
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

from .errors import UserInputError
from .evaluate import add_eval_parser
from .presets import MOTION_PRESETS
from .sampling.schedulers import SCHEDULER_PRESETS, SCHEDULERS
from .training.cli import add_train_parser
from .ui import add_ui_parser  # the web UI (issue 14); Gradio is imported only by `animatediff ui`

logger = logging.getLogger("animatediff")

# Library errors name config fields; the command line shows its own flags instead.
FIELD_FLAGS = {
    "num_frames": "--frames", "width": "--width", "height": "--height", "steps": "--steps",
    "guidance_scale": "--guidance", "seed": "--seed", "scheduler": "--scheduler", "scheduler_preset": "--scheduler-preset",
    "decode_chunk_size": "--decode-chunk-size", "negative_prompt": "--negative", "fps": "--fps", "out": "--out",
    "model": "--model", "model_config": "--model-config", "motion_module": "--motion-module",
    "motion_preset": "--motion-preset", "max_frames": "--max-frames", "loras": "--lora", "motion_loras": "--motion-lora",
    "adapter": "--adapter", "device": "--device", "dtype": "--dtype", "config": "--config",
    "noise_type": "--noise-type", "freeinit_iterations": "--freeinit-iterations", "freeinit_filter": "--freeinit-filter",
    "freeinit_spatial": "--freeinit-spatial", "freeinit_temporal": "--freeinit-temporal", "freeinit_fast": "--freeinit-fast",
    "view_context": "--view-context", "view_length": "--view-length", "view_overlap": "--view-overlap", "view_fuse": "--view-fuse",
    # prompt travel and motion scale/effect (add_prompt_travel_args)
    "prompt_map": "--prompt-map", "prompt_map_file": "--prompt-map-file", "negative_prompt_map": "--negative-prompt-map",
    "prompt_interpolation": "--prompt-interpolation", "prompt_wrap": "--prompt-wrap", "head_prompt": "--head-prompt",
    "tail_prompt": "--tail-prompt", "motion_scale": "--motion-scale", "motion_effect": "--motion-effect",
    "vae_tiling": "--vae-tiling",  # speed (add_speed_args)
    "cache_interval": "--cache-interval", "cache_branch": "--cache-branch", "compile": "--compile",  # speed: caching, compile
}


def parse_weighted(spec: str, option: str, default: float = 1.0) -> tuple[str, float]:
    """``FILE[:SCALE]`` -> (file, scale). The scale is split off the last colon only when it parses as a
    number, so Windows paths (``C:\\x.safetensors``) and names with colons still work; a tail that is neither
    a number nor part of an existing path (``style:abc``) is refused as a scale."""
    path, sep, tail = spec.rpartition(":")
    if sep and path:
        try:
            return path, float(tail)
        except ValueError:
            if looks_like_a_scale(tail) and not Path(spec).exists():
                raise UserInputError(f"{option} {spec}: scale {tail!r} is not a number; expected FILE or FILE:SCALE") from None
    if not spec:
        raise UserInputError(f"{option}: empty value; expected FILE or FILE:SCALE")
    return spec, default


def looks_like_a_scale(tail: str) -> bool:
    """Whether the text after a ``FILE:`` colon was meant as a scale: no path separator and no file extension
    (``C:\\x.safetensors`` and ``C:x.ckpt`` are paths, ``abc`` and ``1.2.3`` are bad scales)."""
    return bool(tail) and not re.search(r"[/\\]|\.[A-Za-z]\w*$", tail)


def parse_positive_int(text: str) -> int:
    """A whole number of at least 1 (``--max-frames``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1 (frames of the position encoding)")
    return value


SEED_MAX = 2**64 - 1  # torch.Generator.manual_seed takes 0 .. 2**64-1
DTYPES = ("auto", "float32", "float16", "bfloat16")


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (``error: --seed: ...``, exit 2) instead of the usage and a message."""

    def error(self, message: str):
        raise UserInputError(message.removeprefix("argument "))


def parse_seed(text: str) -> int:
    """``--seed``: 0 .. 2**64-1, or -1 for a fresh random seed (as in the official prompt YAMLs)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (0 .. 2**64-1, or -1 for a random seed)") from None
    if value != -1 and not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"{value} is outside 0 .. {SEED_MAX} (-1: a random seed)")
    return value


def parse_fps(text: str) -> float:
    """``--fps``: a positive number, decimal (``23.976``) or fraction (``24000/1001``); whole numbers stay ``int``."""
    try:
        value = float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError, OverflowError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (e.g. 8, 23.976 or 24000/1001)") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text}: must be more than 0 frames per second")
    return int(value) if value.is_integer() else value


def resolve_device(name: str) -> str:
    """``--device``: ``auto`` (CUDA when this torch can use it, else the CPU) or a device this torch can use.

    Raises ``UserInputError`` (field ``device``) naming the devices that are available, e.g. ``(available: cpu)``."""
    import torch

    available = ["cpu"]
    if torch.cuda.is_available():
        available += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        available.append("mps")
    wanted = name.strip().lower()
    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    listed = f"(available: {', '.join(available)})"
    try:
        device = torch.device(wanted)
    except (RuntimeError, ValueError):
        hint = "; a GPU is cuda (NVIDIA, AMD) or mps (Apple)" if wanted == "gpu" else ""
        raise UserInputError(f"not a torch device name{hint} {listed}", field="device", value=name) from None
    kinds = {a.partition(":")[0] for a in available}
    if device.type not in kinds:
        why = "this torch is a CPU-only build" if device.type == "cuda" and torch.version.cuda is None and torch.version.hip is None \
            else f"this torch sees no {device.type} device here"
        raise UserInputError(f"{why} {listed}", field="device", value=name)
    if device.index is not None and str(device) not in available:
        raise UserInputError(f"no such {device.type} device {listed}", field="device", value=name)
    return wanted


def _dtype(name: str, device: str):
    from .generation.precision import resolve_dtype  # speed (--dtype auto): the rule lives there

    return resolve_dtype(name, device)


def _settings_from_flags(args: argparse.Namespace) -> dict:
    """GenerationConfig fields the user gave explicitly (flags default to None so recipes can fill in)."""
    mapping = {
        "frames": "num_frames", "width": "width", "height": "height", "steps": "steps", "guidance": "guidance_scale",
        "seed": "seed", "scheduler": "scheduler", "scheduler_preset": "scheduler_preset", "decode_chunk_size": "decode_chunk_size",
        **{name: name for name in (*CONTEXT_FLAGS, *FREENOISE_FREEINIT_FIELDS, *SPEED_FIELDS)},  # flags whose dest is the field
    }
    settings = {field: getattr(args, flag) for flag, field in mapping.items() if getattr(args, flag) is not None}
    if settings.get("seed") == -1:
        settings["seed"] = None  # -1: a fresh random seed, recorded in the sidecar (also over a recipe's seeds)
    settings.update(_prompt_travel_settings(args))
    settings.update(_control_settings(args))
    settings.update(_image_settings(args))
    settings.update(_sparsectrl_settings(args))
    return settings


def _progress_bar(steps: int, label: str):
    from tqdm import tqdm

    bar = tqdm(total=steps, desc=label, unit="step", leave=False, file=sys.stderr, disable=None)

    def update(step: int, total: int) -> None:
        bar.total = total
        bar.n = step
        bar.refresh()
        if step >= total:
            bar.close()

    return update


def run_generate(args: argparse.Namespace) -> int:
    from .generation.config import GenerationConfig
    from .batch import output_name
    from .recipes import GenerateJob, load_official_recipe, slug
    from .video_io import check_output

    device = resolve_device(args.device)  # every value is checked before any model loads
    if args.compile:  # speed: refused here, not after loading, where torch.compile cannot run
        from .generation.compiled import check as check_compile

        check_compile(device)
    overrides = _settings_from_flags(args)
    loras = [parse_weighted(s, "--lora") for s in args.lora]
    motion_loras = [parse_weighted(s, "--motion-lora") for s in args.motion_lora]
    adapter = parse_weighted(args.adapter, "--adapter") if args.adapter else None

    if args.config or args.jobs:  # a batch (batch.py): resumable, split across `accelerate launch` processes
        if args.prompt or (args.config and args.jobs):
            raise UserInputError("give one of a PROMPT, --config FILE.yaml or --jobs FILE")
        state = _batch_state()
        jobs = load_official_recipe(args.config, args.model, overrides) if args.config else _jobs_from_file(args, overrides)
        source = args.config or args.jobs
        out_dir = Path(args.out) if args.out else \
            Path("outputs") / _same_everywhere(f"{Path(source).stem}-{time.strftime('%Y%m%d-%H%M%S')}", state)
        suffix = ".gif"
        if out_dir.suffix:
            raise UserInputError(f"with {'--config' if args.config else '--jobs'}, --out is a folder (one file per prompt)",
                                 field="out", value=out_dir)
        if out_dir.exists() and not out_dir.is_dir():
            raise UserInputError(f"exists and is a file; with {'--config' if args.config else '--jobs'}, --out is a folder "
                                 "(one file per prompt)", field="out", value=out_dir)
        for i, job in enumerate(jobs):
            job.loras += loras
            job.motion_loras += motion_loras
            job.adapter = adapter or job.adapter
            for field, given in (("loras", loras), ("motion_loras", motion_loras), ("adapter", adapter)):
                if given:  # a flag took part: an error about it may be the flag's
                    job.keys.pop(field, None)
            job.out = out_dir / output_name(i, job.prompt or "prompt-travel", job.settings.get("seed"), suffix)
    else:
        if not args.prompt and "prompt_map" not in overrides:
            raise UserInputError("generate: give a PROMPT (or --prompt-map, or --config FILE.yaml)")
        from .bundled import image_to_video_settings, resolve  # no --model: the bundled demo family; bundled names -> files

        found = resolve(args.model, args.motion_module, loras, motion_loras, adapter)
        name = args.prompt or "prompt-travel"
        out = Path(args.out) if args.out else Path("outputs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{slug(name, 6)}.gif"
        jobs = [
            GenerateJob(model=found.model, motion_module=found.motion_module, prompt=args.prompt or "", negative_prompt=args.negative or "",
                        loras=found.loras, motion_loras=found.motion_loras, adapter=found.adapter,
                        settings={**found.defaults, **image_to_video_settings(overrides, found.sparsectrl)}, out=out)
        ]
    for job in jobs if not (args.config or args.jobs) else ():  # a batch checks them with its resume plan
        check_output(job.out, overwrite=args.overwrite)
    configs = []
    for job in jobs:
        with _named_in_recipe(job, args.config):
            configs.append(GenerationConfig(prompt=job.prompt, negative_prompt=job.negative_prompt, **job.settings))
            configs[-1].validate()  # what needs no model is refused now, not after loading gigabytes (again after load)
    from .bundled import is_bundled_model

    for job in jobs:
        if job.motion_module is None and not is_bundled_model(job.model):  # the bundled family brings its module
            missing = f"{args.config}, {job.where}: no motion_module" if job.where else "no --motion-module"
            logger.warning("%s: frames are generated independently (no motion)", missing)
    if args.config or args.jobs:
        return _run_batch(jobs, configs, args, device, state)
    return _run_jobs(jobs, configs, args, device)


@contextmanager
def _named_in_recipe(job, recipe: str | None):
    """An error about a value that came from the prompt YAML names the job and the YAML key (``L``), not the
    flag (``--frames``) the user never gave."""
    try:
        yield
    except UserInputError as e:
        key = job.keys.get(e.field)
        if key is None:
            raise
        raise UserInputError(e.render(f"--config {recipe}: {job.where}, {key}")) from None


def _run_jobs(jobs, configs, args, device: str) -> int:
    _quiet_third_party()
    from .api import Animator

    dtype = _dtype(args.dtype, device)
    animator, loaded = None, None
    for job, config in zip(jobs, configs):
        with _named_in_recipe(job, args.config):
            key = (job.model, job.motion_module)
            if key != loaded:
                animator = None  # free the previous model before loading the next one
                bundled = job.model is None  # no --model: Animator.load takes the bundled demo family
                logger.info("loading %s + %s", job.model or "the bundled demo model",
                            job.motion_module or ("its motion module" if bundled else "no motion module"))
                animator = Animator.load(job.model, job.motion_module, motion_preset=args.motion_preset, max_frames=args.max_frames,
                                         dtype=dtype, device=device, model_config=args.model_config, compile=args.compile)
                loaded = key
            animator.set_loras(job.loras, job.motion_loras, job.adapter)
            start = time.perf_counter()
            result = animator.generate(config, progress=_progress_bar(config.steps or 0, "denoising"))
            path = animator.save(result, job.out, fps=args.fps, overwrite=args.overwrite)
        logger.info("wrote %s (seed %d, %.1f s)", path, result.seed, time.perf_counter() - start)
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    """Describe each file, folder or bundled name (resolved as ``generate`` resolves it); a bad one is one
    ``error:`` line and the next is still described; exit 2 at the end if any was bad."""
    from .bundled import NAMES, bundled_file
    from .weights.detect import describe_file

    bad = 0
    for name in args.files:
        try:
            path = bundled_file(name)
            if not Path(path).expanduser().exists():
                named = "/" not in name and "\\" not in name and not Path(name).suffix  # a name, not a path
                raise UserInputError(f"{name}: no such file or folder" + (f", nor a bundled name ({', '.join(NAMES)})" if named else ""))
            print(describe_file(path).summary() + (f"\n  bundled file: {path}" if path != name else ""), flush=True)
        except UserInputError as e:  # the line names the argument as typed (a bundled name's error names its field)
            print(f"error: {e.detail if e.field is None else f'{name}: {e.detail}'}", file=sys.stderr, flush=True)
            bad += 1
    return 2 if bad else 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="animatediff", description="AnimateDiff: animate personalised Stable Diffusion models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="text-to-video", description="Generate an animation from a prompt or an official prompt YAML.")
    add_core_args(gen)  # prompt and output, model files, clip and sampling, device and precision
    add_context_args(gen)
    add_freenoise_freeinit_args(gen)
    gen.set_defaults(func=run_generate)

    ins = sub.add_parser("inspect", help="say what a model file is")
    ins.add_argument("files", nargs="+", metavar="FILE", help="weight file, diffusers folder, or bundled name (base, demo, "
                     "personal-lora, ZoomIn ...)")
    ins.set_defaults(func=run_inspect)

    add_prompt_travel_args(gen)
    add_control_args(gen)
    add_image_args(gen)
    add_ip_adapter_args(gen)
    add_sparsectrl_args(gen)
    add_batch_args(gen)
    add_speed_args(gen)
    add_train_parser(sub)
    add_eval_parser(sub)
    add_ui_parser(sub)
    return parser


# ---- generate's core flags, in groups that read like the README's usage ---------------------------------------
def add_core_args(gen: argparse.ArgumentParser) -> None:
    """The prompt, output, model files and sampling settings (defaults None where a recipe or the model decides)."""
    from . import bundled

    helps = _model_default_helps()
    out = gen.add_argument_group("prompt and output")
    out.add_argument("prompt", nargs="?", help="the prompt (omit with --config)")
    out.add_argument("--negative", help="negative prompt")
    out.add_argument("--config", help="official AnimateDiff prompt-config YAML (configs/prompts/*.yaml)")
    out.add_argument("--out", help="output: .gif (default), .mp4, .webp, or a path without extension for PNG frames")
    out.add_argument("--fps", type=parse_fps, default=8,
                     help="frames per second of the output: 8 (default), 23.976, 24000/1001 ... (a GIF plays at most 50)")
    out.add_argument("--overwrite", action="store_true",
                     help="replace an existing output of another kind (in a PNG folder: only its frames and settings.json)")

    files = gen.add_argument_group("model files", "A bundled name is used only when no file or folder of that name exists.")
    files.add_argument("--model", help="base model: diffusers folder, cached Hugging Face repo id, or single-file .safetensors/.ckpt; "
                       f"bundled: {', '.join(bundled.MODELS)} (no --model: {bundled.MODELS[0]})")
    files.add_argument("--model-config", help="folder with unet/, vae/, text_encoder/ config.json for a single-file model that is not stock SD1.5/SDXL")
    files.add_argument("--motion-module", help="motion module file (official .ckpt/.safetensors or diffusers MotionAdapter); "
                       f"bundled: {', '.join(bundled.MOTION_MODULES)} (the bundled models' default)")
    files.add_argument("--motion-preset", type=str.lower, choices=list(MOTION_PRESETS), metavar="NAME",
                       help=f"force the motion module preset ({', '.join(MOTION_PRESETS)}) instead of detecting it; "
                            "conv-ablation is the paper's §5.3 temporal-convolution ablation, not an official format")
    files.add_argument("--max-frames", type=parse_positive_int, help="extend the (recomputed) position encoding to this many frames")
    files.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]",
                       help=f"community (kohya) LoRA, repeatable; bundled: {', '.join(bundled.LORAS)}")
    files.add_argument("--motion-lora", action="append", default=[], metavar="FILE[:ALPHA]",
                       help=f"MotionLoRA, repeatable; bundled: {', '.join(bundled.CAMERA_MOVES)}")
    files.add_argument("--adapter", metavar="FILE[:SCALE]", help=f"v3 domain adapter LoRA; bundled: {', '.join(bundled.ADAPTERS)}")

    clip = gen.add_argument_group(
        "clip and sampling", "Defaults as listed; a --config YAML's values replace them, and flags given win over both.")
    clip.add_argument("--frames", type=int, help=helps["num_frames"])
    clip.add_argument("--width", type=int, help=helps["width"])
    clip.add_argument("--height", type=int, help=helps["height"])
    clip.add_argument("--steps", type=int, help=helps["steps"])
    clip.add_argument("--guidance", type=float, help=helps["guidance_scale"])
    clip.add_argument("--seed", type=parse_seed, help="0 .. 2**64-1; -1 or none given: a fresh random seed, recorded in the sidecar")
    clip.add_argument("--scheduler", type=str.lower, choices=list(SCHEDULERS), metavar="NAME", help=helps["scheduler"])
    clip.add_argument("--scheduler-preset", type=str.lower, choices=list(SCHEDULER_PRESETS), metavar="NAME",
                      help=helps["scheduler_preset"])

    device = gen.add_argument_group("device and precision")
    device.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps (default auto: cuda if available, else cpu)")
    device.add_argument("--dtype", default="auto", type=str.lower, choices=DTYPES,
                        help=", ".join(DTYPES) + " (auto: float16 on CUDA, bfloat16 on CPUs with AMX, else float32)")
    device.add_argument("--decode-chunk-size", type=int, help="frames per VAE decode call")


def _model_default_helps() -> dict[str, str]:
    """Help for the settings whose default depends on the model, stated where each is decided: GenerationConfig's
    field defaults for model files; the sampler, steps and guidance of the scheduler preset (the motion module's;
    without one sdxl-beta for SDXL, else animatediff: schedulers.SAMPLING_DEFAULTS, filled in by
    GenerationConfig.resolved); and for the bundled models their demo.json ``generation_defaults`` (bundled.resolve)."""
    import dataclasses

    from .generation.config import GenerationConfig
    from .sampling.schedulers import SAMPLING_DEFAULTS

    config = {f.name: f.default for f in dataclasses.fields(GenerationConfig)}
    demo = _bundled_generation_defaults()

    def bundled_part(name: str) -> str:  # "; 10 for the bundled demo" (nothing when the bundle is not installed)
        value = demo.get(name)
        return "" if value is None else f"; {value:g} for the bundled demo" if isinstance(value, (int, float)) \
            else f"; {value} for the bundled demo"

    def by_preset(name: str) -> str:  # the preset's value for each preset; SD1.5 files get the animatediff preset
        shown = {preset: f"{getattr(d, name):g}" if name != "scheduler" else d.scheduler for preset, d in SAMPLING_DEFAULTS.items()}
        first, *others = shown
        return (f"default: the model's scheduler preset's, {shown[first]} for SD1.5 files ({first}), "
                + ", ".join(f"{shown[p]} {p}" for p in others) + bundled_part(name))

    return {
        "num_frames": f"num_frames (default {config['num_frames']}{bundled_part('num_frames')}; with --video its frame count)",
        "width": f"multiple of 8 (default {config['width']} for model files{bundled_part('width')})",
        "height": f"multiple of 8 (default {config['height']} for model files{bundled_part('height')})",
        "steps": f"denoising steps ({by_preset('steps')})",
        "guidance_scale": f"classifier-free guidance scale ({by_preset('guidance_scale')})",
        "scheduler": f"{', '.join(SCHEDULERS)} ({by_preset('scheduler')})",
        "scheduler_preset": f"{', '.join(SCHEDULER_PRESETS)} (default: the motion module's; without one sdxl-beta for SDXL "
                            f"models, else animatediff{bundled_part('scheduler_preset')})",
    }


def _bundled_generation_defaults() -> dict:
    """The bundled models' demo.json ``generation_defaults``, or {} when the bundle is not installed."""
    from . import bundled

    try:
        return bundled.generation_defaults()
    except (UserInputError, OSError, ValueError, KeyError):
        return {}


def _quiet_third_party(now: bool = True) -> None:
    """diffusers/transformers print their own loading bars and warnings; ours are enough.

    The environment variables reach them when they are imported later; ``now`` also imports them and switches
    them off directly (``generate`` checks its arguments and output targets first, without paying for them)."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network
    for variable in ("DIFFUSERS_VERBOSITY", "TRANSFORMERS_VERBOSITY"):
        os.environ.setdefault(variable, "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if not now:
        return
    import diffusers
    import transformers

    for library in (diffusers, transformers):
        library.utils.logging.set_verbosity_error()
        library.utils.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    _quiet_third_party(now=False)
    args = None
    try:
        args = build_parser().parse_args(argv)
        if args.command != "generate":  # generate does it once its checks have passed
            _quiet_third_party()
        level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
        logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
        return int(args.func(args) or 0)
    except UserInputError as e:
        flags = getattr(args, "field_flags", FIELD_FLAGS)  # a subcommand may spell its fields otherwise (train)
        print(f"error: {render_error(e, flags)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


# ---- how an error line shows a field's value: as the user typed it, not as the parsed list/dict ----------------
def _each(show):
    """One entry shown by ``show``; a list shown entry by entry, space-separated (as the repeated flags were)."""
    return lambda value: " ".join(map(show, value)) if isinstance(value, list) else show(value)


def _numbers(value) -> str:  # --motion-scale 1,2 (a list of floats was parsed from it)
    return ",".join(f"{v:g}" for v in value) if isinstance(value, (list, tuple)) else f"{value:g}"


def _at(key: str, number: str):  # {"image": "k.png", "index": 0} -> k.png@0
    return lambda entry: f"{entry[key]}@{entry[number]}" if number in entry else str(entry[key])


def _scaled(entry) -> str:  # {"path": "f.bin", "scale": 0.5} -> f.bin:0.5; ("style.safetensors", 1.0) -> style.safetensors:1
    if isinstance(entry, tuple):
        return f"{entry[0]}:{entry[1]:g}"
    numbers = [entry[k] for k in ("scale", "strength", "start", "end") if entry.get(k) is not None]
    return ":".join([str(entry["path"]), *(f"{n:g}" for n in numbers)])


VALUE_TEXT = {"motion_scale": _numbers, "motion_effect": _numbers, "sparsectrl_scale": _numbers,
              "keyframes": _each(_at("image", "index")), "ip_images": _each(_at("image", "frame")),
              "ip_adapter": _each(_scaled), "controlnets": _each(_scaled), "loras": _each(_scaled),
              "motion_loras": _each(_scaled)}
# library details name the switch by its field ("or overwrite to replace it"); every command spells it --overwrite
_OVERWRITE_WORD = re.compile(r"(?<![-\w])overwrite(?= to | never )")


def render_error(error: UserInputError, flags: dict) -> str:
    """The one ``error:`` line: the field as its flag, the value as typed, ``overwrite`` as ``--overwrite``."""
    shown = None
    if error.has_value and error.field in VALUE_TEXT and not isinstance(error.value, (str, Path)):
        try:
            shown = VALUE_TEXT[error.field](error.value)
        except (KeyError, TypeError, ValueError):  # an unexpected shape: str() as before
            shown = None
    return _OVERWRITE_WORD.sub("--overwrite", error.render(flags.get(error.field), shown))


# ---- context windows (sampling/context.py) -------------------------------------------------------------
CONTEXT_FLAGS = {"context": "--context", "context_length": "--context-length", "context_overlap": "--context-overlap",
                 "context_stride": "--context-stride", "context_fuse": "--context-fuse", "closed_loop": "--closed-loop",
                 "context_batch": "--context-batch"}  # GenerationConfig field -> flag (each flag's dest is the field)
FIELD_FLAGS.update(CONTEXT_FLAGS)


# ---- speed: tiled VAE ------------------------------------------------------------------------------------------
SPEED_FIELDS = ("vae_tiling", "cache_interval", "cache_branch")  # flags whose dest is their GenerationConfig field


def add_speed_args(parser: argparse.ArgumentParser) -> None:
    """``generate``'s speed/memory flags (``--dtype`` and ``--device`` are the model's, above)."""
    group = parser.add_argument_group("speed and memory")
    group.add_argument("--vae-tiling", dest="vae_tiling", action="store_true", default=None,
                       help="decode (and encode) one frame at a time in overlapping 256x256-pixel tiles: the VAE's memory "
                            "stays that of one tile at any size (pixels differ slightly at tile seams; default off)")
    # speed: DeepCache-style feature caching (generation/feature_cache.py) and torch.compile (generation/compiled.py)
    group.add_argument("--cache-interval", dest="cache_interval", type=int, metavar="N",
                       help="run the whole UNet every N steps and only its outer blocks in between, reusing the deep "
                            "features: faster, lower quality (default 1: off; README \"Feature caching\")")
    group.add_argument("--cache-branch", dest="cache_branch", type=int, metavar="B",
                       help="with --cache-interval: the skip branch the cached feature enters (0, the default: the "
                            "shallowest and fastest; higher: more blocks run, closer to uncached)")
    group.add_argument("--compile", action="store_true", help="torch.compile the UNet and its motion modules after "
                       "loading: a one-off compile (minutes), then faster steps where the backend helps (README)")


def add_context_args(parser: argparse.ArgumentParser) -> None:
    """``generate``'s flags for long clips (defaults None: the GenerationConfig defaults or the recipe's apply)."""
    from .sampling.context import FUSE_METHODS, SCHEDULES

    group = parser.add_argument_group(
        "long clips (context windows)",
        "Frames beyond the motion module's position-encoding length are denoised in overlapping windows: "
        "uniform windows of 16 frames, overlap 4, unless set here.")
    group.add_argument("--context", type=str.lower, choices=("none", *SCHEDULES), metavar="SCHEDULE",
                       help="static (fixed windows), uniform (seams move every step), looped (the clip loops), batched "
                            "(no overlap), none (one pass: refuse more frames than the encoding length)")
    group.add_argument("--context-length", dest="context_length", type=int, metavar="N",
                       help="frames per window (default 16, or the encoding length if shorter; at most that length)")
    group.add_argument("--context-overlap", dest="context_overlap", type=int, metavar="N",
                       help="frames shared by neighbouring windows (default a quarter of the length: 4; less than --context-length)")
    group.add_argument("--context-stride", dest="context_stride", type=int, metavar="S",
                       help="dilation levels: windows of frames up to 2**(S-1) apart for long-range coherence (default 1)")
    group.add_argument("--context-fuse", dest="context_fuse", type=str.lower, choices=FUSE_METHODS, metavar="METHOD",
                       help=f"how overlapping windows are averaged: {', '.join(FUSE_METHODS)} (default pyramid)")
    group.add_argument("--closed-loop", dest="closed_loop", action="store_true", default=None,
                       help="make the clip loop: looped windows that also join the last frames to the first")
    group.add_argument("--context-batch", dest="context_batch", type=int, metavar="K",
                       help="windows per UNet call (default 1; more is faster where memory allows)")


# ---- FreeNoise, view windows, FreeInit (sampling/freenoise.py, sampling/freeinit.py) ------------------------
FREENOISE_FREEINIT_FIELDS = ("noise_type", "view_context", "view_length", "view_overlap", "view_fuse", "freeinit_iterations",
                             "freeinit_filter", "freeinit_spatial", "freeinit_temporal", "freeinit_fast")


def add_freenoise_freeinit_args(gen: argparse.ArgumentParser) -> None:
    """``generate`` flags for FreeNoise noise, view windows and FreeInit; each flag's dest is its GenerationConfig field."""
    from .sampling.freeinit import FILTERS
    from .sampling.freenoise import FUSE_METHODS, NOISE_TYPES, VIEW_SCHEDULES

    group = gen.add_argument_group("FreeNoise, view windows, FreeInit")
    group.add_argument("--noise-type", dest="noise_type", type=str.lower, choices=NOISE_TYPES, metavar="NAME",
                       help="initial noise over context windows: plain (default), random (= plain), shuffle (FreeNoise: each "
                            "hop reuses earlier noise, locally shuffled), repeat (the first window's noise tiled)")
    group.add_argument("--view-context", dest="view_context", type=str.lower, choices=VIEW_SCHEDULES, metavar="NAME",
                       help=f"{', '.join(VIEW_SCHEDULES)}: run every motion module in windows of frames fused per frame "
                            "(spatial layers see all frames; default none)")
    group.add_argument("--view-length", dest="view_length", type=int, help="frames per view window (default 16)")
    group.add_argument("--view-overlap", dest="view_overlap", type=int, help="frames shared by neighbouring views (default 4)")
    group.add_argument("--view-fuse", dest="view_fuse", type=str.lower, choices=FUSE_METHODS, metavar="NAME",
                       help=f"{', '.join(FUSE_METHODS)}: how overlapping views are weighted (default pyramid)")
    group.add_argument("--freeinit-iterations", dest="freeinit_iterations", type=int, metavar="K",
                       help="FreeInit: K sampling passes, each re-noising the last result's low frequencies (1 = plain; "
                            "typical 3; K times slower)")
    group.add_argument("--freeinit-filter", dest="freeinit_filter", type=str.lower, choices=FILTERS, metavar="NAME",
                       help=f"{', '.join(FILTERS)}: FreeInit's low-pass filter (default butterworth, order 4)")
    group.add_argument("--freeinit-spatial", dest="freeinit_spatial", type=float, help="spatial stop frequency, 0..1 (default 0.25)")
    group.add_argument("--freeinit-temporal", dest="freeinit_temporal", type=float, help="temporal stop frequency, 0..1 (default 0.25)")
    group.add_argument("--freeinit-fast", dest="freeinit_fast", action="store_true", default=None,
                       help="coarse-to-fine: fewer steps in the early FreeInit iterations")



# ---- prompt travel and motion scale/effect (generation/prompt_travel.py) --------------------------------------
def parse_multival(text: str) -> float | list[float]:
    """``--motion-scale``/``--motion-effect``: one number, or comma-separated numbers (one per frame)."""
    try:
        values = [float(item) for item in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number or comma-separated numbers, one per frame") from None
    return values[0] if len(values) == 1 else values


def add_prompt_travel_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("prompt travel and motion control")
    group.add_argument("--prompt-map", metavar="MAP", help="frame-keyed prompts: '0: a red circle | 24: a blue square' "
                       "(also the A1111 multi-line box or a JSON object); replaces PROMPT")
    group.add_argument("--prompt-map-file", metavar="FILE", help="YAML/JSON with prompt_map {0: ..., 24: ...} and optional "
                       "head_prompt, tail_prompt, negative_prompt_map (animatediff-cli-prompt-travel's JSON is read as is); "
                       ".txt: the A1111 box")
    group.add_argument("--negative-prompt-map", metavar="MAP", help="frame-keyed negative prompts (same forms)")
    group.add_argument("--prompt-interpolation", type=str.lower, choices=["lerp", "slerp"], metavar="NAME",
                       help="between keys: lerp (default) or slerp (whole-tensor, lerp near parallel)")
    group.add_argument("--prompt-wrap", action="store_true", default=None,
                       help="after the last key travel back to the first (for loops)")
    group.add_argument("--head-prompt", metavar="TEXT", help="joined before every key prompt")
    group.add_argument("--tail-prompt", metavar="TEXT", help="joined after every key prompt")
    group.add_argument("--motion-scale", type=parse_multival, metavar="S[,S...]",
                       help="temporal-attention key scale (1: unchanged; <1 flatter, >1 sharper attention over frames); "
                       "one number or one per frame")
    group.add_argument("--motion-effect", type=parse_multival, metavar="E[,E...]",
                       help="motion-module strength (0: the image model, 1: unchanged); one number or one per frame")


def _prompt_travel_settings(args: argparse.Namespace) -> dict:
    """The prompt-travel and motion GenerationConfig fields given as flags (a --prompt-map-file read here)."""
    if args.prompt_map is not None and args.prompt_map_file is not None:
        raise UserInputError("give --prompt-map or --prompt-map-file, not both")
    if args.config and (args.prompt_map or args.prompt_map_file or args.negative_prompt_map):
        raise UserInputError("with --config, give prompt_map / negative_prompt_map in the YAML job")
    flags = {"prompt_map": "prompt_map", "negative_prompt_map": "negative_prompt_map", "prompt_interpolation": "prompt_interpolation",
             "prompt_wrap": "prompt_wrap", "head_prompt": "head_prompt", "tail_prompt": "tail_prompt",
             "motion_scale": "motion_scale", "motion_effect": "motion_effect"}
    settings = {field: getattr(args, flag) for flag, field in flags.items() if getattr(args, flag) is not None}
    if args.prompt_map_file is not None:
        from .generation.prompt_travel import read_prompt_map_file

        found = read_prompt_map_file(args.prompt_map_file)
        negative = found.pop("negative_prompt", None)  # CLI-PT's n_prompt; --negative wins
        if negative is not None and args.negative is None:
            args.negative = negative
        where = f"--prompt-map-file {args.prompt_map_file},"
        args.field_flags = {**FIELD_FLAGS, **{field: f"{where} {field}" for field in found if field not in settings}}
        settings = {**found, **settings}  # flags (--head-prompt ...) win over the file
    return settings


# ---- ControlNet per frame and video-to-video (generation/controlnet.py, generation/video_input.py) ------------
CONTROL_FLAGS = {"controlnets": "--controlnet", "control_preprocess": "--preprocess", "guess_mode": "--guess-mode",
                 "video": "--video", "strength": "--strength",
                 # not config fields: the hint files are read here, named by the flag that gave them
                 "control_video": "--control-video", "control_image": "--control-image"}
FIELD_FLAGS.update(CONTROL_FLAGS)


class _HintAction(argparse.Action):
    """--control-video / --control-image: one list of (kind, path) in the order given (one per --controlnet)."""

    def __call__(self, parser, namespace, value, option_string=None):
        hints = getattr(namespace, "control_hints", None) or []
        setattr(namespace, "control_hints", [*hints, (self.const, value)])


def add_control_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "ControlNet and video-to-video",
        "Inputs are scaled to cover --width x --height and centre-cropped; a shorter video repeats its last frame, "
        "a longer one is cut to --frames.")
    group.add_argument("--controlnet", action="append", metavar="FILE[:STRENGTH[:START:END]]",
                       help="SD1.5 ControlNet: diffusers folder or .safetensors (original or diffusers keys); strength "
                            "default 1, START:END fractions of the steps (default 0:1); repeatable")
    group.add_argument("--control-video", action=_HintAction, const="video", dest="control_hints", metavar="PATH",
                       help="hint frames for the next --controlnet in order: GIF, MP4, WebP or a PNG folder")
    group.add_argument("--control-image", action=_HintAction, const="image", dest="control_hints", metavar="PATH",
                       help="one hint image for every frame, for the next --controlnet in order")
    group.add_argument("--preprocess", type=str.lower, choices=["none", "canny", "scribble", "lineart"], metavar="NAME",
                       help="hint preprocessing: none (frames used as given, default), canny (edges), scribble (thick "
                            "strokes of the main contours) or lineart (soft thin lines); OpenCV, the [demo] extra; pose, "
                            "depth etc. are yours to make")
    group.add_argument("--guess-mode", action="store_true", default=None,
                       help="ControlNets only in the conditional half of guidance (the unconditional half gets no control)")
    group.add_argument("--video", metavar="PATH", help="video-to-video input (GIF, MP4, WebP, PNG folder); --frames "
                       "defaults to its frame count; ControlNets without their own hints use its frames")
    group.add_argument("--strength", type=float, metavar="S",
                       help="video-to-video: 0 < S <= 1, the last int(steps*S) steps run (default 0.8)")


def _control_settings(args: argparse.Namespace) -> dict:
    """The ControlNet / video-to-video fields given as flags; every input file is read once here, so a bad one is
    refused before any model loads."""
    from .generation import controlnet, video_input
    from .weights.files import read_keys

    settings = {}
    hints = getattr(args, "control_hints", None) or []
    nets = [controlnet.parse_controlnet_arg(text) for text in args.controlnet or []]
    if len(hints) > len(nets):
        raise UserInputError(f"{len(hints)} control videos/images for {len(nets)} --controlnet", field="controlnets")
    for net, (kind, path) in zip(nets, hints):
        net[kind] = path
    for net in nets:
        spec = controlnet.ControlNetSpec.from_value(net)
        if spec.image is not None:
            video_input.read_image(spec.image, "control_image")
        elif spec.video is not None:
            video_input.read_video(spec.video, "control_video")
        elif args.video is None:
            raise UserInputError("needs a --control-video or --control-image (or a --video)", field="controlnets", value=spec.path)
        if Path(spec.path).is_file():
            read_keys(spec.path)  # a corrupt file fails here, before the base model loads
    if nets:
        settings["controlnets"] = nets
    for name in ("control_preprocess", "guess_mode", "video", "strength"):
        value = getattr(args, "preprocess" if name == "control_preprocess" else name)
        if value is not None:
            settings[name] = value
    if args.video is not None:
        count, fps = video_input.video_frame_count(args.video, args.video_fps)  # resampled when --video-fps
        if args.frames is None:
            settings["num_frames"] = count
        logger.info("video %s: %d frames%s", args.video, count, f" at {fps:g} fps" if fps else "")
    return settings


# ---- image-to-video, video resampling, IP-Adapter (generation/image_input.py, generation/ip_adapter.py) --------
IMAGE_FLAGS = {"image": "--image", "image_strength": "--image-strength", "image_falloff": "--image-falloff",
               "video_fps": "--video-fps", "ip_adapter": "--ip-adapter", "ip_adapter_image_encoder": "--ip-adapter-image-encoder",
               "ip_images": "--ip-image"}
FIELD_FLAGS.update(IMAGE_FLAGS)


def add_image_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "image-to-video", "Animate a still without an encoder: frame i starts from a blend of the image's latent "
        "(weight image-strength x (1 - i / image-falloff)) and noise, then the last int(steps x --strength) steps run.")
    group.add_argument("--image", metavar="PATH", help="the still to animate (centre-cropped to --width x --height, "
                       "never stretched); --strength 0 < S <= 1 as for --video (default 0.8). With --sparsectrl, or "
                       "with a bundled family that has a SparseCtrl encoder (v2) and none of the blend's flags, the "
                       "image is the encoder's keyframe at frame 0 instead")
    group.add_argument("--image-strength", dest="image_strength", type=float, metavar="A",
                       help="the image's weight in frame 0's start latent, 0 < A <= 1 (default 1)")
    group.add_argument("--image-falloff", dest="image_falloff", type=float, metavar="FRAMES",
                       help="frames over which that weight falls linearly to 0 (default 32, A1111's latent scale)")
    group.add_argument("--video-fps", dest="video_fps", type=parse_fps, metavar="FPS",
                       help="video-to-video: resample the --video input to FPS frames per second (frames dropped or "
                            "repeated; --frames then defaults to the resampled count; give --fps FPS to play it so)")


def add_ip_adapter_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "IP-Adapter", "Reference images as image prompts (diffusers' load_ip_adapter files, base and Plus). Several "
        "--ip-image with frames travel: their embeddings are interpolated per frame like --prompt-map.")
    group.add_argument("--ip-adapter", action="append", metavar="FILE[:SCALE]",
                       help="IP-Adapter .bin or .safetensors (image_proj + ip_adapter), scale default 1; repeatable")
    group.add_argument("--ip-adapter-image-encoder", dest="ip_adapter_image_encoder", metavar="DIR",
                       help="local CLIPVisionModelWithProjection folder (h94/IP-Adapter models/image_encoder for SD1.5)")
    group.add_argument("--ip-image", action="append", metavar="PATH[@FRAME]",
                       help="reference image, at FRAME (default 0); one image serves every frame; repeatable")


def _image_settings(args: argparse.Namespace) -> dict:
    """The image-to-video and IP-Adapter fields given as flags; the images and adapter files are read here, so a
    bad one is refused before any model loads."""
    from .generation import ip_adapter, video_input

    settings = {}
    if args.image is not None:
        video_input.read_image(args.image, "image")
    if args.ip_adapter:
        settings["ip_adapter"] = [ip_adapter.parse_ip_adapter_arg(text) for text in args.ip_adapter]
        for entry in settings["ip_adapter"]:
            spec = ip_adapter.AdapterSpec.from_value(entry)
            if not Path(spec.path).is_file():
                raise UserInputError("no such file", field="ip_adapter", value=spec.path)
            ip_adapter.kind_of(ip_adapter.read_adapter(spec.path)["image_proj"], spec.path)
    if args.ip_image:
        settings["ip_images"] = [ip_adapter.parse_ip_image_arg(text) for text in args.ip_image]
        for entry in settings["ip_images"]:
            video_input.read_image(entry["image"], "ip_images")
    for name in ("image", "image_strength", "image_falloff", "video_fps", "ip_adapter_image_encoder"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    return settings


# ---- SparseCtrl (generation/sparsectrl.py) -----------------------------------------------------------------
SPARSECTRL_FLAGS = {"sparsectrl": "--sparsectrl", "keyframes": "--keyframe", "sparsectrl_scale": "--sparsectrl-scale",
                    "sparsectrl_start": "--sparsectrl-start", "sparsectrl_end": "--sparsectrl-end",
                    "sparsectrl_normalize": "--sparsectrl-normalize"}
FIELD_FLAGS.update(SPARSECTRL_FLAGS)


def add_sparsectrl_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "SparseCtrl", "Keyframe images steer the clip (AnimateDiff v3 SparseCtrl, SD1.5): one at frame 0 animates a "
        "still, first and last interpolate, several scribbles make a storyboard. Images are centre-cropped to the "
        "clip's aspect, then resized.")
    group.add_argument("--sparsectrl", metavar="FILE", help="SparseCtrl encoder: v3_sd15_sparsectrl_rgb.ckpt or "
                       "_scribble.ckpt (official or diffusers keys; the flavour is read from the file), or the bundled "
                       "family's sparsectrl-rgb; none: no encoder (--image then uses the init-latent blend)")
    group.add_argument("--keyframe", action="append", metavar="IMAGE@INDEX",
                       help="a keyframe image at a frame (negative: from the end, -1 = last); repeatable")
    group.add_argument("--sparsectrl-scale", type=parse_multival, metavar="S",
                       help="residual scale: a number (default 1) or one per frame (comma-separated)")
    group.add_argument("--sparsectrl-start", type=float, metavar="F", help="first fraction of the steps it runs (default 0)")
    group.add_argument("--sparsectrl-end", type=float, metavar="F", help="last fraction of the steps it runs (default 1)")
    group.add_argument("--sparsectrl-normalize", action="store_true", default=None,
                       help="keyframes to grey, min-max scaled (for scribbles; the official normalize_condition_images)")


def _sparsectrl_settings(args: argparse.Namespace) -> dict:
    """The SparseCtrl fields given as flags; the encoder's keys and every keyframe image are read here, so a bad
    file is refused before any model loads."""
    from .generation import sparsectrl, video_input
    from .weights.files import read_keys
    from .weights.sparsectrl import flavour

    settings = {name: getattr(args, name) for name in SPARSECTRL_FLAGS if name != "keyframes" and getattr(args, name) is not None}
    if args.sparsectrl is not None:  # a bundled name -> its file; `none` (not a file): explicitly no encoder
        from .bundled import NO_SPARSECTRL, sparsectrl_path

        none = args.sparsectrl == NO_SPARSECTRL and not Path(args.sparsectrl).exists()
        args.sparsectrl = settings["sparsectrl"] = None if none else sparsectrl_path(args.sparsectrl)
    if args.keyframe:
        settings["keyframes"] = [sparsectrl.parse_keyframe_arg(text) for text in args.keyframe]
        for keyframe in settings["keyframes"]:
            video_input.read_image(keyframe["image"], "keyframes")
    if args.sparsectrl is not None and Path(args.sparsectrl).is_file():
        try:
            keys = read_keys(args.sparsectrl)
        except UserInputError as e:
            raise UserInputError(e.detail.removeprefix(f"{args.sparsectrl}: "), field="sparsectrl", value=args.sparsectrl) from None
        if flavour(keys) is None:
            raise UserInputError("is not a SparseCtrl encoder (no controlnet_cond_embedding weights)", field="sparsectrl",
                                 value=args.sparsectrl)
    return settings


# ---- batch generation across processes (batch.py) -------------------------------------------------------------
FIELD_FLAGS["jobs"] = "--jobs"


def add_batch_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "batches (--config or --jobs)",
        "Job i is written to OUT/<i>-<prompt words>[-seed<S>].gif; running the same command again skips the jobs "
        "whose output and settings sidecar are there (give --out to resume: the default folder has the time in "
        "it). Under `accelerate launch -m animatediff generate ...` the jobs are split across the processes, one "
        "device each.")
    group.add_argument("--jobs", metavar="FILE", help="prompts: a text file, one per line (# comments), or a YAML/JSON "
                       "list of prompts or of {prompt, negative_prompt, seed} mappings; the flags set everything else")


def _batch_state():
    from .batch import process_state

    return process_state()


def _same_everywhere(value, state):
    from .batch import same_on_every_process

    return same_on_every_process(value, state)


def _jobs_from_file(args: argparse.Namespace, overrides: dict) -> list:
    """--jobs FILE: one GenerateJob per prompt, with the model files and settings of the flags."""
    from .batch import read_jobs_file
    from .bundled import image_to_video_settings, resolve
    from .recipes import GenerateJob

    items = read_jobs_file(args.jobs)
    loras = [parse_weighted(s, "--lora") for s in args.lora]
    motion_loras = [parse_weighted(s, "--motion-lora") for s in args.motion_lora]
    found = resolve(args.model, args.motion_module, loras, motion_loras,
                    parse_weighted(args.adapter, "--adapter") if args.adapter else None)
    jobs = []
    for item in items:
        settings = {**found.defaults, **image_to_video_settings(overrides, found.sparsectrl)}  # --image: as one prompt does
        if "seed" in item:  # the item's seed wins over --seed (-1 there: random)
            settings["seed"] = item["seed"]
        jobs.append(GenerateJob(model=found.model, motion_module=found.motion_module, prompt=item["prompt"],
                                negative_prompt=item.get("negative_prompt", args.negative or ""), settings=settings))
    return jobs


def _run_batch(jobs, configs, args, device: str, state) -> int:
    """Every process runs this; each generates its share; the main process prints the summary."""
    _quiet_third_party()
    from .api import Animator
    from .batch import run_batch, summary

    start = time.perf_counter()
    if state.num_processes > 1 and args.device == "auto":
        device = str(state.device)  # cuda:<local rank>, or the CPU

    def load(job, device):
        return Animator.load(job.model, job.motion_module, motion_preset=args.motion_preset, max_frames=args.max_frames,
                             dtype=_dtype(args.dtype, device), device=device, model_config=args.model_config,
                             compile=args.compile)

    outcomes = run_batch(jobs, configs, load=load, fps=args.fps, overwrite=args.overwrite, device=device, state=state,
                         progress=lambda steps: _progress_bar(steps, "denoising"),
                         context=lambda job: _named_in_recipe(job, args.config))
    if outcomes is not None:
        print(summary(outcomes, time.perf_counter() - start, state.num_processes))
    if state.num_processes > 1:
        # leave the gloo/NCCL group together: a process exiting while another's group threads still run aborts
        # it ("terminate called without an active exception", SIGABRT) and the launch fails after the work is done
        state.wait_for_everyone()
        state.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
