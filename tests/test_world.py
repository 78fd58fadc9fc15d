"""The demo-world generator (determinism, captions, domain properties, dataset files) and the sign conventions
of the camera-move augmentation it renders its camera clips with."""

import csv
import sys

import numpy as np
import pytest

from animatediff.demo import world
from animatediff.errors import UserInputError
from animatediff.presets import CAMERA_MOVES
from animatediff.training.augment import camera_move
from animatediff.video_io import read_frames


def test_deterministic_per_seed():
    a = world.random_spec(np.random.default_rng(7), "video")
    b = world.random_spec(np.random.default_rng(7), "video")
    assert a == b
    np.testing.assert_array_equal(world.make_video(a, 8), world.make_video(b, 8))
    np.testing.assert_array_equal(world.make_image(a), world.make_image(b))
    c = world.random_spec(np.random.default_rng(8), "video")
    assert c != a and not np.array_equal(world.make_video(c, 8), world.make_video(a, 8))


def test_shapes_and_kinds():
    rng = np.random.default_rng(0)
    video = world.make_video(world.random_spec(rng, "video"), 16, 48, 64)
    assert video.shape == (16, 48, 64, 3) and video.dtype == np.uint8
    for kind in ("image", "style"):
        spec = world.random_spec(rng, kind)
        assert all(o.motion == "static" for o in spec.objects)
        assert world.make_image(spec).shape == (64, 64, 3)
    assert world.random_spec(rng, "style").style == "personal"
    for seed in range(20):
        spec = world.random_spec(np.random.default_rng(seed))
        colors = [o.color for o in spec.objects]
        assert 1 <= len(colors) <= 3 and len(set(colors)) == len(colors)
        assert spec.background_color not in colors


def test_caption():
    spec = world.SceneSpec(objects=(world.ObjectSpec("circle", "red", 0.3, 0.5, motion="bouncing"),
                                world.ObjectSpec("square", "blue", 0.7, 0.5)),
                       background="striped", background_color="green", camera="PanLeft")
    assert world.caption(spec) == "a red circle bouncing and a blue square on a green striped background, camera pans left"
    assert world.caption(spec, motion=False) == "a red circle and a blue square on a green striped background"


def test_watermark_on_video_frames_only():
    spec = world.random_spec(np.random.default_rng(3), "video")
    marked, clean = world.make_video(spec, 4), world.make_video(spec, 4, watermark=False)
    logo = world.watermark_mask(64, 64) > 0.5
    assert logo.sum() > 20 and logo[: 32].sum() == 0 and logo[:, :32].sum() == 0  # bottom-right corner
    assert (marked[:, logo].astype(int) - clean[:, logo]).mean() > 20  # brighter on the logo
    outside = ~(world.watermark_mask(64, 64) > 0)
    np.testing.assert_array_equal(marked[:, outside], clean[:, outside])
    image = world.make_image(spec)
    np.testing.assert_array_equal(image, clean[0])  # images never carry it


def test_personal_style_is_pastel():
    spec = world.random_spec(np.random.default_rng(1), "image")
    styled = world.SceneSpec(**{**spec.__dict__, "style": "personal"})
    plain_img, style_img = world.make_image(spec).astype(int), world.make_image(styled).astype(int)
    saturation = lambda im: (im.max(-1) - im.min(-1)).mean()
    assert saturation(style_img) < saturation(plain_img)
    assert (style_img.max(-1) < 60).mean() > 0.02  # dark outlines


