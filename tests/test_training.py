"""Training (issue 3) on tiny real configs and a few real MP4 files written with PyAV."""

from __future__ import annotations

import re
import shutil
import signal
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from animatediff.weights.convert import motion_module_to_diffusers
from animatediff.errors import UserInputError
from animatediff.inflation import AnimateDiffUNet
from animatediff.training import load_config, train
from animatediff.training.cli import main as train_main
from animatediff.training.data import ClipDataset, Item, StepSampler, build_dataset
from animatediff.training.modes import fresh_motion

from conftest import randomize_
from tiny_models import save_diffusers_folder, tiny_base_model

torch.set_num_threads(1)  # the machine is shared


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """3 real MP4s + a corrupt file + a too-short video, WebVid layout."""
    from animatediff.demo.world import write_dataset

    folder = tmp_path_factory.mktemp("videos")
    csv_path = write_dataset(folder, 3, num_frames=10, height=32, width=32)
    (folder / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(300))
    write_dataset(folder / "short", 1, num_frames=2, height=32, width=32)
    (folder / "short" / "video_0_000000.mp4").rename(folder / "short.mp4")
    with csv_path.open("a") as f:
        f.write("corrupt,a broken file,x\nshort,a two-frame clip,x\nmissing,no such file,x\n")
    return csv_path


@pytest.fixture(scope="module")
def motion_file(tmp_path_factory) -> Path:
    """A trained-looking (random, non-zero) tiny motion module in the official layout."""
    config = load_config("motion-module", "tiny-motion-module", {"video_folder": "."})
    motion = randomize_(fresh_motion(config, tiny_base_model().unet), std=0.05)
    path = tmp_path_factory.mktemp("mm") / "mm.safetensors"
    save_file(motion.state_dict(), str(path))
    return path


def make_config(mode: str, data: Path, out: Path, **overrides):
    values = dict(caption_file=str(data), size=32, num_frames=4, max_train_steps=2, checkpointing_steps=2, num_workers=0,
                  output_dir=str(out), batch_size=1)
    values.update(overrides)
    return load_config(mode, f"tiny-{mode}", values)


def snapshot(*modules) -> dict[str, torch.Tensor]:
    return {f"{i}.{k}": v.detach().clone() for i, m in enumerate(modules) for k, v in m.state_dict().items()}


def changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


LORA_KEY = re.compile(r"\.processor\.to_(q|k|v|out)_lora\.(down|up)\.weight$")


# ---- each mode: finite loss, only the intended parameters change, official export -----------------------
@pytest.mark.parametrize("mode", ["image", "domain-adapter", "motion-module", "motion-lora"])
def test_mode_trains_only_its_parameters_and_exports_official_keys(mode, data, motion_file, tmp_path):
    from animatediff.weights.load import load_motion_modules

    base = tiny_base_model()
    extra = {"motion_module": str(motion_file), "lora_alpha": 4.0} if mode == "motion-lora" else {}
    config = make_config(mode, data, tmp_path, **extra)
    motion = load_motion_modules(str(motion_file)) if mode == "motion-lora" else None
    frozen = [base.unet, base.vae, base.text_encoder] + ([motion] if motion is not None else [])
    before = snapshot(*frozen)
    result = train(config, base=base, motion=motion)
    assert len(result.losses) == 2 and all(np.isfinite(list(result.losses.values())))
    diff = changed(before, snapshot(*frozen))
    exported = result.exported
    if mode == "image":
        assert diff and all(k.startswith("0.") for k in diff)  # only UNet weights moved
        assert (exported / "diffusion_pytorch_model.safetensors").is_file() and (exported / "config.json").is_file()
        return
    assert diff == set()  # the frozen model is bit-identical; LoRA / motion modules live elsewhere
    state = load_file(str(exported))
    if mode == "motion-module":
        from animatediff.weights.load import load_motion_modules

        loaded = load_motion_modules(str(exported))
        assert set(state) - {k for k in state if k.endswith("pos_encoder.pe")} == set(loaded.state_dict())
        assert all(k.startswith(("down_blocks.", "up_blocks.", "mid_block.")) for k in state)
        assert any(k.endswith("attention_blocks.0.pos_encoder.pe") for k in state)
        assert motion_module_to_diffusers(state)  # converts to the MotionAdapter layout
        assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in state.items() if "proj_out" in k)  # it trained
    else:
        assert state and all(LORA_KEY.search(k) for k in state)
        assert not any(k.startswith("module.") for k in state)
        where = ".attention_blocks." if mode == "motion-lora" else ".attn1.processor."
        assert any(where in k for k in state)


