"""``accelerate launch`` of the training CLI with two CPU processes (DDP over gloo). Slow: two interpreters.

Accelerate's ``--cpu --num_processes 2`` alone starts ONE process (CPU multi-process needs mpirun); the
launcher that starts two CPU workers is ``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2``.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest

from tiny_models import save_diffusers_folder, tiny_base_model


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes(tmp_path):
    from animatediff.demo.world import write_dataset

    csv_path = write_dataset(tmp_path / "data", 4, num_frames=10, height=32, width=32)
    base = save_diffusers_folder(tiny_base_model(), tmp_path / "base")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "animatediff.training.cli", "motion-module",
           "--config", "tiny-motion-module", "--base_model", str(base), "--caption_file", str(csv_path), "--size", "32",
           "--num_frames", "4", "--max_train_steps", "3", "--num_workers", "1", "--output_dir", str(out), "--gradient_checkpointing", "true"]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stderr.count("training data: 4 usable files") == 2  # two processes really ran
    rows = list(csv.DictReader((out / "train_log.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3] and all(float(r["loss"]) > 0 for r in rows)
    assert (out / "motion-module-final.safetensors").is_file()
