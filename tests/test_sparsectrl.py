"""SparseCtrl (generation/sparsectrl.py, weights/sparsectrl.py) on tiny real components.

Oracle: diffusers' ``SparseControlNetModel`` at the tiny UNet's shapes with every weight random. Its numerics
differ from the official code in one place, the motion modules' GroupNorm, which diffusers pools over all
frames of a clip while the official SparseCtrl normalises every frame on its own (advanced-features.md §1.5).
The oracle gets a per-frame GroupNorm (same parameters) on the instance; a test shows the difference matters.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import SparseControlNetModel
from PIL import Image
from torch import nn

from animatediff.errors import UserInputError
from animatediff.generation import sparsectrl
from animatediff.generation.pipeline import AnimationPipeline, GenerationConfig
from animatediff.weights import sparsectrl as layout
from animatediff.weights.detect import describe_file
from animatediff.weights.load import check_state_dict
from animatediff.video_io import sidecar_path

import fixtures
from conftest import randomize_, tiny_unet

SIZE, FRAMES = 32, 4


def oracle(flavour: str, seed: int = 5) -> SparseControlNetModel:
    """diffusers' SparseCtrl at the tiny UNet's shapes (tests/conftest.py), every weight random."""
    model = SparseControlNetModel(
        conditioning_channels=4 if flavour == "rgb" else 3, use_simplified_condition_embedding=flavour == "rgb",
        down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"), block_out_channels=(32, 64), layers_per_block=1,
        norm_num_groups=8, cross_attention_dim=32, attention_head_dim=8, motion_num_attention_heads=8,
        motion_max_seq_length=32)
    with torch.no_grad():  # random weights, but the recomputed position encodings kept
        g = torch.Generator().manual_seed(seed)
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


class PerFrameGroupNorm(nn.Module):
    """The official SparseCtrl motion-module norm: statistics per frame, on diffusers' (b, c, f, h, w) input."""

    def __init__(self, norm: nn.GroupNorm):
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = x.shape
        y = self.norm(x.transpose(1, 2).reshape(b * f, c, h, w))  # b c f h w -> (b f) c h w
        return y.reshape(b, f, c, h, w).transpose(1, 2)


def per_frame_(model: SparseControlNetModel) -> SparseControlNetModel:
    for block in model.down_blocks:
        for module in block.motion_modules:
            module.norm = PerFrameGroupNorm(module.norm)
    return model


def official_file(model: SparseControlNetModel) -> dict:
    """The oracle's weights as the official .ckpt holds them: official names, PE buffers (length 32) included."""
    state = layout.to_official(model.state_dict())
    for key in [k for k in state if k.endswith("attention_blocks.0.to_q.weight")]:
        state[key.replace("to_q.weight", "pos_encoder.pe")] = sinusoid(state[key].shape[0])
    return state


def sinusoid(dim: int) -> torch.Tensor:
    from animatediff.motion_module import sinusoidal_position_encoding

    return sinusoidal_position_encoding(32, dim)


def inputs(flavour: str, b: int = 2, f: int = FRAMES, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    c, size = (4, 8) if flavour == "rgb" else (3, 64)
    cond = torch.randn(1, c, f, size, size, generator=g)
    mask = torch.zeros(1, 1, f, size, size)
    cond[:, :, 1:-1] = 0  # keyframes on the first and last frame only
    mask[:, :, [0, -1]] = 1
    text = torch.randn(b, 77, 32, generator=g)
    return cond, mask, text


@pytest.mark.parametrize("flavour", ["rgb", "scribble"])
def test_residuals_equal_the_official_numerics(tmp_path, flavour):
    model = oracle(flavour)
    path = fixtures.save(official_file(model), tmp_path / f"{flavour}.ckpt", wrapper="controlnet")
    encoder = sparsectrl.load_encoder(str(path), tiny_unet(), torch.float32, torch.device("cpu"))
    cond, mask, text = inputs(flavour)
    b, f = text.shape[0], FRAMES
    t = torch.tensor(601)
    noisy = torch.randn(b, 4, f, 8, 8)
    with torch.no_grad():
        ours = encoder(noisy, t, text.repeat_interleave(f, 0), torch.cat([cond, mask], 1).transpose(1, 2).expand(b, -1, -1, -1, -1),
                       torch.ones(b, f))
        oracle_args = dict(encoder_hidden_states=text.repeat_interleave(f, 0), controlnet_cond=cond.expand(b, -1, -1, -1, -1),
                           conditioning_mask=mask.expand(b, -1, -1, -1, -1), return_dict=False)
        across = model(noisy, t, **oracle_args)
        want = per_frame_(model)(noisy, t, **oracle_args)
    gaps = []
    for mine, theirs, pooled in zip((*ours[0], ours[1]), (*want[0], want[1]), (*across[0], across[1])):
        mine = mine.transpose(1, 2).flatten(0, 1)  # b C f h w -> (b f) C h w, diffusers' layout
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)
        gaps.append(float((mine - pooled).abs().max()))
    assert gaps[0] == 0 and min(gaps[1:]) > 1e-3  # after the first motion module, diffusers' pooled GroupNorm differs


