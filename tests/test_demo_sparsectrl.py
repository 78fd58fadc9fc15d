"""The demo family's SparseCtrl encoder (issue 12): the v2 build stage sparsectrl-v2, its packaging, `generate
--image` picking up a bundled family's encoder, and the report's sparsectrl section. Tiny fabricated families."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import fixtures
from animatediff.demo import build, report, reproduce, world
from animatediff.generation import sparsectrl
from animatediff.video_io import sidecar_path
from tiny_models import save_diffusers_folder, tiny_base_model


def _save(state: dict, path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return str(path)


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """A tiny bundled-layout family with a SparseCtrl RGB encoder (output convs made non-zero, so it acts)."""
    root = tmp_path_factory.mktemp("family")
    base = tiny_base_model()
    save_diffusers_folder(base, root / "base")
    _save(fixtures.official_motion_state_dict("v2"), root / "motion_module.safetensors")
    encoder = fixtures.sparsectrl_state_dict(base.unet, "rgb")
    g = torch.Generator().manual_seed(3)
    for key in [k for k in encoder if k.startswith(("controlnet_down_blocks.", "controlnet_mid_block.", "controlnet_cond"))]:
        encoder[key] = torch.randn(encoder[key].shape, generator=g) * 0.05
    _save(encoder, root / build.SPARSECTRL_FILE)
    meta = {"generation_defaults": {"width": 32, "height": 32, "num_frames": 4, "steps": 2, "scheduler": "ddim"},
            "sparsectrl": {"file": build.SPARSECTRL_FILE, "flavour": "rgb"}}
    (root / "demo.json").write_text(json.dumps(meta))
    spec = world.random_spec(np.random.default_rng(5), "video", num_objects=1)
    Image.fromarray(world.make_video(spec, 4, 32, 32)[0]).save(root / "first.png")
    return root


# ---- the build stage and the package --------------------------------------------------------------------------
def test_stage_trains_resumably_and_the_packaged_encoder_loads_strictly(tmp_path):
    work = tmp_path / "v2"
    base = tiny_base_model()
    save_diffusers_folder(base, work / "base")
    module = _save(fixtures.official_motion_state_dict("v2"), work / "runs" / "motion-module-v2" / "motion-module-final.safetensors")
    _save(fixtures.domain_adapter_state_dict(base.unet), work / "runs" / "domain-adapter-v2" / "domain-adapter-final.safetensors")
    captions = world.write_dataset(work / "data" / "videos", 2, "video", seed=3, num_frames=6, height=32, width=32)
    build._rewrite_csv(captions, work / "data" / "videos.csv", ".mp4")
    argv = ["--family", "v2", "--work", str(work), "--out", str(tmp_path / "unused"), "--only", "sparsectrl-v2",
            "--steps-scale", "0.02"]
    assert build.main(argv) == 0
    record = json.loads((work / "stages.json").read_text())["sparsectrl-v2"]
    assert record["recipe"] == "demo/sparsectrl-v2" and record["steps"] == 2  # smoke: 4-frame clips, 2 steps
    assert f"--motion_module {module}" in record["command"] and "--domain_adapter" in record["command"]
    export = work / "runs" / "sparsectrl-v2" / "sparsectrl-final.safetensors"
    first = export.read_bytes()
    assert build.main(argv) == 0 and export.read_bytes() == first  # done: not retrained

    entry = build.package_sparsectrl(export, tmp_path / "bundle")
    packaged = tmp_path / "bundle" / build.SPARSECTRL_FILE
    assert entry == {"file": build.SPARSECTRL_FILE, "flavour": "rgb", "recipe": "demo/sparsectrl-v2",
                     "bytes": packaged.stat().st_size}
    trained, half = load_file(str(export)), load_file(str(packaged))
    assert trained.keys() == half.keys() and all(v.dtype == torch.float16 for v in half.values())
    assert all(torch.equal(half[k], trained[k].half()) for k in trained)
    encoder = sparsectrl.load_encoder(str(packaged), base.unet, torch.float32, torch.device("cpu"))  # strict
    assert encoder.flavour == "rgb"
    assert build.package_sparsectrl(tmp_path / "absent.safetensors", tmp_path / "b2") is None  # not trained yet: no entry


def test_stage_inputs_fall_back_to_the_packaged_copies(tmp_path):
    """A clone has no runs/: the stage trains on the bundle's fp16 motion module and adapter, and package-v2
    re-packages what only the bundle holds."""
    work = tmp_path / "v2"
    builder = build.Builder(tmp_path / "out", work, 1.0, set())
    run_file = work / "runs" / "motion-module-v2" / "motion-module-final.safetensors"
    with pytest.raises(SystemExit, match="run its stage first"):
        builder._v2_input("motion-module-v2", run_file, "motion_module.safetensors")
    (tmp_path / "out").mkdir(parents=True)  # the bundle --out names (by default the shipped family)
    (tmp_path / "out" / "motion_module.safetensors").write_bytes(b"x")
    assert builder._v2_input("motion-module-v2", run_file, "motion_module.safetensors") == tmp_path / "out" / "motion_module.safetensors"
    assert builder._trained_or_packaged(run_file, "motion_module.safetensors") == tmp_path / "out" / "motion_module.safetensors"
    run_file.parent.mkdir(parents=True)
    run_file.write_bytes(b"y")  # the run's own export wins
    assert builder._v2_input("motion-module-v2", run_file, "motion_module.safetensors") == run_file
    assert builder._trained_or_packaged(run_file, "motion_module.safetensors") == run_file


# ---- generate --image with the bundled family -----------------------------------------------------------------
def _generate(tmp_path, name, *extra):
    from animatediff.cli import main

    out = tmp_path / f"{name}.gif"
    assert main(["-q", "generate", "a red circle moving right", "--seed", "1", "--out", str(out), *extra]) == 0
    return json.loads(sidecar_path(out).read_text()), out


def test_image_uses_the_bundled_encoder_and_explicit_flags_win(family, tmp_path, monkeypatch):
    monkeypatch.setenv("ANIMATEDIFF_DEMO_DIR", str(family))
    image = str(family / "first.png")
    encoder = str(family / build.SPARSECTRL_FILE)
    meta, used = _generate(tmp_path, "auto", "--image", image)
    assert meta["sparsectrl"] == encoder and meta["keyframes"] == [{"image": image, "index": 0}]
    assert meta["inputs"]["sparsectrl"]["flavour"] == "rgb"
    meta, named = _generate(tmp_path, "named", "--image", image, "--sparsectrl", "sparsectrl-rgb")  # the bundled name
    assert meta["sparsectrl"] == encoder and named.read_bytes() == used.read_bytes()
    for name, flags in (("none", ["--sparsectrl", "none"]), ("blend", ["--image-strength", "0.9"])):
        meta, blend = _generate(tmp_path, name, "--image", image, *flags)  # explicitly the init-latent blend
        assert meta["sparsectrl"] is None and "sparsectrl" not in meta.get("inputs", {}) and "image" in meta["inputs"]
        assert blend.read_bytes() != used.read_bytes()
    meta, _ = _generate(tmp_path, "t2v")  # no image: text-to-video, no encoder
    assert meta["sparsectrl"] is None

    from animatediff.api import Animator

    animator = Animator.load()  # the API takes the same rule
    api = animator.generate("a red circle moving right", seed=1, image=image)
    animator.save(api, tmp_path / "api.gif")
    assert (tmp_path / "api.gif").read_bytes() == used.read_bytes()


def test_jobs_and_the_web_ui_pick_up_the_bundled_encoder(family, tmp_path, monkeypatch):
    """--jobs with --image takes the family's encoder as one prompt does; the UI lists it under its bundled name."""
    from animatediff.cli import main
    from animatediff.ui.models import Catalog

    monkeypatch.setenv("ANIMATEDIFF_DEMO_DIR", str(family))
    image = str(family / "first.png")
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("a red circle moving right\n")
    assert main(["-q", "generate", "--jobs", str(jobs), "--out", str(tmp_path / "batch"), "--seed", "1", "--image", image]) == 0
    (clip,) = (tmp_path / "batch").glob("*.gif")
    meta = json.loads(sidecar_path(clip).read_text())
    assert meta["sparsectrl"] == str(family / build.SPARSECTRL_FILE) and meta["keyframes"] == [{"image": image, "index": 0}]
    listed = Catalog().entries["sparsectrl"]
    assert listed["sparsectrl-rgb (bundled)"].path == str(family / build.SPARSECTRL_FILE)


