"""Batch generation (batch.py): jobs files, output names, resume, and two CPU processes under ``accelerate launch``.

The runs use the bundled demo model (128x128, 4 frames, 2 steps: about a second per clip)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from animatediff.batch import output_name, read_jobs_file
from animatediff.bundled import is_available
from animatediff.cli import main
from animatediff.errors import UserInputError

needs_demo = pytest.mark.skipif(not is_available(), reason="the bundled demo model is not installed")
SMALL = ["--steps", "2", "--frames", "4"]


def test_jobs_file_forms(tmp_path):
    text = tmp_path / "p.txt"
    text.write_text("a red circle\n\n# a comment\n  a blue square  \n")
    assert read_jobs_file(text) == [{"prompt": "a red circle"}, {"prompt": "a blue square"}]
    yaml = tmp_path / "p.yaml"
    yaml.write_text("- a red circle\n- {prompt: a blue square, seed: 5, negative_prompt: blurry}\n- {prompt: x, seed: -1}\n")
    assert read_jobs_file(yaml) == [{"prompt": "a red circle"}, {"prompt": "a blue square", "seed": 5, "negative_prompt": "blurry"},
                                    {"prompt": "x", "seed": None}]
    js = tmp_path / "p.json"
    js.write_text(json.dumps(["a", {"prompt": "b"}]))
    assert [item["prompt"] for item in read_jobs_file(js)] == ["a", "b"]


@pytest.mark.parametrize("content, words", [
    ("", "holds no prompts"), ("prompt: a\n", "expected a list"), ("- {prompt: a, steps: 3}\n", "item 0: unknown key 'steps'"),
    ("- a\n- {seed: 3}\n", "item 1: needs a non-empty 'prompt'"), ("- {prompt: a, seed: 1.5}\n", "'seed' must be"),
    ("- [a\n", "not valid YAML"),
])
def test_bad_jobs_file(tmp_path, content, words):
    path = tmp_path / "jobs.yaml"
    path.write_text(content)
    with pytest.raises(UserInputError, match=re.escape(words)) as e:
        read_jobs_file(path)
    assert e.value.field == "jobs"


def test_output_names():
    assert output_name(3, "a red circle, moving!", 42) == "3-a-red-circle-moving-seed42.gif"
    assert output_name(0, "a red circle", None) == "0-a-red-circle.gif"


@needs_demo
def test_single_process_batch_resumes_and_refuses_other_settings(tmp_path, capsys):
    jobs = tmp_path / "p.txt"
    jobs.write_text("a red circle\na blue square\n")
    out = tmp_path / "out"
    argv = ["-q", "generate", "--jobs", str(jobs), "--out", str(out), "--seed", "3", *SMALL]
    assert main(argv) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["0-a-red-circle-seed3.gif", "0-a-red-circle-seed3.gif.json", "1-a-blue-square-seed3.gif",
                     "1-a-blue-square-seed3.gif.json"]
    assert "2 written, 0 finished before" in capsys.readouterr().out
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    jobs.write_text("a red circle\na blue square\na green star\n")  # one more job: only it runs
    assert main(argv) == 0
    assert "3 jobs, 1 written, 2 finished before" in capsys.readouterr().out
    assert all(p.stat().st_mtime_ns == stamps[p.name] for p in out.iterdir() if p.name in stamps)

    (out / "1-a-blue-square-seed3.gif.json").unlink()  # stopped before its sidecar: not finished, written again
    assert main(argv) == 0
    assert "1 written, 2 finished before" in capsys.readouterr().out

    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main([*argv, "--guidance", "3"]) == 2  # other settings: refused, nothing written
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --out ") and "guidance_scale 2.5 there, 3.0 now" in err and len(err.splitlines()) == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert main([*argv, "--guidance", "3", "--overwrite"]) == 0
    assert json.loads((out / "0-a-red-circle-seed3.gif.json").read_text())["guidance_scale"] == 3.0


@needs_demo
def test_batch_never_replaces_a_foreign_file(tmp_path, capsys):
    jobs = tmp_path / "p.txt"
    jobs.write_text("a red circle\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "0-a-red-circle-seed3.gif").write_text("my notes")  # not a GIF: the user's
    assert main(["-q", "generate", "--jobs", str(jobs), "--out", str(out), "--seed", "3", *SMALL]) == 2
    assert capsys.readouterr().err.startswith("error: --out ")
    assert (out / "0-a-red-circle-seed3.gif").read_text() == "my notes" and len(list(out.iterdir())) == 1


def test_batch_refuses_a_folder_of_the_users_files(tmp_path, capsys, monkeypatch):
    """A batch never writes beside the user's own files (a fresh user's `--jobs p.txt --out thesis_dir` ran): one
    error line before any model loads, nothing written; a re-run folder of our own outputs is fine."""
    from animatediff import batch
    from animatediff.api import Animator

    jobs = tmp_path / "p.txt"
    jobs.write_text("a red circle\n")
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.docx").write_text("years of work")
    monkeypatch.setattr(Animator, "load", classmethod(lambda *a, **k: pytest.fail("loaded a model")))
    assert main(["-q", "generate", "--jobs", str(jobs), "--out", str(out), *SMALL]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out ") and "thesis.docx" in err and err.count("\n") == 1
    assert sorted(p.name for p in out.iterdir()) == ["thesis.docx"]
    ours = tmp_path / "ours"
    ours.mkdir()
    for name in ("0-a-red-circle-seed3.gif", "0-a-red-circle-seed3.gif.json", "12-x.mp4"):
        (ours / name).write_text("")
    batch.check_batch_folder(ours)  # a batch's own outputs: a re-run resumes there
    batch.check_batch_folder(out, overwrite=True)


def test_jobs_with_a_prompt_or_config_is_refused(tmp_path, capsys):
    assert main(["generate", "a prompt", "--jobs", str(tmp_path / "p.txt")]) == 2
    assert "give one of a PROMPT, --config FILE.yaml or --jobs FILE" in capsys.readouterr().err


def _launch(argv: list[str], tmp_path) -> subprocess.CompletedProcess:
    """Two CPU processes (gloo); see test_training_distributed.py for why --multi_gpu with ACCELERATE_USE_CPU."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "animatediff", *argv]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)


@needs_demo
def test_two_processes_write_each_job_once_and_resume(tmp_path):
    jobs = tmp_path / "p.yaml"
    jobs.write_text("- a red circle\n- {prompt: a blue square, seed: 5}\n- a green star\n")
    out = tmp_path / "out"
    argv = ["generate", "--jobs", str(jobs), "--out", str(out), "--seed", "3", *SMALL]
    run = _launch(argv, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    wrote = re.findall(r"\[process (\d)/2\] wrote (\S+)", run.stderr)
    names = ["0-a-red-circle-seed3.gif", "1-a-blue-square-seed5.gif", "2-a-green-star-seed3.gif"]
    assert sorted(os.path.basename(path) for _, path in wrote) == names  # each job exactly once
    assert {process for process, _ in wrote} == {"1", "2"}  # by both processes
    assert sorted(p.name for p in out.glob("*.gif")) == names
    assert run.stdout.count("batch: ") == 1 and "3 written, 0 finished before (skipped); 2 processes" in run.stdout

    single = tmp_path / "single.gif"  # one process without accelerate makes the same clip
    assert main(["-q", "generate", "a blue square", "--seed", "5", "--out", str(single), *SMALL]) == 0
    assert single.read_bytes() == (out / names[1]).read_bytes()

    stamps = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    again = _launch(argv, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "wrote" not in again.stderr and "3 jobs, 0 written, 3 finished before (skipped)" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
