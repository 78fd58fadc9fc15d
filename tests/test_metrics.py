"""Weight-free metrics on generated ground-truth clips whose answer is known, the demo scores, and
`animatediff eval` (its scorer plug-ins found through the `animatediff.scorers` entry points)."""

import argparse
import json
import subprocess
import sys
from importlib.metadata import EntryPoint, entry_points

import numpy as np
import pytest

import animatediff
from animatediff import evaluate as evaluate_module
from animatediff import metrics
from animatediff.demo import scores, world
from animatediff.errors import UserInputError
from animatediff.evaluate import SCORER_GROUP, add_eval_parser, evaluate, load_scorer
from animatediff.presets import CAMERA_MOVES
from animatediff.training.augment import camera_move, camera_move_truth
from animatediff.video_io import read_clip

PROMPT = "a red circle on a blue checkered background"
DEMO_ENTRY_POINT = EntryPoint(name="demo", value="animatediff.demo.scores:demo_scores", group=SCORER_GROUP)


def _scene(motion="static", camera=None, seed=1):
    obj = world.ObjectSpec("circle", "red", 0.25, 0.5, 0.13, motion, "medium", "right")
    return world.SceneSpec(objects=(obj,), background="checkered", background_color="blue", background_seed=seed,
                           camera=camera)


@pytest.fixture(scope="module")
def clips():
    static = world.make_video(_scene(), 12)
    smooth = world.make_video(_scene("linear"), 12)
    gain = np.where(np.arange(12) % 2 == 0, 1.0, 0.8)[:, None, None, None]  # brightness flicker
    flicker = np.clip(static * gain, 0, 255).astype(np.uint8)
    return {"static": static, "smooth": smooth, "flicker": flicker}


def test_psnr_and_ssim_against_a_reference(clips):
    image = clips["smooth"][0]
    assert metrics.psnr(image, image) == float("inf") and metrics.ssim(image, image) == pytest.approx(1.0)
    noise = np.random.default_rng(0).normal(0, 8, image.shape)
    noisy = np.clip(image + noise, 0, 255).astype(np.uint8)
    assert metrics.psnr(noisy, image) == pytest.approx(20 * np.log10(255 / 8), abs=0.3)  # sigma 8: ~30 dB
    worse = np.clip(image + 4 * noise, 0, 255).astype(np.uint8)
    assert metrics.ssim(worse, image) < metrics.ssim(noisy, image) < 1.0
    assert metrics.psnr(clips["smooth"][-1], image) < metrics.psnr(noisy, image)  # the object moved
    with pytest.raises(ValueError, match="two uint8 images"):
        metrics.psnr(image, image[:-1])


@pytest.fixture
def demo_entry_point(monkeypatch):
    """The package's pyproject registers the demo scorer; stand in for the installed metadata here."""
    monkeypatch.setattr(evaluate_module, "entry_points",
                        lambda group: [DEMO_ENTRY_POINT] if group == SCORER_GROUP else [])


def test_static_clip(clips):
    r = metrics.video_metrics(clips["static"])
    assert r["warping_error"] < 1e-6
    assert r["temporal_flicker"]["score"] == 1.0
    assert not r["dynamic_degree"]["dynamic"] and r["static"]
    assert r["camera"]["label"] == "static" and r["camera"]["moves"] == []
    assert not {"watermark_score", "style", "attributes"} & set(r)  # demo scores only when asked
    json.dumps(r)  # JSON-able


def test_smooth_move(clips):
    r = metrics.video_metrics(clips["smooth"])
    assert r["warping_error"] < 1e-3
    assert r["dynamic_degree"]["dynamic"] and not r["static"]
    assert r["dynamic_degree"]["threshold"] == pytest.approx(6 * 64 / 256)  # VBench's, at 8 fps
    assert r["dynamic_degree"]["count_num"] == round(4 * 12 / 16)


def test_flicker(clips):
    smooth, flicker = metrics.video_metrics(clips["smooth"]), metrics.video_metrics(clips["flicker"])
    assert flicker["warping_error"] > 5 * smooth["warping_error"]
    assert flicker["temporal_flicker"]["score"] < 0.95 < smooth["temporal_flicker"]["score"]
    assert not flicker["dynamic_degree"]["dynamic"]


def test_dynamic_degree_fps_subsampling(clips):
    r = metrics.dynamic_degree(clips["smooth"], fps=16)  # every 2nd frame, twice the motion per pair
    assert r["dynamic"] and len(r["top5_flow"]) == 5


