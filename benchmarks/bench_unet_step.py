"""Seconds per denoising step and peak memory: this implementation vs diffusers' UNetMotionModel.

Full-size SD1.5 UNet + v2 motion module (21 modules, 453 M parameters), fp32 on CPU, 16 frames,
classifier-free guidance (UNet batch 2), DDIM. Both sides get IDENTICAL weights:
- the 2-D UNet: ``torch.manual_seed(0)`` then ``UNet2DConditionModel(**SD15_UNET_CONFIG)``;
- the motion module: every tensor filled from its own generator seeded by a hash of its official key,
  converted to diffusers' MotionAdapter layout with ``animatediff.weights.convert.motion_module_to_diffusers``.

Each implementation runs in its own subprocess, so its peak RSS is its own. Usage::

    python benchmarks/bench_unet_step.py                      # 8x8 and 32x32 latents, both implementations
    python benchmarks/bench_unet_step.py --latent 8 --steps 3 --parity   # quick point + a weight-identity check

``--parity`` additionally runs ours with diffusers' across-frames motion GroupNorm at 8x8 and checks that
the final latents equal diffusers' (proof that the weights really are identical).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
GIB = 1024**3

# runwayml/stable-diffusion-v1-5 unet/config.json (the defaults of UNet2DConditionModel cover the rest)
SD15_UNET_CONFIG = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}


def sd15_unet_config() -> dict:
    """The packaged SD1.5 config when the library ships one, else the embedded copy above."""
    packaged = HERE.parent / "src/animatediff/data/sd15/unet/config.json"
    if packaged.exists():
        config = json.loads(packaged.read_text())
        return {k: v for k, v in config.items() if not k.startswith("_")}
    return dict(SD15_UNET_CONFIG)


# ---- measurement helpers -------------------------------------------------------------------------
def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


class RssSampler:
    """Samples this process's RSS every few milliseconds in a thread (torch kernels release the GIL)."""

    def __init__(self, interval: float = 0.01):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


# ---- identical weights ---------------------------------------------------------------------------
def fill_motion_tensor_(tensor, official_key: str) -> None:
    """Deterministic values for one motion-module tensor, a function of its official key only.
    LayerNorm/GroupNorm weights (the only 1-D weights) around 1, everything else small."""
    import torch

    g = torch.Generator().manual_seed(zlib.crc32(official_key.encode()))
    with torch.no_grad():
        tensor.normal_(0.0, 0.02, generator=g)
        if official_key.endswith(".weight") and tensor.ndim == 1:
            tensor.add_(1.0)


def official_motion_keys(config) -> dict:
    """``{official key: meta tensor}`` for the motion module set (no memory allocated)."""
    import torch

    from animatediff.motion_module import MotionModules

    with torch.device("meta"):
        return dict(MotionModules(config).state_dict())


def checksum(tensors) -> float:
    import torch

    return float(sum(t.detach().double().sum() for t in tensors if torch.is_floating_point(t)))


# ---- the two implementations ---------------------------------------------------------------------
def build_ours(motion_groupnorm_across_frames: bool = False):
    import dataclasses

    import torch
    from diffusers import UNet2DConditionModel

    from animatediff.inflation import AnimateDiffUNet
    from animatediff.motion_module import MotionModules
    from animatediff.presets import get_preset

    config = dataclasses.replace(get_preset("v2"), motion_groupnorm_across_frames=motion_groupnorm_across_frames)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**sd15_unet_config()).eval()
    motion = MotionModules(config).eval()
    for key, tensor in motion.state_dict().items():
        fill_motion_tensor_(tensor, key)
    model = AnimateDiffUNet(unet, motion).eval()
    sums = {"unet": checksum(unet.state_dict().values()), "motion": checksum(motion.state_dict().values())}

    def call(latents, t, text):  # text: (b, 77, 768), one per clip
        return model(latents, t, text)

    return model, call, sums, sum(p.numel() for p in motion.parameters())


