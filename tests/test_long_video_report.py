"""The long-clip evidence page's measurements (``animatediff.demo.long_video``) on small synthetic clips:
seam pairs are the pairs around window boundaries, a jump at a seam shows as "across" > "inside", a clip that
cycles scores a loop ratio near 1. Seconds: flows of a few 32x32 frames."""

from __future__ import annotations

import numpy as np
import pytest

from animatediff import metrics
from animatediff.demo import long_video
from animatediff.sampling.context import windows


def _texture(size: int = 32, seed: int = 0) -> np.ndarray:
    """A smooth periodic colour texture (size, size, 3) uint8: sums of sinusoids that wrap around the frame."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] * (2 * np.pi / size)
    out = np.zeros((size, size, 3))
    for c in range(3):
        for _ in range(4):
            fx, fy, phase = rng.integers(1, 4), rng.integers(0, 4), rng.uniform(0, 2 * np.pi)
            out[..., c] += np.sin(fx * x + fy * y + phase)
    return np.uint8(np.clip(128 + 30 * out, 0, 255))


def _panning(num_frames: int, step: int = 1, seed: int = 0) -> np.ndarray:
    """The texture shifted ``step`` px right per frame (np.roll: frame num_frames * step / size repeats frame 0)."""
    texture = _texture(seed=seed)
    return np.stack([np.roll(texture, step * t, axis=1) for t in range(num_frames)])


def test_seam_pairs_are_the_pairs_where_a_window_starts_or_ends():
    assert long_video.seam_pairs(windows(64, 0, 16, 4, "static"), 64) == [11, 15, 23, 27, 35, 39, 47, 51]
    assert long_video.seam_pairs(windows(64, 0, 16, 4, "batched"), 64) == [15, 31, 47]
    assert long_video.seam_pairs([list(range(16))], 16) == []  # one window: no seam
    wrapped = [list(range(4, 20)), [20, 21, 22, 23, 0, 1, 2, 3]]  # a looped window wraps 23 -> 0
    assert long_video.seam_pairs(wrapped, 24) == [3, 19]  # its ends; the wrap 23 -> 0 is not a pair
    for schedule in ("static", "uniform", "looped", "batched"):
        for step in range(4):
            found = windows(40, step, 12, 3, schedule)
            # a window (contiguous mod 40) starts after pair (w[0] - 1, w[0]) and ends before (w[-1], w[-1] + 1)
            bounds = {(w[0] - 1) % 40 for w in found} | {w[-1] for w in found}
            assert long_video.seam_pairs(found, 40) == sorted(bounds - {39}), (schedule, step)


def test_a_jump_at_a_seam_scores_higher_across_seams_than_inside():
    smooth = _panning(24)
    jumped = smooth.copy()
    jumped[12:] = _panning(24, seed=1)[12:]  # other content from frame 12: the batched windows' seam (11, 12)
    found = windows(24, 0, 12, 0, "batched")
    assert long_video.seam_pairs(found, 24) == [11]
    plain, jump = long_video.measure(smooth, found), long_video.measure(jumped, found)
    assert jump["across"] > 10 * jump["inside"]  # the seam pair carries the jump
    assert plain["across"] < 2 * plain["inside"] + 1e-4  # no jump: the seam pair is like the others
    assert jump["inside"] == pytest.approx(plain["inside"], rel=0.2, abs=1e-4)


def test_pair_errors_average_to_the_clips_warping_error():
    clip = _panning(8, step=2)
    errors = long_video.pair_errors(clip)
    assert errors.shape == (7,)
    assert errors.mean() == pytest.approx(metrics.warping_error(clip), rel=1e-6)


def test_a_clip_that_cycles_has_a_loop_ratio_near_one():
    cycling = _panning(16, step=2)  # frame 16 would be frame 0 again: last -> first is one more 2 px step
    ramp = np.linspace(0, 90, 16)[:, None, None, None]
    drifting = np.uint8(np.clip(cycling + ramp, 0, 255))  # also brightens: last -> first jumps back by 90 levels
    whole = [list(range(16))]
    assert long_video.measure(cycling, whole)["loop_ratio"] < 3
    assert long_video.measure(drifting, whole)["loop_ratio"] > 10


def test_every_variant_is_a_valid_generation_config():
    s = long_video.Settings()
    for variant in long_video.VARIANTS:
        config = long_video.config_for(variant, s, "a red circle", 1).resolved()
        config.validate(8, s.num_frames if variant.extended else 32, "v3")  # the demo module encodes 32 frames
        assert long_video.final_windows(variant, s)  # every variant has the windows its seams come from


def test_the_report_samples_at_the_bundled_familys_own_size():
    from animatediff import bundled

    d = bundled.generation_defaults()
    s = long_video.for_family(long_video.Settings())
    assert (s.width, s.height, s.guidance_scale, s.steps) == (d["width"], d["height"], d["guidance_scale"], d["steps"])
    assert long_video.for_family(long_video.Settings(**long_video.QUICK), quick=True).steps == long_video.QUICK["steps"]


def test_final_windows_are_the_last_steps():
    s = long_video.Settings(steps=5)
    by = {v.name: v for v in long_video.VARIANTS}
    assert long_video.final_windows(by["uniform"], s) == windows(64, 4, 16, 4, "uniform")
    assert long_video.final_windows(by["static"], s) == windows(64, 0, 16, 4, "static")
    assert long_video.final_windows(by["one-window"], s) == windows(64, 0, 16, 4, "static")  # the placebo
    assert long_video.final_windows(by["closed-loop"], s) == windows(64, 4, 16, 4, "looped", closed_loop=True)


def test_seam_excess_keeps_what_seams_add_and_cancels_what_the_content_does():
    content = np.array([0.01, 0.01, 0.05, 0.01, 0.01, 0.01, 0.01])  # a content peak at pair 2, in every variant
    seams = [2, 5]
    assert long_video.seam_excess(content, content, seams) == 0.0  # the peak is shared: no excess
    with_seam = content.copy()
    with_seam[5] += 0.02  # a jump at one of the two seams
    assert long_video.seam_excess(with_seam, content, seams) == pytest.approx(0.01)  # 0.02 / 2 seams - 0 inside
    assert np.isnan(long_video.seam_excess(content, content, []))