@pytest.mark.parametrize("move", CAMERA_MOVES)
def test_camera_moves_classified(move):
    clip = world.make_video(_scene(camera=move, seed=2), 12)
    r = metrics.camera_motion(clip, ignore_box=world.WATERMARK_BOX)  # as the demo measures its clips
    assert r["label"] == move and r["moves"] == [move]
    truth = camera_move_truth(move)
    key = next(k for k, v in truth.items() if v)
    assert np.sign(r[key]) == np.sign(truth[key]) and 0.6 < r[key] / truth[key] < 1.3


def test_two_camera_moves_combined():
    clip = camera_move(world.make_video(_scene(camera="ZoomIn", seed=3), 12, 96, 96, watermark=False), "PanLeft", 0.25)
    assert set(metrics.camera_motion(clip)["moves"]) == {"ZoomIn", "PanLeft"}


@pytest.mark.parametrize("box", [(34 / 64, 0.0, 1.0, 1.0), (0.0, 0.5, 1.0, 1.0)])
def test_camera_motion_ignores_a_screen_fixed_region(box):
    """A static noise overlay fixed on screen (here: half the frame, up to its edges) drags the estimate off
    the camera's pan; left out through ``ignore_box``, the pan alone remains."""
    clip = world.make_video(_scene(camera="PanLeft", seed=2), 12, watermark=False)
    height, width = clip.shape[1:3]
    x0, y0, x1, y1 = int(box[0] * width), int(box[1] * height), int(box[2] * width), int(box[3] * height)
    clip[:, y0:y1, x0:x1] = np.random.default_rng(0).integers(0, 255, (y1 - y0, x1 - x0, 3), dtype=np.uint8)
    assert metrics.camera_motion(clip)["moves"] != ["PanLeft"]
    assert metrics.camera_motion(clip, ignore_box=box)["moves"] == ["PanLeft"]


def test_attribute_accuracy_on_known_images():
    results = []
    for seed in range(12):
        spec = world.random_spec(np.random.default_rng(seed), "image")
        results.append(scores.attribute_accuracy(world.make_image(spec), world.caption(spec))["accuracy"])
    assert np.mean(results) >= 0.9
    image = world.make_image(_scene())
    assert scores.attribute_accuracy(image, PROMPT)["accuracy"] == 1.0
    wrong = scores.attribute_accuracy(image, "a green star on a yellow striped background")
    assert wrong["accuracy"] == 0.0 and len(wrong["attributes"]) == 3


def test_parse_prompt():
    p = scores.parse_prompt("A red circle bouncing and a blue square on a green striped background, camera pans left")
    assert p == {"objects": [("red", "circle"), ("blue", "square")], "background": "green"}


def test_watermark_score_video_vs_image():
    for seed in range(4):
        spec = world.random_spec(np.random.default_rng(seed), "video")
        assert scores.watermark_score(world.make_video(spec, 4)) > 0.7
        assert abs(scores.watermark_score(world.make_image(spec))) < 0.3


def test_style_score_personal_vs_plain():
    for seed in range(4):
        plain = scores.style_score(world.make_image(world.random_spec(np.random.default_rng(seed), "image")))
        style = scores.style_score(world.make_image(world.random_spec(np.random.default_rng(seed), "style")))
        assert style["score"] > 0.7 > 0.2 > plain["score"]


def _write_clips(tmp_path, clips):
    from PIL import Image

    gif = tmp_path / "static.gif"
    frames = [Image.fromarray(f) for f in clips["static"]]
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=125, loop=0)
    folder = tmp_path / "smooth"
    folder.mkdir()
    for i, f in enumerate(clips["smooth"]):
        Image.fromarray(f).save(folder / f"frame_{i:04d}.png")
    return gif, folder


def test_evaluate_files(tmp_path, clips):
    gif, folder = _write_clips(tmp_path, clips)
    clip, fps = read_clip(gif)
    assert clip.shape == (12, 64, 64, 3) and fps == 8.0  # merged identical GIF frames are expanded back
    result = evaluate([gif, folder], prompt=PROMPT)
    json.dumps(result)
    assert not result["files"][str(gif)]["dynamic_degree"]["dynamic"]
    assert result["files"][str(folder)]["dynamic_degree"]["dynamic"]
    assert "attributes" not in result["files"][str(folder)]  # the demo scores were not asked for
    with pytest.raises(UserInputError, match="lossy"):
        evaluate([tmp_path / "clip.mp4"])
    with pytest.raises(UserInputError, match="no such file"):
        evaluate([tmp_path / "missing.gif"])
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UserInputError, match="cannot evaluate '.txt'"):
        evaluate([tmp_path / "notes.txt"])


