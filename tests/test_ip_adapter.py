"""IP-Adapter per frame (generation/ip_adapter.py) on tiny real components: fabricated random IP-Adapter files in
diffusers' ``load_ip_adapter`` layouts (base and Plus) and a tiny random CLIPVisionModelWithProjection folder."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from animatediff.cli import main
from animatediff.errors import UserInputError
from animatediff.generation import ip_adapter
from animatediff.generation.pipeline import AnimationPipeline, GenerationConfig
from animatediff.video_io import read_frames, sidecar_path
from animatediff.weights.files import file_sha256

from conftest import randomize_, tiny_motion_config, tiny_unet

SIZE, FRAMES = 32, 4
ENCODER_WIDTH, PROJECTION = 32, 16  # the tiny encoder's hidden_size and projection_dim


# ---- fabricated files --------------------------------------------------------------------------------------
def tiny_encoder(folder, seed: int = 0, projection: int = PROJECTION) -> CLIPVisionModelWithProjection:
    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=ENCODER_WIDTH, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=8, projection_dim=projection)
    model = CLIPVisionModelWithProjection(config).eval()
    model.save_pretrained(folder)
    return model


def ip_state(unet, kind: str = "base", seed: int = 0, std: float = 0.2) -> dict:
    """A random IP-Adapter in the original layout (``image_proj`` + ``ip_adapter`` with odd ids) for ``unet``."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(shape, generator=g) * std  # noqa: E731
    dim = unet.config.cross_attention_dim
    cross = [n.removesuffix(".processor") for n in unet.attn_processors if not n.endswith("attn1.processor")]
    ip = {}
    for i, name in enumerate(cross):
        inner = unet.get_submodule(name).to_k.out_features
        ip[f"{2 * i + 1}.to_k_ip.weight"], ip[f"{2 * i + 1}.to_v_ip.weight"] = r(inner, dim), r(inner, dim)
    if kind == "base":  # ImageProjection: 4 tokens from image_embeds
        proj = {"proj.weight": r(4 * dim, PROJECTION), "proj.bias": r(4 * dim), "norm.weight": 1 + r(dim), "norm.bias": r(dim)}
    else:  # Plus: the Resampler (depth 4, one head of 64, 4 queries) on the penultimate hidden states
        hid, inner, queries = 32, 64, 4
        proj = {"latents": r(1, queries, hid), "proj_in.weight": r(hid, ENCODER_WIDTH), "proj_in.bias": r(hid),
                "proj_out.weight": r(dim, hid), "proj_out.bias": r(dim), "norm_out.weight": 1 + r(dim), "norm_out.bias": r(dim)}
        for i in range(4):
            proj.update({f"layers.{i}.0.norm1.weight": 1 + r(hid), f"layers.{i}.0.norm1.bias": r(hid),
                         f"layers.{i}.0.norm2.weight": 1 + r(hid), f"layers.{i}.0.norm2.bias": r(hid),
                         f"layers.{i}.0.to_q.weight": r(inner, hid), f"layers.{i}.0.to_kv.weight": r(2 * inner, hid),
                         f"layers.{i}.0.to_out.weight": r(hid, inner), f"layers.{i}.1.0.weight": 1 + r(hid),
                         f"layers.{i}.1.0.bias": r(hid), f"layers.{i}.1.1.weight": r(4 * hid, hid),
                         f"layers.{i}.1.3.weight": r(hid, 4 * hid)})
    return {"image_proj": proj, "ip_adapter": ip}


def save_safetensors(state: dict, path) -> str:
    save_file({f"{group}.{k}": v.contiguous() for group, d in state.items() for k, v in d.items()}, str(path))
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory, base):
    d = tmp_path_factory.mktemp("ip")
    tiny_encoder(d / "encoder")
    tiny_encoder(d / "encoder_wide", projection=24)
    paths = {"encoder": d / "encoder", "encoder_wide": d / "encoder_wide", "text": d / "text.png"}
    for kind in ("base", "plus"):
        torch.save(ip_state(base.unet, kind), d / f"{kind}.bin")
        paths[kind] = d / f"{kind}.bin"
    paths["base_st"] = save_safetensors(ip_state(base.unet, "base", seed=1), d / "base.safetensors")
    for i, colour in enumerate([(255, 0, 0), (0, 0, 255), (0, 255, 0)]):
        Image.fromarray(np.full((40, 30, 3), colour, np.uint8)).save(d / f"im{i}.png")
        paths[f"im{i}"] = d / f"im{i}.png"
    paths["text"].write_text("not an image")
    return {k: str(v) for k, v in paths.items()}


