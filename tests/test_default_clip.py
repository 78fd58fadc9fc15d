"""The report's default-clip section and CLIP-score stand-in (issue 11, items 1 and 6): the object-presence
scorer on clips whose answer is known, the section's targets, and a tiny run on the bundled family."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from animatediff.demo import clip, clip_score, report, reproduce, scores, world
from animatediff.demo.reproduce import Clip, Results, Settings
from animatediff.errors import UserInputError
from animatediff.generation.config import GenerationConfig

ROOT = Path(__file__).resolve().parents[1]


def _background_only(spec: world.SceneSpec, num_frames: int, size: int) -> np.ndarray:
    """The scene's frames with its object removed: the background alone (watermarked like the videos)."""
    image = np.clip(np.round(world.render_background(spec, size, size)), 0, 255).astype(np.uint8)
    return world.add_watermark(np.repeat(image[None], num_frames, axis=0))


@pytest.mark.parametrize("size", [64, 128])
def test_object_presence_is_one_on_ground_truth_and_zero_without_the_object(size):
    for spec, prompt in zip(reproduce.DEFAULT_SPECS, reproduce.DEFAULT_PROMPTS):
        truth = world.make_video(spec, 16, size, size)
        assert scores.object_presence(truth, prompt)["share"] == 1.0, prompt
        assert scores.object_presence(_background_only(spec, 16, size), prompt)["share"] == 0.0, prompt


def test_object_presence_counts_frames_and_needs_colour_and_shape():
    spec, prompt = reproduce.DEFAULT_SPECS[0], reproduce.DEFAULT_PROMPTS[0]  # a red circle
    truth, empty = world.make_video(spec, 8), _background_only(spec, 8, 64)
    blinking = np.concatenate([truth[:6], empty[6:]])  # the object gone from the last 2 of 8 frames
    result = scores.object_presence(blinking, prompt)
    assert result["share"] == 0.75 and result["per_frame"] == [1] * 6 + [0] * 2
    assert result["objects"] == {"red circle": 0.75}
    other_shape = dataclasses.replace(spec, objects=(dataclasses.replace(spec.objects[0], shape="square"),))
    other_colour = dataclasses.replace(spec, objects=(dataclasses.replace(spec.objects[0], color="green"),))
    assert scores.object_presence(world.make_video(other_shape, 8), prompt)["share"] == 0.0
    assert scores.object_presence(world.make_video(other_colour, 8), prompt)["share"] == 0.0
    assert scores.object_presence(truth[0], prompt)["share"] == 1.0  # one image
    assert np.isnan(scores.object_presence(truth, "a blue striped background")["share"])


def test_default_prompts_are_the_readme_prompt_and_three_one_object_prompts():
    demo = re.search(r'generate "([^"]+)"', (ROOT / "Makefile").read_text()).group(1)
    assert reproduce.DEFAULT_PROMPTS[0] == demo
    assert len(set(reproduce.DEFAULT_PROMPTS)) == 4
    for spec, prompt in zip(reproduce.DEFAULT_SPECS, reproduce.DEFAULT_PROMPTS):
        assert scores.parse_prompt(prompt)["objects"] == [(spec.objects[0].color, spec.objects[0].shape)]


def test_default_config_is_what_generate_runs_on_the_bundled_family():
    try:
        files = reproduce.model_files()
    except UserInputError:
        pytest.skip("the bundled demo family is not installed")
    from animatediff import bundled

    config = reproduce.default_config(files, reproduce.settings_for(files), "a red circle", 42)
    assert config == GenerationConfig(prompt="a red circle", seed=42, **bundled.generation_defaults())


def _default_results(frames_for) -> Results:
    """Default clips (2 seeds per prompt) with frames from ``frames_for(spec)``, and their ground truth."""
    results = Results(Settings(num_frames=8, default_seeds=(1, 2)), reproduce.ModelFiles(None, None, None))
    for spec, prompt in zip(reproduce.DEFAULT_SPECS, reproduce.DEFAULT_PROMPTS):
        truth = world.make_video(spec, 8)
        results.clips.append(Clip("default-truth", prompt, prompt, 0, reproduce.clip_metrics(truth, prompt, 8), 0, truth))
        for seed in (1, 2):
            frames = frames_for(spec)
            results.clips.append(Clip("default", prompt, prompt, seed, reproduce.clip_metrics(frames, prompt, 8), 1, frames))
    for c in results.clips:
        c.metrics["object"] = scores.object_presence(c.frames, c.prompt)
    return results


def _verdicts(results: Results) -> dict:
    return {t.claim: t.passed for t in reproduce.targets(results) if t.claim.startswith("the default clip")}


def test_default_clip_targets_pass_on_ground_truth_and_miss_without_the_object():
    good = _default_results(lambda spec: world.make_video(spec, 8))
    assert set(_verdicts(good).values()) == {True} and len(_verdicts(good)) == 2
    everything = reproduce.default_table(good)[-1]
    assert everything["prompt"] == "all prompts" and everything["clips"] == 8
    assert everything["object_present"] == 1.0 and everything["named_correct"] == 1.0
    assert everything["warping_error"] == everything["truth_warping_error"]
    bad = _default_results(lambda spec: _background_only(spec, 8, 64))
    assert set(_verdicts(bad).values()) == {False}
    assert reproduce.default_table(bad)[-1]["object_present"] == 0.0
    text = report.render(bad, {"command": "`x`"}, [], strip=False)
    assert "## Default clip" in text and "reproduction/default-1-seed2.gif" in text and "not available" in text


