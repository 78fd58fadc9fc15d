"""Writers and readers: every format round-trips through read_frames, sidecars, atomic writes, bad paths,
merged GIF/WebP frames repeated back, the training loader's selected-frame reader."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from animatediff import video_io
from animatediff.errors import UserInputError
from animatediff.video_io import read_frames, save_video, sidecar_path

NUM_FRAMES, H, W = 5, 48, 64


def blocky_frames(seed: int = 0) -> np.ndarray:
    """(f, H, W, 3) uint8 with few colours in 8x8 blocks: GIF's palette holds them exactly, codecs do well."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, size=(16, 3), dtype=np.uint8)
    blocks = rng.integers(0, 16, size=(NUM_FRAMES, H // 8, W // 8))
    return palette[blocks].repeat(8, axis=1).repeat(8, axis=2)


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("name, max_error", [("clip.gif", 0), ("clip.webp", 12), ("frames", 0), ("clip.mp4", 20)])
def test_round_trip(tmp_path, name, max_error):
    frames = blocky_frames()
    out = save_video(frames, tmp_path / name, fps=8)
    back = read_frames(out)
    assert back.shape == frames.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - frames).mean() <= max_error
    assert leftovers(tmp_path) == []


def test_float_tensor_input_matches_uint8(tmp_path):
    frames = blocky_frames()
    as_float = torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 255  # f h w c -> c f h w
    np.testing.assert_array_equal(read_frames(save_video(as_float, tmp_path / "a")), frames)
    np.testing.assert_array_equal(read_frames(save_video(as_float[None], tmp_path / "b")), frames)


def test_gif_loops_forever_at_fps(tmp_path):
    from PIL import Image

    out = save_video(blocky_frames(), tmp_path / "clip.gif", fps=8)
    with Image.open(out) as image:
        assert image.info["loop"] == 0 and image.n_frames == NUM_FRAMES
        assert abs(image.info["duration"] - 125) <= 10  # GIF stores centiseconds: 125 ms is written as 120


def test_mp4_is_h264_and_pads_odd_sizes(tmp_path):
    import av

    frames = blocky_frames()[:, :47, :63]
    out = save_video(frames, tmp_path / "odd.mp4", fps=8)
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        assert stream.average_rate == 8
    assert read_frames(out).shape == (NUM_FRAMES, 48, 64, 3)


@pytest.mark.parametrize("name", ["clip.gif", "frames"])
def test_sidecar_records_settings(tmp_path, name):
    settings = {"prompt": "a cat", "seed": 3, "path": tmp_path}  # a Path is written as a string
    out = save_video(blocky_frames(), tmp_path / name, metadata=settings)
    sidecar = sidecar_path(out)
    assert sidecar == (out / "settings.json" if out.is_dir() else tmp_path / "clip.gif.json")
    written = {"fps": 100 / 12, "fps_requested": 8} if name.endswith(".gif") else {}  # GIF: 12 cs per frame
    assert json.loads(sidecar.read_text()) == {"prompt": "a cat", "seed": 3, "path": str(tmp_path), **written}
    assert len(read_frames(out)) == NUM_FRAMES  # the folder's sidecar is not read as a frame


@pytest.mark.parametrize("name", ["clip.gif", "clip.mp4", "frames"])
def test_failure_leaves_nothing_and_keeps_old_output(tmp_path, monkeypatch, name):
    old = blocky_frames(seed=1)
    out = save_video(old, tmp_path / name)
    before = read_frames(out)

    suffix = video_io.video_format(out)
    real_writer = video_io._WRITERS[suffix]

    def failing_writer(frames, tmp, fps):
        real_writer(itertools.islice(frames, 2), tmp, fps)  # part of the output is on disk ...
        raise RuntimeError("disk full")  # ... when the write fails

    monkeypatch.setitem(video_io._WRITERS, suffix, failing_writer)
    with pytest.raises(RuntimeError, match="disk full"):
        save_video(blocky_frames(seed=2), out, metadata={"seed": 2})
    assert leftovers(tmp_path) == []
    np.testing.assert_array_equal(read_frames(out), before)
    assert not sidecar_path(out).exists()


def test_overwrite_replaces_folder(tmp_path):
    save_video(blocky_frames(seed=1), tmp_path / "frames")
    new = blocky_frames(seed=2)[:3]
    np.testing.assert_array_equal(read_frames(save_video(new, tmp_path / "frames")), new)
    assert leftovers(tmp_path) == []


def test_unknown_extension_names_out(tmp_path):
    with pytest.raises(UserInputError, match=r"^out .*clip\.avi.*'\.avi'") as error:
        save_video(blocky_frames(), tmp_path / "clip.avi")
    assert error.value.field == "out"
    assert list(tmp_path.iterdir()) == []


def test_bad_frame_shapes():
    with pytest.raises(ValueError):
        video_io.to_uint8_frames(torch.rand(4, 2, 8, 8))
    with pytest.raises(ValueError, match="one clip"):
        video_io.to_uint8_frames(torch.rand(2, 3, 2, 8, 8))


# ---- streamed frames: chunks from a generator, written as they come ---------------------------------
FORMATS = ["clip.gif", "clip.webp", "clip.mp4", "frames"]


def chunks(frames: np.ndarray, sizes=(2, 2, 1)):
    """A generator of uint8 chunks ``(n, H, W, 3)``, as ``GenerationResult.iter_frames`` yields them."""
    start = 0
    for n in sizes:
        yield frames[start : start + n]
        start += n


def file_bytes(out) -> dict:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())} if out.is_dir() else {out.name: out.read_bytes()}