@pytest.fixture(scope="module")
def pipe(base, motion):
    pipeline = AnimationPipeline(base, motion)
    yield pipeline
    pipeline.close()


def config(files, kind="base", scale=1.0, images=("im0",), **overrides) -> GenerationConfig:
    ip = dict(ip_adapter=[{"path": files[kind], "scale": scale}], ip_adapter_image_encoder=files["encoder"],
              ip_images=[{"image": files[name], "frame": frame} for name, frame in
                         (i if isinstance(i, tuple) else (i, 0) for i in images)]) if kind else {}
    return GenerationConfig(**{**dict(prompt="a cat walking", negative_prompt="blurry", num_frames=FRAMES, width=SIZE,
                                      height=SIZE, steps=2, seed=1, guidance_scale=7.5), **ip, **overrides})


def capture_image_embeds(monkeypatch) -> list:
    """Every UNet call's ``image_embeds`` (what the denoiser hands the UNet)."""
    seen = []
    original = ip_adapter.unet_image_embeds

    def spy(*args):
        out = original(*args)
        seen.append(out)
        return out

    monkeypatch.setattr(ip_adapter, "unet_image_embeds", spy)
    return seen


# ---- behaviour -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["base", "plus"])
def test_one_image_changes_the_clip_and_scale_0_equals_the_plain_path(pipe, files, kind):
    plain = pipe.generate(config(files, kind=None)).latents
    with_image = pipe.generate(config(files, kind=kind)).latents
    at_zero = pipe.generate(config(files, kind=kind, scale=0.0)).latents
    assert (with_image - plain).abs().max() > 1e-2
    assert torch.equal(at_zero, plain)  # diffusers' processor skips an adapter at scale 0
    assert torch.equal(pipe.generate(config(files, kind=None)).latents, plain)  # the UNet is restored afterwards
    assert pipe.base.unet.encoder_hid_proj is None and pipe.base.unet.config.encoder_hid_dim_type is None


def test_safetensors_layout_runs(pipe, files):
    result = pipe.generate(config(files, kind="base_st"))
    assert torch.isfinite(result.latents).all() and result.models["inputs"]["ip_adapter"]["adapters"][0]["kind"] == "base"


@pytest.mark.parametrize("kind", ["base", "plus"])
def test_keyframed_images_travel_and_a_key_frame_gets_its_images_embedding(pipe, files, kind, monkeypatch):
    seen = capture_image_embeds(monkeypatch)
    result = pipe.generate(config(files, kind=kind, images=(("im0", 0), ("im1", 3))))
    assert torch.isfinite(result.latents).all()
    encoder, processor = pipe.ip_adapter_cache[("encoder", files["encoder"])]
    red, blue = (np.asarray(Image.open(files[n]).convert("RGB")) for n in ("im0", "im1"))
    embeds, negative = ip_adapter.encode_images(encoder, processor, [red, blue], hidden=kind != "base")
    rows = seen[0][0].reshape(2, FRAMES, *embeds.shape[1:])  # (uncond + cond) x frames, tokens, dim
    torch.testing.assert_close(rows[1, 0], embeds[0], rtol=0, atol=0)  # key frame 0: the red image
    torch.testing.assert_close(rows[1, 3], embeds[1], rtol=0, atol=0)  # key frame 3: the blue image
    torch.testing.assert_close(rows[1, 1], embeds[0] * 2 / 3 + embeds[1] / 3, rtol=1e-5, atol=1e-6)  # lerp between
    for frame in range(FRAMES):  # CFG: zeros (base) or the encoding of zero pixel values (plus), every frame
        torch.testing.assert_close(rows[0, frame], negative[0], rtol=0, atol=0)
    if kind == "base":
        assert not rows[0].any()


def test_one_image_with_a_frame_key_serves_every_frame(pipe, files, monkeypatch):
    seen = capture_image_embeds(monkeypatch)
    pipe.generate(config(files, images=(("im2", 2),)))
    rows = seen[0][0].reshape(2, FRAMES, 1, PROJECTION)
    assert all(torch.equal(rows[1, f], rows[1, 2]) for f in range(FRAMES))