def test_evaluate_finds_the_demo_scorer_through_entry_points(tmp_path, clips, demo_entry_point):
    gif, folder = _write_clips(tmp_path, clips)
    result = evaluate([gif, folder], prompt=PROMPT, scores=("demo",))
    smooth = result["files"][str(folder)]
    assert smooth["attributes"]["accuracy"] == 1.0
    assert smooth["watermark_score"] > 0.7 and smooth["style"]["score"] < 0.2
    assert "warping_error" in smooth  # the general metrics are still there
    json.dumps(result)


def test_scorer_errors_are_one_line(monkeypatch):
    monkeypatch.setattr(evaluate_module, "entry_points", lambda group: [])
    with pytest.raises(UserInputError, match="no scorer 'demo' is installed.*installed: none"):
        load_scorer("demo")
    broken = EntryPoint(name="demo", value="animatediff_no_such_module:score", group=SCORER_GROUP)
    monkeypatch.setattr(evaluate_module, "entry_points", lambda group: [broken])
    with pytest.raises(UserInputError, match=r'needs the missing Python module .*pip install "animatediff\[demo\]"'):
        load_scorer("demo")


def test_eval_parser(tmp_path, clips, demo_entry_point):
    from PIL import Image

    path = tmp_path / "a.png"
    Image.fromarray(clips["static"][0]).save(path)
    parser = argparse.ArgumentParser()
    add_eval_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "r.json"
    args = parser.parse_args(["eval", str(path), "--demo-scores", "--prompt", PROMPT, "--out", str(out)])
    assert args.func(args) == 0
    data = json.loads(out.read_text())
    assert data["files"][str(path)]["attributes"]["accuracy"] == 1.0
    args = parser.parse_args(["eval", str(path), "--out", str(tmp_path / "plain.json")])
    assert args.func(args) == 0
    assert set(json.loads((tmp_path / "plain.json").read_text())["files"][str(path)]) == {"fps", "num_frames", "height", "width"}


@pytest.mark.skipif(not any(ep.name == "demo" for ep in entry_points(group=SCORER_GROUP)),
                    reason="the animatediff.scorers entry point 'demo' is not installed: reinstall the package "
                           "(pip install -e .) to register pyproject.toml's entry points")
def test_eval_demo_scores_end_to_end(tmp_path, clips, capsys):
    """`animatediff eval --demo-scores` through the installed entry point (no stand-in)."""
    from animatediff.cli import main

    gif, folder = _write_clips(tmp_path, clips)
    assert main(["eval", str(folder), "--demo-scores", "--prompt", PROMPT]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["files"][str(folder)]["attributes"]["accuracy"] == 1.0


def test_eval_without_opencv_is_one_error_line(tmp_path, clips, monkeypatch, capsys):
    """OpenCV comes with the [demo] extra; without it, eval says how to install it (not a traceback)."""
    from animatediff.cli import main

    gif, _ = _write_clips(tmp_path, clips)
    monkeypatch.setitem(sys.modules, "cv2", None)  # `import cv2` now fails as if it were not installed
    monkeypatch.delitem(sys.modules, "animatediff.metrics")  # as in a fresh process: not imported yet
    monkeypatch.delattr(animatediff, "metrics")
    with pytest.raises(UserInputError, match=r'OpenCV: pip install "animatediff\[demo\]"'):
        evaluate([gif])
    assert main(["eval", str(gif)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        'error: the video metrics need OpenCV: pip install "animatediff[demo]"']


def test_base_modules_import_without_opencv_or_the_demo():
    """The generation, training and eval entry points import neither OpenCV, matplotlib nor animatediff.demo."""
    code = ("import sys; sys.modules['cv2'] = None; sys.modules['matplotlib'] = None\n"
            "import animatediff, animatediff.cli, animatediff.evaluate, animatediff.training.config, "
            "animatediff.training.data, animatediff.bundled\n"
            "assert not [m for m in sys.modules if m.startswith('animatediff.demo')], 'demo imported'\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
