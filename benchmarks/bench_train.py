"""Training throughput (clips/s) and peak memory of the motion-module mode, with and without gradient
checkpointing, on the tiny recipe and on full-size SD1.5 shapes (random weights, 64x64 pixels, 16 frames,
batch 1). Prints a Markdown table and writes benchmarks/train_results.md.

    python benchmarks/bench_train.py            # tiny only (seconds)
    python benchmarks/bench_train.py --full     # + full-size SD1.5 shapes (minutes, ~15 GB RAM on CPU)

Each configuration runs in its own subprocess so that peak memory (RSS on CPU, max allocated on CUDA)
is its own. The first step (warm-up, allocations) is excluded from the throughput.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sd15_base():
    """SD1.5 shapes, random weights (no download): UNet 860M, VAE 84M, CLIP ViT-L text encoder 123M."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from animatediff.components import BaseModel, package_data

    torch.manual_seed(0)
    unet = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8, sample_size=64)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=512,
    )
    text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                                        max_position_embeddings=77, projection_dim=768))
    tokenizer = CLIPTokenizer.from_pretrained(str(package_data("tokenizer")), local_files_only=True)
    return BaseModel(kind="sd15", unet=unet, vae=vae, text_encoder=text, tokenizer=tokenizer, source="random-sd15")


def tiny_base():
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_models import tiny_base_model

    return tiny_base_model()


def run_one(size: str, checkpointing: bool, steps: int) -> dict:
    """Child process: train ``steps`` steps, return clips/s (after the first step) and peak memory."""
    import torch

    from animatediff.demo.world import write_dataset
    from animatediff.training import load_config, train

    with tempfile.TemporaryDirectory() as tmp:
        csv_path = write_dataset(Path(tmp) / "data", 2, num_frames=16, height=64, width=64)
        config = load_config("motion-module", "tiny-motion-module", dict(
            caption_file=str(csv_path), size=64, num_frames=16, stride=1, batch_size=1, max_train_steps=steps,
            checkpointing_steps=10_000, num_workers=0, gradient_checkpointing=checkpointing, output_dir=str(Path(tmp) / "out"),
        ))
        base = sd15_base() if size == "full" else tiny_base()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        times = []
        last = [time.perf_counter()]

        def tick(step, loss):
            now = time.perf_counter()
            times.append(now - last[0])
            last[0] = now

        train(config, base=base, on_step=tick)
        log = (Path(tmp) / "out" / "train_log.csv").read_text().strip().splitlines()
        peak = float(log[-1].split(",")[4])
    measured = times[1:] or times
    return {"clips_per_s": len(measured) / sum(measured), "peak_memory_mb": peak, "first_step_s": times[0]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--full", action="store_true", help="also run full-size SD1.5 shapes (heavy)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--child", nargs=2, metavar=("SIZE", "CHECKPOINTING"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child[0], args.child[1] == "1", args.steps)))
        return
    rows = []
    for size in ["tiny"] + (["full"] if args.full else []):
        for checkpointing in (False, True):
            out = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--child", size, str(int(checkpointing))],
                                 capture_output=True, text=True)
            if out.returncode != 0:  # e.g. killed for memory on a shared machine: record it, keep going
                result = {"error": f"exit {out.returncode}" + (" (killed: out of memory?)" if out.returncode == -9 else "")}
            else:
                result = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append((size, checkpointing, result))
            print(size, checkpointing, result, file=sys.stderr)
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    lines = [
        f"Motion-module training, 64x64 pixels, 16 frames, batch 1, {args.steps} steps (first excluded), fp32, {device}, torch {torch.__version__}.",
        "",
        "| model | gradient checkpointing | clips/s | s/step | peak memory (MiB) |",
        "|---|---|---|---|---|",
    ]
    for size, checkpointing, r in rows:
        name = "tiny recipe (tests' tiny SD1.5)" if size == "tiny" else "SD1.5 shapes + v3 motion module (random weights)"
        if "error" in r:
            lines.append(f"| {name} | {'on' if checkpointing else 'off'} | {r['error']} | | |")
        else:
            lines.append(f"| {name} | {'on' if checkpointing else 'off'} | {r['clips_per_s']:.3f} | {1 / r['clips_per_s']:.2f} | {r['peak_memory_mb']:.0f} |")
    table = "\n".join(lines)
    print(table)
    (ROOT / "benchmarks" / "train_results.md").write_text("# Training benchmark\n\n" + table + "\n")


if __name__ == "__main__":
    main()
