"""Every community LoRA format on a full-size SD1.5 model: merged by its published formula, unmerged bit-exactly.

The base is a single-file SD1.5 checkpoint fabricated in the real layout (``scripts/fabricate_checkpoints.py``,
fp16, 1.07 B values, ~2 GB), loaded in fp16 (as users run SD1.5; every format merges in fp16, the deltas are
computed in fp32 and rounded once). Each LoRA is built for the real layer names by the fabricators of
``fixtures.py`` (rank 4, small values), written as fp16 ``.safetensors`` as the training tools write them.
The same checks run in seconds on the tiny model of the same topology (4 blocks, 2 layers each), the
full-size run is marked slow:

    python -m pytest -m slow -s tests/test_lora_full_size.py   # -s shows the times and the peak RSS

SDXL kohya LoRAs (``lora_te1_``/``lora_te2_``, LDM-style UNet names) at full size: tests/test_full_size_sdxl.py.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import resource
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from animatediff.weights.load import load_base_model
from animatediff.weights.lora import apply_lora

from fixtures import kohya_lora_state_dict, kohya_to_diffusers_lora, loha_state_dict, lokr_state_dict

ROOT = Path(__file__).resolve().parents[1]
SCALE = 0.8
PEFT_ALPHA = 8.0  # lora_alpha of the PEFT adapter_config.json (r = 4)

# Sampled UNet layers: diffusers module -> the kohya LDM name real files use (written out here, not derived,
# so that a wrong name rule in the code under test cannot hide). SD1.5: 2 ResNets per block, up_blocks.0 has no attention.
UNET_SAMPLES = {
    "up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_k": "output_blocks_11_1_transformer_blocks_0_attn2_to_k",  # Linear 768 -> 320
    "mid_block.attentions.0.proj_in": "middle_block_1_proj_in",  # 1x1 conv 1280
    "down_blocks.2.resnets.0.conv1": "input_blocks_7_0_in_layers_2",  # 3x3 conv 640 -> 1280
    "down_blocks.2.resnets.0.conv_shortcut": "input_blocks_7_0_skip_connection",  # 1x1 conv 640 -> 1280
    "down_blocks.2.downsamplers.0.conv": "input_blocks_9_0_op",  # 3x3 conv, stride 2
    "up_blocks.1.upsamplers.0.conv": "output_blocks_5_2_conv",  # 3x3 conv 1280
    "up_blocks.2.resnets.1.time_emb_proj": "output_blocks_7_0_emb_layers_1",  # Linear 1280 -> 640
}
TEXT_SAMPLE = "text_model.encoder.layers.1.mlp.fc1"  # Linear 768 -> 3072 (the tiny encoder has 2 layers)
ATTENTION_SAMPLES = 2  # of UNET_SAMPLES, those inside attention blocks (every format adapts them)

# format -> (how the file names a UNet layer, its text encoder layer); "ldm": kohya with LDM-style UNet names
FORMATS = {
    "kohya-lora": ("kohya", True),  # sd-scripts SD1.5: diffusers-style names, attention only, + text encoder, alpha
    "kohya-locon-ldm": ("ldm", True),  # LoCon (3x3 conv down) on every ResNet/sampler layer, LDM-style names
    "lycoris-loha": ("kohya", True),  # with Tucker cores on the 3x3 convs
    "lycoris-lokr": ("kohya", True),
    "diffusers": ("diffusers", True),  # unet. / text_encoder. prefixes, lora_A/lora_B, .alpha network alphas
    "peft-unet": ("peft", False),  # base_model.model. prefix, lora_alpha in adapter_config.json
    "peft-text-encoder": ("peft", True),
}


def _fabricator():
    spec = importlib.util.spec_from_file_location("fabricate_checkpoints", ROOT / "scripts" / "fabricate_checkpoints.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _hashes(base) -> dict[str, bytes]:
    """sha1 of every UNet and text encoder parameter's bytes (a copy of them all would cost 2 GB more)."""
    out = {}
    for prefix, model in (("unet.", base.unet), ("text_encoder.", base.text_encoder)):
        for name, p in model.named_parameters():
            out[prefix + name] = hashlib.sha1(p.detach().reshape(-1).view(torch.uint8).numpy()).digest()
    return out