def test_context_windows_slice_the_image_embeddings_per_window(pipe, files, monkeypatch):
    seen = capture_image_embeds(monkeypatch)
    cfg = config(files, images=(("im0", 0), ("im1", 5)), num_frames=6, context="static", context_length=4,
                 context_overlap=2)
    pipe.generate(cfg)
    encoder, processor = pipe.ip_adapter_cache[("encoder", files["encoder"])]
    full = ip_adapter.image_embeddings(encoder, processor, cfg, {0: np.asarray(Image.open(files["im0"]).convert("RGB")),
                                                                 5: np.asarray(Image.open(files["im1"]).convert("RGB"))},
                                       hidden=False)[0][0]  # (6, 1, dim)
    windows = [[0, 1, 2, 3], [2, 3, 4, 5]]
    assert len(seen) == 2 * len(windows)  # 2 steps x 2 windows
    for call, window in zip(seen, windows * 2):
        cond_rows = call[0].reshape(2, 4, 1, PROJECTION)[1]
        torch.testing.assert_close(cond_rows, full[window], rtol=0, atol=0)


def test_two_adapters_at_once(pipe, files):
    cfg = config(files, ip_adapter=[{"path": files["base"], "scale": 0.5}, {"path": files["plus"], "scale": 0.7}])
    result = pipe.generate(cfg)
    assert [a["kind"] for a in result.models["inputs"]["ip_adapter"]["adapters"]] == ["base", "plus"]


def test_unet_call_matches_diffusers_unet_motion_model(files):
    """One UNet call with a Plus adapter and CFG: our denoiser (adapter on the 2-D UNet instance, embeddings from
    our encoder path, per-frame layout) vs diffusers' UNetMotionModel with load_ip_adapter's loader and the
    AnimateDiffPipeline's own encode_image (across-frames GroupNorm on both sides, as in test_parity_diffusers)."""
    from diffusers import AnimateDiffPipeline, UNetMotionModel

    from animatediff.generation.denoiser import UNetDenoiser
    from animatediff.inflation import AnimateDiffUNet
    from animatediff.motion_module import MotionModules
    from test_parity_diffusers import diffusers_adapter

    unet = tiny_unet()
    motion_config = tiny_motion_config("v2", motion_groupnorm_across_frames=True)
    motion = randomize_(MotionModules(motion_config), seed=2, std=0.1)
    reference = UNetMotionModel.from_unet2d(unet, diffusers_adapter(motion_config, motion.state_dict())).eval()
    ours = AnimateDiffUNet(unet, motion).eval()
    state = ip_state(unet, "plus", seed=5)
    reference._load_ip_adapter_weights([state], low_cpu_mem_usage=False)
    encoder, processor = ip_adapter.load_encoder(files["encoder"], torch.device("cpu"), torch.float32)
    image = Image.open(files["im0"]).convert("RGB")
    host = SimpleNamespace(image_encoder=encoder, feature_extractor=processor)
    positive, negative = AnimateDiffPipeline.encode_image(host, image, "cpu", 1, output_hidden_states=True)

    g = torch.Generator().manual_seed(0)
    latents, text = torch.randn(2, 4, FRAMES, 8, 8, generator=g), torch.randn(2, 7, 32, generator=g)
    cfg = SimpleNamespace(ip_images=[{"image": files["im0"]}], num_frames=FRAMES, prompt_wrap=False, prompt_interpolation="lerp")
    cond, uncond = ip_adapter.image_embeddings(encoder, processor, cfg, {0: np.asarray(image)}, hidden=True)
    with torch.no_grad(), ip_adapter.attached(unet, [state], [0.8], ["plus"]):
        out = UNetDenoiser(ours)(latents, 10, {"encoder_hidden_states": text, "ip_image_embeds_0": torch.cat([uncond, cond])})
        for processor_ in reference.attn_processors.values():
            if hasattr(processor_, "scale") and isinstance(processor_.scale, list):
                processor_.scale = [0.8]
        embeds = [torch.cat([negative[None], positive[None]])]  # diffusers' layout: (batch, images, tokens, dim)
        ref = reference(latents, 10, encoder_hidden_states=text.repeat_interleave(FRAMES, 0),
                        added_cond_kwargs={"image_embeds": embeds}).sample
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        without = ours(latents, 10, text)
    assert (out - without).abs().max() > 1e-2  # not vacuous: the adapter changes the call


# ---- files and settings that are refused -------------------------------------------------------------------------
def test_parse_args():
    assert ip_adapter.parse_ip_adapter_arg("a.bin:0.5") == {"path": "a.bin", "scale": 0.5}
    assert ip_adapter.parse_ip_adapter_arg("C:\\x.bin") == {"path": "C:\\x.bin"}
    assert ip_adapter.parse_ip_image_arg("a@b.png@12") == {"image": "a@b.png", "frame": 12}
    assert ip_adapter.parse_ip_image_arg("a.png") == {"image": "a.png"}


