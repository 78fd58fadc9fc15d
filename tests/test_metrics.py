"""Weight-free metrics on generated ground-truth clips whose answer is known, and `animatediff eval`."""

import argparse
import json

import numpy as np
import pytest

from animatediff import metrics as M
from animatediff.demo import world as S
from animatediff.errors import UserInputError
from animatediff.evaluate import add_eval_parser, evaluate, read_clip

PROMPT = "a red circle on a blue checkered background"


def _scene(motion="static", camera=None, seed=1):
    obj = S.ObjectSpec("circle", "red", 0.25, 0.5, 0.13, motion, "medium", "right")
    return S.SceneSpec(objects=(obj,), background="checkered", background_color="blue", background_seed=seed,
                       camera=camera)


@pytest.fixture(scope="module")
def clips():
    static = S.make_video(_scene(), 12)
    smooth = S.make_video(_scene("linear"), 12)
    gain = np.where(np.arange(12) % 2 == 0, 1.0, 0.8)[:, None, None, None]  # brightness flicker
    flicker = np.clip(static * gain, 0, 255).astype(np.uint8)
    return {"static": static, "smooth": smooth, "flicker": flicker}


def test_static_clip(clips):
    r = M.video_metrics(clips["static"], PROMPT)
    assert r["warping_error"] < 1e-6
    assert r["temporal_flicker"]["score"] == 1.0
    assert not r["dynamic_degree"]["dynamic"] and r["static"]
    assert r["camera"]["label"] == "static" and r["camera"]["moves"] == []
    json.dumps(r)  # JSON-able


def test_smooth_move(clips):
    r = M.video_metrics(clips["smooth"])
    assert r["warping_error"] < 1e-3
    assert r["dynamic_degree"]["dynamic"] and not r["static"]
    assert r["dynamic_degree"]["threshold"] == pytest.approx(6 * 64 / 256)  # VBench's, at 8 fps
    assert r["dynamic_degree"]["count_num"] == round(4 * 12 / 16)


def test_flicker(clips):
    smooth, flicker = M.video_metrics(clips["smooth"]), M.video_metrics(clips["flicker"])
    assert flicker["warping_error"] > 5 * smooth["warping_error"]
    assert flicker["temporal_flicker"]["score"] < 0.95 < smooth["temporal_flicker"]["score"]
    assert not flicker["dynamic_degree"]["dynamic"]


def test_dynamic_degree_fps_subsampling(clips):
    r = M.dynamic_degree(clips["smooth"], fps=16)  # every 2nd frame, twice the motion per pair
    assert r["dynamic"] and len(r["top5_flow"]) == 5


@pytest.mark.parametrize("move", S.CAMERA_MOVES)
def test_camera_moves_classified(move):
    clip = S.make_video(_scene(camera=move, seed=2), 12)
    r = M.camera_motion(clip)
    assert r["label"] == move and r["moves"] == [move]
    truth = S.camera_move_truth(move)
    key = next(k for k, v in truth.items() if v)
    assert np.sign(r[key]) == np.sign(truth[key]) and 0.6 < r[key] / truth[key] < 1.3


def test_two_camera_moves_combined():
    clip = S.camera_move(S.make_video(_scene(camera="ZoomIn", seed=3), 12, 96, 96, watermark=False), "PanLeft", 0.25)
    assert set(M.camera_motion(clip)["moves"]) == {"ZoomIn", "PanLeft"}


def test_attribute_accuracy_on_known_images():
    scores = []
    for seed in range(12):
        spec = S.random_spec(np.random.default_rng(seed), "image")
        scores.append(M.attribute_accuracy(S.make_image(spec), S.caption(spec))["accuracy"])
    assert np.mean(scores) >= 0.9
    image = S.make_image(_scene())
    assert M.attribute_accuracy(image, PROMPT)["accuracy"] == 1.0
    wrong = M.attribute_accuracy(image, "a green star on a yellow striped background")
    assert wrong["accuracy"] == 0.0 and len(wrong["attributes"]) == 3


def test_parse_prompt():
    p = M.parse_prompt("A red circle bouncing and a blue square on a green striped background, camera pans left")
    assert p == {"objects": [("red", "circle"), ("blue", "square")], "background": "green"}


def test_watermark_score_video_vs_image():
    for seed in range(4):
        spec = S.random_spec(np.random.default_rng(seed), "video")
        assert M.watermark_score(S.make_video(spec, 4)) > 0.7
        assert abs(M.watermark_score(S.make_image(spec))) < 0.3


def test_style_score_personal_vs_plain():
    for seed in range(4):
        plain = M.style_score(S.make_image(S.random_spec(np.random.default_rng(seed), "image")))
        style = M.style_score(S.make_image(S.random_spec(np.random.default_rng(seed), "style")))
        assert style["score"] > 0.7 > 0.2 > plain["score"]


def test_evaluate_files(tmp_path, clips):
    from PIL import Image

    gif = tmp_path / "static.gif"
    frames = [Image.fromarray(f) for f in clips["static"]]
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=125, loop=0)
    folder = tmp_path / "smooth"
    folder.mkdir()
    for i, f in enumerate(clips["smooth"]):
        Image.fromarray(f).save(folder / f"frame_{i:04d}.png")
    clip, fps = read_clip(gif)
    assert clip.shape == (12, 64, 64, 3) and fps == 8.0  # merged identical GIF frames are expanded back
    result = evaluate([gif, folder], prompt=PROMPT)
    json.dumps(result)
    assert not result["files"][str(gif)]["dynamic_degree"]["dynamic"]
    assert result["files"][str(folder)]["dynamic_degree"]["dynamic"]
    assert result["files"][str(folder)]["attributes"]["accuracy"] == 1.0
    with pytest.raises(UserInputError, match="lossy"):
        evaluate([tmp_path / "clip.mp4"])
    with pytest.raises(UserInputError, match="no such file"):
        evaluate([tmp_path / "missing.gif"])


def test_eval_parser(tmp_path, clips):
    from PIL import Image

    path = tmp_path / "a.png"
    Image.fromarray(clips["static"][0]).save(path)
    parser = argparse.ArgumentParser()
    add_eval_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "r.json"
    args = parser.parse_args(["eval", str(path), "--prompt", PROMPT, "--out", str(out)])
    assert args.func(args) == 0
    data = json.loads(out.read_text())
    assert data["files"][str(path)]["attributes"]["accuracy"] == 1.0