def _official_merge(root: torch.nn.Module, state: dict, alpha: float = 1.0) -> None:
    """The official ``load_diffusers_lora`` rule: strip processor./_lora, to_out -> to_out.0, W += alpha up @ down."""
    modules = dict(root.named_modules())
    with torch.no_grad():
        for key, down in state.items():
            if key.endswith(".down.weight"):
                name = key.removesuffix(".down.weight").replace(".processor.", ".").replace("_lora", "").replace(".to_out", ".to_out.0")
                modules[name].weight += alpha * state[key.replace(".down.", ".up.")] @ down


@pytest.mark.parametrize("mode", ["domain-adapter", "motion-lora"])
def test_lora_export_merges_to_the_trained_model(mode, data, motion_file, tmp_path):
    """Merging the export by the official convention (scale folded into up) gives the trained model's output."""
    from animatediff.weights.load import load_motion_modules
    from animatediff.training.modes import build

    base = tiny_base_model()
    config = make_config(mode, data, tmp_path, motion_module=str(motion_file), lora_alpha=2.0, lora_rank=8)
    motion = load_motion_modules(str(motion_file)) if mode == "motion-lora" else None
    setup = build(config, base, motion)
    for pair in setup.trainable.pairs:  # as if trained: non-zero up
        torch.nn.init.normal_(pair.up.weight, std=0.05)
    x, text = torch.randn(1, 4, 4, 4, 4), torch.randn(1, 77, 32)
    with torch.no_grad():
        trained = setup.model(x, torch.tensor([500]), text)
        state = setup.export_state(config)
        setup.trainable.detach()
        _official_merge(motion if motion is not None else base.unet, state)
        reference = AnimateDiffUNet(base.unet, motion)(x, torch.tensor([500]), text)
    torch.testing.assert_close(reference, trained, rtol=1e-4, atol=1e-5)
    import animatediff.weights.lora as loaders

    apply = getattr(loaders, "apply_motion_lora" if motion is not None else "apply_domain_adapter", None)
    if apply is None:  # the project's loaders do not merge LoRAs yet: the official rule above stands in
        return
    base, motion = tiny_base_model(), load_motion_modules(str(motion_file)) if mode == "motion-lora" else None
    path = tmp_path / "export.safetensors"
    save_file(state, str(path))
    apply(motion if motion is not None else base.unet, str(path), 1.0)
    with torch.no_grad():
        merged = AnimateDiffUNet(base.unet, motion)(x, torch.tensor([500]), text)
    torch.testing.assert_close(merged, trained, rtol=1e-4, atol=1e-5)


# ---- resume ------------------------------------------------------------------------------------------
def test_interrupted_and_resumed_run_reproduces_the_loss_sequence(data, tmp_path):
    steps = dict(max_train_steps=5, checkpointing_steps=100, num_workers=1)
    full = train(make_config("motion-module", data, tmp_path / "full", **steps), base=tiny_base_model())

    def interrupt(step, _loss):
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)  # the real signal path: finish the step, save, return

    config = make_config("motion-module", data, tmp_path / "cut", **steps)
    first = train(config, base=tiny_base_model(), on_step=interrupt)
    assert first.interrupted and first.step == 2 and (tmp_path / "cut" / "checkpoints" / "step-000002").is_dir()
    second = train(config, base=tiny_base_model(), resume=tmp_path / "cut")
    assert {**first.losses, **second.losses} == full.losses  # bit-exact
    a, b = load_file(str(full.exported)), load_file(str(second.exported))
    assert all(torch.equal(a[k], b[k]) for k in a)

    with pytest.raises(UserInputError, match="mode"):  # another mode's checkpoint
        train(make_config("motion-lora", data, tmp_path / "x", motion_module=str(full.exported)),
              base=tiny_base_model(), resume=tmp_path / "cut")