def test_official_and_diffusers_files_load_to_the_same_tensors(tmp_path):
    model = oracle("rgb")
    unet = tiny_unet()
    diffusers_file = fixtures.save(model.state_dict(), tmp_path / "diffusers.safetensors")  # pos_embed.pe included
    official = fixtures.save({**official_file(model), "animatediff_config": {"x": 1}}, tmp_path / "official.ckpt",
                             wrapper="controlnet")
    plain = fixtures.save(official_file(model), tmp_path / "plain.safetensors")  # no wrapper
    loaded = [sparsectrl.load_encoder(str(p), unet, torch.float32, torch.device("cpu")).model.state_dict()
              for p in (diffusers_file, official, plain)]
    assert loaded[0].keys() == loaded[1].keys() == loaded[2].keys()
    assert all(torch.equal(loaded[0][k], other[k]) for other in loaded[1:] for k in loaded[0])
    assert set(loaded[0]) == set(layout.to_official(model.state_dict()))  # every file key used, nothing else
    assert not any("pos_encoder" in k or "pos_embed" in k for k in loaded[0])
    for path, kind in ((diffusers_file, "diffusers"), (official, "official")):
        description = describe_file(path)
        assert (description.kind, description.version, description.base) == ("sparsectrl", "rgb", "sd15")
        assert description.details["layout"] == kind and description.details["motion_modules"] == 2


def test_key_rules_round_trip():
    model = oracle("scribble")
    official = layout.to_official(model.state_dict())
    assert any(".temporal_transformer.transformer_blocks.0.attention_blocks.0.to_q" in k for k in official)
    assert layout.to_diffusers(official).keys() == {k for k in model.state_dict() if not k.endswith("pos_embed.pe")}
    assert layout.embedding_widths(official) == (16, 32, 96, 256) and layout.condition_channels(official) == 3


@pytest.mark.parametrize("change", ["missing", "extra", "misshapen"])
def test_a_missing_extra_or_misshapen_key_is_one_error(tmp_path, change):
    state = official_file(oracle("rgb"))
    if change == "missing":
        del state["controlnet_mid_block.bias"]
    elif change == "extra":
        state["down_blocks.0.motion_modules.0.temporal_transformer.extra.weight"] = torch.zeros(2)
    else:
        state["controlnet_mid_block.weight"] = torch.zeros(64, 64, 3, 3)
    path = fixtures.save(state, tmp_path / "bad.ckpt")
    with pytest.raises(UserInputError, match=f"sparsectrl {path}: .*{ {'extra': 'unexpected', 'misshapen': 'wrong shape'}.get(change, change)}"):
        sparsectrl.load_encoder(str(path), tiny_unet(), torch.float32, torch.device("cpu"))


def test_the_fixture_file_loads_strictly():
    """tests/fixtures.sparsectrl_state_dict (the official layout at tiny shapes) has exactly our model's keys."""
    unet = tiny_unet()
    for flavour in ("rgb", "scribble"):
        state = layout.to_official(fixtures.sparsectrl_state_dict(unet, flavour))
        encoder = sparsectrl.SparseCtrlEncoder(unet, flavour, layout.condition_channels(state),
                                               layout.embedding_widths(state) if flavour == "scribble" else (16, 32, 96, 256))
        check_state_dict(encoder.model, state, "fixture", "SparseCtrl")


