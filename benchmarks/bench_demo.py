"""End-to-end speed of the bundled demo model: ``animatediff generate "PROMPT"`` with no model flags, startup
included, as a user runs it (target: a 16-frame clip in under 10 s on 2 CPU cores).

    python benchmarks/bench_demo.py [--runs 3] [--threads 2]

Prints, per run, the wall time of the whole command, and the sidecar's own split (text / denoise / decode);
then the import time of the CLI and the load time of the bundled model, measured in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "a red circle bouncing on a blue striped background"

_PROFILE = r"""
import time, json
t0 = time.perf_counter()
import animatediff.cli
from animatediff.api import Animator
t1 = time.perf_counter()
from animatediff import bundled
found = bundled.resolve(None, None)
animator = Animator.load(found.model, found.motion_module)
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, help="set OMP_NUM_THREADS (default: unset, as a user runs it; the "
                        "bundled model then uses one intra-op thread, see docs/demo-model.md)")
    parser.add_argument("--steps", type=int, help="override the bundled default step count")
    args = parser.parse_args()
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    load = subprocess.run([sys.executable, "-c", "import os; print(os.getloadavg()[0])"], capture_output=True, text=True)
    print(f"machine: {os.cpu_count()} cores, load average {load.stdout.strip()} (shared machines inflate every number)")
    walls = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            out = Path(tmp) / f"clip{run}.gif"
            command = ["animatediff", "-q", "generate", PROMPT, "--seed", str(run), "--out", str(out)]
            if args.steps:
                command += ["--steps", str(args.steps)]
            started = time.perf_counter()
            subprocess.run(command, check=True, env=env)
            wall = time.perf_counter() - started
            walls.append(wall)
            meta = json.loads(Path(str(out) + ".json").read_text())
            t = meta["timings"]
            print(f"run {run}: {wall:5.2f} s end to end | {meta['num_frames']} frames {meta['width']}x{meta['height']}, "
                  f"{meta['steps']} {meta['scheduler']} steps, guidance {meta['guidance_scale']} | "
                  f"text {t['text']:.2f} s, denoise {t['denoise']:.2f} s, decode {t['decode']:.2f} s")
    profile = subprocess.run([sys.executable, "-c", _PROFILE], capture_output=True, text=True, env=env, check=True)
    split = json.loads(profile.stdout.strip().splitlines()[-1])
    print(f"startup: import {split['import_s']:.2f} s, bundled model load {split['load_s']:.2f} s")
    print(f"end to end: median {statistics.median(walls):.2f} s, min {min(walls):.2f} s over {len(walls)} runs "
          f"(target < 10 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
