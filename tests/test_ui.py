"""The web UI (animatediff.ui): the job queue, cancelling, the safety checks, one-line errors, and the Gradio
server driven over loopback by ``gradio_client``. Generation uses the bundled demo model at 4 frames, 2 steps."""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path

import pytest
import torch

from animatediff import bundled
from animatediff.api import Animator, Cancelled
from animatediff.errors import UserInputError
from animatediff.ui import check_args, is_loopback
from animatediff.ui.form import NONE, widgets
from animatediff.ui.jobs import CANCELLED, DONE, FAILED, JobQueue, QueueFull
from animatediff.ui.safety import check_upload, inside, pick

needs_bundle = pytest.mark.skipif(not bundled.is_available(), reason="the bundled demo model is not installed")
TINY = {"num_frames": 4, "steps": 2, "seed": 1}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def form_values(**changes) -> list:
    """Every widget's default, in the page's order, with ``changes`` (what the browser would send)."""
    values = {w.name: w.default for w in widgets()}
    values.update(model="base (bundled)", motion_module="demo (bundled)")
    for w in widgets():
        if w.kind.startswith("picker:") and w.name not in ("model", "motion_module"):
            values[w.name] = NONE
        if w.kind == "table":  # a Dataframe's value over HTTP
            values[w.name] = {"headers": list(w.choices), "data": w.default}
    values.update(changes)
    return [values[w.name] for w in widgets()]


# ---- the API hook: a progress callback that raises Cancelled --------------------------------------------------
@needs_bundle
def test_cancelled_from_progress_stops_after_that_step_and_leaves_the_model_as_it_was():
    animator = Animator.load()
    before = animator.generate("a red circle", **TINY).latents
    steps = []

    def progress(step, total):
        steps.append(step)
        if step == 3:
            raise Cancelled("stop")

    with pytest.raises(Cancelled):
        animator.generate("a red circle", num_frames=4, steps=50, seed=1, progress=progress)
    assert steps == [1, 2, 3]  # stopped within the step it was asked in
    assert animator.generate("a red circle", **TINY).latents.equal(before)


# ---- the queue ---------------------------------------------------------------------------------------------
def slow_run(job):
    """A stand-in generation: 200 steps of 10 ms, reporting each (as Animator.generate's progress does)."""
    for step in range(1, 201):
        time.sleep(0.01)
        job.report(step, 200)
    return "ok"


def test_queue_is_bounded_and_says_queue_full():
    queue = JobQueue(slow_run, max_queue=2)
    try:
        first = queue.submit("a")
        while first.state != "running":
            time.sleep(0.005)
        waiting = [queue.submit("b"), queue.submit("c")]
        with pytest.raises(QueueFull, match="queue full: 2 jobs are waiting"):
            queue.submit("d")
        assert [queue.position(j) for j in waiting] == [1, 2] and queue.position(first) == 0
    finally:
        queue.close()


def test_cancel_drops_a_waiting_job_and_stops_a_running_one_within_a_step():
    queue = JobQueue(slow_run, max_queue=4)
    try:
        running, waiting = queue.submit("a"), queue.submit("b")
        while running.step < 20:
            time.sleep(0.005)
        assert 0.5 < running.eta() < 20  # 180 steps of 10 ms left (on a busy machine, slower)
        assert queue.cancel(waiting.id) and waiting.state == CANCELLED and queue.position(waiting) == 0
        asked_at = running.step
        assert queue.cancel(running.id)
        assert running.done.wait(5) and running.state == CANCELLED
        assert running.step <= asked_at + 2  # the step under way when asked, then the check after it
        later = queue.submit("c")  # the worker goes on
        assert later.done.wait(10) and later.state == DONE and later.result == "ok"
    finally:
        queue.close()