def _marker_clip(num_frames=9, size=65, points=((0, 0),)):
    """Static clip, black except small bright gaussian dots at offsets from the centre (x right, y down)."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    frame = np.zeros((size, size), np.float32)
    c = (size - 1) / 2
    for dx, dy in points:
        frame += np.exp(-((xs - c - dx) ** 2 + (ys - c - dy) ** 2) / 4.0)
    frame = np.clip(frame * 255, 0, 255).astype(np.uint8)
    return np.repeat(frame[None, ..., None], 3, -1).repeat(num_frames, 0)


def _centroid(frame, region=None):
    w = frame[..., 0].astype(np.float64)
    if region is not None:
        w = w * region
    ys, xs = np.mgrid[0:frame.shape[0], 0:frame.shape[1]]
    c = (frame.shape[0] - 1) / 2
    return (xs * w).sum() / w.sum() - c, (ys * w).sum() / w.sum() - c


@pytest.mark.parametrize("move, expect", [("PanLeft", (+1, 0)), ("PanRight", (-1, 0)),
                                          ("TiltUp", (0, +1)), ("TiltDown", (0, -1))])
def test_camera_move_pan_tilt_sign_by_pixels(move, expect):
    out = camera_move(_marker_clip(), move, 0.25)
    (x0, y0), (x1, y1) = _centroid(out[0]), _centroid(out[-1])
    dx, dy = x1 - x0, y1 - y0
    # Content moves opposite to the camera: s / (1 - s) of the frame over the clip.
    expected = 0.25 / 0.75 * 64
    assert np.sign(round(dx)) == expect[0] and np.sign(round(dy)) == expect[1]
    assert abs(abs(dx + dy) - expected) < 1.5


def test_camera_move_zoom_and_roll_sign_by_pixels():
    clip = _marker_clip(points=((12, 0), (-12, 0)))
    right = np.zeros((65, 65))
    right[:, 33:] = 1
    spread = lambda f: _centroid(f, right)[0]
    zin, zout = camera_move(clip, "ZoomIn", 0.25), camera_move(clip, "ZoomOut", 0.25)
    assert spread(zin[-1]) > spread(zin[0]) * 1.25 and spread(zout[-1]) < spread(zout[0]) / 1.25
    one = _marker_clip(points=((12, 0),))
    # RollingClockwise: the camera turns clockwise, so a point right of centre goes UP (anticlockwise on screen).
    cw, acw = camera_move(one, "RollingClockwise", 0.25), camera_move(one, "RollingAnticlockwise", 0.25)
    angle = lambda f: np.degrees(np.arctan2(*_centroid(f)[::-1]))  # + = clockwise on screen (y down)
    assert angle(cw[-1]) - angle(cw[0]) == pytest.approx(-22.5, abs=2)
    assert angle(acw[-1]) - angle(acw[0]) == pytest.approx(22.5, abs=2)


def test_camera_move_keeps_shape_dtype_and_validates():
    clip = np.random.default_rng(0).integers(0, 255, (5, 20, 30, 3), dtype=np.uint8)
    for move in CAMERA_MOVES:
        out = camera_move(clip, move, 0.2)
        assert out.shape == clip.shape and out.dtype == np.uint8
    out = camera_move(clip.astype(np.float32) / 255, "ZoomIn", 0.2)
    assert out.dtype == np.float32
    np.testing.assert_allclose(camera_move(clip, "ZoomIn", 0.0), clip, atol=1)
    with pytest.raises(ValueError, match="unknown camera move"):
        camera_move(clip, "Zoom", 0.2)
    with pytest.raises(ValueError, match="strength"):
        camera_move(clip, "ZoomIn", 1.0)


def test_write_dataset(tmp_path):
    csv_path = world.write_dataset(tmp_path / "v", 2, "video", seed=1, num_frames=8)
    rows = list(csv.DictReader(open(csv_path)))
    assert [r["videoid"] for r in rows] == ["video_1_000000", "video_1_000001"]
    assert all((tmp_path / "v" / f"{r['videoid']}.mp4").stat().st_size > 0 for r in rows)
    assert rows[0]["name"] == world.caption(world.random_spec(np.random.default_rng([1, 0]), "video"))
    import av

    with av.open(str(tmp_path / "v" / "video_1_000000.mp4")) as container:
        assert len(list(container.decode(video=0))) == 8
    # the clip of sample 0 (H.264 4:2:0 blurs the saturated colours a little), no settings sidecars
    expected = world.make_video(world.random_spec(np.random.default_rng([1, 0]), "video"), 8)
    assert np.abs(read_frames(tmp_path / "v" / "video_1_000000.mp4").astype(int) - expected).mean() < 8
    assert sorted(p.suffix for p in (tmp_path / "v").iterdir()) == [".csv", ".mp4", ".mp4"]
    world.write_dataset(tmp_path / "s", 2, "style", seed=1)
    assert len(list((tmp_path / "s").glob("*.png"))) == 2
    world.write_dataset(tmp_path / "g", 1, "video", seed=1, num_frames=4, video_format="gif")
    assert (tmp_path / "g" / "video_1_000000.gif").exists()


def test_write_dataset_camera_share_keeps_the_scenes(tmp_path):
    """camera_share films that share of the videos with a random move (its phrase in the caption); every scene
    is the one camera_share=0 draws, so the other videos are unchanged."""
    plain = list(csv.DictReader(open(world.write_dataset(tmp_path / "a", 12, "video", seed=5, num_frames=2))))
    mixed = list(csv.DictReader(open(world.write_dataset(tmp_path / "b", 12, "video", seed=5, num_frames=2, camera_share=0.5))))
    moved = [m["name"] for m in mixed if ", camera " in m["name"]]
    assert 2 <= len(moved) <= 10
    for p, m in zip(plain, mixed):
        assert m["name"].split(", camera ")[0] == p["name"]  # same scene, the move's phrase appended
        same = (tmp_path / "a" / f"{p['videoid']}.mp4").read_bytes() == (tmp_path / "b" / f"{m['videoid']}.mp4").read_bytes()
        assert same == (", camera " not in m["name"])
    quiet = list(csv.DictReader(open(world.write_dataset(tmp_path / "c", 12, "video", seed=5, num_frames=2, camera_share=0.5,
                                                          camera_in_caption=False))))
    assert [q["name"] for q in quiet] == [p["name"] for p in plain]  # filmed with the move, captioned without it
    assert (tmp_path / "c" / f"{quiet[0]['videoid']}.mp4").read_bytes() == (tmp_path / "b" / f"{mixed[0]['videoid']}.mp4").read_bytes()
    images = list(csv.DictReader(open(world.write_dataset(tmp_path / "i", 4, "image", seed=5, camera_share=1.0))))
    assert not any("camera" in r["name"] for r in images)  # images have no camera


def test_camera_move_without_opencv_is_a_user_error(monkeypatch):
    """OpenCV comes with the [demo] extra; MotionLoRA training without it gets one line naming the field."""
    monkeypatch.setitem(sys.modules, "cv2", None)  # `import cv2` now fails as if it were not installed
    with pytest.raises(UserInputError, match=r'camera_move: camera moves need OpenCV: pip install "animatediff\[demo\]"'):
        camera_move(np.zeros((2, 8, 8, 3), np.uint8), "ZoomIn")