# ---- the condition -------------------------------------------------------------------------------------------
def test_fit_keyframe_centre_crops_to_the_aspect_then_resizes():
    image = np.zeros((1, 40, 100, 3), dtype=np.uint8)
    image[:, :, 30:70] = 255  # the centre 40 columns white: a 1:1 target keeps exactly them
    out = sparsectrl.fit_keyframe(image, 16, 16)
    assert out.shape == (3, 16, 16)
    torch.testing.assert_close(out, torch.ones(3, 16, 16))  # no black from the sides
    same = sparsectrl.fit_keyframe(np.full((1, 16, 32, 3), 7, dtype=np.uint8), 32, 16)
    assert torch.equal(same, torch.full((3, 16, 32), 7 / 255))  # already the size: untouched


def test_keyframe_indices_negative_out_of_range_and_duplicates():
    config = GenerationConfig(prompt="x", num_frames=16, keyframes=[{"image": "a", "index": 0}, {"image": "b", "index": -1},
                                                                    {"image": "c", "index": 8}])
    assert sparsectrl.keyframe_indices(config) == [0, 15, 8]
    for bad, words in (([{"image": "a", "index": 16}], "keyframes a: index 16 is outside the clip"),
                       ([{"image": "a", "index": -17}], "index -17 is outside"),
                       ([{"image": "a", "index": 0}, {"image": "b", "index": -16}], r"keyframes -16: frame 0 has two keyframes \(a and b\)")):
        with pytest.raises(UserInputError, match=words):
            sparsectrl.keyframe_indices(GenerationConfig(prompt="x", num_frames=16, keyframes=bad))


def test_parse_keyframe_arg():
    assert sparsectrl.parse_keyframe_arg("dir@x/a.png@-1") == {"image": "dir@x/a.png", "index": -1}
    assert sparsectrl.keyframes_from_image("a.png") == [{"image": "a.png", "index": 0}]
    for bad in ("a.png", "a.png@", "@3", "a.png@first"):
        with pytest.raises(UserInputError, match="keyframes .*IMAGE@INDEX"):
            sparsectrl.parse_keyframe_arg(bad)


def test_normalize_is_grey_min_max():
    image = torch.stack([torch.linspace(0.2, 0.6, 4).view(2, 2)] * 3)
    out = sparsectrl.normalize(image)
    assert torch.allclose(out, torch.stack([torch.tensor([[0, 1 / 3], [2 / 3, 1]])] * 3))


