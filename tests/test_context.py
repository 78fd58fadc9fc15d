"""Context windows (sampling/context.py): the window schedules and fuse weights, the wrapper, the wiring."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from animatediff.sampling.context import FUSE_METHODS, SCHEDULES, fuse_weights, fusion_weights, windows


def _cases(schedule: str):
    """Every small (N, L, O, stride) plus a seeded sample of larger ones."""
    small = [(n, length, overlap, stride) for n in range(1, 21) for length in range(1, 9) for overlap in range(length)
             for stride in (1, 2, 3)]
    rng = random.Random(0)
    large = []
    for _ in range(200):
        length = rng.randint(1, 32)
        large.append((rng.randint(1, 300), length, rng.randrange(length), rng.randint(1, 4)))
    return [c for c in small + large if schedule != "batched" or c[3] == 1]


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_every_frame_is_covered_at_every_step(schedule):
    for n, length, overlap, stride in _cases(schedule):
        for step in (0, 1, 3, 6, 1000):
            for closed in (False, True) if schedule == "looped" else (False,):
                found = windows(n, step, length, overlap, schedule, stride, closed)
                case = (n, length, overlap, stride, step, closed)
                assert set(itertools.chain(*found)) == set(range(n)), case
                assert all(1 <= len(w) <= length and len(set(w)) == len(w) for w in found), case
                assert len({tuple(w) for w in found}) == len(found), case  # no window twice


def test_static_matches_the_documented_example_and_never_moves():
    expected = [list(range(s, s + 16)) for s in (0, 12, 24, 36, 48)]
    assert all(windows(64, step, 16, 4, "static") == expected for step in range(6))


def test_looped_wraps_and_moves_every_step():
    # ADE's example: N=64, L=16, O=4, step 1 shifts the grid by 32
    assert windows(64, 1, 16, 4, "looped") == [
        list(range(32, 48)), list(range(44, 60)), [*range(56, 64), *range(8)], list(range(4, 20)), list(range(16, 32))]
    wrapped = [w for step in range(8) for w in windows(64, step, 16, 4, "looped") if w != sorted(w)]
    assert wrapped and all(w[0] > w[-1] for w in wrapped)


def test_uniform_never_wraps_but_its_seams_move():
    seams = set()
    for n, length, overlap, stride in _cases("uniform")[::7]:
        for step in range(6):
            for w in windows(n, step, length, overlap, "uniform", stride):
                assert w == sorted(w) and len(set(w[i + 1] - w[i] for i in range(len(w) - 1))) <= 1, (n, length, w)
    for step in range(4):
        seams.add(tuple(w[0] for w in windows(64, step, 16, 4, "uniform")))
    assert len(seams) == 4


def test_closed_loop_overlaps_the_loop_seam():
    """Without closed_loop the window over the end may stop where the first begins; with it they share O frames."""
    for n in (40, 50, 64, 100):
        for step in range(6):
            found = windows(n, step, 16, 4, "looped", closed_loop=True)
            # every cyclic pair of neighbouring frames (n-1, 0 included) is together in some window
            for f in range(n):
                assert any(f in w and (f + 1) % n in w and w.index((f + 1) % n) == w.index(f) + 1 for w in found)


def test_batched_has_no_overlap():
    for n, length, overlap, _ in _cases("batched"):
        found = windows(n, 0, length, overlap, "batched")
        assert sorted(itertools.chain(*found)) == list(range(n))


def test_dilated_passes_span_further():
    found = windows(64, 0, 16, 4, "static", stride=3)
    assert [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30] in found
    assert max(w[-1] - w[0] for w in found) == 60  # dilation 4: 16 frames over 61
    assert windows(64, 0, 16, 4, "static", stride=1) == windows(64, 0, 16, 4, "static")


def test_short_clips_are_one_window():
    for schedule in SCHEDULES:
        assert windows(16, 3, 16, 4, schedule) == [list(range(16))]
        assert windows(5, 3, 16, 4, schedule) == [list(range(5))]


@pytest.mark.parametrize("bad", [dict(overlap=16), dict(overlap=-1), dict(length=0), dict(stride=0),
                                 dict(schedule="wavy"), dict(closed_loop=True, schedule="uniform"),
                                 dict(schedule="batched", stride=2)])
def test_windows_refuse_bad_arguments(bad):
    with pytest.raises(ValueError):
        windows(**{**dict(num_frames=64, step=0, length=16, overlap=4), **bad})


@pytest.mark.parametrize("method", FUSE_METHODS)
def test_fuse_weights_are_positive_and_normalised_per_frame(method):
    for length in range(1, 33):
        w = fuse_weights(length, method)
        assert w.shape == (length,) and bool((w > 0).all())
        assert torch.equal(w, w.flip(0))  # symmetric: no direction in time is preferred
    for schedule in SCHEDULES:
        for n, length, overlap, stride in _cases(schedule)[::10]:
            found = windows(n, 2, length, overlap, schedule, stride)
            weights = fusion_weights(found, n, method)
            total = torch.zeros(n, dtype=torch.float64)
            for window, weight in zip(found, weights):
                assert bool((weight > 0).all())
                total.index_add_(0, torch.tensor(window), weight)
            torch.testing.assert_close(total, torch.ones(n, dtype=torch.float64))
    once = fusion_weights([[0, 1, 2], [3, 4]], 5, method)  # a frame in one window gets weight 1.0 exactly
    assert all(bool((w == 1).all()) for w in once)


def test_fuse_weight_profiles():
    assert fuse_weights(6, "pyramid").tolist() == [1, 2, 3, 3, 2, 1]
    assert fuse_weights(5, "pyramid").tolist() == [1, 2, 3, 2, 1]
    assert fuse_weights(4, "flat").tolist() == [1, 1, 1, 1]
    assert fuse_weights(16, "gauss").argmax() in (7, 8) and fuse_weights(16, "relative").min() == pytest.approx(0.01)
    with pytest.raises(ValueError):
        fuse_weights(16, "triangle")