def test_a_failing_job_does_not_stop_the_worker_and_old_jobs_are_forgotten():
    def run(job):
        if job.payload == "bad":
            raise UserInputError("must be at least 1", field="num_frames", value=0)
        return job.payload

    queue = JobQueue(run, max_queue=8, keep=3)
    try:
        bad = queue.submit("bad")
        assert bad.done.wait(5) and bad.state == FAILED and bad.error == "num_frames 0: must be at least 1"
        for i in range(10):
            job = queue.submit(i)
            assert job.done.wait(5) and job.state == DONE and job.result == i
        queue.submit("last").done.wait(5)
        assert queue.stats()["kept"] <= 4  # bounded however many jobs ran
    finally:
        queue.close()


# ---- safety --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["../../etc/passwd", "/etc/passwd", "C:\\models\\x.safetensors", "a/../../b"])
def test_pickers_refuse_paths_and_log_them(value, caplog):
    with caplog.at_level(logging.WARNING, logger="animatediff.ui.safety"):
        with pytest.raises(UserInputError, match="path traversal refused") as e:
            pick(value, {"base (bundled)": "/x/base"}, "model")
    assert e.value.field == "model" and repr(value) in caplog.text
    with pytest.raises(UserInputError, match="not in the list"):
        pick("other", {"base (bundled)": "/x/base"}, "model")
    assert pick("base (bundled)", {"base (bundled)": "/x/base"}, "model") == "/x/base"


def test_names_inside_a_folder_cannot_escape_it(tmp_path, caplog):
    root = tmp_path / "outputs"
    root.mkdir()
    (tmp_path / "secret.json").write_text("{}")
    (root / "link").symlink_to(tmp_path / "secret.json")
    assert inside("clip.gif", root, "history") == root / "clip.gif"
    for name in ("../secret.json", str(tmp_path / "secret.json"), "link", "a/../../secret.json"):
        with caplog.at_level(logging.WARNING, logger="animatediff.ui.safety"):
            with pytest.raises(UserInputError, match="path traversal refused"):
                inside(name, root, "history")
        assert repr(name) in caplog.text


def test_uploads_are_checked_for_place_type_content_and_size(tmp_path):
    uploads = tmp_path / "gradio"
    uploads.mkdir()
    gif = uploads / "in.gif"
    gif.write_bytes(b"GIF89a" + bytes(100))
    assert check_upload(str(gif), "video", (".gif",), [uploads], max_bytes=1000) == str(gif.resolve())
    big = uploads / "big.gif"
    big.write_bytes(b"GIF89a" + bytes(2000))
    with pytest.raises(UserInputError, match="over the .* MiB limit"):
        check_upload(str(big), "video", (".gif",), [uploads], max_bytes=1000)
    fake = uploads / "fake.gif"
    fake.write_bytes(b"#!/bin/sh\n")
    with pytest.raises(UserInputError, match="content is not GIF"):
        check_upload(str(fake), "video", (".gif",), [uploads])
    script = uploads / "x.sh"
    script.write_bytes(b"#!/bin/sh\n")
    with pytest.raises(UserInputError, match="file type .sh not accepted"):
        check_upload(str(script), "video", (".gif",), [uploads])
    elsewhere = tmp_path / "elsewhere.gif"
    elsewhere.write_bytes(b"GIF89a")
    for path in (str(elsewhere), str(uploads / ".." / "elsewhere.gif")):
        with pytest.raises(UserInputError, match="not an uploaded file"):
            check_upload(path, "video", (".gif",), [uploads])


