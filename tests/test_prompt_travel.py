"""Prompt travel: the input formats, the per-frame schedule, lerp/slerp, per-frame conditioning on tiny real
SD1.5/SDXL components, and the command line / prompt YAML on tiny fabricated files."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from animatediff.cli import main
from animatediff.errors import UserInputError
from animatediff.generation.conditioning import encode_conditioning
from animatediff.generation.config import GenerationConfig
from animatediff.generation.pipeline import AnimationPipeline
from animatediff.generation.prompt_travel import (
    PromptSchedule, lerp, parse_prompt_map, prompt_schedules, read_prompt_map_file, slerp,
)
from animatediff.motion_module import MotionModules
from animatediff.recipes import load_official_recipe
from animatediff.video_io import sidecar_path

import fixtures
from conftest import randomize_, tiny_motion_config
from tiny_models import save_diffusers_folder, tiny_base_model

CPU = dict(device=torch.device("cpu"), dtype=torch.float32)
A, B = "a red circle", "a blue square"
EXPECTED = {0: A, 8: B}


def config(**overrides) -> GenerationConfig:
    values = dict(prompt="", negative_prompt="blurry", width=32, height=32, num_frames=12, guidance_scale=7.5, steps=1, seed=3)
    return GenerationConfig(**{**values, **overrides})


def keys_of(**fields) -> dict[int, str]:
    positive, _ = prompt_schedules(config(**fields))
    return positive.prompts


# ---- formats ---------------------------------------------------------------------------------------------------
SAME_MAP = {
    "mapping": {0: A, 8: B},
    "JSON-style string keys": {"0": A, "8": B},
    "one line": f"0: {A} | 8: {B}",
    "A1111 box": f"0: {A}\n8: {B}\n",
    "A1111 box, no space after the colon": f"0:{A}\n8:{B}",
    "JSON object text": json.dumps({"0": A, "8": B}),
    "ADE plain form (no braces)": f'"0": "{A}", "8": "{B}"',
    "YAML flow mapping text": f"{{0: {A}, 8: {B}}}",
}


@pytest.mark.parametrize("form", list(SAME_MAP))
def test_every_form_reads_to_the_same_map(form):
    assert keys_of(prompt_map=SAME_MAP[form]) == EXPECTED


def test_head_and_tail_in_every_format_give_the_same_key_prompts(tmp_path):
    expected = {0: f"masterpiece, {A}, best quality", 8: f"masterpiece, {B}, best quality"}
    box = f"masterpiece\n0: {A}\n8: {B}\nbest quality"
    assert keys_of(prompt_map=box) == expected  # A1111: head lines, key lines, tail lines
    assert keys_of(prompt=box) == expected  # ... also when it is the plain prompt itself (auto-detected)
    assert keys_of(prompt_map=EXPECTED, head_prompt="masterpiece", tail_prompt="best quality") == expected
    assert keys_of(prompt_map=EXPECTED, head_prompt="masterpiece, ", tail_prompt=",best quality") == expected  # no ",,"
    cli_pt = tmp_path / "prompt_travel.json"  # animatediff-cli-prompt-travel's config, other keys and all
    cli_pt.write_text(json.dumps({"name": "sample", "path": "model.safetensors", "head_prompt": "masterpiece",
                                  "prompt_map": {"0": A, "8": B}, "tail_prompt": "best quality", "n_prompt": ["blurry"],
                                  "seed": [1], "tensor_interpolation_slerp": True}))
    fields = read_prompt_map_file(cli_pt)
    assert fields.pop("negative_prompt") == "blurry"
    assert keys_of(**fields) == expected
    ours = tmp_path / "travel.yaml"
    ours.write_text(f"head_prompt: masterpiece\ntail_prompt: best quality\nprompt_map:\n  0: {A}\n  8: {B}\n")
    assert keys_of(**read_prompt_map_file(ours)) == expected
    text = tmp_path / "box.txt"
    text.write_text(box)
    assert keys_of(**read_prompt_map_file(text)) == expected
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({"0": A, "8": B}))
    assert keys_of(**read_prompt_map_file(bare)) == EXPECTED


def test_official_prompt_yaml_job_carries_a_prompt_map(tmp_path):
    recipe = tmp_path / "travel.yaml"
    recipe.write_text(f"- steps: 2\n  guidance_scale: 7.5\n  L: 12\n  n_prompt: blurry\n  head_prompt: masterpiece\n"
                      f"  prompt_map:\n    0: {A}\n    8: {B}\n  prompt_wrap: true\n  prompt_interpolation: SLERP\n"
                      f"  motion_scale: [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1.5]\n")
    (job,) = load_official_recipe(recipe, model=None)
    made = GenerationConfig(prompt=job.prompt, negative_prompt=job.negative_prompt, **job.settings)
    made.validate()
    assert prompt_schedules(made)[0].prompts == {0: f"masterpiece, {A}", 8: f"masterpiece, {B}"}
    assert made.prompt_wrap is True and made.prompt_interpolation == "slerp" and made.motion_scale[-1] == 1.5


def test_a_plain_prompt_is_not_taken_for_a_map():
    for prompt in ("a cat", "16:9 photo of a cat", "0: a cat", "a cat\nin the snow"):
        assert prompt_schedules(config(prompt=prompt)) == (None, None)


BAD_MAPS = {  # value -> words of the error
    "negative key": ("-1: a | 4: b", "negative"),
    "fractional key": ("1.5: a", "fractional"),
    "fractional key in a mapping": ({1.5: "a"}, "fractional"),
    "word key": ("start: a", "not a frame number"),
    "duplicate key": (f"0: {A} | 0: {B}", "twice"),
    "duplicate key, int and text": ({0: A, "0": B}, "twice"),
    "duplicate key in the A1111 box": ("0: a\n0: b", "twice"),
    "duplicate key in JSON": ('{"0": "a", "0": "b"}', "twice"),
    "entry without a key": (f"{A} | 8: {B}", "FRAME: prompt"),
    "empty": ("", "empty"),
    "empty mapping": ({}, "empty"),
    "empty prompt": ({0: "  "}, "empty prompt"),
    "prompt not text": ({0: 3}, "text"),
    "not a map": (5, "expected a mapping"),
    "key line after the tail": ("0: a\ntail text\n8: b", "after the tail"),
    "box without keys": ("masterpiece\nbest quality", "no 'N: text' line"),
}


@pytest.mark.parametrize("case", list(BAD_MAPS))
def test_malformed_maps_are_user_errors_naming_the_field(case):
    value, words = BAD_MAPS[case]
    with pytest.raises(UserInputError, match=words) as caught:
        parse_prompt_map(value, "negative_prompt_map")
    assert caught.value.field == "negative_prompt_map"


BAD_CONFIGS = {
    "key past the last frame": (dict(prompt_map={0: A, 12: B}), "prompt_map", "0 .. 11"),
    "negative key past the last frame": (dict(prompt="x", negative_prompt="", negative_prompt_map="0: a | 20: b"),
                                         "negative_prompt_map", "past the clip"),
    "prompt and prompt map": (dict(prompt="a cat", prompt_map=EXPECTED), "prompt_map", "not both"),
    "unknown interpolation": (dict(prompt_map=EXPECTED, prompt_interpolation="cubic"), "prompt_interpolation", "lerp or slerp"),
    "head without a map": (dict(prompt="a cat", head_prompt="masterpiece"), "head_prompt", "no"),
    "wrap not a bool": (dict(prompt_map=EXPECTED, prompt_wrap="yes"), "prompt_wrap", "true or false"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_config_checks_name_the_field(case):
    fields, field, words = BAD_CONFIGS[case]
    with pytest.raises(UserInputError, match=words) as caught:
        config(**fields).validate()
    assert caught.value.field == field


def test_duplicate_keys_in_a_yaml_file_are_refused(tmp_path):
    path = tmp_path / "travel.yaml"
    path.write_text(f"prompt_map:\n  0: {A}\n  8: {B}\n  0: a green star\n")
    with pytest.raises(UserInputError, match="given twice") as caught:
        read_prompt_map_file(path)
    assert caught.value.field == "prompt_map_file"


# ---- schedule ----------------------------------------------------------------------------------------------------
def test_schedule_holds_outside_the_keys_and_wraps_only_when_asked():
    held = PromptSchedule({2: A, 6: B}, num_frames=8).frames()
    assert held == [(2, 2, 0.0), (2, 2, 0.0), (2, 2, 0.0), (2, 6, 0.25), (2, 6, 0.5), (2, 6, 0.75), (6, 6, 0.0), (6, 6, 0.0)]
    wrapped = PromptSchedule({2: A, 6: B}, num_frames=8, wrap=True).frames()
    # after 6 the travel goes on to 2 + 8: the gap is 4 frames, through the clip's end
    assert wrapped == [(6, 2, 0.5), (6, 2, 0.75), (2, 2, 0.0), (2, 6, 0.25), (2, 6, 0.5), (2, 6, 0.75), (6, 6, 0.0), (6, 2, 0.25)]
    assert PromptSchedule({3: A}, num_frames=4, wrap=True).frames() == [(3, 3, 0.0)] * 4  # one key: nothing to travel to


# ---- interpolation -------------------------------------------------------------------------------------------
def test_slerp_of_parallel_vectors_falls_back_to_lerp():
    v0 = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(0))
    for v1 in (3 * v0, -2 * v0, v0 * (1 + 1e-6)):
        assert torch.equal(slerp(v0, v1, 0.3), lerp(v0, v1, 0.3))
    assert torch.equal(slerp(v0, torch.zeros_like(v0), 0.3), lerp(v0, torch.zeros_like(v0), 0.3))


def test_slerp_follows_the_arc_and_whole_tensor():
    x, y = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    half = slerp(x, y, 0.5)
    torch.testing.assert_close(half, torch.tensor([[0.5**0.5, 0.5**0.5]]))  # on the unit circle; lerp's is shorter
    assert lerp(x, y, 0.5).norm() < 0.71
    # whole-tensor: one angle for all tokens together, not one per token
    v0, v1 = torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    omega = torch.acos(torch.tensor(0.5))  # cos = <v0, v1> / (|v0| |v1|) = 1 / 2
    expected = (torch.sin(0.75 * omega) * v0 + torch.sin(0.25 * omega) * v1) / torch.sin(omega)
    torch.testing.assert_close(slerp(v0, v1, 0.25), expected)


# ---- per-frame conditioning --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sd15():
    return tiny_base_model()


@pytest.fixture(scope="module")
def sdxl():
    return tiny_base_model(sdxl=True)


def plain(base, prompt, **overrides):
    return encode_conditioning(base, config(prompt=prompt, **overrides), **CPU)


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
@pytest.mark.parametrize("method", ["lerp", "slerp"])
def test_key_frames_are_the_plain_conditioning_and_travel_is_monotone_between(kind, method, request):
    base = request.getfixturevalue(kind)
    cond, uncond = encode_conditioning(base, config(prompt_map={0: A, 6: B}, num_frames=8, prompt_interpolation=method), **CPU)
    (cond_a, uncond_a), (cond_b, _) = plain(base, A, num_frames=8), plain(base, B, num_frames=8)
    names = ["encoder_hidden_states"] + (["text_embeds"] if base.is_sdxl else [])
    for name in names:
        assert cond[name].shape[:2] == (1, 8)
        assert torch.equal(cond[name][:, 0], cond_a[name]) and torch.equal(cond[name][:, 6], cond_b[name])  # exactly
        assert torch.equal(cond[name][:, 7], cond_b[name])  # after the last key: held
        for i in range(8):
            assert torch.equal(uncond[name][:, i], uncond_a[name])  # the negative prompt does not travel
        to_a = [(cond[name][:, i] - cond_a[name]).norm().item() for i in range(7)]
        to_b = [(cond[name][:, i] - cond_b[name]).norm().item() for i in range(7)]
        assert all(x < y for x, y in zip(to_a, to_a[1:])), to_a  # leaves A ...
        assert all(x > y for x, y in zip(to_b, to_b[1:])), to_b  # ... and nears B
    if base.is_sdxl:
        assert cond["time_ids"].shape == (1, 8, 6)


def test_wrap_travels_from_the_last_key_back_to_the_first(sd15):
    name = "encoder_hidden_states"
    a, b = plain(sd15, A)[0][name], plain(sd15, B)[0][name]
    held = encode_conditioning(sd15, config(prompt_map={0: A, 4: B}, num_frames=6), **CPU)[0][name]
    wrapped = encode_conditioning(sd15, config(prompt_map={0: A, 4: B}, num_frames=6, prompt_wrap=True), **CPU)[0][name]
    assert torch.equal(held[:, 5], b)
    torch.testing.assert_close(wrapped[:, 5], 0.5 * b + 0.5 * a)  # frame 5: halfway from key 4 to key 0 (= frame 6)
    assert torch.equal(wrapped[:, :5], held[:, :5])


def test_negative_prompt_travel_head_and_tail(sd15):
    name = "encoder_hidden_states"
    cond, uncond = encode_conditioning(sd15, config(prompt_map="0: a cat | 3: a dog", head_prompt="masterpiece",
                                                    tail_prompt="4k", negative_prompt="",
                                                    negative_prompt_map={0: "blurry", 3: "noisy"}, num_frames=4), **CPU)
    keyed = plain(sd15, "masterpiece, a dog, 4k", negative_prompt="noisy")
    assert torch.equal(cond[name][:, 3], keyed[0][name]) and torch.equal(uncond[name][:, 3], keyed[1][name])
    assert torch.equal(uncond[name][:, 0], plain(sd15, "x", negative_prompt="blurry")[1][name])


# ---- generation ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipe(sd15):
    motion = randomize_(MotionModules(tiny_motion_config("v2")), std=0.1).eval()
    with AnimationPipeline(sd15, motion) as pipeline:
        yield pipeline


def test_a_one_key_map_generates_the_plain_clip_exactly(pipe):
    travelled = pipe.generate(config(prompt_map={0: A}, num_frames=4, steps=2))
    assert torch.equal(travelled.latents, pipe.generate(config(prompt=A, num_frames=4, steps=2)).latents)


def test_schedule_is_logged_and_in_the_sidecar(pipe, caplog):
    with caplog.at_level(logging.DEBUG, logger="animatediff.generation.prompt_travel"):
        result = pipe.generate(config(prompt_map={0: A, 2: B}, num_frames=4, prompt_wrap=True))
    assert "frame 1: key 0 -> key 2, weight 0.5000" in caplog.text
    meta = json.loads(json.dumps(result.metadata()))  # as written next to the video
    schedule = meta["prompt_schedule"]
    assert schedule["prompt"]["keys"] == {"0": A, "2": B} and schedule["negative_prompt"] is None
    assert schedule["prompt"]["frames"][3] == {"frame": 3, "from": 2, "to": 0, "weight": 0.5}
    assert meta["prompt_map"] == {"0": A, "2": B} and meta["prompt_wrap"] is True
    assert "prompt_schedule" not in pipe.generate(config(prompt=A, num_frames=4)).metadata()


# ---- command line ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    folder = save_diffusers_folder(tiny_base_model(), d / "tiny_sd15")
    motion = fixtures.save(fixtures.official_motion_state_dict("v2"), d / "mm_sd_v15_v2.ckpt")
    return ["--model", str(folder), "--motion-module", str(motion)]


FAST = ["--frames", "4", "--width", "32", "--height", "32", "--steps", "1", "--seed", "5"]


def test_cli_prompt_map_and_file(files, tmp_path):
    out = tmp_path / "travel.gif"
    assert main(["-q", "generate", *files, *FAST, "--prompt-map", f"0: {A} | 3: {B}", "--prompt-interpolation", "slerp",
                 "--prompt-wrap", "--head-prompt", "masterpiece", "--motion-scale", "1,1,1.2,1", "--out", str(out)]) == 0
    meta = json.loads(sidecar_path(out).read_text())
    assert meta["prompt_schedule"]["prompt"]["keys"] == {"0": f"masterpiece, {A}", "3": f"masterpiece, {B}"}
    assert meta["prompt_interpolation"] == "slerp" and meta["motion_scale"] == [1, 1, 1.2, 1] and meta["prompt"] == ""
    travel = tmp_path / "travel.json"
    travel.write_text(json.dumps({"prompt_map": {"0": A, "3": B}, "n_prompt": ["blurry"], "tail_prompt": "4k"}))
    out = tmp_path / "file.gif"
    assert main(["-q", "generate", *files, *FAST, "--prompt-map-file", str(travel), "--out", str(out)]) == 0
    meta = json.loads(sidecar_path(out).read_text())
    assert meta["negative_prompt"] == "blurry" and meta["prompt_schedule"]["prompt"]["keys"]["3"] == f"{B}, 4k"


CLI_BAD = {  # extra flags -> words of the one error line
    "negative key": (["--prompt-map", "-1: a | 2: b"], "--prompt-map -1: a negative frame key"),
    "non-integer key": (["--prompt-map", "0: a | 1.5: b"], "--prompt-map 1.5: a fractional frame key"),
    "key >= num_frames": (["--prompt-map", "0: a | 4: b"], "--prompt-map 4: a key past the clip's last frame (4 frames: 0 .. 3)"),
    "duplicate keys": (["--prompt-map", "0: a | 0: b"], "--prompt-map 0: a frame keyed twice"),
    "malformed map": (["--prompt-map", "a red circle, 2: b"], "--prompt-map"),
    "prompt and map": (["a cat", "--prompt-map", "0: a"], "--prompt-map: give either"),
    "map and map file": (["--prompt-map", "0: a", "--prompt-map-file", "x.yaml"], "not both"),
    "missing map file": (["--prompt-map-file", "{tmp}/none.yaml"], "--prompt-map-file"),
    "motion scale list length": (["--prompt-map", "0: a", "--motion-scale", "1,1"], "--motion-scale 1,1: 2 values for 4 frames"),
    "motion effect not a number": (["a cat", "--motion-effect", "strong"], "--motion-effect"),
    "negative motion scale": (["a cat", "--motion-scale", "-1"], "--motion-scale -1:"),
    "unknown interpolation": (["--prompt-map", "0: a", "--prompt-interpolation", "cubic"], "--prompt-interpolation"),
    "negative map key past the end": (["a cat", "--negative-prompt-map", "0: x | 9: y"], "--negative-prompt-map 9"),
}


@pytest.mark.parametrize("case", list(CLI_BAD))
def test_cli_bad_input_is_one_line_exit_2_nothing_written(files, tmp_path, capsys, case):
    extra, words = CLI_BAD[case]
    out = tmp_path / "out" / "clip.gif"
    argv = ["-q", "generate", *files, *FAST, "--out", str(out), *[e.format(tmp=tmp_path) for e in extra]]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert words in err[0], err[0]
    assert not (tmp_path / "out").exists()


def test_cli_map_file_errors_name_the_file(files, tmp_path, capsys):
    travel = tmp_path / "travel.yaml"
    travel.write_text("prompt_map:\n  0: a\n  7: b\n")
    assert main(["-q", "generate", *files, *FAST, "--prompt-map-file", str(travel), "--out", str(tmp_path / "c.gif")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --prompt-map-file {travel}, prompt_map 7: a key past the clip's last frame (4 frames: 0 .. 3)"


def test_yaml_job_with_a_bad_map_names_job_and_key(files, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    model = files[1]
    recipe.write_text(f"- dreambooth_path: \"{model}\"\n  motion_module: \"{files[3]}\"\n  steps: 1\n  guidance_scale: 7.5\n"
                      "  W: 32\n  H: 32\n  L: 4\n  prompt_map: {0: a, 6: b}\n")
    out = tmp_path / "samples"
    assert main(["-q", "generate", "--config", str(recipe), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --config {recipe}: job 0, prompt_map 6: a key past the clip's last frame (4 frames: 0 .. 3)"]
    recipe.write_text(recipe.read_text().replace("{0: a, 6: b}", "{0: a, -2: b}"))
    assert main(["-q", "generate", "--config", str(recipe), "--out", str(out)]) == 2
    assert "job 0, prompt_map -2: a negative frame key" in capsys.readouterr().err
    recipe.write_text(recipe.read_text().replace("{0: a, -2: b}", "{0: a, 2: b}"))
    assert main(["-q", "generate", "--config", str(recipe), "--out", str(out)]) == 0
    (clip,) = out.glob("*.gif")
    assert json.loads(sidecar_path(clip).read_text())["prompt_schedule"]["prompt"]["keys"] == {"0": "a", "2": "b"}