# ---- generation ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def files(tmp_path_factory, base):
    d = tmp_path_factory.mktemp("sparsectrl")
    paths = {}
    for flavour in ("rgb", "scribble"):
        model = oracle(flavour)
        paths[flavour] = str(fixtures.save(official_file(model), d / f"{flavour}.ckpt", wrapper="controlnet"))
        zero = layout.to_official(model.state_dict())
        for key in [k for k in zero if k.startswith(("controlnet_down_blocks.", "controlnet_mid_block."))]:
            zero[key] = torch.zeros_like(zero[key])  # the zero-initialised output convs of a fresh encoder
        paths[f"{flavour}-zero"] = str(fixtures.save(zero, d / f"{flavour}-zero.safetensors"))
    g = np.random.default_rng(0)
    for i in range(3):
        paths[f"image{i}"] = str(d / f"key{i}.png")
        Image.fromarray(g.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(paths[f"image{i}"])
    paths["text"] = str(d / "notes.png")
    (d / "notes.png").write_text("not an image")
    return paths


@pytest.fixture
def pipe(base, motion):
    pipeline = AnimationPipeline(base, motion)
    yield pipeline
    pipeline.close()


def config(files, **overrides) -> GenerationConfig:
    two = [{"image": files["image0"], "index": 0}, {"image": files["image1"], "index": -1}]
    return GenerationConfig(**{**dict(prompt="a cat walking", negative_prompt="blurry", num_frames=FRAMES, width=SIZE,
                                      height=SIZE, steps=2, seed=1, sparsectrl=files["rgb"], keyframes=two), **overrides})


def test_zero_output_convs_change_nothing(pipe, files):
    plain = pipe.generate(config(files, sparsectrl=None, keyframes=None)).latents
    for flavour in ("rgb", "scribble"):
        assert torch.equal(pipe.generate(config(files, sparsectrl=files[f"{flavour}-zero"])).latents, plain)
        assert not torch.equal(pipe.generate(config(files, sparsectrl=files[flavour])).latents, plain)


def test_scale_start_end(pipe, files):
    plain = pipe.generate(config(files, sparsectrl=None, keyframes=None)).latents
    full = pipe.generate(config(files)).latents
    assert torch.equal(pipe.generate(config(files, sparsectrl_scale=0.0)).latents, plain)
    assert torch.equal(pipe.generate(config(files, sparsectrl_scale=[1.0] * FRAMES)).latents, full)
    assert torch.equal(pipe.generate(config(files, sparsectrl_start=0.6)).latents, plain)  # 2 steps: neither runs
    half = pipe.generate(config(files, sparsectrl_end=0.5)).latents
    assert not torch.equal(half, plain) and not torch.equal(half, full)
    per_frame = pipe.generate(config(files, sparsectrl_scale=[1.0, 0.0, 0.5, 1.0])).latents
    assert not torch.equal(per_frame, full)


def test_rgb_condition_is_the_vae_mean_at_the_indices(base, files):
    cfg = config(files, keyframes=[{"image": files["image0"], "index": -1}, {"image": files["image1"], "index": 1}])
    hint = sparsectrl.build_hint(cfg, "rgb", base.vae)
    assert hint.shape == (FRAMES, 5, SIZE // 8, SIZE // 8)
    assert torch.equal(hint[:, 4, 0, 0], torch.tensor([0.0, 1.0, 0.0, 1.0]))  # the mask
    assert torch.equal(hint[[0, 2]], torch.zeros_like(hint[[0, 2]]))  # no keyframe: zero latent, mask 0
    from animatediff.generation import vae as vae_io
    from animatediff.generation.video_input import read_image

    pixels = sparsectrl.fit_keyframe(read_image(files["image0"], "keyframes"), SIZE, SIZE)
    mean = vae_io.encode(base.vae, pixels[None, :, None], sample=False)[0, :, 0]
    torch.testing.assert_close(hint[3, :4], mean)  # batched with the other image: conv rounding
    assert torch.equal(sparsectrl.build_hint(cfg, "rgb", base.vae), hint)  # deterministic
    scribble = sparsectrl.build_hint(cfg, "scribble", base.vae)
    assert scribble.shape == (FRAMES, 4, SIZE, SIZE) and torch.equal(scribble[3, :3], pixels)


def test_context_windows_slice_the_condition(pipe, files):
    """With one window over all frames, windows change nothing; with several, each sees its frames' condition."""
    whole = pipe.generate(config(files)).latents
    assert torch.equal(pipe.generate(config(files, context="static", context_length=FRAMES)).latents, whole)
    long = config(files, num_frames=8, context="static", context_length=4, context_overlap=2,
                  keyframes=[{"image": files["image0"], "index": 0}, {"image": files["image1"], "index": 7}])
    assert pipe.generate(long).latents.shape == (1, 4, 8, 4, 4)
    seen = []
    provider_call = sparsectrl.SparseCtrlProvider.__call__

    def spy(self, latents, t, cond):
        seen.append(cond["sparsectrl_hint"][0, :, 4, 0, 0].tolist())  # the mask of each window's frames
        return provider_call(self, latents, t, cond)

    sparsectrl.SparseCtrlProvider.__call__ = spy
    try:
        pipe.generate(long)
    finally:
        sparsectrl.SparseCtrlProvider.__call__ = provider_call
    assert [1.0, 0.0, 0.0, 0.0] in seen and [0.0, 0.0, 0.0, 1.0] in seen and [0.0, 0.0, 0.0, 0.0] in seen


def test_sidecar_records_the_inputs(pipe, files, tmp_path):
    from animatediff.weights.files import file_sha256

    result = pipe.generate(config(files))
    meta = result.metadata()
    assert meta["sparsectrl"] == files["rgb"] and meta["keyframes"][1] == {"image": files["image1"], "index": -1}
    inputs = meta["inputs"]["sparsectrl"]
    assert inputs["sha256"] == file_sha256(files["rgb"]) and inputs["flavour"] == "rgb"
    assert [k["sha256"] for k in inputs["keyframes"]] == [file_sha256(files["image0"]), file_sha256(files["image1"])]
    assert [k["frame"] for k in inputs["keyframes"]] == [0, FRAMES - 1]


# ---- command line, Python API, official prompt YAMLs ----------------------------------------------------------
from pathlib import Path  # noqa: E402

from animatediff.cli import main  # noqa: E402

OFFICIAL = Path(__file__).parent / "official_prompts" / "3_sparsectrl"


def _argv(model_files, out, *extra):
    return ["-q", "generate", "a red circle", "--model", model_files["ldm"], "--model-config", model_files["folder"],
            "--motion-module", model_files["v2"], "--frames", str(FRAMES), "--width", str(SIZE), "--height", str(SIZE),
            "--steps", "2", "--seed", "1", "--out", str(out), *extra]


def test_two_keyframes_through_the_cli_and_the_api_give_the_same_clip(model_files, files, tmp_path):
    from animatediff.api import Animator

    out = tmp_path / "clip.gif"
    keys = ["--sparsectrl", files["rgb"], "--keyframe", f"{files['image0']}@0", "--keyframe", f"{files['image1']}@-1"]
    assert main(_argv(model_files, out, *keys, "--sparsectrl-scale", "0.8", "--sparsectrl-end", "0.9")) == 0
    meta = json.loads(sidecar_path(out).read_text())
    assert meta["sparsectrl"] == files["rgb"] and meta["sparsectrl_scale"] == 0.8 and meta["sparsectrl_end"] == 0.9
    assert meta["keyframes"] == [{"image": files["image0"], "index": 0}, {"image": files["image1"], "index": -1}]
    assert [k["frame"] for k in meta["inputs"]["sparsectrl"]["keyframes"]] == [0, FRAMES - 1]
    animator = Animator.load(model_files["ldm"], model_files["v2"], model_config=model_files["folder"])
    result = animator.generate("a red circle", num_frames=FRAMES, width=SIZE, height=SIZE, steps=2, seed=1,
                               sparsectrl=files["rgb"], keyframes=meta["keyframes"], sparsectrl_scale=0.8, sparsectrl_end=0.9)
    animator.save(result, tmp_path / "api.gif")
    assert (tmp_path / "api.gif").read_bytes() == out.read_bytes()


def official_tree(root: Path, base) -> Path:
    """The files the official 3_sparsectrl jobs name, fabricated at tiny shapes, under their official paths."""
    from animatediff.weights.load import load_base_model  # noqa: F401  (the tiny base's files come from fixtures)

    def put(rel: str, state: dict, wrapper: str | None = None) -> None:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        fixtures.save(state, root / rel, wrapper=wrapper)

    put("models/Motion_Module/v3_sd15_mm.ckpt", fixtures.official_motion_state_dict("v3"))
    put("models/Motion_Module/v3_sd15_adapter.ckpt", fixtures.domain_adapter_state_dict(base.unet))
    put("models/DreamBooth_LoRA/realisticVisionV60B1_v51VAE.safetensors", fixtures.ldm_checkpoint(base))
    for flavour in ("rgb", "scribble"):
        put(f"models/SparseCtrl/v3_sd15_sparsectrl_{flavour}.ckpt", {**official_file(oracle(flavour)), "animatediff_config": ""},
            wrapper="controlnet")
    g = np.random.default_rng(1)
    names = ["image/painting.png", "image/interpolation_1.png", "image/interpolation_2.png", "image/RealisticVision_firework.png",
             "image/RealisticVision_sunset.png", "scribble/scribble_1.png"]
    names += [f"image/low_fps_{i}.png" for i in range(1, 5)] + [f"image/prediction_{i}.png" for i in range(1, 5)]
    names += [f"scribble/scribble_2_{i}.png" for i in range(1, 4)]
    for name in names:
        (root / "__assets__/demos" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(g.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(root / "__assets__/demos" / name)
    return root


def test_the_official_sparsectrl_yamls_run_unchanged(model_files, base, tmp_path, monkeypatch):
    monkeypatch.chdir(official_tree(tmp_path, base))  # official paths are relative to the repository root
    runs = {"3_1_sparsectrl_i2v.yaml": (["--width", "48", "--height", "32"], 8, [[0], [0, 15], [0, 5, 10, 15], [0, 1, 2, 3]]),
            "3_2_sparsectrl_rgb_RealisticVision.yaml": ([], 4, [[0], [0]]),
            "3_3_sparsectrl_sketch_RealisticVision.yaml": ([], 4, [[0], [0, 8, 15]])}
    for name, (size, clips, frames) in runs.items():
        out = tmp_path / "out" / name.removesuffix(".yaml")
        size = size or ["--width", str(SIZE), "--height", str(SIZE)]
        argv = ["-q", "generate", "--config", str(OFFICIAL / name), "--model", model_files["folder"], "--model-config",
                model_files["folder"], "--steps", "2", *size, "--out", str(out)]
        assert main(argv) == 0, name
        written = sorted(out.glob("*.gif"), key=lambda p: int(p.name.split("-")[0]))
        assert len(written) == clips, name
        metas = [json.loads(sidecar_path(p).read_text()) for p in written]
        assert [[k["frame"] for k in m["inputs"]["sparsectrl"]["keyframes"]] for m in metas[::2]] == frames, name
        flavour = "scribble" if "sketch" in name else "rgb"
        assert {m["inputs"]["sparsectrl"]["flavour"] for m in metas} == {flavour}
        assert all(m["num_frames"] == 16 and m["adapter"]["scale"] == 1.0 for m in metas)


BAD = {  # argv additions -> (what the one error line names, words it must hold)
    "sdxl encoder": (lambda f: ["--sparsectrl", f["sdxl"], "--keyframe", f"{f['image0']}@0"], "--sparsectrl",
                     "an SDXL SparseCtrl encoder with an SD1.5 base model"),
    "index outside the clip": (lambda f: ["--sparsectrl", f["rgb"], "--keyframe", f"{f['image0']}@{FRAMES}"], "--keyframe",
                               f"index {FRAMES} is outside the clip"),
    "duplicate frame": (lambda f: ["--sparsectrl", f["rgb"], "--keyframe", f"{f['image0']}@0", "--keyframe",
                                   f"{f['image1']}@-{FRAMES}"], "--keyframe", "frame 0 has two keyframes"),
    "not an image": (lambda f: ["--sparsectrl", f["rgb"], "--keyframe", f"{f['text']}@0"], "--keyframe", "is not an image"),
    "no index": (lambda f: ["--sparsectrl", f["rgb"], "--keyframe", f["image0"]], "--keyframe", "expected IMAGE@INDEX"),
    "keyframes without encoder": (lambda f: ["--keyframe", f"{f['image0']}@0"], "--keyframe", "needs a SparseCtrl encoder"),
    "encoder without keyframes": (lambda f: ["--sparsectrl", f["rgb"]], "--keyframe", "SparseCtrl needs keyframes"),
    "corrupt ckpt": (lambda f: ["--sparsectrl", f["corrupt"], "--keyframe", f"{f['image0']}@0"], "--sparsectrl",
                     "truncated or corrupt"),
    "code-executing ckpt": (lambda f: ["--sparsectrl", f["pickle"], "--keyframe", f"{f['image0']}@0"], "--sparsectrl",
                            "refusing to load, this pickle needs code execution"),
    "a motion module": (lambda f: ["--sparsectrl", f["motion"], "--keyframe", f"{f['image0']}@0"], "--sparsectrl",
                        "is not a SparseCtrl encoder"),
    "scale list length": (lambda f: ["--sparsectrl", f["rgb"], "--keyframe", f"{f['image0']}@0", "--sparsectrl-scale", "1,2"],
                          "--sparsectrl-scale", f"has 2 values for {FRAMES} frames"),
    "start after end": (lambda f: ["--sparsectrl", f["rgb"], "--keyframe", f"{f['image0']}@0", "--sparsectrl-start", "0.8",
                                   "--sparsectrl-end", "0.5"], "--sparsectrl-start", "needs 0 <= start < end <= 1"),
}


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, files):
    d = tmp_path_factory.mktemp("bad")
    sdxl = tiny_unet(sdxl=True)
    state = fixtures.sparsectrl_state_dict(sdxl, "rgb")
    state.update({k: v for k, v in sdxl.state_dict().items() if k.startswith("add_embedding.")})  # SDXL's added embedding
    return {**files, "sdxl": str(fixtures.save(state, d / "sdxl_sparsectrl.safetensors")),
            "corrupt": str(fixtures.write_corrupt(d / "corrupt.ckpt")),
            "pickle": str(fixtures.write_code_execution_pickle(d / "evil.ckpt")),
            "motion": str(fixtures.save(fixtures.official_motion_state_dict("v3"), d / "mm.ckpt"))}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2_nothing_written(model_files, bad_files, tmp_path, capsys, case):
    extra, where, expected = BAD[case]
    assert main(_argv(model_files, tmp_path / "clip.gif", *extra(bad_files))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {where}") and expected in err[0], err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("job, key, words", [
    ("  controlnet_image_indexs: [0, 1]\n", "controlnet_image_indexs [0, 1]", "2 indices but only 1 controlnet_images"),
    ("", "controlnet_path", "needs controlnet_images"),
])
def test_bad_yaml_sparsectrl_keys(model_files, files, tmp_path, capsys, job, key, words):
    recipe = tmp_path / "in" / "r.yaml"
    recipe.parent.mkdir()
    images = f"  controlnet_images: [\"{files['image0']}\"]\n" if "indexs" in job else ""
    recipe.write_text(f"- motion_module: \"{model_files['v2']}\"\n  prompt: [\"a\"]\n  steps: 2\n  guidance_scale: 7.5\n"
                      f"  controlnet_path: \"{files['rgb']}\"\n{images}{job}")
    out = tmp_path / "out"
    assert main(["-q", "generate", "--config", str(recipe), "--model", model_files["folder"], "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and key in err[0] and words in err[0], err
    assert not out.exists()


# ---- training mode sparsectrl (training/sparsectrl.py) ---------------------------------------------------------
def test_edges_and_random_keyframes():
    from animatediff.training.sparsectrl import edges, random_keyframes

    frames = -torch.ones(1, 3, 8, 8)
    frames[..., 4:] = 1.0  # a vertical step between columns 3 and 4
    e = edges(frames)
    assert e.shape == (1, 3, 8, 8) and set(e.unique().tolist()) == {0.0, 1.0}
    assert e[0, 0, :, 3:5].all() and not e[0, 0, :, :2].any() and not e[0, 0, :, 6:].any()
    g = torch.Generator().manual_seed(0)
    chosen = random_keyframes(50, 6, 3, g)
    assert all(1 <= len(c) <= 3 and len(set(c)) == len(c) and c == sorted(c) and max(c) < 6 for c in chosen)
    assert {len(c) for c in chosen} == {1, 2, 3}


def train_config(tmp_path, **overrides):
    from safetensors.torch import save_file

    from animatediff.demo.world import write_dataset
    from animatediff.training import load_config
    from animatediff.training.modes import fresh_motion
    from tiny_models import tiny_base_model

    csv_path = write_dataset(tmp_path / "videos", 2, num_frames=6, height=32, width=32)
    mm_config = load_config("motion-module", "tiny-motion-module", {"video_folder": "."})
    motion_path = tmp_path / "mm.safetensors"
    save_file(randomize_(fresh_motion(mm_config, tiny_base_model().unet), std=0.05).state_dict(), str(motion_path))
    return load_config("sparsectrl", None, {**dict(
        caption_file=str(csv_path), size=32, num_frames=4, max_train_steps=2, checkpointing_steps=2, num_workers=0,
        output_dir=str(tmp_path / "out"), batch_size=1, motion_module=str(motion_path), learning_rate=1e-3,
        validation_steps=0), **overrides})


@pytest.mark.parametrize("flavour", ["rgb", "scribble"])
def test_sparsectrl_training_trains_only_the_encoder_and_exports_the_official_layout(flavour, tmp_path):
    from safetensors.torch import load_file

    from animatediff.training import train
    from tiny_models import tiny_base_model

    base = tiny_base_model()
    config = train_config(tmp_path, sparsectrl_flavour=flavour)
    before = {k: v.clone() for k, v in base.unet.state_dict().items()}
    result = train(config, base=base)
    assert len(result.losses) == 2 and all(np.isfinite(list(result.losses.values())))
    assert all(torch.equal(before[k], v) for k, v in base.unet.state_dict().items())  # the UNet stays frozen
    state = load_file(str(result.exported))
    assert result.exported.name == "sparsectrl-final.safetensors"
    assert any(k.endswith("attention_blocks.0.pos_encoder.pe") for k in state)  # official layout, PE included
    assert layout.flavour(state) == flavour and not layout.is_diffusers_layout(state)
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in state.items() if k.startswith("controlnet_down_blocks."))
    encoder = sparsectrl.load_encoder(str(result.exported), base.unet, torch.float32, torch.device("cpu"))  # strict
    assert describe_file(result.exported).kind == "sparsectrl"
    assert encoder.flavour == flavour


@pytest.mark.parametrize("flavour", ["rgb", "scribble"])
def test_a_fresh_encoder_starts_from_the_unet_and_adds_nothing(flavour):
    from animatediff.training.sparsectrl import new_encoder

    unet = tiny_unet()
    encoder = new_encoder(unet, flavour)
    assert torch.equal(encoder.model.conv_in.weight, unet.conv_in.weight)
    assert torch.equal(encoder.model.down_blocks[0].resnets[0].conv1.weight, unet.down_blocks[0].resnets[0].conv1.weight)
    cond, mask, text = inputs(flavour)
    down, mid = encoder(torch.randn(2, 4, FRAMES, 8, 8), torch.tensor(500), text.repeat_interleave(FRAMES, 0),
                        torch.cat([cond, mask], 1).transpose(1, 2).expand(2, -1, -1, -1, -1), torch.ones(2, FRAMES))
    assert all(not r.any() for r in (*down, mid))


def test_full_size_layout_matches_the_official_files():
    """Built on the meta device from the shipped SD1.5 UNet config: the official §4.5 shapes and diffusers' counts
    (496.7 M / 497.8 M parameters; 486 keys with the 8 position encodings)."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    from animatediff.components import package_data

    config = json.loads((package_data("sd15") / "unet" / "config.json").read_text())
    with init_empty_weights():
        unet = UNet2DConditionModel(**{k: v for k, v in config.items() if not k.startswith("_")})
        found = {flavour: sparsectrl.SparseCtrlEncoder(unet, flavour, 4 if flavour == "rgb" else 3).model.state_dict()
                 for flavour in ("rgb", "scribble")}
    rgb, scribble = found["rgb"], found["scribble"]
    assert sum(v.numel() for v in rgb.values()) == 496_730_880 and sum(v.numel() for v in scribble.values()) == 497_802_784
    assert len(rgb) + 8 == 486
    assert tuple(rgb["controlnet_cond_embedding.weight"].shape) == (320, 5, 3, 3)
    assert [tuple(scribble[f"controlnet_cond_embedding.blocks.{i}.weight"].shape)[:2] for i in range(6)] == [
        (16, 16), (32, 16), (32, 32), (96, 32), (96, 96), (256, 96)]
    assert [rgb[f"controlnet_down_blocks.{i}.weight"].shape[0] for i in range(12)] == [320] * 4 + [640] * 3 + [1280] * 5
    modules = {k.split(".temporal_transformer.")[0] for k in rgb if ".motion_modules." in k}
    assert len(modules) == 8 and not any(k.startswith("mid_block.motion_modules") for k in rgb)
    assert not any("attention_blocks.1" in k for k in rgb)  # a single temporal attention


def test_sparsectrl_training_resumes_exactly(tmp_path):
    from safetensors.torch import load_file

    from animatediff.training import train
    from tiny_models import tiny_base_model

    config = train_config(tmp_path, max_train_steps=3)
    full = train(config, base=tiny_base_model())
    second = train(config, base=tiny_base_model(), resume=tmp_path / "out" / "checkpoints" / "step-000002")
    assert second.losses == {3: full.losses[3]}
    a, b = load_file(str(full.exported)), load_file(str(second.exported))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_image_with_an_encoder_is_the_frame_0_keyframe(pipe, files):
    """`--image` with `--sparsectrl`: the still is the RGB keyframe at frame 0 (no init blend), exactly as if it had
    been given as `--keyframe IMAGE@0`; a keyframe of its own at frame 0 is then a duplicate."""
    as_keyframe = pipe.generate(config(files, keyframes=[{"image": files["image0"], "index": 0}])).latents
    as_image = pipe.generate(config(files, keyframes=None, image=files["image0"])).latents
    assert torch.equal(as_image, as_keyframe)
    both = pipe.generate(config(files, keyframes=[{"image": files["image1"], "index": -1}], image=files["image0"]))
    assert torch.equal(both.latents, pipe.generate(config(files)).latents)  # image0@0 + image1@-1
    with pytest.raises(UserInputError, match="two keyframes"):
        pipe.generate(config(files, keyframes=[{"image": files["image1"], "index": 0}], image=files["image0"]))
