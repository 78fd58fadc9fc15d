"""The only code that differs between the two step benchmarks: one motion module, ours vs diffusers'.

``bench_unet_step.py`` runs the same diffusers spatial UNet in both implementations; what differs is the
motion module (ours: ``VanillaTemporalModule``; diffusers: ``AnimateDiffTransformer3D``). This script
times the two in ONE process with alternating calls, so background load on a shared machine hits both
alike, for every (channels, latent size) a v2 module set meets in one UNet call at a given latent size,
and weights the times by how many modules run at that size. Same weights on both sides (converted with
``motion_module_to_diffusers``); ours runs with diffusers' across-frames GroupNorm for the parity check
and with the official per-frame GroupNorm for timing.

    python benchmarks/bench_motion_module.py --latent 32 --repeats 5
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

from animatediff.weights.convert import motion_module_to_diffusers
from animatediff.motion_module import VanillaTemporalModule
from animatediff.presets import get_preset


def placements(latent: int) -> dict[tuple[int, int], int]:
    """``{(channels, feature map side): number of v2 modules}`` for one UNet call (SD1.5 layout)."""
    counts: dict[tuple[int, int], int] = {}
    channels = (320, 640, 1280, 1280)
    for i, c in enumerate(channels):  # down blocks: 2 modules each, at latent / 2**i
        counts[(c, latent >> i)] = counts.get((c, latent >> i), 0) + 2
    counts[(1280, latent >> 3)] += 1  # v2 mid block
    for i, c in enumerate(reversed(channels)):  # up blocks: 3 modules each, at latent / 2**(3 - i)
        counts[(c, latent >> (3 - i))] = counts.get((c, latent >> (3 - i)), 0) + 3
    return counts


def pair(channels: int):
    config = get_preset("v2")
    ours = VanillaTemporalModule(channels, config).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0.0, 0.02)
    theirs = AnimateDiffTransformer3D(
        num_attention_heads=8, attention_head_dim=channels // 8, in_channels=channels, norm_num_groups=32,
        activation_fn="geglu", positional_embeddings="sinusoidal", num_positional_embeddings=32, double_self_attention=True,
    ).eval()
    converted = motion_module_to_diffusers({f"m.{k}": v for k, v in ours.state_dict().items()})
    pe = {k: v for k, v in theirs.state_dict().items() if k.endswith("pos_embed.pe")}
    theirs.load_state_dict({**{k.removeprefix("m."): v for k, v in converted.items()}, **pe}, strict=True)
    across = VanillaTemporalModule(channels, dataclasses.replace(config, motion_groupnorm_across_frames=True)).eval()
    across.load_state_dict(ours.state_dict(), strict=True)
    return ours, theirs, across


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latent", type=int, default=32)
    parser.add_argument("--num-frames", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(2)
    f, b = args.num_frames, 2  # CFG batch
    rows, total = [], {"ours": 0.0, "diffusers": 0.0}
    for (c, side), count in sorted(placements(args.latent).items()):
        ours, theirs, across = pair(c)
        x = torch.randn(b * f, c, side, side)  # (b f) c h w, as both UNets hand it over
        with torch.no_grad():
            diff = (across(x, f) - theirs(x, num_frames=f)).abs().max().item()
            times = {"ours": [], "diffusers": []}
            for i in range(args.repeats):
                calls = [("ours", lambda: ours(x, f)), ("diffusers", lambda: theirs(x, num_frames=f))]
                for name, call in calls if i % 2 == 0 else calls[::-1]:
                    tic = time.perf_counter()
                    call()
                    times[name].append(time.perf_counter() - tic)
        best = {k: min(v) for k, v in times.items()}
        for k in total:
            total[k] += count * best[k]
        rows.append(f"| {c} | {side}x{side} | {count} | {best['ours'] * 1e3:.1f} | {best['diffusers'] * 1e3:.1f} | "
                    f"{best['ours'] / best['diffusers']:.2f} | {diff:.1e} |")
    print(f"Motion modules only, latent {args.latent}x{args.latent}, {f} frames, batch {b}, fp32 CPU, 2 threads, "
          f"best of {args.repeats} alternating calls\n")
    print("| channels | feature map | modules | ours (ms) | diffusers (ms) | ours/diffusers | max diff (across-frames GN) |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"| **all {sum(placements(args.latent).values())}** | | | **{total['ours']:.2f} s** | **{total['diffusers']:.2f} s** | "
          f"**{total['ours'] / total['diffusers']:.2f}** | |")


if __name__ == "__main__":
    main()