# ---- data ----------------------------------------------------------------------------------------------
def test_corrupt_short_and_missing_videos_are_skipped(data, tmp_path, caplog):
    dataset = build_dataset(make_config("motion-module", data, tmp_path, num_frames=4))
    assert len(dataset) == 3
    assert "skipped 3 of 6 videos" in caplog.text
    sample = dataset[(0, 123)]
    assert sample["pixel_values"].shape == (4, 3, 32, 32) and sample["pixel_values"].abs().max() <= 1
    bad = tmp_path / "bad.csv"
    bad.write_text("videoid,name\ncorrupt,x\nshort,y\n")
    with pytest.raises(UserInputError, match="no usable video"):
        build_dataset(make_config("motion-module", bad, tmp_path, video_folder=str(data.parent)))


@pytest.mark.parametrize("weighting", ["none", "min-snr", "truncated-snr"])
def test_loss_weights_are_normalised_and_shaped_as_documented(weighting):
    from diffusers import DDPMScheduler

    from animatediff.training.loop import loss_weights

    scheduler = DDPMScheduler(beta_schedule="linear", beta_start=0.00085, beta_end=0.012)
    weights = loss_weights(scheduler, weighting, snr_gamma=20.0)
    assert weights.shape == (1000,) and abs(float(weights.mean()) - 1) < 1e-5
    if weighting == "none":
        assert torch.allclose(weights, torch.ones(1000))
    else:  # both favour high noise (low SNR) over the easy low-noise steps, within the gamma range
        assert torch.all(weights[1:] >= weights[:-1] - 1e-6) and weights[-1] > 2 * weights[0]
        snr0 = float(scheduler.alphas_cumprod[0] / (1 - scheduler.alphas_cumprod[0]))
        bound = 20.0 if weighting == "truncated-snr" else snr0 / 20.0  # cap, or min(SNR, g) / SNR at t=0 vs 1
        assert float(weights.max() / weights.min()) == pytest.approx(bound, rel=1e-3)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_training_target_follows_the_base_prediction_type(prediction_type):
    from diffusers import DDPMScheduler

    from animatediff.training.loop import encode_pixels, training_loss

    base = tiny_base_model()
    base.prediction_type = prediction_type
    scheduler = DDPMScheduler(beta_schedule="linear", beta_start=0.00085, beta_end=0.012)
    batch = {"pixel_values": torch.rand(2, 3, 3, 32, 32) * 2 - 1, "caption": ["a red circle", ""]}
    seen = {}

    def model(noisy, timesteps, text):  # predicts zeros: the loss is then the target's mean square
        seen.update(noisy=noisy, timesteps=timesteps)
        return torch.zeros_like(noisy)

    loss = training_loss(model, base, scheduler, batch, torch.Generator().manual_seed(3), "cpu")
    # replay the same draws: posterior sample, noise, timesteps
    generator = torch.Generator().manual_seed(3)
    latents = encode_pixels(base.vae, batch["pixel_values"], generator)
    noise = torch.randn(latents.shape, generator=generator)
    timesteps = torch.randint(0, 1000, (2,), generator=generator)
    assert torch.equal(timesteps, seen["timesteps"])
    target = noise if prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, timesteps)
    assert torch.allclose(loss, target.pow(2).mean(), rtol=1e-5)
    weights = torch.linspace(0.5, 1.5, 1000)
    weighted = training_loss(model, base, scheduler, batch, torch.Generator().manual_seed(3), "cpu", weights)
    expected = (target.pow(2).flatten(1).mean(1) * weights[timesteps]).mean()
    assert torch.allclose(weighted, expected, rtol=1e-5)