def build_diffusers():
    import torch
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    from animatediff.weights.convert import motion_module_to_diffusers
    from animatediff.presets import get_preset

    config = get_preset("v2")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**sd15_unet_config()).eval()
    adapter = MotionAdapter(
        block_out_channels=config.block_out_channels,
        motion_layers_per_block=config.layers_per_block,
        motion_num_attention_heads=config.num_attention_heads,
        motion_norm_num_groups=config.norm_num_groups,
        motion_max_seq_length=config.position_encoding_length,
        use_motion_mid_block=config.mid_block,
    )
    # official key -> diffusers key, through the library's converter (applied to meta tensors)
    official = official_motion_keys(config)
    official = {k: v for k, v in official.items() if "pos_encoder" not in k}
    by_id = {id(v): k for k, v in official.items()}
    converted = motion_module_to_diffusers(official)
    adapter_sd = adapter.state_dict()
    assert set(converted) == {k for k in adapter_sd if not k.endswith("pos_embed.pe")}, "key sets differ"
    for new_key, meta in converted.items():
        assert adapter_sd[new_key].shape == meta.shape, new_key
        fill_motion_tensor_(adapter_sd[new_key], by_id[id(meta)])
    sums = {"unet": checksum(unet.state_dict().values()), "motion": checksum(adapter_sd[k] for k in converted)}
    n_motion = sum(p.numel() for p in adapter.parameters())
    model = UNetMotionModel.from_unet2d(unet, adapter).eval()  # what AnimateDiffPipeline(unet=2-D, motion_adapter=...) does
    del unet, adapter, adapter_sd

    def call(latents, t, text):  # diffusers wants the text repeated per frame: (b f, 77, 768)
        return model(latents, t, encoder_hidden_states=text).sample

    return model, call, sums, n_motion


class Worker:
    """One implementation in this process: build once, then one denoising step per ``step()``."""

    def __init__(self, impl: str, latent: int, num_frames: int):
        import gc

        import torch
        from diffusers import DDIMScheduler

        torch.set_num_threads(2)
        self.result = {"impl": impl, "latent": latent, "num_frames": num_frames, "rss_start_gib": rss_bytes() / GIB}
        start = time.perf_counter()
        with RssSampler() as sampler, torch.no_grad():
            if impl == "diffusers":
                self.model, self.call, sums, n_motion = build_diffusers()
            else:
                self.model, self.call, sums, n_motion = build_ours(motion_groupnorm_across_frames=impl == "ours-across-frames")
            gc.collect()
        self.result.update(build_s=time.perf_counter() - start, build_peak_gib=sampler.peak / GIB,
                           rss_after_build_gib=rss_bytes() / GIB, checksums=sums, motion_params=n_motion)

        # The AnimateDiff scheduler (official inference yaml) and a CFG loop as in AnimateDiffPipeline.
        self.scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear", steps_offset=1, clip_sample=False)
        self.scheduler.set_timesteps(25)
        g = torch.Generator().manual_seed(1234)
        self.latents = torch.randn(1, 4, num_frames, latent, latent, generator=g)  # (b, c, f, h, w)
        self.text = torch.randn(2, 77, 768, generator=g)  # [uncond, cond], one per clip
        if impl == "diffusers":
            self.text = self.text.repeat_interleave(num_frames, dim=0)  # (b f, 77, 768): the pipeline does this once
        self.index, self.times, self.cpu_times = 0, [], []
        self.sampler = RssSampler().__enter__()

    def step(self, timed: bool) -> float:
        import torch

        t = self.scheduler.timesteps[self.index]
        self.index += 1
        tic, cpu = time.perf_counter(), time.process_time()
        with torch.no_grad():
            noise = self.call(torch.cat([self.latents] * 2), t, self.text)  # (2, c, f, h, w)
            uncond, cond = noise.chunk(2)
            self.latents = self.scheduler.step(uncond + 7.5 * (cond - uncond), t, self.latents).prev_sample
        elapsed = time.perf_counter() - tic
        if timed:
            self.times.append(elapsed)
            self.cpu_times.append(time.process_time() - cpu)
        return elapsed

    def finish(self, out_path: str | None = None) -> dict:
        import torch

        self.sampler.__exit__()
        self.result.update(step_best_s=min(self.times), step_mean_s=sum(self.times) / len(self.times), step_times_s=self.times,
                           step_cpu_s=self.cpu_times, steps_peak_gib=self.sampler.peak / GIB,
                           peak_rss_gib=peak_rss_bytes() / GIB, latents_abs_mean=float(self.latents.abs().mean()))
        if out_path:
            torch.save(self.latents, out_path)
        return self.result


