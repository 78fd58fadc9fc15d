"""Issue 10's Done-when on full-size files: ``animatediff generate "..." --frames 64`` with a single-file SD1.5
checkpoint (``scripts/fabricate_checkpoints.py``) and a v3 motion module in the official layout (fabricated
here: 20 modules, 417 M parameters, ``pos_encoder.pe`` of 32 frames, fp32 ``torch.save``), at 8x8 latents and
2 steps. 64 frames exceed the v3 encoding (32), so the CLI switches to uniform context windows on its own.

Minutes of CPU and about 10 GiB of RAM; 4 GB of files written and deleted again:

    python -m pytest -m slow -s tests/test_long_video_full_size.py   # -s shows the peak RSS and wall times
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from accelerate import init_empty_weights

from animatediff.motion_module import MotionModules, sinusoidal_position_encoding
from animatediff.presets import get_preset
from animatediff.video_io import read_frames, sidecar_path

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _fabricator():
    import importlib.util

    spec = importlib.util.spec_from_file_location("fabricate_checkpoints", ROOT / "scripts" / "fabricate_checkpoints.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_v3_motion_module(path: Path, random_tensor) -> int:
    """``v3_sd15_mm.ckpt``'s layout: the v3 preset's keys (no mid block) with random values, tensor by tensor
    from a meta-device model, plus each attention block's ``pos_encoder.pe`` (1, 32, dim). Returns the number
    of parameters (the official file: 417,137,600)."""
    config = get_preset("v3")
    with init_empty_weights(include_buffers=True):
        meta = MotionModules(config)
    state, params = {}, 0
    for i, (key, value) in enumerate(meta.state_dict().items()):
        state[key] = random_tensor(key, tuple(value.shape), 40_000 + i, torch.float32)
        params += value.numel()
        if key.endswith(("attention_blocks.0.to_q.weight", "attention_blocks.1.to_q.weight")):
            state[key.replace("to_q.weight", "pos_encoder.pe")] = sinusoidal_position_encoding(config.position_encoding_length, value.shape[0])
    torch.save(state, path)
    return params


def _run_cli(args: list[str], log: Path) -> tuple[int, float, float]:
    """``animatediff ARGS`` in a child process (this checkout's ``src`` first); (exit code, its peak RSS in GiB,
    wall seconds)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    with open(log, "wb") as out:
        child = subprocess.Popen([sys.executable, "-m", "animatediff", *args], stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own peak RSS
    return os.waitstatus_to_exitcode(status), usage.ru_maxrss / 2**20, time.perf_counter() - start


@pytest.fixture
def scratch(tmp_path):
    """A folder for the GB-sized files, deleted after the test (pytest keeps old tmp_paths around)."""
    folder = tmp_path / "full"
    folder.mkdir()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_64_frames_full_size_sd15_and_v3_through_the_cli(scratch):
    fab = _fabricator()
    start = time.perf_counter()
    checkpoint = fab.write_checkpoint(scratch, "sd15", fab._configs("sd15", "full"))
    motion = scratch / "v3_sd15_mm.ckpt"
    assert write_v3_motion_module(motion, fab.random_tensor) == 417_137_600  # the official v3 count
    fabricate_s = time.perf_counter() - start
    out = scratch / "clip.gif"
    args = ["generate", "a red fox running through snow", "--model", str(checkpoint), "--motion-module", str(motion),
            "--frames", "64", "--width", "64", "--height", "64", "--steps", "2", "--seed", "1", "--out", str(out)]
    code, peak_gib, wall = _run_cli(args, scratch / "generate.log")
    log = (scratch / "generate.log").read_text()
    assert code == 0, log[-4000:]
    assert "uniform context windows of 16 frames, overlap 4" in log  # the one line saying windows turned on
    frames = read_frames(out)
    assert frames.shape == (64, 64, 64, 3)
    meta = json.loads(sidecar_path(out).read_text())
    assert meta["motion_preset"] == "v3" and meta["num_frames"] == 64
    assert (meta["context"], meta["context_length"], meta["context_overlap"]) == ("uniform", 16, 4)
    timings = meta["timings"]
    print(f"\nfull-size SD1.5 ({checkpoint.stat().st_size / 2**30:.2f} GiB) + v3 ({motion.stat().st_size / 2**30:.2f} GiB) "
          f"written in {fabricate_s:.0f} s; `animatediff generate --frames 64` (8x8 latents, 2 steps, uniform windows) "
          f"took {wall:.0f} s (text {timings['text']:.0f} s, denoise {timings['denoise']:.0f} s, decode "
          f"{timings['decode']:.0f} s, the rest loading and hashing), peak RSS {peak_gib:.2f} GiB")