def test_sampler_is_a_function_of_seed_step_and_rank():
    stream = lambda start, rank=0: [k for _, k in zip(range(6), StepSampler(5, 2, 7, rank, 2, start))]
    assert stream(0)[4:] == stream(2)[:2]  # resuming at step 2 continues the same stream
    assert set(i for i, _ in stream(0, 0)[:2] + stream(0, 1)[:2]) <= set(range(5))
    assert stream(0, 0) != stream(0, 1)
    first_epoch = [i for i, _ in zip(range(5), (k[0] for k in _merged(7)))]
    assert sorted(first_epoch) == list(range(5))  # one epoch visits every item once across ranks


def _merged(seed):
    a, b = iter(StepSampler(5, 2, seed, 0, 2)), iter(StepSampler(5, 2, seed, 1, 2))
    while True:
        yield next(a); yield next(a); yield next(b); yield next(b)


def _centroid(frame: torch.Tensor) -> tuple[float, float]:
    weight = (frame.mean(0) + 1).clamp(min=0) ** 4  # (h, w); the bright blob dominates
    ys, xs = torch.meshgrid(torch.arange(frame.shape[1]), torch.arange(frame.shape[2]), indexing="ij")
    return float((weight * xs).sum() / weight.sum()), float((weight * ys).sum() / weight.sum())


@pytest.mark.parametrize("move, axis, sign", [
    ("PanLeft", 0, +1), ("PanRight", 0, -1), ("TiltUp", 1, +1), ("TiltDown", 1, -1),  # content moves against the camera
    ("ZoomIn", 0, +1), ("ZoomOut", 0, -1),  # a blob right of centre moves outwards / inwards
    ("RollingClockwise", 1, -1), ("RollingAnticlockwise", 1, +1),  # camera cw -> content acw: right-hand blob goes up
])
def test_camera_augmentation_moves_content_in_the_documented_direction(move, axis, sign, tmp_path):
    image = np.zeros((64, 64, 3), np.uint8)
    image[28:36, 44:52] = 255  # a blob right of centre
    Image.fromarray(image).save(tmp_path / "blob.png")
    config = load_config("motion-lora", None, dict(video_folder=".", motion_module="x", camera_move=move, camera_move_strength=0.3,
                                                   size=64, num_frames=8, caption_dropout=0.0,
                                                   hflip=move.startswith(("Pan", "Tilt"))))  # (seed 1 flips: direction kept)
    clip = ClipDataset([Item(tmp_path / "blob.png", "blob")], config, 8)[(0, 1)]["pixel_values"]
    start, end = _centroid(clip[0]), _centroid(clip[-1])
    assert sign * (end[axis] - start[axis]) > 2  # pixels


