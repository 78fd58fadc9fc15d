"""Peak RSS and time of decoding 512x512 frames with the full-size SD1.5 VAE (random weights), untiled vs tiled.

Each mode runs in its own process (so ``ru_maxrss`` is its own); the frames stream through
``generation.vae.decode_chunks`` as in generation (``--vae-tiling``: ``tile=vae.TILE``).

    python benchmarks/bench_vae_memory.py --frames 2 --chunk 2
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(mode: str, frames: int, chunk: int, size: int) -> dict:
    import torch
    from diffusers import AutoencoderKL

    from animatediff.generation import vae as vae_io

    torch.set_num_threads(2)
    config = json.loads((HERE.parent / "src/animatediff/data/sd15/vae/config.json").read_text())
    torch.manual_seed(0)
    vae = AutoencoderKL(**{k: v for k, v in config.items() if not k.startswith("_")}).eval()
    latents = torch.randn(1, 4, frames, size // 8, size // 8, generator=torch.Generator().manual_seed(0))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    tic, n = time.perf_counter(), 0
    for chunk_frames in vae_io.decode_chunks(vae, latents, chunk, tile=vae_io.TILE if mode == "tiled" else None):
        n += chunk_frames.shape[0]
    return {"mode": mode, "frames": n, "chunk": chunk, "size": size, "rss_before_gib": round(before, 2),
            "peak_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "seconds_per_frame": round((time.perf_counter() - tic) / n, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=2, help="frames per VAE call (decode_chunk_size)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--mode", choices=["untiled", "tiled"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(run(args.mode, args.frames, args.chunk, args.size)))
        return
    for mode in ("untiled", "tiled"):
        cmd = [sys.executable, __file__, "--mode", mode, "--frames", str(args.frames), "--chunk", str(args.chunk), "--size", str(args.size)]
        print(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