def test_inspect_and_the_bundled_name(family, tmp_path, monkeypatch, capsys):
    from animatediff.cli import main

    monkeypatch.setenv("ANIMATEDIFF_DEMO_DIR", str(family))
    monkeypatch.chdir(tmp_path)  # no local file of that name
    assert main(["inspect", "sparsectrl-rgb"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("sparsectrl") and f"bundled file: {family / build.SPARSECTRL_FILE}" in out, out
    monkeypatch.setenv("ANIMATEDIFF_DEMO_DIR", str(tmp_path))  # a family without one: one error line naming the flag
    (tmp_path / "first.png").write_bytes((family / "first.png").read_bytes())
    assert main(["-q", "generate", "x", "--image", "first.png", "--sparsectrl", "sparsectrl-rgb"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --sparsectrl") and "no SparseCtrl encoder" in err[0], err


def test_a_family_without_the_encoder_keeps_the_blend(family, tmp_path, monkeypatch):
    import shutil

    root = tmp_path / "v1-like"
    shutil.copytree(family, root, ignore=shutil.ignore_patterns(build.SPARSECTRL_FILE))
    meta = json.loads((root / "demo.json").read_text())
    meta.pop("sparsectrl")
    (root / "demo.json").write_text(json.dumps(meta))
    monkeypatch.setenv("ANIMATEDIFF_DEMO_DIR", str(root))
    meta, _ = _generate(tmp_path, "v1", "--image", str(root / "first.png"))
    assert meta["sparsectrl"] is None and "image" in meta["inputs"]


# ---- the report's sparsectrl section ----------------------------------------------------------------------------
SMOKE = reproduce.Settings(num_frames=4, width=32, height=32, steps=2, scheduler="ddim", table_prompts=1, seeds=(1,),
                           sparsectrl_clips=1, experiments=("sparsectrl",))


def test_report_section_renders_on_a_smoke_run(family, tmp_path):
    files = reproduce.model_files(family)
    assert files.sparsectrl == family / build.SPARSECTRL_FILE and files.listing()["sparsectrl"] == files.sparsectrl
    assert reproduce.planned_generations(SMOKE, files)["clip"] == 1 + 3  # the base row + three conditions
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = reproduce.run(files, SMOKE)
    finally:
        torch.set_num_threads(threads)
    rows = {r["condition"]: r for r in reproduce.sparsectrl_table(results)}
    assert list(rows) == [reproduce.TRAINING_DATA, *reproduce.SPARSECTRL_CONDITIONS]
    assert rows[reproduce.TRAINING_DATA]["psnr"] == reproduce.PSNR_CAP and rows[reproduce.TRAINING_DATA]["ssim"] == pytest.approx(1.0)
    for condition in reproduce.SPARSECTRL_CONDITIONS:
        row = rows[condition]
        assert row["clips"] == 1 and 0 < row["psnr"] < reproduce.PSNR_CAP and -1 <= row["ssim"] < 1
        assert np.isfinite(row["warping_error"]) and 0 <= row["object_present"] <= 1
    text = report.render(results, {"command": "`x`"}, [], strip=False)
    section = text.split("## SparseCtrl: animating a given image")[1].split("\n## ")[0]
    assert f"| {reproduce.SPARSECTRL_RGB} | 1 |" in section and "Reading: with the encoder" in section
    assert sorted(report.write_sparsectrl_gifs(results, tmp_path)) == sorted(report.SPARSECTRL_GIFS.values())
    json.dumps([c["metrics"]["frame0"] for c in report.clips_json(results) if "frame0" in c["metrics"]], allow_nan=False)  # no inf

    without = dataclasses.replace(files, sparsectrl=None)  # a family without the encoder: "not available"
    assert reproduce.planned_generations(SMOKE, without)["clip"] == 1
    empty = reproduce.Results(SMOKE, without, skipped={reproduce.SPARSECTRL: "not available: no sparsectrl_rgb.safetensors"})
    assert "**Not run**: not available: no sparsectrl_rgb.safetensors." in "\n".join(report.render_sparsectrl(empty))