def _tiny_towers(folder: Path) -> Path:
    config = clip.ClipConfig(image_size=16, text_width=16, text_layers=1, text_heads=2, image_channels=(8, 16),
                             projection_dim=8, max_tokens=16)
    clip.save_towers(clip.build_towers(config), folder)
    return folder


def test_find_towers_prefers_explicit_then_the_family(tmp_path):
    with pytest.raises(ValueError, match="no contrastive towers"):
        clip_score.find_towers(None, tmp_path)
    _tiny_towers(tmp_path / "family" / "text-encoder")
    assert clip_score.find_towers(tmp_path / "family") == (tmp_path / "family" / "text-encoder", "the family's own")
    assert clip_score.find_towers(tmp_path, tmp_path / "family" / "text-encoder")[1] == "given"
    import shutil  # a towers folder without its text tower is no towers folder (it crashed the report at the end)

    shutil.rmtree(tmp_path / "family" / "text-encoder" / "text_encoder")
    assert not clip_score.is_towers_folder(tmp_path / "family" / "text-encoder")


def test_report_rejects_a_clip_towers_folder_without_towers(tmp_path, capsys):
    try:
        reproduce.model_files()
    except UserInputError:
        pytest.skip("the bundled demo family is not installed")
    assert report.main(["--clip-towers", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --clip-towers") and not (tmp_path / "out").exists()


def test_default_section_on_the_bundled_family(tmp_path):
    """A tiny grid (4 prompts x 1 seed, 4 frames, 2 steps) through run, the CLIP stand-in, the GIFs and render."""
    try:
        files = reproduce.model_files()
    except UserInputError:
        pytest.skip("the bundled demo family is not installed")
    settings = dataclasses.replace(reproduce.settings_for(files), num_frames=4, steps=2, table_prompts=1, seeds=(11,),
                                   default_seeds=(42,), experiments=("default",))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = reproduce.run(files, settings, clip_towers=_tiny_towers(tmp_path / "towers"))
    finally:
        torch.set_num_threads(threads)
    clips = results.select("default")
    assert [(c.prompt, c.seed) for c in clips] == [(p, 42) for p in reproduce.DEFAULT_PROMPTS]
    assert all(c.frames.shape == (4, settings.height, settings.width, 3) for c in clips)
    assert all(0.0 <= c.metrics["object"]["share"] <= 1.0 and -1.0 <= c.metrics["clip_text"] <= 1.0 for c in clips)
    assert len(results.select("default-truth")) == 4
    assert all(c.metrics["object"]["share"] == 1.0 for c in results.select("default-truth"))
    assert results.clip_towers == tmp_path / "towers"
    verdicts = _verdicts(results)
    assert len(verdicts) == 2 and None not in verdicts.values()
    names = report.write_default_gifs(results, tmp_path)
    assert sorted(names) == sorted([f"default-{i}-{k}.gif" for i in range(1, 5) for k in ("truth", "seed42")])
    assert all((tmp_path / n).stat().st_size > 0 for n in names)
    text = report.render(results, {"command": "`x`"}, [], strip=False)
    assert "## Default clip" in text and "<img src=\"reproduction/default-4-seed42.gif\"" in text
    row = next(line for line in text.splitlines() if line.startswith("| AnimateDiff (base) |"))
    assert "not available" not in row  # the CLIP-analog column is measured


def test_clip_scores_fill_table1_text_and_domain_columns(tmp_path):
    """Text alignment on every Table 1 row; domain similarity only where the model's own images exist (and 1.0
    when the animation's frames are that image)."""
    spec = reproduce.table_specs(Settings(table_prompts=1))[0]
    prompt, image = world.caption(spec), world.make_image(spec)
    results = Results(Settings(), reproduce.ModelFiles(None, None, None))
    still = np.repeat(image[None], 3, axis=0)  # a 3-frame clip of the own image
    for condition in (reproduce.ANIMATEDIFF_BASE, reproduce.ANIMATEDIFF_LORA):
        results.clips.append(Clip("table1", condition, prompt, 11, reproduce.clip_metrics(still, prompt, 8), 1, still))
    results.clips.append(Clip("reference", reproduce.ANIMATEDIFF_LORA, prompt, 11,
                              reproduce.clip_metrics(image[None], prompt, 8), 1, image[None]))
    reproduce.add_clip_scores(results, clip_score.ClipScorer(_tiny_towers(tmp_path)))
    rows = {r["condition"]: r for r in reproduce.table1(results)}
    assert -1.0 <= rows[reproduce.ANIMATEDIFF_BASE]["clip_text"] <= 1.0
    assert np.isnan(rows[reproduce.ANIMATEDIFF_BASE]["clip_domain"])
    assert rows[reproduce.ANIMATEDIFF_LORA]["clip_domain"] == pytest.approx(1.0, abs=1e-5)
