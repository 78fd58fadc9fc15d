"""Load test for ``animatediff ui``: many concurrent requests over loopback, bounded, stopping by itself.

    python benchmarks/load_ui.py [--requests 20] [--max-queue 4]

Starts the server (a subprocess on a free loopback port, its own outputs folder), warms it up with one request,
then sends ``--requests`` generate requests at once from as many ``gradio_client`` clients (bundled demo model,
4 frames, 2 steps, each with its own prompt and seed). Checks, printed as JSON (exit 1 when one fails):
every request either completed or was told "queue full"; none lost (each answered), none duplicated (one file
per completed request, holding that request's own prompt and seed, and nothing else was written); the
server's memory (RSS) grew by less than ``--max-growth-mb``; and it still serves a request afterwards.
tests/test_ui.py runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _wait_up(url: str, server: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with status {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def run(requests: int = 20, max_queue: int = 4, frames: int = 4, steps: int = 2, max_growth_mb: float = 300,
        timeout: float = 300, keep_outputs: bool = False) -> dict:
    from gradio_client import Client

    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    outputs = Path(tempfile.mkdtemp(prefix="load-ui-"))
    log = open(outputs.parent / f"{outputs.name}.log", "w")
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    server = subprocess.Popen([sys.executable, "-m", "animatediff", "ui", "--port", str(port), "--outputs", str(outputs),
                               "--max-queue", str(max_queue), "--device", "cpu"], stdout=log, stderr=subprocess.STDOUT, env=env)
    settings = {"num_frames": frames, "steps": steps}
    try:
        _wait_up(url, server, timeout=120)
        Client(url, verbose=False).predict("warm-up", {**settings, "seed": 0}, api_name="/generate")
        rss_before = _rss_mb(server.pid)
        outcomes: dict[int, tuple] = {}

        def one(i: int) -> None:
            try:
                _, info = Client(url, verbose=False).predict(f"load test {i}", {**settings, "seed": 1000 + i}, api_name="/generate")
                sidecar = json.loads(info["sidecar"])
                outcomes[i] = ("done", info["name"], sidecar["prompt"], sidecar["seed"])
            except Exception as e:  # noqa: BLE001 - every answer is recorded and judged below
                outcomes[i] = ("queue full",) if "queue full" in str(e) else ("error", str(e))

        threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(requests)]
        start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(0.0, timeout - (time.monotonic() - start)))
        seconds = time.monotonic() - start
        rss_after = _rss_mb(server.pid)
        _, final = Client(url, verbose=False).predict("after the load", {**settings, "seed": 1}, api_name="/generate")
        done = {i: o for i, o in outcomes.items() if o[0] == "done"}
        names = [o[1] for o in done.values()]
        written = sorted(p.name for p in outputs.iterdir() if p.suffix == ".gif")
        expected = sorted([*names, *(p.name for p in outputs.glob("*warm-up*.gif")), final["name"]])
        checks = {
            "every request answered": len(outcomes) == requests,
            "each completed or queue full": all(o[0] in ("done", "queue full") for o in outcomes.values()),
            "some completed": bool(done),
            "no duplicate files": len(set(names)) == len(names),
            "each file is its own request": all(o[2] == f"load test {i}" and o[3] == 1000 + i for i, o in done.items()),
            "nothing else written": written == expected,
            "memory bounded": rss_after - rss_before < max_growth_mb,
            "still serving": final["state"] == "done",
        }
        return {"requests": requests, "max_queue": max_queue, "completed": len(done),
                "queue_full": sum(o[0] == "queue full" for o in outcomes.values()),
                "errors": [o[1] for o in outcomes.values() if o[0] == "error"][:3],
                "seconds": round(seconds, 1), "rss_before_mb": round(rss_before), "rss_after_mb": round(rss_after),
                "checks": checks, "ok": all(checks.values())}
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        if keep_outputs is False:
            shutil.rmtree(outputs, ignore_errors=True)  # our own temporary folder
            Path(log.name).unlink(missing_ok=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--max-queue", type=int, default=4)
    parser.add_argument("--max-growth-mb", type=float, default=300)
    parser.add_argument("--keep", action="store_true", help="keep the outputs folder and the server log (in the temp folder)")
    args = parser.parse_args()
    summary = run(args.requests, args.max_queue, max_growth_mb=args.max_growth_mb, keep_outputs=args.keep)
    print(json.dumps(summary, indent=2))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
