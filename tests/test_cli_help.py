"""``animatediff generate --help``: every flag in a titled group, and defaults that say where they come from."""

from __future__ import annotations

import json
import re

import pytest

from animatediff import bundled
from animatediff.cli import build_parser
from animatediff.sampling.schedulers import SAMPLING_DEFAULTS

CORE_GROUPS = {
    "prompt and output": {"prompt", "--negative", "--config", "--out", "--fps", "--overwrite"},
    "model files": {"--model", "--model-config", "--motion-module", "--motion-preset", "--max-frames", "--lora",
                    "--motion-lora", "--adapter"},
    "clip and sampling": {"--frames", "--width", "--height", "--steps", "--guidance", "--seed", "--scheduler",
                          "--scheduler-preset"},
    "device and precision": {"--device", "--dtype", "--decode-chunk-size"},
}


def _generate_parser():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sub.choices["generate"]


def _flag_help(parser, flag: str) -> str:
    return " ".join(next(a for a in parser._actions if flag in a.option_strings).help.split())


def test_core_flags_sit_in_their_groups():
    groups = {g.title: {a.option_strings[0] if a.option_strings else a.dest for a in g._group_actions}
              for g in _generate_parser()._action_groups}
    for title, flags in CORE_GROUPS.items():
        assert groups.get(title) == flags, (title, groups.get(title))


def test_help_lists_no_flag_under_the_generic_headings(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["generate", "--help"])
    text = capsys.readouterr().out
    assert "positional arguments:" not in text
    heading = re.search(r"^(options|optional arguments):\n(.*?)(?:\n\n|\Z)", text, re.S | re.M)
    assert heading, text
    flags = re.findall(r"^  (-[-\w]+)", heading.group(2), re.M)
    assert flags == ["-h"], heading.group(2)


def test_model_dependent_defaults_name_the_preset_and_the_bundled_value_from_demo_json(tmp_path, monkeypatch):
    demo = {"width": 48, "height": 40, "num_frames": 12, "steps": 13, "guidance_scale": 6.5, "scheduler": "euler",
            "scheduler_preset": "lightning"}
    (tmp_path / "demo.json").write_text(json.dumps({"generation_defaults": demo}))
    monkeypatch.setenv("ANIMATEDIFF_DEMO_DIR", str(tmp_path))  # a bundle whose demo.json says otherwise
    parser = _generate_parser()
    sd15 = SAMPLING_DEFAULTS["animatediff"]
    steps = _flag_help(parser, "--steps")
    assert f"{sd15.steps} for SD1.5 files" in steps and "13 for the bundled demo" in steps, steps
    assert all(f"{d.steps} {name}" in steps for name, d in SAMPLING_DEFAULTS.items() if name != "animatediff"), steps
    assert "6.5 for the bundled demo" in _flag_help(parser, "--guidance")
    assert "euler for the bundled demo" in _flag_help(parser, "--scheduler")
    assert "lightning for the bundled demo" in _flag_help(parser, "--scheduler-preset")
    assert "512 for model files; 48 for the bundled demo" in _flag_help(parser, "--width")
    assert "40 for the bundled demo" in _flag_help(parser, "--height")
    assert "12 for the bundled demo" in _flag_help(parser, "--frames")


@pytest.mark.skipif(not bundled.is_available(), reason="the bundled demo model is not installed")
def test_the_installed_bundle_steps_are_in_the_help():
    steps = bundled.generation_defaults()["steps"]
    assert f"; {steps} for the bundled demo" in _flag_help(_generate_parser(), "--steps")


def test_help_without_a_bundle_still_builds(tmp_path, monkeypatch):
    monkeypatch.setenv("ANIMATEDIFF_DEMO_DIR", str(tmp_path / "none"))
    steps = _flag_help(_generate_parser(), "--steps")
    assert "for SD1.5 files" in steps and "bundled demo" not in steps, steps