@pytest.mark.parametrize("overrides, field, message", [
    (dict(ip_adapter_image_encoder=None), "ip_adapter_image_encoder", "needs its image encoder"),
    (dict(ip_images=None), "ip_images", "at least one reference image"),
    (dict(ip_images=[{"image": "a.png", "frame": 4}]), "ip_images", "past the clip's last frame"),
    (dict(ip_images=[{"image": "a.png", "frame": 1}, {"image": "b.png", "frame": 1}]), "ip_images", "two reference images"),
    (dict(ip_adapter=[{"path": "missing.bin"}]), "ip_adapter", "no such file"),
    (dict(ip_adapter=[{"path": "x", "scale": -1}]), "ip_adapter", "must be a number >= 0"),
    (dict(ip_adapter=None), "ip_adapter_image_encoder", "give ip_adapter too"),
])
def test_bad_settings_name_the_field(files, overrides, field, message):
    with pytest.raises(UserInputError, match=message) as error:
        config(files, **overrides).validate()
    assert error.value.field == field


def _broken(state, how):
    proj, ip = dict(state["image_proj"]), dict(state["ip_adapter"])
    if how == "extra key":
        ip["99.to_k_ip.weight"] = ip["1.to_k_ip.weight"]
    elif how == "missing key":
        del ip["3.to_v_ip.weight"]
    elif how == "misshapen key":
        ip["1.to_k_ip.weight"] = ip["1.to_k_ip.weight"][:, :8]
    elif how == "faceid":
        proj = {"proj.0.weight": proj["proj.weight"], "norm.weight": proj["norm.weight"]}
    return {"image_proj": proj, "ip_adapter": ip}


@pytest.mark.parametrize("how, message", [
    ("extra key", "1 unexpected ip_adapter keys (99.to_k_ip.weight)"), ("missing key", "1 missing ip_adapter keys"),
    ("misshapen key", "1 misshapen ip_adapter keys"), ("faceid", "FaceID"),
])
def test_loading_is_strict(pipe, files, tmp_path, how, message):
    path = tmp_path / "bad.bin"
    torch.save(_broken(ip_state(pipe.base.unet), how), path)
    with pytest.raises(UserInputError, match=re.escape(message)) as error:
        pipe.generate(config(files, ip_adapter=[{"path": str(path)}]))
    assert error.value.field == "ip_adapter" and error.value.value == str(path)
    assert pipe.base.unet.encoder_hid_proj is None  # nothing left attached


def test_a_projection_diffusers_cannot_load_strictly_is_refused_and_the_unet_restored(pipe, files, tmp_path):
    state = ip_state(pipe.base.unet, "plus")
    del state["image_proj"]["layers.3.1.3.weight"]  # the Resampler's last feed-forward layer
    torch.save(state, tmp_path / "short.bin")
    processors = {k: type(v) for k, v in pipe.base.unet.attn_processors.items()}
    with pytest.raises(UserInputError, match="diffusers could not load it") as error:
        pipe.generate(config(files, ip_adapter=[{"path": str(tmp_path / "short.bin")}]))
    assert error.value.field == "ip_adapter"
    assert pipe.base.unet.encoder_hid_proj is None and pipe.base.unet.config.encoder_hid_dim_type is None
    assert {k: type(v) for k, v in pipe.base.unet.attn_processors.items()} == processors


def test_an_encoder_of_another_width_is_refused(pipe, files):
    with pytest.raises(UserInputError, match="not its image encoder"):
        pipe.generate(config(files, ip_adapter_image_encoder=files["encoder_wide"]))


def test_an_sdxl_width_adapter_is_refused_for_an_sd15_base(pipe, files, tmp_path):
    path = tmp_path / "sdxl.bin"
    torch.save(ip_state(tiny_unet(sdxl=True)), path)
    with pytest.raises(UserInputError, match="not an IP-Adapter for this base model"):
        pipe.generate(config(files, ip_adapter=[{"path": str(path)}]))


# ---- through the command line ---------------------------------------------------------------------------
def _argv(model_files, out, *extra):
    return ["-q", "generate", "a red circle", "--model", model_files["ldm"], "--model-config", model_files["folder"],
            "--motion-module", model_files["v2"], "--width", "32", "--height", "32", "--steps", "2", "--seed", "7",
            "--frames", "4", "--out", str(out), *extra]


