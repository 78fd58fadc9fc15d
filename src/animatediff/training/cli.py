"""``animatediff train MODE --config RECIPE [--key value ...] [--resume DIR]``.

Every ``TrainConfig`` field is an option (``--learning_rate 3e-5``, also spelled ``--learning-rate``), so
argparse itself rejects unknown keys and ``--help`` lists them all. Precedence: defaults < recipe < options.

The same command scales out with Accelerate, no launcher of our own::

    accelerate launch --num_processes 2 --cpu -m animatediff.training.cli motion-module --config tiny-motion-module ...
    accelerate launch --multi_gpu --num_processes 8 --mixed_precision bf16 -m animatediff.training.cli motion-module --config motion-module ...
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields

from ..errors import UserInputError
from .config import MODES, TrainConfig, load_config, shipped_recipes

logger = logging.getLogger(__name__)

# Errors name TrainConfig fields; every field is the option of the same name.
FIELD_FLAGS = {"mode": "MODE", **{f.name: f"--{f.name}" for f in fields(TrainConfig) if f.name != "mode"}}


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train", help="train an image model, domain adapter, motion module or MotionLoRA",
        description="Train one AnimateDiff stage. Recipes shipped: " + ", ".join(shipped_recipes()),
    )
    _add_arguments(parser)
    parser.set_defaults(func=run_train, field_flags=FIELD_FLAGS)
    return parser


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("--config", required=True, help="recipe YAML file, or a shipped recipe name (e.g. tiny-motion-module)")
    parser.add_argument("--resume", help="continue from an output dir (its latest checkpoint) or a checkpoints/step-N dir")
    group = parser.add_argument_group("recipe overrides (any recipe key)")
    for f in fields(TrainConfig):
        if f.name == "mode":
            continue
        flags = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
        nargs = "+" if f.name in ("validation_prompts", "validation_seeds") else "?" if f.type in (bool, "bool") else None
        bare = {"const": "true"} if nargs == "?" else {}  # a bare bool switch (--overwrite) means true
        group.add_argument(*flags, dest=f"override_{f.name}", metavar="VALUE", nargs=nargs, default=None, **bare)


def _parse_value(text: str):
    """YAML scalars: ``1e-4`` -> float, ``true`` -> bool, ``null`` -> None, else the string."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
        try:
            return float(value) if any(c in value for c in ".eE") else value
        except ValueError:
            return value
    return value


def overrides_from_args(args: argparse.Namespace) -> dict:
    out = {}
    for f in fields(TrainConfig):
        raw = getattr(args, f"override_{f.name}", None)
        if raw is not None:
            out[f.name] = [_parse_value(v) for v in raw] if isinstance(raw, list) else _parse_value(raw)
    return out


def run_train(args: argparse.Namespace) -> int:
    from .loop import train

    config = load_config(args.mode, args.config, overrides_from_args(args))
    if config.base_model is None:
        raise UserInputError("required (a diffusers folder or a .safetensors/.ckpt file of an SD1.5 model)", field="base_model")
    result = train(config, resume=args.resume)
    from accelerate import PartialState

    PartialState().destroy_process_group()  # all processes leave together (see cli._run_batch); no-op for one
    if result.exported is not None:
        logger.info("trained weights: %s", result.exported)
    if result.interrupted:
        logger.warning("interrupted at step %d; continue with --resume %s", result.step, config.output_dir)
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``python -m animatediff.training.cli`` (what ``accelerate launch -m`` runs)."""
    parser = argparse.ArgumentParser(prog="animatediff train")
    _add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return run_train(args)
    except UserInputError as e:
        print(f"error: {e.render(FIELD_FLAGS.get(e.field))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