def serve(impl: str, latent: int, num_frames: int) -> None:
    """Subprocess side of the driver protocol: one command per stdin line, one ``@@ <json>`` reply each."""
    worker = Worker(impl, latent, num_frames)

    def reply(obj) -> None:
        print("@@ " + json.dumps(obj), flush=True)

    reply({"ready": True})
    for line in sys.stdin:
        command, *rest = line.split()
        if command == "step":
            reply({"seconds": worker.step(timed=rest[0] == "timed")})
        elif command == "finish":
            reply(worker.finish(rest[0] if rest else None))
            return


# ---- driver --------------------------------------------------------------------------------------
def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Remote:
    """The driver's handle on one worker subprocess."""

    def __init__(self, impl: str, latent: int, num_frames: int):
        cmd = [sys.executable, __file__, "--worker", impl, "--latent", str(latent), "--num-frames", str(num_frames)]
        env = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
        self.impl = impl
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._read()  # {"ready": true} once built

    def _read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith("@@ "):
                return json.loads(line[3:])
        raise SystemExit(f"{self.impl} worker died with status {self.proc.wait()}")

    def ask(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._read()

    def finish(self, out_path: str | None = None) -> dict:
        r = self.ask("finish" + (f" {out_path}" if out_path else ""))
        self.proc.wait()
        log(f"  {self.impl} {r['latent']}x{r['latent']}: build {r['build_s']:.1f} s, build peak {r['build_peak_gib']:.2f} GiB, "
            f"step best {r['step_best_s']:.2f} s mean {r['step_mean_s']:.2f} s, peak {r['peak_rss_gib']:.2f} GiB")
        return r


def run_sequential(impls: list[str], latent: int, steps: int, warmup: int, num_frames: int, out_dir: str | None = None) -> list[dict]:
    """Each implementation in its own subprocess, one after the other: only one full-size model in memory."""
    results = []
    for impl in impls:
        remote = Remote(impl, latent, num_frames)
        for i in range(warmup + steps):
            log(f"    step {i} {impl}: {remote.ask('step ' + ('timed' if i >= warmup else 'warmup'))['seconds']:.2f} s")
        results.append(remote.finish(f"{out_dir}/{impl}.pt" if out_dir else None))
    return results


def run_interleaved(impls: list[str], latent: int, steps: int, warmup: int, num_frames: int, out_dir: str | None = None) -> list[dict]:
    """Both subprocesses alive, steps alternating (A B, B A, ...) so both see the same background load on a
    shared machine. Only one computes at a time, but both hold their weights: about 11 GiB together.
    diffusers is built first, so its 10 GiB build peak never coincides with the other model."""
    remotes = {}
    for impl in sorted(impls, key=lambda name: name != "diffusers"):
        remotes[impl] = Remote(impl, latent, num_frames)
        log(f"  built {impl} ({latent}x{latent})")
    ordered = [remotes[impl] for impl in impls]
    for i in range(warmup + steps):
        for remote in ordered if i % 2 == 0 else ordered[::-1]:
            seconds = remote.ask("step " + ("timed" if i >= warmup else "warmup"))["seconds"]
            log(f"    step {i} {remote.impl}: {seconds:.2f} s")
    return [r.finish(f"{out_dir}/{r.impl}.pt" if out_dir else None) for r in ordered]


def table(results: list[dict]) -> str:
    rows = [
        "| latent | impl | build (s) | peak RSS in build (GiB) | RSS after build (GiB) | step best (s) | step mean (s) | CPU s/step (mean) | steps timed | peak RSS, whole run (GiB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rows.append(
            f"| {r['latent']}x{r['latent']} | {r['impl']} | {r['build_s']:.1f} | {r['build_peak_gib']:.2f} | {r['rss_after_build_gib']:.2f} | "
            f"{r['step_best_s']:.2f} | {r['step_mean_s']:.2f} | {sum(r['step_cpu_s']) / len(r['step_cpu_s']):.2f} | "
            f"{len(r['step_times_s'])} | {r['peak_rss_gib']:.2f} |"
        )
    by = {(r["latent"], r["impl"]): r for r in results}
    ratios = []
    for latent in sorted({r["latent"] for r in results}):
        ours, ref = by.get((latent, "ours")), by.get((latent, "diffusers"))
        if ours and ref:
            ratios.append(
                f"- {latent}x{latent}: step time ours/diffusers = {ours['step_best_s'] / ref['step_best_s']:.2f} (best), "
                f"{ours['step_mean_s'] / ref['step_mean_s']:.2f} (mean); peak RSS ours/diffusers = "
                f"{ours['peak_rss_gib'] / ref['peak_rss_gib']:.2f} (build peak {ours['build_peak_gib'] / ref['build_peak_gib']:.2f})"
            )
    return "\n".join(rows + [""] + ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latent", type=int, nargs="+", default=[8, 32], help="latent sizes (h = w)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per implementation (default: 5 at 8x8, 3 otherwise)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--num-frames", type=int, default=16)
    parser.add_argument("--impl", nargs="+", default=["ours", "diffusers"], choices=["ours", "diffusers"])
    parser.add_argument("--parity", action="store_true", help="also check ours (across-frames GroupNorm) == diffusers at 8x8")
    parser.add_argument("--interleave", action="store_true",
                        help="keep both models in memory (~11 GiB) and alternate their steps (fairer timing under background load)")
    parser.add_argument("--results", type=Path, default=HERE / "results.md")
    parser.add_argument("--worker", choices=["ours", "diffusers", "ours-across-frames"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        serve(args.worker, args.latent[0], args.num_frames)
        return

    import tempfile

    import diffusers
    import torch

    results, checks = [], []
    run = run_interleaved if args.interleave else run_sequential
    for latent in args.latent:
        results += run(args.impl, latent, args.steps or (5 if latent <= 8 else 3), args.warmup, args.num_frames)
    reference = results[0]
    for r in results[1:]:
        for part, value in reference["checksums"].items():  # float64 sums in the same order: equal up to rounding
            assert abs(r["checksums"][part] - value) <= 1e-9 * max(1.0, abs(value)), f"{part} weights differ: {r['checksums']}"
    checks.append(f"- identical weights in every run: UNet checksum {reference['checksums']['unet']:.6f}, "
                  f"motion checksum {reference['checksums']['motion']:.6f}, motion parameters {reference['motion_params']:,}")
    if args.parity:
        with tempfile.TemporaryDirectory() as tmp:
            a, _ = run_sequential(["ours-across-frames", "diffusers"], 8, 1, 0, args.num_frames, tmp)
            diff = float((torch.load(f"{tmp}/ours-across-frames.pt") - torch.load(f"{tmp}/diffusers.pt")).abs().max())
        checks.append(f"- parity at 8x8 after one DDIM step, ours switched to diffusers' across-frames motion GroupNorm: "
                      f"max |ours - diffusers| = {diff:.2e} (mean |latents| {a['latents_abs_mean']:.3f})")

    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
    header = (
        f"# UNet step benchmark: SD1.5 + v2 motion module, {args.num_frames} frames, CFG (UNet batch 2), fp32 CPU, 2 threads\n\n"
        f"torch {torch.__version__}, diffusers {diffusers.__version__}, CPU: {cpu}, {os.cpu_count()} cores, "
        f"load average at the end {os.getloadavg()[0]:.2f}. One step = one UNet call on the CFG batch + a DDIM step; "
        f"{args.warmup} untimed warm-up step; "
        f"{'steps alternate between the two live implementations' if args.interleave else 'one implementation after the other'}. Peak RSS = `ru_maxrss` of each "
        f"implementation's own subprocess; build peak = RSS sampled every 10 ms while building.\n\n"
    )
    text = header + table(results) + "\n" + "\n".join(checks) + "\n"
    print(text)
    args.results.write_text(text)
    args.results.with_suffix(".json").write_text(json.dumps(results, indent=1))  # raw numbers, per-step times included


if __name__ == "__main__":
    main()