# ---- command line and bad input ------------------------------------------------------------------------
def test_cli_trains_from_a_diffusers_folder_and_rejects_bad_input(data, tmp_path, capsys):
    from animatediff.cli import main as animatediff_main

    base_dir = save_diffusers_folder(tiny_base_model(), tmp_path / "base")
    args = ["motion-module", "--config", "tiny-motion-module", "--base_model", str(base_dir), "--caption_file", str(data),
            "--size", "32", "--num_frames", "4", "--max_train_steps", "2", "--num_workers", "0", "--output_dir", str(tmp_path / "o"),
            "--validation_steps", "2", "--validation_inference_steps", "2", "--validation_size", "32", "--validation_num_frames", "4",
            "--validation_prompts", "a red circle", "--validation_seeds", "1"]
    assert train_main(args) == 0
    assert (tmp_path / "o" / "samples" / "step-000002" / "0-seed1.gif").is_file()  # validation GIF from the pipeline
    exported = tmp_path / "o" / "motion-module-final.safetensors"
    assert exported.is_file()
    from animatediff.weights.load import load_motion_modules

    load_motion_modules(str(exported))
    clip = tmp_path / "trained.gif"  # what `train motion-module` writes is what `generate --motion-module` reads
    assert animatediff_main(["-q", "generate", "a red circle", "--model", str(base_dir), "--motion-module", str(exported),
                             "--frames", "4", "--width", "32", "--height", "32", "--steps", "2", "--out", str(clip)]) == 0
    assert clip.is_file()

    recipe = tmp_path / "r.yaml"
    recipe.write_text("learning_rate: 1e-4\nlerning_rate: 3\n")
    no_columns = tmp_path / "c.csv"
    no_columns.write_text("file,text\na.mp4,x\n")
    for argv, message in [
        (["train", "motion-module", "--config", str(recipe)], "unknown key(s) lerning_rate"),
        (["train", "motion-module", "--config", "tiny-motion-module", "--caption_file", str(no_columns), "--base_model", str(base_dir)],
         "needs columns videoid,name"),
        (["train", "image", "--config", "tiny-motion-module", "--video_folder", "."], "recipe is for mode"),
        (["train", "motion-module", "--config", "tiny-motion-module", "--caption_file", str(data), "--base_model", str(base_dir),
          "--size", "32", "--num_frames", "4", "--num_workers", "0", "--output_dir", str(tmp_path / "o2"), "--resume", str(tmp_path)], "--resume"),
    ]:
        capsys.readouterr()
        assert animatediff_main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error: ") and message in err[-1], (argv, err)


def test_gradient_checkpointing_gives_the_same_training(data, tmp_path):
    """Recomputed activations (diffusers blocks + our per-instance motion-module wrapper) change nothing."""
    plain = train(make_config("motion-module", data, tmp_path / "a"), base=tiny_base_model())
    checkpointed = train(make_config("motion-module", data, tmp_path / "b", gradient_checkpointing=True), base=tiny_base_model())
    assert plain.losses[1] == checkpointed.losses[1]
    assert abs(plain.losses[2] - checkpointed.losses[2]) < 1e-5


def test_validation_leaves_the_base_unet_hooks_as_it_found_them(data, tmp_path):
    """Each validation samples through a pipeline over the training UNet; it must not add hooks that outlive it."""
    base = tiny_base_model()
    config = make_config("motion-module", data, tmp_path, max_train_steps=3, checkpointing_steps=100, validation_steps=1,
                         validation_inference_steps=1, validation_size=32, validation_num_frames=2,
                         validation_prompts=["a red circle"], validation_seeds=[1])
    counts = []  # forward hooks on the base UNet's modules at each step, before that step's validation

    def count_hooks(_step, _loss):
        counts.append(sum(len(m._forward_hooks) for m in base.unet.modules()))

    train(config, base=base, on_step=count_hooks)
    assert counts[0] > 0 and counts == [counts[0]] * 3, counts  # the training UNet's own hooks, no more
    assert len(list((tmp_path / "samples").glob("step-*/0-seed1.gif"))) == 3