def test_ui_options_are_checked_with_their_flags(capsys):
    from animatediff.cli import main

    assert main(["ui", "--max-queue", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --max-queue 0: must be at least 1"
    assert main(["ui", "--port", "70000"]) == 2
    assert "error: --port 70000" in capsys.readouterr().err
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and not is_loopback("0.0.0.0")


def test_a_host_other_than_loopback_is_warned_about(monkeypatch, caplog, capsys):
    import animatediff.ui as ui
    from animatediff.cli import main

    def stop(*args, **kwargs):  # the warning comes before anything starts; stop there
        raise UserInputError("stopped by the test")

    monkeypatch.setattr(ui, "make_studio", stop)
    with caplog.at_level(logging.WARNING):
        assert main(["ui", "--host", "0.0.0.0"]) == 2
    assert "reachable from other machines" in caplog.text and "stopped by the test" in capsys.readouterr().err


# ---- the form and the model lists ------------------------------------------------------------------------
def test_form_values_become_api_fields():
    from animatediff.ui.form import request_from, windows_text

    r = request_from(form_values(prompt_map={"headers": ["frame", "prompt"], "data": [[0, "a red circle"], [8.0, "a blue square"],
                                                                                     ["", ""]]},
                                 lora_1="personal-lora (bundled)", lora_1_scale=0.5, motion_scale="1, 0.5", seed=-1,
                                 context="static", context_length=8, context_overlap=-1, freeinit_iterations=0))
    assert r.settings["prompt_map"] == {0: "a red circle", 8: "a blue square"} and r.loras == [("personal-lora (bundled)", 0.5)]
    assert r.settings["motion_scale"] == [1.0, 0.5] and "seed" not in r.settings  # -1: random
    assert r.settings["context"] == "static" and r.settings["context_length"] == 8
    assert "context_overlap" not in r.settings and "freeinit_iterations" not in r.settings  # the defaults
    picture = windows_text(32, "static", 16, 4, False)
    assert "3 windows of 16 frames" in picture and "0-15" in picture
    assert windows_text(16, "auto", 0, -1, False) == "16 frames in one pass (no windows)"



def test_choosing_a_preset_sets_steps_guidance_and_scheduler_together():
    from animatediff.ui.form import SCHEDULER_DEFAULT, preset_values

    assert preset_values("lightning", "v3", False) == (4, 1.0, SCHEDULER_DEFAULT)
    assert preset_values("animatelcm", None, False) == (6, 1.5, SCHEDULER_DEFAULT)
    assert preset_values("(motion module's)", "lightning", False) == (4, 1.0, SCHEDULER_DEFAULT)
    from animatediff import bundled

    own = bundled.generation_defaults()  # the bundled family's own steps and guidance (v2: 10, 2.5)
    assert preset_values("(motion module's)", "v3", True) == (own["steps"], own["guidance_scale"], SCHEDULER_DEFAULT)
    assert preset_values("(motion module's)", "v3", False)[:2] == (25, 7.5)  # a model of the user's: the preset's


def test_models_dir_is_listed_by_kind_and_a_module_for_another_base_is_refused(tmp_path, caplog):
    import fixtures
    from animatediff.ui.models import Catalog

    fixtures.save(fixtures.official_motion_state_dict("sdxl-beta"), tmp_path / "mm_sdxl_v10_beta.safetensors")
    (tmp_path / "sub").mkdir()
    fixtures.save(fixtures.official_motion_state_dict("v2"), tmp_path / "sub" / "mm_sd_v15_v2.ckpt")
    (tmp_path / "notes.txt").write_text("not a model")
    catalog = Catalog(tmp_path, include_bundled=True)
    labels = list(catalog.entries["motion_module"])
    assert "mm_sdxl_v10_beta.safetensors [motion-module sdxl-beta, SDXL]" in labels
    assert "sub/mm_sd_v15_v2.ckpt [motion-module v2, SD1.5]" in labels
    if bundled.is_available():
        assert catalog.labels("motion_module", "base (bundled)") == ["demo (bundled)"]  # the others do not fit it
        with pytest.raises(UserInputError, match="is for SDXL; base \\(bundled\\) is SD1.5"):
            catalog.resolve("motion_module", "mm_sdxl_v10_beta.safetensors [motion-module sdxl-beta, SDXL]",
                            catalog.entries["model"]["base (bundled)"])
        with pytest.raises(UserInputError, match="built for UNet channels"):  # SD1.5 too, but not the demo's widths
            catalog.resolve("motion_module", "sub/mm_sd_v15_v2.ckpt [motion-module v2, SD1.5]",
                            catalog.entries["model"]["base (bundled)"])


# ---- the studio (no server) -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    from animatediff.ui import make_studio

    root = tmp_path_factory.mktemp("ui")
    uploads = root / "uploads"
    uploads.mkdir()
    studio = make_studio(None, root / "outputs", device="cpu", max_queue=2, max_upload_bytes=4096)
    studio.upload_roots = [uploads]
    yield studio
    studio.close()


@needs_bundle
def test_a_bad_field_is_one_line_naming_the_widget(studio):
    from animatediff.ui.studio import describe

    for changes, line in [({"width": 65}, "error: Width 65: must be a positive multiple of 8"),
                          ({"num_frames": 2.5}, "error: Frames 2.5: must be a whole number"),
                          ({"motion_scale": "1, x"}, "error: Motion scale 1, x: expected a number or comma-separated "
                                                     "numbers, one per frame")]:
        with pytest.raises(UserInputError) as e:
            studio.submit_form(form_values(**changes))
        assert describe(e.value) == line
    with pytest.raises(UserInputError) as e:
        studio.submit_api("x", {"video": "/etc/passwd"})
    assert "paths are never opened" in describe(e.value)
    with pytest.raises(UserInputError, match="path traversal refused"):
        studio.submit_form(form_values(model="../../../etc"))
    with pytest.raises(UserInputError, match="over the 0.00390625 MiB limit"):
        big = studio.upload_roots[0] / "big.gif"
        big.write_bytes(b"GIF89a" + bytes(8000))
        studio.submit_form(form_values(video=str(big)))


@needs_bundle
def test_results_get_unique_names_and_sidecars_that_refill_the_form(studio):
    jobs = [studio.submit_form(form_values(prompt="a blue square", num_frames=4, steps=2, seed=7)) for _ in range(2)]
    assert all(j.done.wait(60) and j.state == DONE for j in jobs), [j.error for j in jobs]
    paths = [j.result.path for j in jobs]
    assert paths[0] != paths[1] and all(p.is_file() and Path(f"{p}.json").is_file() for p in paths)
    assert set(studio.outputs.history()) >= set(paths)
    values, notes = studio.settings_of(paths[0].name)
    assert (values["prompt"], values["num_frames"], values["steps"], values["seed"]) == ("a blue square", 4, 2, 7)
    assert values["model"] == "base (bundled)" and values["motion_module"] == "demo (bundled)" and not notes
    with pytest.raises(UserInputError, match="path traversal refused"):
        studio.settings_of("../" + paths[0].name)


@needs_bundle
def test_every_output_format_can_be_downloaded_and_reloaded(studio):
    import zipfile

    for fmt, check in [("mp4", lambda p: p.read_bytes()[4:8] == b"ftyp"), ("webp", lambda p: p.read_bytes()[:4] == b"RIFF"),
                       ("png frames", lambda p: p.is_dir() and len(list(p.glob("frame_*.png"))) == 4)]:
        job = studio.submit_api("a red circle", {**TINY, "format": fmt, "fps": 12})
        assert job.done.wait(60) and job.state == DONE, job.error
        path = job.result.path
        assert check(path), fmt
        downloads = studio.outputs.downloads(path)
        if fmt == "png frames":
            assert zipfile.ZipFile(downloads[0]).namelist()[0].startswith(path.name + "/frame_0000.png")
        else:
            assert downloads == [str(path), f"{path}.json"]
        assert studio.settings_of(path.name)[0]["fps"] == 12


# ---- the server, over loopback with gradio_client --------------------------------------------------------
CONNECTS: list = []  # every socket.connect address in this process while the server fixture is up


def _audit(event: str, args) -> None:
    if event == "socket.connect" and CONNECTS and CONNECTS[0] == "recording":
        CONNECTS.append(args[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("gradio", reason="the [ui] extra (Gradio) is not installed")
    import sys

    sys.addaudithook(_audit)  # (an audit hook cannot be removed; it records only while CONNECTS is "recording")
    CONNECTS[:] = ["recording"]
    from animatediff.ui import make_studio
    from animatediff.ui.app import launch

    studio = make_studio(None, tmp_path_factory.mktemp("served"), device="cpu", max_queue=1, max_upload_bytes=2048)
    demo = launch(studio, port=free_port(), max_upload_bytes=2048, block=False)
    yield studio, demo.local_url
    demo.close()
    studio.close()
    CONNECTS[0] = "stopped"


def test_the_server_connects_to_nothing_but_loopback(server):
    from gradio_client import Client

    _, url = server
    Client(url, verbose=False).predict(api_name="/history")
    hosts = {a[0] for a in CONNECTS[1:] if isinstance(a, tuple)}
    assert hosts and hosts <= {"127.0.0.1", "localhost", "::1"}, hosts


@needs_bundle
def test_the_server_generates_and_answers_bad_fields_in_one_line(server):
    from gradio_client import Client

    studio, url = server
    client = Client(url, verbose=False)
    clip, info = client.predict("a red circle", TINY, api_name="/generate")
    assert Path(clip).read_bytes()[:4] == b"GIF8" and info["state"] == "done" and info["seed"] == 1
    assert info["name"] in client.predict(api_name="/history")
    status = client.predict(*form_values(**TINY), api_name="/generate_form")[0]  # what the page sends
    assert status.startswith("job ") and ": done in " in status and "seed 1:" in status
    with pytest.raises(Exception) as e:
        client.predict("a red circle", {"width": 65}, api_name="/generate")
    assert str(e.value) == "error: Width 65: must be a positive multiple of 8"
    with pytest.raises(Exception) as e:
        client.predict("a red circle", {"model": "../../etc/passwd"}, api_name="/generate")
    assert "path traversal refused" in str(e.value) and "Traceback" not in str(e.value)
    with pytest.raises(Exception) as e:  # a past result named by a path
        client.predict("../../../etc/passwd", api_name="/load_settings")
    assert "Traceback" not in str(e.value)


@needs_bundle
def test_the_server_refuses_an_oversize_upload(server, tmp_path):
    from gradio_client import Client, handle_file

    _, url = server
    big = tmp_path / "big.gif"
    big.write_bytes(b"GIF89a" + bytes(10_000))
    names = [w.name for w in widgets()]
    values = form_values(**TINY)
    values[names.index("video")] = handle_file(str(big))
    with pytest.raises(Exception, match="(?i)size|large|limit"):
        Client(url, verbose=False).predict(*values, api_name="/generate_form")


@needs_bundle
def test_cancel_over_http_stops_the_job_and_a_full_queue_says_so(server):
    from gradio_client import Client

    studio, url = server
    client = Client(url, verbose=False)
    long = client.submit("a red circle", {"num_frames": 16, "steps": 900, "seed": 1}, api_name="/generate")
    deadline = time.monotonic() + 60
    while not (studio.queue.stats()["running"] and any(j.step for j in studio.queue._jobs.values() if j.state == "running")):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    waiting = client.submit("a red circle", TINY, api_name="/generate")  # max_queue 1: this one waits
    while studio.queue.stats()["waiting"] < 1:
        time.sleep(0.02)
    with pytest.raises(Exception, match="queue full"):
        Client(url, verbose=False).predict("a red circle", TINY, api_name="/generate")
    assert client.predict(api_name="/cancel") == "cancelling..."  # this session's jobs: both
    with pytest.raises(Exception, match="cancelled"):
        long.result(timeout=30)
    with pytest.raises(Exception, match="cancelled before it started"):
        waiting.result(timeout=30)
    clip, info = client.predict("a red circle", TINY, api_name="/generate")  # still serving
    assert info["state"] == "done"


# ---- load: benchmarks/load_ui.py (a server subprocess, 20 requests at once) ------------------------------
@needs_bundle
def test_twenty_requests_at_once_each_complete_or_get_queue_full():
    pytest.importorskip("gradio", reason="the [ui] extra (Gradio) is not installed")
    import importlib.util

    spec = importlib.util.spec_from_file_location("load_ui", Path(__file__).parents[1] / "benchmarks" / "load_ui.py")
    load_ui = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(load_ui)
    summary = load_ui.run(requests=20, max_queue=4)
    assert summary["ok"], summary
    assert summary["completed"] + summary["queue_full"] == 20


# ---- image-to-video, SparseCtrl and IP-Adapter units (fabricated files in a --models-dir) ---------------------
@pytest.fixture(scope="module")
def control_dir(tmp_path_factory):
    """A --models-dir with an RGB SparseCtrl for the bundled base, an SDXL one, a scribble one at other widths,
    an IP-Adapter for the bundled base and its tiny CLIP image encoder; and a folder of uploads."""
    if not bundled.is_available():
        pytest.skip("the bundled demo model is not installed")
    import numpy as np
    from PIL import Image
    from safetensors.torch import save_file

    from animatediff.generation.sparsectrl import SparseCtrlEncoder
    from conftest import tiny_unet
    from test_ip_adapter import ip_state, tiny_encoder

    root = tmp_path_factory.mktemp("control")
    models, uploads = root / "models", root / "uploads"
    models.mkdir(), uploads.mkdir()
    unet = Animator.load().base.unet

    def save(state, name):
        save_file({k: v.contiguous() for k, v in state.items() if not k.endswith("pe")}, str(models / name))

    rgb = SparseCtrlEncoder(unet, "rgb", 4, from_unet=True).model.state_dict()
    save(rgb, "sc_rgb.safetensors")
    save({**rgb, "add_embedding.linear_1.weight": torch.zeros(4, 4)}, "sc_xl.safetensors")  # SDXL's added embedding
    save(SparseCtrlEncoder(tiny_unet(), "scribble", 3).model.state_dict(), "sc_scribble.safetensors")
    torch.save(ip_state(unet), models / "ip.bin")
    tiny_encoder(models / "image_encoder")
    for i, colour in enumerate([(255, 0, 0), (0, 0, 255), (0, 255, 0)]):
        Image.fromarray(np.full((40, 30, 3), colour, np.uint8)).save(uploads / f"im{i}.png")
    return models, uploads


SC, SC_XL, SC_SCRIBBLE = ("sc_rgb.safetensors [sparsectrl rgb, SD1.5]", "sc_xl.safetensors [sparsectrl rgb, SDXL]",
                          "sc_scribble.safetensors [sparsectrl scribble, SD1.5]")
IP, ENCODER = "ip.bin [ip-adapter base, SD1.5]", "image_encoder [clip-image-encoder projection 16, ?]"


def test_models_dir_lists_sparsectrl_ip_adapters_and_image_encoders(control_dir):
    from animatediff.ui.models import Catalog

    catalog = Catalog(control_dir[0])
    bundled_sc = "sparsectrl-rgb (bundled)"  # the bundled family's own encoder is always offered
    assert set(catalog.entries["sparsectrl"]) == {SC, SC_XL, SC_SCRIBBLE, bundled_sc}
    assert list(catalog.entries["ip_adapter"]) == [IP] and list(catalog.entries["ip_adapter_image_encoder"]) == [ENCODER]
    assert sorted(catalog.labels("sparsectrl", "base (bundled)")) == [SC, bundled_sc]  # the others do not fit it
    base = catalog.entries["model"]["base (bundled)"]
    with pytest.raises(UserInputError, match="^sparsectrl .*: is for SDXL; base \\(bundled\\) is SD1.5$"):
        catalog.resolve("sparsectrl", SC_XL, base)
    with pytest.raises(UserInputError, match="built for UNet channels"):
        catalog.resolve("sparsectrl", SC_SCRIBBLE, base)


def test_image_sparsectrl_and_ip_adapter_widgets_become_api_fields(control_dir):
    from animatediff.ui.form import request_from

    up = control_dir[1]
    r = request_from(form_values(image=str(up / "im0.png"), image_strength=0.5, image_falloff=8.0, image_denoise=0.6))
    assert r.uploads == {"image": ("image", str(up / "im0.png"))}  # no encoder: the init-latent blend
    assert (r.settings["image_strength"], r.settings["image_falloff"], r.settings["strength"]) == (0.5, 8.0, 0.6)
    r = request_from(form_values(image=str(up / "im0.png"), sparsectrl=SC, keyframe_2=str(up / "im1.png"), keyframe_2_index=-1.0,
                                 sparsectrl_scale="1, 0.5, 0.5, 1", sparsectrl_end=0.5, sparsectrl_normalize=True,
                                 ip_adapter=IP, ip_adapter_scale=0.6, ip_adapter_image_encoder=ENCODER,
                                 ip_image_1=str(up / "im1.png"), ip_image_2=str(up / "im2.png"), ip_image_2_frame=3.0))
    assert "image_strength" not in r.settings and "strength" not in r.settings  # the still is frame 0's keyframe
    assert r.uploads["sparsectrl"] == ("picker", SC) and r.uploads["keyframes"] == [{"image": ("image", str(up / "im1.png")), "index": -1}]
    assert r.settings["sparsectrl_scale"] == [1.0, 0.5, 0.5, 1.0] and r.settings["sparsectrl_end"] == 0.5
    assert r.settings["sparsectrl_normalize"] is True
    assert r.uploads["ip_adapter"] == [{"path": ("picker", IP), "scale": 0.6}]
    assert r.uploads["ip_adapter_image_encoder"] == ("picker", ENCODER)
    assert [k["frame"] for k in r.uploads["ip_images"]] == [0, 3]
    r = request_from(form_values())  # nothing picked or uploaded: no control fields at all
    assert not r.uploads and not {"sparsectrl_scale", "image_strength", "strength"} & set(r.settings)


@pytest.fixture(scope="module")
def control_studio(control_dir, tmp_path_factory):
    from animatediff.ui import make_studio

    studio = make_studio(control_dir[0], tmp_path_factory.mktemp("outputs"), device="cpu", max_queue=2, max_upload_bytes=4096)
    studio.upload_roots = [control_dir[1]]
    yield studio
    studio.close()


def test_control_units_bad_fields_are_one_line_naming_the_widget(control_studio, control_dir, tmp_path):
    from animatediff.ui.studio import describe

    up = control_dir[1]
    key = dict(sparsectrl=SC, keyframe_1=str(up / "im0.png"))
    cases = [({**key, "keyframe_1_index": 9}, "error: SparseCtrl keyframes ", "index 9 is outside the clip (4 frames"),
             ({**key, "sparsectrl_start": 0.6, "sparsectrl_end": 0.4}, "error: SparseCtrl start 0.6: needs 0 <= start < end", ""),
             ({**key, "sparsectrl_scale": "1, 2"}, "error: SparseCtrl scale [1.0, 2.0]: has 2 values for 4 frames", ""),
             ({**key, "sparsectrl": SC_XL}, f"error: SparseCtrl encoder {SC_XL}: is for SDXL; base (bundled) is SD1.5", ""),
             ({"keyframe_1": str(up / "im0.png")}, "error: SparseCtrl keyframes ", "needs a SparseCtrl encoder"),
             ({"ip_image_1": str(up / "im1.png")}, "error: IP-Adapter reference images ", "only applies with an IP-Adapter"),
             ({"ip_adapter": IP, "ip_image_1": str(up / "im1.png")}, "error: IP-Adapter image encoder: an IP-Adapter needs", ""),
             ({"ip_adapter": IP, "ip_adapter_image_encoder": ENCODER, "ip_image_1": str(up / "im1.png"), "ip_image_1_frame": 4},
              "error: IP-Adapter reference images ", "frame 4 is past the clip's last frame"),
             ({"image": str(up / "im0.png"), "image_strength": 0}, "error: Image weight in frame 0 0: must be a number in (0, 1]", "")]
    for changes, start, words in cases:
        with pytest.raises(UserInputError) as e:
            control_studio.submit_form(form_values(**TINY, **changes))
        line = describe(e.value)
        assert line.startswith(start) and words in line and "\n" not in line, (changes, line)
    elsewhere = tmp_path / "x.png"
    elsewhere.write_bytes((up / "im0.png").read_bytes())
    big = up / "big.png"
    big.write_bytes(b"\x89PNG" + bytes(8000))
    for field, path, words in [("keyframe_1", elsewhere, "not an uploaded file"), ("ip_image_1", up / "../../etc/passwd", "not an uploaded"),
                               ("image", big, "over the"), ("keyframe_2", up / "im0.png.sh", "not accepted")]:
        with pytest.raises(UserInputError, match=words):
            control_studio.submit_form(form_values(**TINY, sparsectrl=SC, ip_adapter=IP, ip_adapter_image_encoder=ENCODER,
                                                   **{field: str(path)}))
    for key in ("sparsectrl", "keyframes", "ip_adapter", "ip_images", "image", "ip_adapter_image_encoder"):
        with pytest.raises(UserInputError, match="paths are never opened"):
            control_studio.submit_api("x", {key: "/etc/passwd"})


def test_sparsectrl_image_and_ip_adapter_generate_and_refill_the_form(control_studio, control_dir):
    up = control_dir[1]
    job = control_studio.submit_form(form_values(
        **TINY, image=str(up / "im0.png"), sparsectrl=SC, keyframe_1=str(up / "im1.png"), keyframe_1_index=-1,
        sparsectrl_scale="0.8", sparsectrl_end=0.9, ip_adapter=IP, ip_adapter_scale=0.5, ip_adapter_image_encoder=ENCODER,
        ip_image_1=str(up / "im1.png"), ip_image_2=str(up / "im2.png"), ip_image_2_frame=3))
    assert job.done.wait(120) and job.state == DONE, job.error
    sidecar = control_studio.outputs.sidecar(job.result.path)
    assert [k["index"] for k in sidecar["keyframes"]] == [0, -1]  # the still became frame 0's keyframe
    values, notes = control_studio.settings_of(job.result.path.name)
    assert (values["sparsectrl"], values["keyframe_1_index"], values["sparsectrl_scale"], values["sparsectrl_end"]) == (SC, -1, "0.8", 0.9)
    assert (values["ip_adapter"], values["ip_adapter_scale"], values["ip_adapter_image_encoder"]) == (IP, 0.5, ENCODER)
    assert (values["ip_image_1_frame"], values["ip_image_2_frame"]) == (0, 3)
    assert notes == [f"{label}: upload again (uploads are not kept)" for label in
                     ("Still image", "SparseCtrl keyframes", "IP-Adapter reference images")]
    still = control_studio.submit_form(form_values(**TINY, image=str(up / "im0.png"), image_strength=0.5, image_falloff=2,
                                                   image_denoise=0.5))  # no encoder: the init-latent blend
    assert still.done.wait(60) and still.state == DONE, still.error
    values, _ = control_studio.settings_of(still.result.path.name)
    assert (values["image_strength"], values["image_falloff"], values["image_denoise"]) == (0.5, 2, 0.5)
    plain = control_studio.submit_form(form_values(**TINY))  # and back: a plain result clears the pickers
    assert plain.done.wait(60) and plain.state == DONE, plain.error
    values, _ = control_studio.settings_of(plain.result.path.name)
    assert values["sparsectrl"] == NONE and values["ip_adapter"] == NONE