@pytest.mark.parametrize("name", FORMATS)
def test_streamed_chunks_write_the_same_bytes_as_the_whole_clip(tmp_path, name):
    frames = blocky_frames()
    whole = save_video(frames, tmp_path / "whole" / name, fps=8, metadata={"seed": 1})
    streamed = save_video(chunks(frames), tmp_path / "streamed" / name, fps=8, metadata={"seed": 1})
    assert file_bytes(streamed) == file_bytes(whole)
    as_float = torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 255  # the pipeline's (3, f, H, W) in [0, 1]
    assert file_bytes(save_video(as_float, tmp_path / "float" / name, fps=8, metadata={"seed": 1})) == file_bytes(whole)
    assert leftovers(tmp_path / "streamed") == []


def test_gif_bytes_are_pillows_from_the_whole_list(tmp_path):
    """Streaming changed how frames reach Pillow, not the file: the same bytes as handing Pillow the list."""
    from PIL import Image

    frames = blocky_frames()
    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(tmp_path / "reference.gif", format="GIF", save_all=True, append_images=images[1:], duration=120, loop=0)
    out = save_video(chunks(frames), tmp_path / "clip.gif", fps=8)
    assert out.read_bytes() == (tmp_path / "reference.gif").read_bytes()


def broken_stream(frames: np.ndarray, error: BaseException, closed: list):
    """Two good chunks, then ``error``; records whether the consumer closed it (its ``finally`` ran)."""
    try:
        yield frames[:2]
        yield frames[2:4]
        raise error
    finally:
        closed.append(True)


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("error", [RuntimeError("decoder failed"), KeyboardInterrupt()])
def test_failure_mid_stream_leaves_nothing_and_keeps_old_output(tmp_path, name, error):
    ours = {"generator": "animatediff"}  # a sidecar this program wrote: a re-run may replace it
    out = save_video(blocky_frames(seed=1), tmp_path / name, metadata={**ours, "seed": 1})
    before = snapshot(tmp_path)
    closed = []
    with pytest.raises(type(error)):
        save_video(broken_stream(blocky_frames(seed=2), error, closed), out, metadata={**ours, "seed": 2})
    assert snapshot(tmp_path) == before and closed == [True]


