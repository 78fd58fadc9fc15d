"""The ``animatediff`` command line: a thin layer over ``api.Animator`` and the recipe readers.

    animatediff generate "PROMPT" --model PATH --motion-module PATH [--lora F:S]... [--out clip.gif]
    animatediff generate --config official_prompts.yaml --model PATH
    animatediff inspect FILE...
    animatediff train MODE --config recipe.yaml
    animatediff eval CLIP...

Bad input ends with one ``error: ...`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from .errors import UserInputError

logger = logging.getLogger("animatediff")

# Library errors name config fields; the command line shows its own flags instead.
FIELD_FLAGS = {
    "num_frames": "--frames", "width": "--width", "height": "--height", "steps": "--steps",
    "guidance_scale": "--guidance", "seed": "--seed", "scheduler": "--scheduler", "scheduler_preset": "--scheduler-preset",
    "decode_chunk_size": "--decode-chunk-size", "negative_prompt": "--negative", "fps": "--fps", "out": "--out",
    "model": "--model", "model_config": "--model-config", "motion_module": "--motion-module",
    "motion_preset": "--motion-preset", "max_frames": "--max-frames", "loras": "--lora", "motion_loras": "--motion-lora",
    "adapter": "--adapter", "device": "--device", "dtype": "--dtype", "config": "--config",
}


def parse_weighted(spec: str, option: str, default: float = 1.0) -> tuple[str, float]:
    """``FILE[:SCALE]`` -> (file, scale). The scale is split off the last colon only when it parses as a
    number, so Windows paths (``C:\\x.safetensors``) and names with colons still work."""
    path, sep, tail = spec.rpartition(":")
    if sep and path:
        try:
            return path, float(tail)
        except ValueError:
            pass
    if not spec:
        raise UserInputError(f"{option}: empty value; expected FILE or FILE:SCALE")
    return spec, default


def _settings_from_flags(args: argparse.Namespace) -> dict:
    """GenerationConfig fields the user gave explicitly (flags default to None so recipes can fill in)."""
    mapping = {
        "frames": "num_frames", "width": "width", "height": "height", "steps": "steps", "guidance": "guidance_scale",
        "seed": "seed", "scheduler": "scheduler", "scheduler_preset": "scheduler_preset", "decode_chunk_size": "decode_chunk_size",
    }
    return {field: getattr(args, flag) for flag, field in mapping.items() if getattr(args, flag) is not None}


def _device_and_dtype(args):
    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = args.dtype
    if dtype == "auto":
        dtype = "float16" if device.startswith("cuda") else "float32"
    return device, getattr(torch, dtype)


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
    from .recipes import GenerateJob, load_official_recipe, slug

    overrides = _settings_from_flags(args)
    loras = [parse_weighted(s, "--lora") for s in args.lora]
    motion_loras = [parse_weighted(s, "--motion-lora") for s in args.motion_lora]
    adapter = parse_weighted(args.adapter, "--adapter") if args.adapter else None

    if args.config:
        if args.prompt:
            raise UserInputError("give either a PROMPT or --config FILE.yaml, not both")
        jobs = load_official_recipe(args.config, args.model, overrides)
        out_dir = Path(args.out) if args.out else Path("outputs") / f"{Path(args.config).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        suffix = ".gif"
        if out_dir.suffix:
            raise UserInputError("with --config, --out is a folder (one file per prompt)", field="out", value=out_dir)
        if out_dir.exists() and not out_dir.is_dir():
            raise UserInputError("exists and is a file; with --config, --out is a folder (one file per prompt)",
                                 field="out", value=out_dir)
        for i, job in enumerate(jobs):
            job.loras += loras
            job.motion_loras += motion_loras
            job.adapter = adapter or job.adapter
            job.out = out_dir / f"{i}-{slug(job.prompt)}{suffix}"
    else:
        if not args.prompt:
            raise UserInputError("generate: give a PROMPT (or --config FILE.yaml)")
        from .bundled import resolve  # no --model: the bundled demo family; bundled names -> files

        found = resolve(args.model, args.motion_module, loras, motion_loras, adapter)
        out = Path(args.out) if args.out else Path("outputs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{slug(args.prompt, 6)}.gif"
        jobs = [
            GenerateJob(model=found.model, motion_module=found.motion_module, prompt=args.prompt, negative_prompt=args.negative or "",
                        loras=found.loras, motion_loras=found.motion_loras, adapter=found.adapter,
                        settings={**found.defaults, **overrides}, out=out)
        ]
    from .video_io import check_output

    for job in jobs:  # every output target is checked before any model loads
        check_output(job.out, overwrite=args.overwrite)
    for job in jobs:
        if job.motion_module is None:
            logger.warning("no --motion-module: frames are generated independently (no motion)")
    return _run_jobs(jobs, args)


def _run_jobs(jobs, args) -> int:
    from .api import Animator
    from .generation.pipeline import GenerationConfig

    device, dtype = _device_and_dtype(args)
    animator, loaded = None, None
    for job in jobs:
        key = (job.model, job.motion_module)
        if key != loaded:
            animator = None  # free the previous model before loading the next one
            logger.info("loading %s + %s", job.model, job.motion_module or "no motion module")
            animator = Animator.load(job.model, job.motion_module, motion_preset=args.motion_preset,
                                     max_frames=args.max_frames, dtype=dtype, device=device, model_config=args.model_config)
            loaded = key
        animator.set_loras(job.loras, job.motion_loras, job.adapter)
        config = GenerationConfig(prompt=job.prompt, negative_prompt=job.negative_prompt, **job.settings)
        start = time.perf_counter()
        result = animator.generate(config, progress=_progress_bar(config.steps or 0, "denoising"))
        path = animator.save(result, job.out, fps=args.fps, overwrite=args.overwrite)
        logger.info("wrote %s (seed %d, %.1f s)", path, result.seed, time.perf_counter() - start)
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    from .weights.detect import describe_file

    for path in args.files:
        print(describe_file(path).summary())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="animatediff", description="AnimateDiff: animate personalised Stable Diffusion models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="text-to-video", description="Generate an animation from a prompt or an official prompt YAML.")
    gen.add_argument("prompt", nargs="?", help="the prompt (omit with --config)")
    gen.add_argument("--config", help="official AnimateDiff prompt-config YAML (configs/prompts/*.yaml)")
    gen.add_argument("--model", help="base model: diffusers folder, cached Hugging Face repo id, or single-file .safetensors/.ckpt; "
                     "bundled: base (the default), personal")
    gen.add_argument("--model-config", help="folder with unet/, vae/, text_encoder/ config.json for a single-file model that is not stock SD1.5/SDXL")
    gen.add_argument("--motion-module", help="motion module file (official .ckpt/.safetensors or diffusers MotionAdapter)")
    gen.add_argument("--motion-preset", help="force the motion module preset (v1, v2, v3, sdxl-beta, animatelcm, lightning) instead of detecting it")
    gen.add_argument("--max-frames", type=int, help="extend the (recomputed) position encoding to this many frames")
    gen.add_argument("--negative", help="negative prompt")
    gen.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]", help="community (kohya) LoRA, repeatable")
    gen.add_argument("--motion-lora", action="append", default=[], metavar="FILE[:ALPHA]", help="MotionLoRA, repeatable")
    gen.add_argument("--adapter", metavar="FILE[:SCALE]", help="v3 domain adapter LoRA")
    gen.add_argument("--frames", type=int, help="num_frames (default 16)")
    gen.add_argument("--width", type=int, help="default 512 (the bundled demo model: 64)")
    gen.add_argument("--height", type=int, help="default 512 (the bundled demo model: 64)")
    gen.add_argument("--steps", type=int, help="denoising steps (default 25)")
    gen.add_argument("--guidance", type=float, help="classifier-free guidance scale (default 7.5)")
    gen.add_argument("--seed", type=int, help="random seed (default: a fresh one, recorded in the sidecar)")
    gen.add_argument("--scheduler", help="ddim, euler, euler_a, dpm++2m, lcm")
    gen.add_argument("--scheduler-preset", help="animatediff (default), sdxl-beta, lightning, animatelcm")
    gen.add_argument("--decode-chunk-size", type=int, help="frames per VAE decode call")
    gen.add_argument("--fps", type=int, default=8, help="frames per second of the output (default 8)")
    gen.add_argument("--out", help="output: .gif (default), .mp4, .webp, or a path without extension for PNG frames")
    gen.add_argument("--overwrite", action="store_true",
                     help="replace an existing output of another kind (in a PNG folder: only its frames and settings.json)")
    gen.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    gen.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    gen.set_defaults(func=run_generate)

    ins = sub.add_parser("inspect", help="say what a model file is")
    ins.add_argument("files", nargs="+")
    ins.set_defaults(func=run_inspect)

    for module, adder in (("animatediff.training.cli", "add_train_parser"), ("animatediff.evaluate", "add_eval_parser")):
        try:
            getattr(__import__(module, fromlist=[adder]), adder)(sub)
        except (ImportError, AttributeError) as e:  # a subcommand whose module is absent stays unavailable
            logger.debug("subcommand from %s unavailable: %s", module, e)
    return parser


def _quiet_third_party() -> None:
    """diffusers/transformers print their own loading bars and warnings; ours are enough."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network
    # importing the package already imported diffusers/transformers, so switch them off directly too
    import diffusers
    import transformers

    for library in (diffusers, transformers):
        library.utils.logging.set_verbosity_error()
        library.utils.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    _quiet_third_party()
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except UserInputError as e:
        print(f"error: {e.render(FIELD_FLAGS.get(e.field))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