@pytest.fixture(scope="module", params=["tiny", pytest.param("full", marks=pytest.mark.slow)])
def sd15(request, tmp_path_factory):
    """(size, the SD1.5 base model in fp16, hashes of its parameters); the checkpoint file is deleted once loaded."""
    size = request.param
    folder = tmp_path_factory.mktemp(f"sd15_{size}")
    start = time.perf_counter()
    fabricate = _fabricator()
    configs = fabricate._configs("sd15", size)
    path = fabricate.write_checkpoint(folder, "sd15", configs)  # the checkpoint only: no motion module needed
    file_gib, written = path.stat().st_size / 2**30, time.perf_counter()
    config_dir = fabricate._write_configs(folder / "sd15", configs) if size == "tiny" else None  # not stock SD1.5
    base = load_base_model(str(path), dtype=torch.float16, config_dir=config_dir)
    path.unlink()
    loaded = time.perf_counter()
    hashes = _hashes(base)
    if size == "full":
        assert file_gib > 1.9 and sum(p.numel() for p in base.unet.parameters()) == 859_520_964  # really SD1.5
        print(f"\nfull-size SD1.5: {file_gib:.2f} GiB checkpoint written in {written - start:.0f} s, loaded (fp16) in "
              f"{loaded - written:.1f} s, {len(hashes)} parameters hashed in {time.perf_counter() - loaded:.1f} s")
    yield size, base, hashes
    shutil.rmtree(folder, ignore_errors=True)
    if size == "full":
        print(f"\nfull-size SD1.5 LoRA formats: {time.perf_counter() - start:.0f} s in all, peak RSS {_peak_rss_gib():.2f} GiB")


