"""SDXL end to end through the command line, on files fabricated in the real layouts
(``scripts/fabricate_checkpoints.py --base sdxl``): a single-file bf16 checkpoint, the SDXL-beta motion module
and a kohya SDXL LoRA (``lora_unet_`` LDM names, ``lora_te1_``/``lora_te2_``).

The tiny-width run takes seconds; the full-size one (3.5 B parameters, ~7 GB of bf16 weights written to disk
and loaded, minutes of CPU) is marked slow:

    python -m pytest -m slow -s tests/test_full_size_sdxl.py   # -s shows the peak RSS and wall times
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from animatediff.cli import main
from animatediff.video_io import read_frames, sidecar_path

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--frames", "8", "--width", "128", "--height", "128", "--steps", "2", "--dtype", "bfloat16", "--seed", "1"]


def _fabricator():
    spec = importlib.util.spec_from_file_location("fabricate_checkpoints", ROOT / "scripts" / "fabricate_checkpoints.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_cli(args: list[str], log: Path) -> tuple[int, float, float]:
    """Run ``animatediff ARGS`` in a child process (this checkout's ``src`` first on the path);
    returns (exit code, the child's peak RSS in GiB, wall seconds). Output goes to ``log``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    with open(log, "wb") as out:
        child = subprocess.Popen([sys.executable, "-m", "animatediff", *args], stdout=out, stderr=subprocess.STDOUT, env=env)
        # Why wait4: it reports this child's own peak RSS (getrusage(RUSAGE_CHILDREN) would be the max of all children)
        _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return child.returncode, usage.ru_maxrss / 2**20, time.perf_counter() - start  # ru_maxrss: KiB on Linux


def _generate_args(models: Path, out: Path, *extra: str) -> list[str]:
    return ["generate", "a red fox running through snow", "--model", str(models / "sdxl.safetensors"), *extra,
            "--motion-module", str(models / "mm_sdxl_v10_beta.ckpt"), "--lora", f"{models / 'sdxl_lora.safetensors'}:0.8",
            *ARGS, "--out", str(out)]


def _check_output(out: Path) -> dict:
    """8 frames of 128x128 with content, and a sidecar that records the settings and the LoRA; returns the sidecar."""
    frames = read_frames(out)
    assert frames.shape == (8, 128, 128, 3)
    assert frames.std() > 1  # not blank: NaN latents (e.g. a bf16 overflow) decode to one flat colour
    meta = json.loads(sidecar_path(out).read_text())
    assert (meta["num_frames"], meta["width"], meta["height"], meta["steps"], meta["seed"]) == (8, 128, 128, 2, 1)
    assert meta["motion_preset"] == "sdxl-beta" and meta["loras"][0]["scale"] == 0.8
    return meta


def test_tiny_sdxl_single_file_motion_module_and_lora_through_the_cli(tmp_path):
    models = tmp_path / "models"
    _fabricator().fabricate(models, base="sdxl", size="tiny")
    out = tmp_path / "clip.gif"
    # the tiny architecture is not stock SDXL, so its configs come along (as for any custom single file);
    # in this process, to stay fast (the full-size test runs the same arguments in a child process)
    assert main(["-q", *_generate_args(models, out, "--model-config", str(models / "sdxl"))]) == 0
    _check_output(out)


@pytest.fixture
def scratch(tmp_path):
    """A folder for the multi-GB files, deleted after the test (pytest keeps old tmp_paths around)."""
    folder = tmp_path / "full"
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_full_size_sdxl_through_the_cli(scratch):
    start = time.perf_counter()
    paths = _fabricator().fabricate(scratch / "models", base="sdxl", size="full")
    fabricate_s = time.perf_counter() - start
    sizes = {p.name: p.stat().st_size / 2**30 for p in paths}
    assert sizes["sdxl.safetensors"] > 6.4  # 3.47 B bf16 values (6.46 GiB): really full size
    out = scratch / "clip.gif"
    code, peak_gib, wall = _run_cli(_generate_args(scratch / "models", out), scratch / "generate.log")
    assert code == 0, (scratch / "generate.log").read_text()[-4000:]
    timings = _check_output(out)["timings"]
    print(f"\nfull-size SDXL: files {', '.join(f'{k} {v:.2f} GiB' for k, v in sizes.items())} written in {fabricate_s:.0f} s; "
          f"`animatediff generate` (8 frames, 128x128, 2 steps, bf16, LoRA) took {wall:.0f} s "
          f"(text {timings['text']:.0f} s, denoise {timings['denoise']:.0f} s, decode {timings['decode']:.0f} s, the rest loading, "
          f"merging and hashing), peak RSS {peak_gib:.2f} GiB")
