"""Seconds per denoising step and peak memory: this implementation vs diffusers' UNetMotionModel.

Full-size SD1.5 UNet + v2 motion module (21 modules, 453 M parameters) on CPU, 16 frames, classifier-free
guidance (UNet batch 2), DDIM, in fp32 and bf16 on both sides. Both sides get IDENTICAL weights:
- the 2-D UNet: ``torch.manual_seed(0)`` then ``UNet2DConditionModel(**SD15_UNET_CONFIG)``;
- the motion module: every tensor filled from its own generator seeded by a hash of its official key,
  converted to diffusers' MotionAdapter layout with ``animatediff.weights.convert.motion_module_to_diffusers``;
then both are cast to the run's dtype (diffusers: the UNet and adapter cast before ``from_unet2d``, as
``from_pretrained(torch_dtype=...)`` hands them over; its default SDPA attention processors).

Each implementation runs in its own subprocess, so its peak RSS is its own; per (latent, dtype) both are alive
and their steps alternate, so background load hits both alike. Usage::

    python benchmarks/bench_unet_step.py                      # 16, 32, 64 latents x fp32, bf16 (hours on 2 cores)
    python benchmarks/bench_unet_step.py --latent 16 32 --steps 2 --warmup 0 --e2e-steps 1   # + 512x512 end to end
    python benchmarks/bench_unet_step.py --latent 8 --dtypes float32 --steps 3 --parity   # quick point + weight check
    python benchmarks/bench_unet_step.py --latent 16 32 ... --render-log run.err   # tables from a stopped run's log

``--e2e-steps N``: each side's default (ours ``--dtype auto``, diffusers fp32) at 512x512 x 16 frames, N of the
25 steps run (extrapolated to 25 when fewer; ``--e2e-steps-diffusers`` sets diffusers' N apart), plus the VAE
decode. ``--large-steps N``: N timed steps and no warm-up at latents >= 64, where one call takes minutes. ``--parity`` additionally runs ours with diffusers'
across-frames motion GroupNorm at 8x8 and checks that the final latents equal diffusers'. The tables go to
``results.md`` and between the markers of the README's Performance section.
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
def build_ours(motion_groupnorm_across_frames: bool = False, dtype: str = "float32"):
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
    sums = {"unet": checksum(unet.state_dict().values()), "motion": checksum(motion.state_dict().values())}
    unet.to(getattr(torch, dtype))  # what loading with --dtype gives (the weights are made in fp32, then cast)
    motion.to(getattr(torch, dtype))
    model = AnimateDiffUNet(unet, motion).eval()

    def call(latents, t, text):  # text: (b, 77, 768), one per clip
        return model(latents, t, text)

    return model, call, sums, sum(p.numel() for p in motion.parameters())


def build_diffusers(dtype: str = "float32"):
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
    unet.to(getattr(torch, dtype))  # as components loaded with from_pretrained(torch_dtype=...) arrive
    adapter.to(getattr(torch, dtype))
    model = UNetMotionModel.from_unet2d(unet, adapter).eval()  # keeps the UNet's dtype  # what AnimateDiffPipeline(unet=2-D, motion_adapter=...) does
    del unet, adapter, adapter_sd

    def call(latents, t, text):  # diffusers wants the text repeated per frame: (b f, 77, 768)
        return model(latents, t, encoder_hidden_states=text).sample

    return model, call, sums, n_motion


class Worker:
    """One implementation in this process: build once, then one denoising step per ``step()``."""

    def __init__(self, impl: str, latent: int, num_frames: int, dtype: str = "float32"):
        import gc

        import torch
        from diffusers import DDIMScheduler

        torch.set_num_threads(2)
        self.dtype = getattr(torch, dtype)
        self.result = {"impl": impl, "latent": latent, "num_frames": num_frames, "dtype": dtype, "rss_start_gib": rss_bytes() / GIB}
        start = time.perf_counter()
        with RssSampler() as sampler, torch.no_grad():
            if impl == "diffusers":
                self.model, self.call, sums, n_motion = build_diffusers(dtype)
            else:
                self.model, self.call, sums, n_motion = build_ours(impl == "ours-across-frames", dtype)
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
            # the UNet in its dtype, guidance and the scheduler in fp32 (as both pipelines do)
            noise = self.call(torch.cat([self.latents] * 2).to(self.dtype), t, self.text.to(self.dtype)).float()  # (2, c, f, h, w)
            uncond, cond = noise.chunk(2)
            self.latents = self.scheduler.step(uncond + 7.5 * (cond - uncond), t, self.latents).prev_sample
        elapsed = time.perf_counter() - tic
        if timed:
            self.times.append(elapsed)
            self.cpu_times.append(time.process_time() - cpu)
        return elapsed

    def decode(self) -> float:
        """Decode the 16 frames at 8x the latent size with a full-size SD1.5 VAE (random, seed 0) as each side's
        pipeline does: ours streams ``decode_chunk_size`` frames at a time to uint8 (generation/vae.py); diffusers'
        ``AnimateDiffPipeline.decode_latents`` collects every float frame. The VAE in the UNet's dtype (both
        pipelines load every component in one dtype). Returns seconds."""
        import types

        import torch
        from diffusers import AnimateDiffPipeline, AutoencoderKL

        from animatediff.generation import vae as vae_io
        from animatediff.video_io import to_uint8

        config = json.loads((HERE.parent / "src/animatediff/data/sd15/vae/config.json").read_text())
        torch.manual_seed(0)
        vae = AutoencoderKL(**{k: v for k, v in config.items() if not k.startswith("_")}).eval().to(self.dtype)
        tic = time.perf_counter()
        with torch.no_grad():
            if self.result["impl"] == "diffusers":
                video = AnimateDiffPipeline.decode_latents(types.SimpleNamespace(vae=vae), self.latents.to(self.dtype), 16)
                frames = (video / 2 + 0.5).clamp(0, 1)  # the pipeline's video processor: whole clip as floats
            else:
                frames = [to_uint8(chunk) for chunk in vae_io.decode_chunks(vae, self.latents, 16)]
        self.result["decode_s"] = time.perf_counter() - tic
        del frames
        return self.result["decode_s"]

    def finish(self, out_path: str | None = None) -> dict:
        import torch

        self.sampler.__exit__()
        self.result.update(step_best_s=min(self.times), step_mean_s=sum(self.times) / len(self.times), step_times_s=self.times,
                           step_cpu_s=self.cpu_times, steps_peak_gib=self.sampler.peak / GIB,
                           peak_rss_gib=peak_rss_bytes() / GIB, latents_abs_mean=float(self.latents.abs().mean()))
        if out_path:
            torch.save(self.latents, out_path)
        return self.result


def serve(impl: str, latent: int, num_frames: int, dtype: str = "float32") -> None:
    """Subprocess side of the driver protocol: one command per stdin line, one ``@@ <json>`` reply each."""
    worker = Worker(impl, latent, num_frames, dtype)

    def reply(obj) -> None:
        print("@@ " + json.dumps(obj), flush=True)

    reply({"ready": True})
    for line in sys.stdin:
        command, *rest = line.split()
        if command == "step":
            reply({"seconds": worker.step(timed=rest[0] == "timed")})
        elif command == "decode":
            reply({"seconds": worker.decode()})
        elif command == "finish":
            reply(worker.finish(rest[0] if rest else None))
            return


# ---- driver --------------------------------------------------------------------------------------
def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Remote:
    """The driver's handle on one worker subprocess."""

    def __init__(self, impl: str, latent: int, num_frames: int, dtype: str = "float32"):
        cmd = [sys.executable, __file__, "--worker", impl, "--latent", str(latent), "--num-frames", str(num_frames), "--worker-dtype", dtype]
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
        log(f"  {self.impl} {r['dtype']} {r['latent']}x{r['latent']}: build {r['build_s']:.1f} s, build peak {r['build_peak_gib']:.2f} GiB, "
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


def run_interleaved(impls: list[str], latent: int, steps: int, warmup: int, num_frames: int, out_dir: str | None = None,
                    dtype: str = "float32") -> list[dict]:
    """Both subprocesses alive, steps alternating (A B, B A, ...) so both see the same background load on a
    shared machine. Only one computes at a time, but both hold their weights: about 11 GiB together.
    diffusers is built first, so its 10 GiB build peak never coincides with the other model."""
    remotes = {}
    for impl in sorted(impls, key=lambda name: name != "diffusers"):
        remotes[impl] = Remote(impl, latent, num_frames, dtype)
        log(f"  built {impl} {dtype} ({latent}x{latent})")
    ordered = [remotes[impl] for impl in impls]
    loads = [os.getloadavg()[0]]
    for i in range(warmup + steps):
        for remote in ordered if i % 2 == 0 else ordered[::-1]:
            seconds = remote.ask("step " + ("timed" if i >= warmup else "warmup"))["seconds"]
            loads.append(os.getloadavg()[0])
            log(f"    step {i} {remote.impl} {dtype}: {seconds:.2f} s (load {loads[-1]:.1f})")
    results = [r.finish(f"{out_dir}/{r.impl}.pt" if out_dir else None) for r in ordered]
    for r in results:
        r["load_min"], r["load_max"] = min(loads), max(loads)  # 1-minute load average around the steps
    return results


def table(results: list[dict]) -> str:
    rows = [
        "| latent | dtype | impl | s / step (best) | s / step (mean) | steps timed | load (1-min avg) | build peak RSS (GiB) | peak RSS (GiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rows.append(
            f"| {r['latent']}x{r['latent']} | {r['dtype']} | {r['impl']} | {r['step_best_s']:.2f} | {r['step_mean_s']:.2f} | "
            f"{len(r['step_times_s'])} | {r.get('load_min', 0):.1f}-{r.get('load_max', 0):.1f} | {r['build_peak_gib']:.2f} | {r['peak_rss_gib']:.2f} |"
        )
    return "\n".join(rows)


def summary(results: list[dict], auto: str) -> list[str]:
    """Speed-ups diffusers/ours at equal precision, default vs default, RSS ratios, the per-step area exponent."""
    by = {(r["latent"], r["dtype"], r["impl"]): r for r in results}
    lines = []
    for (latent, dtype, impl), ours in sorted(by.items()):
        ref = by.get((latent, dtype, "diffusers"))
        if impl == "ours" and ref:
            lines.append(f"- {latent}x{latent} {dtype}: ours is {ref['step_best_s'] / ours['step_best_s']:.2f}x diffusers per step "
                         f"(best; {ref['step_mean_s'] / ours['step_mean_s']:.2f}x by means); peak RSS ours/diffusers "
                         f"{ours['peak_rss_gib'] / ref['peak_rss_gib']:.2f}")
    for latent in sorted({r["latent"] for r in results}):
        ours, ref = by.get((latent, auto, "ours")), by.get((latent, "float32", "diffusers"))
        if ours and ref:
            lines.append(f"- {latent}x{latent} default vs default (ours `auto` = {auto}, diffusers float32): "
                         f"{ref['step_best_s'] / ours['step_best_s']:.2f}x per step, peak RSS {ours['peak_rss_gib'] / ref['peak_rss_gib']:.2f}x")
    import math

    for dtype in sorted({r["dtype"] for r in results}):
        for impl in ("ours", "diffusers"):
            points = sorted((r["latent"], r["step_best_s"]) for r in results if r["dtype"] == dtype and r["impl"] == impl)
            if len(points) >= 2:  # least-squares slope of log(time) over log(area)
                xs, ys = [math.log(l * l) for l, _ in points], [math.log(t) for _, t in points]
                mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
                slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
                lines.append(f"- per-step time ~ area^{slope:.2f} ({impl}, {dtype}, latents {', '.join(str(l) for l, _ in points)})")
    return lines


def e2e_table(results: list[dict]) -> str:
    rows = ["| impl | dtype | latent | steps run | s / step (mean) | decode 16 frames (s) | wall, 25 steps + decode (s) | peak RSS (GiB) |",
            "|---|---|---|---|---|---|---|---|"]
    for r in results:
        ran = len(r["step_times_s"])
        wall = 25 * r["step_mean_s"] + r["decode_s"]  # measured when all 25 steps ran, else extrapolated
        rows.append(f"| {r['impl']} | {r['dtype']} | {r['latent']}x{r['latent']} | {ran} | {r['step_mean_s']:.1f} | {r['decode_s']:.1f} | "
                    f"{wall:.0f}{' (measured)' if ran == 25 else ' (extrapolated)'} | {r['peak_rss_gib']:.2f} |")
    return "\n".join(rows)


def run_e2e(latent: int, steps: dict, num_frames: int, auto: str) -> list[dict]:
    """Each side's default, one after the other in its own process: ``steps[impl]`` denoising steps + decode."""
    results = []
    for impl, dtype in (("ours", auto), ("diffusers", "float32")):
        if not steps[impl]:
            continue
        remote = Remote(impl, latent, num_frames, dtype)
        for i in range(steps[impl]):
            log(f"    e2e step {i} {impl} {dtype}: {remote.ask('step timed')['seconds']:.1f} s (load {os.getloadavg()[0]:.1f})")
        log(f"    e2e decode {impl}: {remote.ask('decode')['seconds']:.1f} s")
        results.append(remote.finish())
    return results


README_BEGIN, README_END = "<!-- bench_unet_step: begin -->", "<!-- bench_unet_step: end -->"


def update_readme(path: Path, text: str) -> None:
    """Replace the block between the README's markers (left alone when it has none)."""
    readme = path.read_text()
    if README_BEGIN in readme and README_END in readme:
        head, rest = readme.split(README_BEGIN, 1)
        path.write_text(head + README_BEGIN + "\n" + text + "\n" + README_END + rest.split(README_END, 1)[1])


def parse_log(path: Path) -> list[dict]:
    """Results of a run from its stderr log (the driver's lines), for a run stopped before it wrote its JSON."""
    import re

    results, loads = [], {}
    step = re.compile(r"^    step \d+ (\S+) (\S+): ([\d.]+) s \(load ([\d.]+)\)")
    done = re.compile(r"^  (\S+) (\S+) (\d+)x\d+: build ([\d.]+) s, build peak ([\d.]+) GiB, step best ([\d.]+) s mean ([\d.]+) s, peak ([\d.]+) GiB")
    times: dict = {}
    for line in path.read_text().splitlines():
        if m := step.match(line):
            times.setdefault((m[1], m[2]), []).append(float(m[3]))
            loads.setdefault(m[2], []).append(float(m[4]))
        elif m := done.match(line):
            impl, dtype = m[1], m[2]
            results.append({"impl": impl, "dtype": dtype, "latent": int(m[3]), "build_s": float(m[4]), "build_peak_gib": float(m[5]),
                            "step_best_s": float(m[6]), "step_mean_s": float(m[7]), "peak_rss_gib": float(m[8]),
                            "step_times_s": times.pop((impl, dtype)), "load_min": min(loads[dtype]), "load_max": max(loads[dtype])})
            if not any((i, dtype) in times for i in ("ours", "diffusers")):
                loads.pop(dtype)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latent", type=int, nargs="+", default=[16, 32, 64], help="latent sizes (h = w)")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--steps", type=int, default=2, help="timed steps per implementation, latent and dtype (best of N)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--num-frames", type=int, default=16)
    parser.add_argument("--impl", nargs="+", default=["ours", "diffusers"], choices=["ours", "diffusers"])
    parser.add_argument("--parity", action="store_true", help="also check ours (across-frames GroupNorm) == diffusers at 8x8")
    parser.add_argument("--e2e-steps", type=int, default=0,
                        help="also run each side's default at --e2e-latent for this many steps + the VAE decode (0: skip; "
                             "25 is the full clip, minutes per step at 64x64 on 2 cores)")
    parser.add_argument("--e2e-steps-diffusers", type=int, help="steps of diffusers' end-to-end run (default: --e2e-steps)")
    parser.add_argument("--large-steps", type=int,
                        help="at latents >= 64: this many timed steps and no warm-up (a call takes minutes there; default: --steps/--warmup)")
    parser.add_argument("--e2e-latent", type=int, default=64, help="latent side of the end-to-end run (64: 512x512 pixels)")
    parser.add_argument("--results", type=Path, default=HERE / "results.md")
    parser.add_argument("--readme", type=Path, default=HERE.parent / "README.md", help="README whose marked table is regenerated")
    parser.add_argument("--render-log", type=Path, help="write the tables from a stopped run's stderr log instead of running")
    parser.add_argument("--worker", choices=["ours", "diffusers", "ours-across-frames"], help=argparse.SUPPRESS)
    parser.add_argument("--worker-dtype", default="float32", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        serve(args.worker, args.latent[0], args.num_frames, args.worker_dtype)
        return

    import tempfile

    import diffusers
    import torch

    from animatediff.generation.precision import auto_dtype, cpu_features

    auto = str(auto_dtype("cpu")).removeprefix("torch.")
    argv = sys.argv[1:]
    if args.render_log:  # the run's own command, without the rendering option
        i = argv.index("--render-log")
        argv = argv[:i] + argv[i + 2 :]
    command = "python benchmarks/bench_unet_step.py " + " ".join(argv)
    load_start = os.getloadavg()
    results, checks = [], []
    if args.render_log:  # a run stopped early: what it finished, from its log
        results = parse_log(args.render_log)
        command += f" (stopped after {len(results) // 2} of {len(args.latent) * len(args.dtypes)} pairs; tables from its log)"
        load_start = (results[0]["load_min"],) * 3 if results else load_start
    for latent in args.latent if not args.render_log else ():
        steps, warmup = (args.large_steps, 0) if args.large_steps and latent >= 64 else (args.steps, args.warmup)
        for dtype in args.dtypes:
            results += run_interleaved(args.impl, latent, steps, warmup, args.num_frames, dtype=dtype)
    reference = results[0]
    for r in results[1:] if not args.render_log else ():
        for part, value in reference["checksums"].items():  # float64 sums in the same order: equal up to rounding
            assert abs(r["checksums"][part] - value) <= 1e-9 * max(1.0, abs(value)), f"{part} weights differ: {r['checksums']}"
    if not args.render_log:
        checks.append(f"- identical weights in every run (checked before the cast to the run's dtype): UNet checksum "
                      f"{reference['checksums']['unet']:.6f}, motion checksum {reference['checksums']['motion']:.6f}, "
                      f"motion parameters {reference['motion_params']:,}")
    if args.parity:
        with tempfile.TemporaryDirectory() as tmp:
            a, _ = run_sequential(["ours-across-frames", "diffusers"], 8, 1, 0, args.num_frames, tmp)
            diff = float((torch.load(f"{tmp}/ours-across-frames.pt") - torch.load(f"{tmp}/diffusers.pt")).abs().max())
        checks.append(f"- parity at 8x8 after one DDIM step, ours switched to diffusers' across-frames motion GroupNorm: "
                      f"max |ours - diffusers| = {diff:.2e} (mean |latents| {a['latents_abs_mean']:.3f})")
    args.results.with_suffix(".json").write_text(json.dumps(results, indent=1))  # raw numbers first: nothing lost if later parts fail
    e2e_steps = {"ours": args.e2e_steps, "diffusers": args.e2e_steps if args.e2e_steps_diffusers is None else args.e2e_steps_diffusers}
    e2e = run_e2e(args.e2e_latent, e2e_steps, args.num_frames, auto) if any(e2e_steps.values()) else []

    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
    header = (
        f"`{command}`: full-size SD1.5 UNet + v2 motion module, {args.num_frames} frames, CFG (UNet batch 2), CPU, 2 threads. "
        f"torch {torch.__version__}, diffusers {diffusers.__version__}, CPU: {cpu} ({', '.join(sorted(cpu_features())) or 'no bf16 features'}), "
        f"{os.cpu_count()} cores; `--dtype auto` here = {auto}. Load average (1/5/15 min) at the start "
        f"{load_start[0]:.1f}/{load_start[1]:.1f}/{load_start[2]:.1f}, at the end "
        f"{'/'.join(f'{x:.1f}' for x in os.getloadavg())}"
        f"{': the cores were shared with other jobs, so compare the alternating pairs, not absolute times' if max(load_start[0], os.getloadavg()[0]) > 2.5 else ' (2 cores: the benchmark alone is about 2)'}. Per (latent, dtype) both implementations are alive in their own "
        f"processes and their steps alternate (A B, B A, ...); {args.warmup} untimed warm-up step, best of {args.steps} "
        f"timed{f' ({args.large_steps} timed, no warm-up, at 64x64 and above)' if args.large_steps else ''}. One step = one UNet call on the CFG batch + a DDIM step in fp32. Peak RSS = `ru_maxrss` of each process "
        f"(weights are made in fp32 and cast, so a bf16 build peak includes the fp32 copy).\n"
    )
    text = header + "\n" + table(results) + "\n\n" + "\n".join(summary(results, auto) + checks) + "\n"
    if e2e:
        text += (f"\nEnd to end, each side's default ({args.e2e_latent * 8}x{args.e2e_latent * 8} pixels, {args.num_frames} frames, "
                 f"25 DDIM steps with CFG, then the VAE decode; a side that ran fewer steps is extrapolated from its mean step; "
                 f"each in its own process, one after the other):\n\n" + e2e_table(e2e) + "\n")
    print(text)
    args.results.write_text("# UNet step benchmark\n\n" + text)
    args.results.with_suffix(".json").write_text(json.dumps(results + e2e, indent=1))  # raw numbers, per-step times included
    update_readme(args.readme, text)


if __name__ == "__main__":
    main()