def _write_lora(fmt: str, base, folder: Path) -> Path:
    """The LoRA file of ``fmt`` for ``base`` (fp16 ``.safetensors``; PEFT: with its adapter_config.json)."""
    if fmt == "kohya-lora":
        state = kohya_lora_state_dict(base, rank=4, alpha=2.0, seed=1)
    elif fmt == "kohya-locon-ldm":
        state = kohya_lora_state_dict(base, rank=4, alpha=2.0, style="ldm", conv="all", seed=2)
    elif fmt == "lycoris-loha":
        state = loha_state_dict(base, rank=4, alpha=2.0, tucker=True, conv="all", seed=3)
    elif fmt == "lycoris-lokr":
        state = lokr_state_dict(base, rank=4, alpha=2.0, mode="w2", conv="all", seed=4)
    elif fmt == "diffusers":
        state = kohya_to_diffusers_lora(kohya_lora_state_dict(base, rank=4, alpha=2.0, conv="all", seed=5), base)
    else:  # PEFT: one file adapts one model
        peft = kohya_to_diffusers_lora(kohya_lora_state_dict(base, rank=4, alpha=None, seed=6), base, "peft")
        text = fmt == "peft-text-encoder"
        state = {k: v for k, v in peft.items() if k.startswith("base_model.model.text_model.") == text}
        (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": PEFT_ALPHA}))
    path = folder / ("adapter_model.safetensors" if fmt.startswith("peft") else f"{fmt}.safetensors")
    save_file({k: v.to(torch.float16).contiguous() for k, v in state.items()}, str(path))
    return path


def _file_prefix(style: str, module: str, text: bool) -> str:
    """The key prefix under which a ``style`` file stores the layer ``module`` (a UNet or text-encoder module)."""
    if style == "peft":
        return "base_model.model." + module
    if style == "diffusers":
        return ("text_encoder." if text else "unet.") + module
    if text:
        return "lora_te_" + module.replace(".", "_")
    return "lora_unet_" + (UNET_SAMPLES[module] if style == "ldm" else module.replace(".", "_"))


def _formula(parts: dict[str, torch.Tensor], shape: torch.Size) -> tuple[torch.Tensor, int]:
    """(ΔW of one layer by its family's published formula, in fp32, without alpha/rank; the rank)."""
    p = {k: v.float() for k, v in parts.items()}
    if "lora_down.weight" in p or "lora_A.weight" in p:  # (out, r[, 1, 1]) @ (r, in[, kh, kw])
        down, up = p.get("lora_down.weight", p.get("lora_A.weight")), p.get("lora_up.weight", p.get("lora_B.weight"))
        return (up.flatten(1) @ down.flatten(1)).reshape(shape), down.shape[0]
    if "hada_t1" in p:  # LoHa with Tucker cores: rebuild each product from its (r, r, kh, kw) core
        w1, w2 = (torch.einsum("abhw,ao,bi->oihw", p[f"hada_t{w}"], p[f"hada_w{w}_a"], p[f"hada_w{w}_b"]) for w in "12")
        return w1 * w2, p["hada_w1_b"].shape[0]
    if "hada_w1_a" in p:  # LoHa: Hadamard product of two low-rank matrices
        w1, w2 = (p[f"hada_w{w}_a"] @ p[f"hada_w{w}_b"] for w in "12")
        return (w1 * w2).reshape(shape), p["hada_w1_b"].shape[0]
    w1 = p["lokr_w1"]  # LoKr, w1 full (l, m), w2 low rank: kron(w1, w2_a @ w2_b) with w2 (k, n, kh, kw)
    w2 = (p["lokr_w2_a"] @ p["lokr_w2_b"]).reshape(shape[0] // w1.shape[0], -1, *shape[2:])
    return torch.kron(w1.reshape(*w1.shape, *[1] * (len(shape) - 2)), w2).reshape(shape), p["lokr_w2_b"].shape[0]


def _expected_factor(parts: dict[str, torch.Tensor], rank: int) -> float:
    alpha = float(parts["alpha"]) if "alpha" in parts else PEFT_ALPHA
    return SCALE * alpha / rank


def _samples(base, file: dict[str, torch.Tensor], style: str) -> dict[str, tuple[torch.nn.Parameter, dict]]:
    """{file key prefix: (the parameter it should change, the file's tensors of that layer)} of the sampled layers
    the file holds."""
    encoder = dict(base.text_encoder.named_modules())
    text_module = encoder[TEXT_SAMPLE if TEXT_SAMPLE in encoder else TEXT_SAMPLE.removeprefix("text_model.")]  # transformers 5: no text_model level
    layers = [(m, base.unet.get_submodule(m), False) for m in UNET_SAMPLES] + [(TEXT_SAMPLE, text_module, True)]
    out = {}
    for module_name, module, text in layers:
        prefix = _file_prefix(style, module_name, text)
        parts = {k[len(prefix) + 1:]: v for k, v in file.items() if k.startswith(prefix + ".")}
        if parts:
            out[prefix] = (module.weight, parts)
    return out


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_lora_format_merges_by_its_formula_and_unmerges_bit_exactly(sd15, tmp_path, fmt):
    size, base, hashes = sd15
    style, with_text = FORMATS[fmt]
    start = time.perf_counter()
    path = _write_lora(fmt, base, tmp_path)
    file = load_file(str(path))
    samples = _samples(base, file, style)
    conv = fmt in ("kohya-locon-ldm", "lycoris-loha", "lycoris-lokr", "diffusers")  # every ResNet/sampler layer too
    unet_expected = len(UNET_SAMPLES) if conv else ATTENTION_SAMPLES if fmt != "peft-text-encoder" else 0
    assert len(samples) == unet_expected + with_text, sorted(samples)  # the fabricated file uses the real names
    layers = sum(k.endswith((".lora_down.weight", ".lora_A.weight", ".hada_w1_a", ".lokr_w1")) for k in file)
    before = {prefix: param.detach().clone() for prefix, (param, _) in samples.items()}
    written = time.perf_counter()

    handle = apply_lora(base, path, SCALE)
    merged = time.perf_counter()
    assert handle.num_layers == layers
    for prefix, (param, parts) in samples.items():
        delta, rank = _formula({k: v for k, v in parts.items() if k != "alpha"}, param.shape)
        expected = before[prefix].float() + _expected_factor(parts, rank) * delta
        change = (param.detach().float() - before[prefix].float()).abs().max()
        assert change > 1e-3, prefix  # the merge reached this layer (weights and deltas are ~0.02)
        # fp16: the fp32 delta is rounded once, then the sum: within two roundings of fp16 (eps 2**-10)
        torch.testing.assert_close(param.detach().float(), expected, rtol=2e-3, atol=1e-4, msg=lambda m: f"{prefix}: {m}")

    handle.unmerge()
    unmerged = time.perf_counter()
    changed = [name for name, digest in _hashes(base).items() if digest != hashes[name]]
    assert not changed, f"{len(changed)} parameters differ after unmerge, e.g. {changed[:3]}"
    if size == "full":
        print(f"\n{fmt}: {layers} layers, {path.stat().st_size / 2**20:.0f} MiB; written {written - start:.1f} s, "
              f"merged {merged - written:.1f} s, unmerged {unmerged - merged:.1f} s, hash check {time.perf_counter() - unmerged:.1f} s; "
              f"peak RSS so far {_peak_rss_gib():.2f} GiB")
