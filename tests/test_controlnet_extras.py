"""ControlNet extras (generation/controlnet.py): the scribble and lineart preprocessors beside canny, and the bad
ControlNet files not covered in test_controlnet.py (a corrupt and a code-executing ``.ckpt``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from animatediff.cli import build_parser, main
from animatediff.errors import UserInputError
from animatediff.generation import controlnet
from animatediff.generation.controlnet import ControlNetSpec
from animatediff.generation.pipeline import GenerationConfig

from test_controlnet import _argv, bad_files, files  # noqa: F401  (fixtures)

cv2 = pytest.importorskip("cv2")


def frame(draw) -> torch.Tensor:
    """One float ``(1, 3, 64, 64)`` frame: light grey with fine noise (texture), then ``draw(image)``."""
    g = np.random.default_rng(0)
    image = np.clip(200 + g.normal(0, 6, (64, 64, 3)), 0, 255).astype(np.uint8)
    draw(image)
    return torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255  # H W c -> 1 c H W


def disc(image):
    cv2.circle(image, (32, 32), 16, (180, 20, 20), -1)


def near(mask: np.ndarray, radius: int) -> np.ndarray:
    return cv2.dilate(mask.astype(np.uint8), np.ones((2 * radius + 1,) * 2, np.uint8)) > 0


@pytest.mark.parametrize("name", ["canny", "scribble", "lineart"])
def test_maps_are_grey_white_on_black_in_the_input_shape(name):
    x = frame(disc).repeat(2, 1, 1, 1)
    y = controlnet.PREPROCESS[name](x)
    assert y.shape == x.shape and y.dtype == torch.float32 and 0 <= y.min() and y.max() <= 1
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 0], y[:, 2]) and torch.equal(y[0], y[1])
    assert y[0, 0, :4, :4].max() < 0.05  # the plain corner (fine texture only) stays black


def test_scribble_is_thick_strokes_along_the_main_contour_only():
    x = frame(disc)
    stroke = controlnet.scribble(x)[0, 0].numpy() > 0.5
    assert set(np.unique(controlnet.scribble(x).numpy())) == {0.0, 1.0}  # binary
    yy, xx = np.mgrid[:64, :64]
    boundary = np.abs(np.hypot(yy - 32, xx - 32) - 16) < 0.8
    assert near(stroke, 1)[boundary].mean() > 0.95  # the whole contour is drawn
    assert not stroke[~near(boundary, 6)].any()  # nothing away from it (the texture is gone)
    edges = controlnet.canny(x)[0, 0].numpy() > 0.5
    assert stroke.sum() > 2 * (edges & near(boundary, 6)).sum()  # strokes, not 1-px edges


def test_lineart_answers_dark_lines_softly_and_not_bright_ones():
    dark = controlnet.lineart(frame(lambda im: cv2.line(im, (4, 32), (60, 32), (30, 30, 30), 1)))[0, 0]
    bright = controlnet.lineart(frame(lambda im: (im.__setitem__(slice(None), 40),
                                                  cv2.line(im, (4, 32), (60, 32), (250, 250, 250), 1))))[0, 0]
    assert dark[32, 10:54].min() > 0.5  # the line
    assert dark[:24].max() < 0.05 and dark[41:].max() < 0.05  # nothing away from it
    assert len(torch.unique(dark)) > 10  # graded, not binary
    assert bright[32, 10:54].max() < 0.05  # a bright line on dark is not a drawn line


@pytest.mark.parametrize("name", ["scribble", "lineart"])
def test_hints_go_through_the_chosen_preprocessor(files, name):  # noqa: F811
    config = GenerationConfig(prompt="a", num_frames=4, width=32, height=32, control_preprocess=name,
                              controlnets=[{"path": files["cn"], "video": files["video"]}])
    config.validate()
    spec = ControlNetSpec(files["cn"], video=files["video"])
    raw, _ = controlnet.read_hint(spec, GenerationConfig(prompt="a", num_frames=4, width=32, height=32))
    hint, _ = controlnet.read_hint(spec, config)
    assert torch.equal(hint, controlnet.PREPROCESS[name](raw))
    assert build_parser().parse_args(["generate", "x", "--preprocess", name.upper()]).preprocess == name


def test_an_unknown_preprocessor_names_the_field_and_the_choices():
    with pytest.raises(UserInputError, match="none, canny, scribble, lineart") as error:
        GenerationConfig(prompt="a", control_preprocess="openpose").validate()
    assert error.value.field == "control_preprocess"


@pytest.mark.parametrize("kind, words", [("corrupt", "cannot read checkpoint"), ("pickle", "needs code execution")])
def test_a_bad_controlnet_ckpt_is_one_line_exit_2_nothing_written(model_files, files, tmp_path, capsys, kind, words):  # noqa: F811
    import fixtures

    weights = tmp_path / "in" / "cn.ckpt"
    weights.parent.mkdir()
    (fixtures.write_corrupt if kind == "corrupt" else fixtures.write_code_execution_pickle)(weights)
    out = tmp_path / "out"
    assert main(_argv(model_files, out / "clip.gif", "--frames", "4", "--controlnet", str(weights), "--control-video",
                      files["video"])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "cn.ckpt" in err[0] and words in err[0], err
    assert not out.exists()