def test_ip_adapter_with_keyframed_images_through_the_cli(model_files, files, tmp_path):
    out = tmp_path / "clip.gif"
    assert main(_argv(model_files, out, "--ip-adapter", f"{files['plus']}:0.7", "--ip-adapter-image-encoder",
                      files["encoder"], "--ip-image", files["im0"], "--ip-image", f"{files['im1']}@3")) == 0
    assert read_frames(out).shape[0] == 4
    meta = json.loads(sidecar_path(out).read_text())
    assert meta["ip_adapter"] == [{"path": files["plus"], "scale": 0.7}]
    assert meta["ip_images"] == [{"image": files["im0"]}, {"image": files["im1"], "frame": 3}]
    info = meta["inputs"]["ip_adapter"]
    assert info["adapters"][0]["sha256"] == file_sha256(files["plus"]) and info["adapters"][0]["kind"] == "plus"
    assert [i["sha256"] for i in info["images"]] == [file_sha256(files["im0"]), file_sha256(files["im1"])]
    assert [row["weight"] for row in info["travel"]["frames"]] == [0.0, round(1 / 3, 6), round(2 / 3, 6), 0.0]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    import fixtures

    d = tmp_path_factory.mktemp("bad")
    return {"corrupt": str(fixtures.write_corrupt(d / "corrupt.safetensors")),
            "pickle": str(fixtures.write_code_execution_pickle(d / "evil.bin")),
            "flat": save_safetensors_flat(d / "flat.safetensors")}


def save_safetensors_flat(path) -> str:
    save_file({"proj.weight": torch.zeros(4, 4)}, str(path))
    return str(path)


BAD = {
    "an IP-Adapter without its image encoder": (lambda f, b: ["--ip-adapter", f["base"], "--ip-image", f["im0"]],
                                                "--ip-adapter-image-encoder", "needs its image encoder"),
    "an ip image that is not an image": (lambda f, b: ["--ip-adapter", f["base"], "--ip-adapter-image-encoder", f["encoder"],
                                                       "--ip-image", f["text"]], "--ip-image", "is not an image"),
    "no ip image": (lambda f, b: ["--ip-adapter", f["base"], "--ip-adapter-image-encoder", f["encoder"]],
                    "--ip-image", "at least one reference image"),
    "an ip image past the clip": (lambda f, b: ["--ip-adapter", f["base"], "--ip-adapter-image-encoder", f["encoder"],
                                                "--ip-image", f"{f['im0']}@9"], "--ip-image", "past the clip's last frame"),
    "a corrupt adapter": (lambda f, b: ["--ip-adapter", b["corrupt"], "--ip-adapter-image-encoder", f["encoder"],
                                        "--ip-image", f["im0"]], "--ip-adapter", "not a valid safetensors file"),
    "a code-executing pickle": (lambda f, b: ["--ip-adapter", b["pickle"], "--ip-adapter-image-encoder", f["encoder"],
                                              "--ip-image", f["im0"]], "--ip-adapter", "code execution"),
    "keys outside image_proj/ip_adapter": (lambda f, b: ["--ip-adapter", b["flat"], "--ip-adapter-image-encoder",
                                                         f["encoder"], "--ip-image", f["im0"]], "--ip-adapter",
                                           "keys outside image_proj"),
    "an encoder folder that is not one": (lambda f, b: ["--ip-adapter", f["base"], "--ip-adapter-image-encoder",
                                                        str(b["corrupt"]), "--ip-image", f["im0"]],
                                          "--ip-adapter-image-encoder", "no such folder"),
    "ip images without an adapter": (lambda f, b: ["--ip-image", f["im0"]], "--ip-image", "give ip_adapter too"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2_nothing_written(model_files, files, bad_files, tmp_path, capsys, case):
    extra, where, expected = BAD[case]
    assert main(_argv(model_files, tmp_path / "clip.gif", *extra(files, bad_files))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and where in err[0] and expected in err[0], err
    assert not any(tmp_path.iterdir())


def test_ip_adapter_keys_in_a_prompt_yaml(model_files, files, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"- dreambooth_path: \"{model_files['ldm']}\"\n  motion_module: \"{model_files['v2']}\"\n"
                      "  prompt: [\"a\"]\n  steps: 2\n  guidance_scale: 7.5\n  W: 32\n  H: 32\n  L: 4\n  seed: 1\n"
                      f"  ip_adapter:\n    - path: \"{files['base']}\"\n      scale: 0.6\n"
                      f"  ip_adapter_image_encoder: \"{files['encoder']}\"\n"
                      f"  ip_images:\n    - image: \"{files['im0']}\"\n    - image: \"{files['im1']}\"\n      frame: 3\n")
    out = tmp_path / "samples"
    assert main(["-q", "generate", "--config", str(recipe), "--model-config", model_files["folder"], "--out", str(out)]) == 0
    meta = json.loads(sidecar_path(next(out.glob("*.gif"))).read_text())
    assert meta["ip_adapter"] == [{"path": files["base"], "scale": 0.6}] and meta["ip_images"][1]["frame"] == 3