# ---- output_dir: never a folder or file of the user's ----------------------------------------------------
def tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` -> its bytes (None for a folder): compare before and after."""
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in sorted(folder.rglob("*"))}


def users_folder(folder: Path) -> Path:
    """A folder of the user's that happens to hold names training writes (unet-final, checkpoints/step-N)."""
    (folder / "unet-final").mkdir(parents=True)
    (folder / "unet-final" / "config.json").write_text('{"my": "own unet"}')
    (folder / "checkpoints" / "step-000001").mkdir(parents=True)
    (folder / "checkpoints" / "step-000001" / "mine.txt").write_text("not a training checkpoint")
    (folder / "notes.txt").write_text("my notes")
    return folder


@pytest.mark.parametrize("case", ["users folder", "a file", "parent is a file", "not writable"])
def test_cli_refuses_an_output_dir_it_may_not_write_before_reading_data(case, tmp_path, capsys, monkeypatch):
    """One error line naming output_dir, exit 2, nothing changed; the data and model do not exist, so the
    check must come before either is read."""
    out = tmp_path / "out"
    if case == "users folder":
        users_folder(out)
    elif case == "a file":
        out.write_text("a file of mine")
    elif case == "parent is a file":
        (tmp_path / "file").write_text("a file of mine")
        out = tmp_path / "file" / "out"
    else:
        out.mkdir()
        out.chmod(0o555)
        if os.geteuid() == 0:  # root writes anywhere: let os.access answer as it would for a user
            real_access = os.access
            monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p) != out and real_access(p, mode, **kw))
    before = tree(tmp_path)
    argv = ["motion-module", "--config", "tiny-motion-module", "--base_model", str(tmp_path / "no-model"),
            "--caption_file", str(tmp_path / "no-captions.csv"), "--output_dir", str(out)]
    assert train_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.match(r"error: (--)?output_dir ", err[0]) and str(out) in err[0], err
    assert tree(tmp_path) == before


def test_a_users_unet_final_survives_training_and_overwrite(data, tmp_path):
    """The defect: image mode deleted OUTPUT_DIR/unet-final whatever it was. Now a user's folder is refused,
    and overwrite writes this run's files next to the user's without removing or changing any of them."""
    out = users_folder(tmp_path / "out")
    before = tree(out)
    with pytest.raises(UserInputError, match="output_dir") as e:
        train(make_config("image", data, out), base=tiny_base_model())
    assert e.value.field == "output_dir" and "notes.txt" in str(e.value)
    assert tree(out) == before
    with pytest.raises(UserInputError, match="unet-final"):  # overwrite still never removes a folder of the user's
        train(make_config("image", data, out, overwrite=True), base=tiny_base_model())
    assert tree(out) == before

    shutil.rmtree(out / "unet-final")  # the user moves their folders away: overwrite writes next to the rest
    shutil.rmtree(out / "checkpoints" / "step-000001")
    (out / "checkpoints" / "step-old").mkdir()
    (out / "checkpoints" / "step-old" / "mine.txt").write_text("a folder named like a checkpoint")
    before = tree(out)
    result = train(make_config("motion-module", data, out, overwrite=True, checkpoints_total_limit=1), base=tiny_base_model())
    assert result.exported == out / "motion-module-final.safetensors" and result.exported.is_file()
    after = tree(out)
    assert {k: after.get(k) for k in before} == before  # checkpoints/step-old is not ours: not pruned


def test_runs_into_their_own_folder_replace_only_their_files(data, tmp_path):
    """A second run into a folder training made (also one made before the marker existed) needs no overwrite;
    it replaces its checkpoint at the same step and its unet-final, and leaves a file the user added alone."""
    out = tmp_path / "out"
    first = train(make_config("image", data, out), base=tiny_base_model())
    (out / "my-notes.txt").write_text("kept")
    second = train(make_config("image", data, out, seed=7), base=tiny_base_model())
    assert first.losses != second.losses and (out / "my-notes.txt").read_text() == "kept"
    exported = load_file(str(second.exported / "diffusion_pytorch_model.safetensors"))
    saved = load_file(str(out / "checkpoints" / "step-000002" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(exported[k], saved[k]) for k in saved)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # no temporary folders left
    for marker in out.glob("*.json"):  # a folder from before the marker: recognised by latest + its checkpoint
        marker.unlink()
    train(make_config("image", data, out), base=tiny_base_model())


def test_resume_from_an_earlier_checkpoint_rewrites_the_log_past_it(data, tmp_path):
    """Rows logged after the checkpoint a run resumes from are dropped: the log has each step once."""
    import csv

    config = make_config("motion-module", data, tmp_path / "run", max_train_steps=3, checkpointing_steps=2,
                         checkpoints_total_limit=None)
    first = train(config, base=tiny_base_model())
    second = train(config, base=tiny_base_model(), resume=tmp_path / "run" / "checkpoints" / "step-000002")
    with open(tmp_path / "run" / "train_log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert float(rows[2]["loss"]) == second.losses[3] == first.losses[3]  # the rerun step, bit-exact