@pytest.mark.parametrize("name", FORMATS)
def test_bad_chunk_mid_stream_is_refused_and_writes_nothing(tmp_path, name):
    frames = blocky_frames()
    for bad in (frames[:2, :8], frames[:2].astype(np.float32)):  # another size; not uint8
        stream = itertools.chain(chunks(frames, (2,)), [bad])
        with pytest.raises(ValueError, match="share a size|uint8 chunks"):
            save_video(stream, tmp_path / name)
        assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="no frames"):
        save_video(iter([]), tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_metadata_function_is_called_after_the_frames_are_written(tmp_path):
    consumed = []

    def stream():
        for chunk in chunks(blocky_frames()):
            consumed.append(len(chunk))
            yield chunk

    out = save_video(stream(), tmp_path / "clip.gif", fps=8, metadata=lambda: {"frames_seen": sum(consumed)})
    assert json.loads(sidecar_path(out).read_text()) == {"frames_seen": NUM_FRAMES, "fps": 100 / 12, "fps_requested": 8}


def test_refused_target_consumes_nothing(tmp_path):
    (tmp_path / "clip.gif").write_text("a user's file")
    consumed = []
    stream = (consumed.append(i) or chunk for i, chunk in enumerate(chunks(blocky_frames())))
    with pytest.raises(UserInputError):
        save_video(stream, tmp_path / "clip.gif")
    assert consumed == []


# ---- output targets never destroy anything ---------------------------------------------------------
def snapshot(folder):
    """Every file under ``folder`` (relative path -> bytes) and every sub-folder."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def test_folder_of_user_files_is_refused_and_kept(tmp_path):
    holiday = tmp_path / "holiday"
    holiday.mkdir()
    (holiday / "holiday.mp4").write_bytes(b"precious video")
    (holiday / "notes.txt").write_text("notes")
    before = snapshot(tmp_path)
    with pytest.raises(UserInputError, match="not frames written by animatediff"):
        save_video(blocky_frames(), holiday)
    assert snapshot(tmp_path) == before


def test_overwrite_replaces_only_our_files_in_a_folder(tmp_path):
    target = tmp_path / "frames"
    save_video(blocky_frames(seed=1), target, metadata={"seed": 1})  # our 8 frames and settings.json
    (target / "notes.txt").write_text("keep me")
    new = blocky_frames(seed=2)[:3]
    with pytest.raises(UserInputError):
        save_video(new, target)  # a foreign file is in the folder now
    save_video(new, target, metadata={"seed": 2}, overwrite=True)
    assert sorted(p.name for p in target.iterdir()) == ["frame_0000.png", "frame_0001.png", "frame_0002.png",
                                                          "notes.txt", "settings.json"]
    assert (target / "notes.txt").read_text() == "keep me"
    np.testing.assert_array_equal(read_frames(target), new)
    assert json.loads((target / "settings.json").read_text())["seed"] == 2
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("overwrite", [False, True])
def test_plain_file_where_frames_go_is_never_replaced(tmp_path, overwrite):
    (tmp_path / "NAME").write_text("a user's file without extension")
    before = snapshot(tmp_path)
    with pytest.raises(UserInputError, match="is a file"):
        save_video(blocky_frames(), tmp_path / "NAME", overwrite=overwrite)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("overwrite", [False, True])
def test_folder_where_a_file_goes_is_never_replaced(tmp_path, overwrite):
    (tmp_path / "clip.gif").mkdir()
    (tmp_path / "clip.gif" / "a.txt").write_text("x")
    before = snapshot(tmp_path)
    with pytest.raises(UserInputError, match="is a folder"):
        save_video(blocky_frames(), tmp_path / "clip.gif", overwrite=overwrite)
    assert snapshot(tmp_path) == before


def test_file_of_another_kind_needs_overwrite(tmp_path):
    target = tmp_path / "clip.gif"
    target.write_text("not a GIF at all")
    with pytest.raises(UserInputError, match="is not a GIF file"):
        save_video(blocky_frames(), target)
    assert target.read_text() == "not a GIF at all"
    save_video(blocky_frames(), target, overwrite=True)
    assert len(read_frames(target)) == NUM_FRAMES
    save_video(blocky_frames(seed=3), target)  # our own GIF: a re-run replaces it without asking


def test_foreign_sidecar_needs_overwrite(tmp_path):
    (tmp_path / "clip.gif.json").write_text('{"mine": true}')
    with pytest.raises(UserInputError, match="not an animatediff settings sidecar"):
        save_video(blocky_frames(), tmp_path / "clip.gif", metadata={"generator": "animatediff"})
    assert not (tmp_path / "clip.gif").exists()


def test_parent_that_is_a_file(tmp_path):
    (tmp_path / "parent").write_text("x")
    with pytest.raises(UserInputError, match="is a file, not a folder"):
        video_io.check_output(tmp_path / "parent" / "sub" / "clip.gif")


def test_unwritable_parent(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.geteuid() == 0:  # root may write anywhere: make the folder read-only as far as the check can tell
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    with pytest.raises(UserInputError, match="no permission"):
        video_io.check_output(locked / "clip.gif")
    with pytest.raises(UserInputError, match="no permission"):
        video_io.check_output(locked / "sub" / "frames")  # a folder that would be created inside it


def test_gif_delays_are_rounded_with_a_floor(tmp_path):
    from PIL import Image

    for fps, delay_ms in ((8, 120), (24, 40), (30, 30), (60, 20), (23.976, 40)):
        out = save_video(blocky_frames(), tmp_path / f"{fps}.gif", fps=fps, metadata={})
        with Image.open(out) as image:
            assert image.info["duration"] == delay_ms, fps
        recorded = json.loads(sidecar_path(out).read_text())
        assert recorded["fps"] == pytest.approx(1000 / delay_ms)
        assert recorded.get("fps_requested", fps) == fps


# ---- readers ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["clip.gif", "clip.webp"])
def test_merged_frames_are_repeated_back(tmp_path, name):
    """Pillow's writers merge identical consecutive frames into one longer frame; the readers honour the
    durations, so a clip with held frames (or a static one) reads back frame for frame."""
    frames = blocky_frames()[[0, 0, 0, 1, 2, 2, 3, 4]]  # (8, H, W, 3): frame 0 held 3x, frame 2 held 2x
    out = save_video(frames, tmp_path / name, fps=8)
    clip, fps = video_io.read_clip(out)
    assert clip.shape == frames.shape and fps == pytest.approx(video_io.effective_fps(out, 8), rel=0.05)
    assert np.abs(clip.astype(int) - frames).mean() <= (0 if name.endswith(".gif") else 12)
    if name.endswith(".gif"):  # (a WebP of one merged frame keeps no duration: its length is lost)
        static = save_video(frames[[0] * 6], tmp_path / "static.gif", fps=8)
        assert len(read_frames(static, fps=8)) == 6  # one merged frame: the period comes from fps


def test_clip_rates_and_single_images(tmp_path):
    from PIL import Image

    frames = blocky_frames()
    assert video_io.read_clip(save_video(frames, tmp_path / "c.mp4", fps=12))[1] == 12
    assert video_io.read_clip(save_video(frames, tmp_path / "frames", fps=12))[1] is None  # PNG states no rate
    Image.fromarray(frames[0]).save(tmp_path / "one.png")
    clip, fps = video_io.read_clip(tmp_path / "one.png")
    np.testing.assert_array_equal(clip, frames[:1])
    assert fps is None
    with pytest.raises(UserInputError, match="no such file or folder"):
        video_io.read_clip(tmp_path / "missing.gif")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UserInputError, match="cannot read '.txt' files"):
        read_frames(tmp_path / "notes.txt")


def test_selected_frames_for_training(tmp_path):
    frames = blocky_frames()
    out = save_video(frames, tmp_path / "c.mp4", fps=8)
    assert video_io.count_frames(out) == NUM_FRAMES
    picked = video_io.read_frames_at(out, np.array([0, 2, 2, 4]))  # sorted, may repeat
    assert picked.shape == (4, H, W, 3)
    np.testing.assert_array_equal(picked, read_frames(out)[[0, 2, 2, 4]])
    with pytest.raises(ValueError, match="could be decoded"):
        video_io.read_frames_at(out, np.array([0, NUM_FRAMES]))
