import pytest
import torch

from animatediff.errors import UserInputError
from animatediff.weights.lora import apply_domain_adapter, apply_lora, apply_motion_lora, kohya_layer_names
from animatediff.motion_module import MotionModules

from conftest import randomize_, tiny_unet
from fixtures import domain_adapter_state_dict, kohya_lora_state_dict, motion_lora_state_dict, save, tiny_config
from tiny_models import tiny_base_model


def _snapshot(*modules):
    return [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in modules]


def _max_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_kohya_merge_math_with_and_without_alpha():
    base = tiny_base_model()
    layer = "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    weight = base.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q.weight
    for alpha in (None, 2.0):
        lora = kohya_lora_state_dict(base, rank=4, alpha=alpha)
        up, down = lora[f"lora_unet_{layer}.lora_up.weight"], lora[f"lora_unet_{layer}.lora_down.weight"]
        before = weight.detach().clone()
        handle = apply_lora(base, lora, 0.8)
        factor = 0.8 * (alpha / 4 if alpha else 1.0)  # kohya: scale * alpha / rank
        torch.testing.assert_close(weight.detach(), before + factor * up @ down, rtol=0, atol=1e-6)
        handle.unmerge()
        assert torch.equal(weight.detach(), before)


def test_kohya_ldm_names_text_encoder_and_locon_convs():
    base = tiny_base_model()
    before = _snapshot(base.unet, base.text_encoder)
    diffusers_style = kohya_lora_state_dict(base, style="diffusers", conv=True, seed=3)
    ldm_style = kohya_lora_state_dict(base, style="ldm", conv=True, seed=3)
    assert any("input_blocks_1_1_transformer_blocks_0_attn1_to_q" in k for k in ldm_style)
    assert any(k.startswith("lora_te_text_model_encoder_layers_0_self_attn_q_proj") for k in ldm_style)
    a = apply_lora(base, diffusers_style, 1.0)
    after_a = _snapshot(base.unet, base.text_encoder)
    a.unmerge()
    b = apply_lora(base, ldm_style, 1.0)  # same tensors under LDM names: same merged weights
    after_b = _snapshot(base.unet, base.text_encoder)
    for x, y in zip(after_a, after_b):
        assert _max_diff(x, y) == 0
    conv = base.unet.down_blocks[0].resnets[0].conv1.weight  # 3x3 LoCon: (out, r) @ (r, in*3*3)
    up, down = ldm_style["lora_unet_input_blocks_1_0_in_layers_2.lora_up.weight"], ldm_style["lora_unet_input_blocks_1_0_in_layers_2.lora_down.weight"]
    expected = before[0]["down_blocks.0.resnets.0.conv1.weight"] + 0.5 * (up.flatten(1) @ down.flatten(1)).reshape(conv.shape)
    torch.testing.assert_close(conv.detach(), expected, rtol=0, atol=1e-6)
    b.unmerge()
    for x, y in zip(before, _snapshot(base.unet, base.text_encoder)):
        assert _max_diff(x, y) == 0


def test_sdxl_kohya_te1_te2_and_two_loras_compose_additively():
    base = tiny_base_model(sdxl=True)
    before = _snapshot(base.unet, base.text_encoder, base.text_encoder_2)
    first = kohya_lora_state_dict(base, style="ldm", seed=1)
    second = kohya_lora_state_dict(base, seed=2, alpha=None)
    assert any(k.startswith("lora_te2_text_model_") for k in first)
    deltas = []
    for lora, scale in ((first, 0.7), (second, -1.2)):
        handle = apply_lora(base, lora, scale)
        after = _snapshot(base.unet, base.text_encoder, base.text_encoder_2)
        deltas.append([{k: a[k] - b[k] for k in a} for a, b in zip(after, before)])
        handle.unmerge()
    h1, h2 = apply_lora(base, first, 0.7), apply_lora(base, second, -1.2)
    both = _snapshot(base.unet, base.text_encoder, base.text_encoder_2)
    for i, state in enumerate(both):
        expected = {k: before[i][k] + deltas[0][i][k] + deltas[1][i][k] for k in state}
        assert _max_diff(state, expected) < 1e-5
    h1.unmerge()
    h2.unmerge()
    h2.unmerge()  # a second unmerge is a no-op
    for x, y in zip(before, _snapshot(base.unet, base.text_encoder, base.text_encoder_2)):
        assert _max_diff(x, y) == 0


def test_lora_for_another_base_is_a_user_error(tmp_path):
    sd15, sdxl = tiny_base_model(), tiny_base_model(sdxl=True)
    lora = kohya_lora_state_dict(sdxl)
    path = save(lora, tmp_path / "xl_lora.safetensors")
    unmatched = [k for k in lora if k.partition(".")[0] not in kohya_layer_names(sd15)]  # real keys, not layer groups
    layers = {k.partition(".")[0] for k in unmatched}
    with pytest.raises(UserInputError, match=rf"LoRA .*xl_lora.safetensors: keys without a matching layer in this SD1.5 "
                                             rf"model: {len(unmatched)} \({len(layers)} layers\), e.g. lora_te1_"):
        apply_lora(sd15, path, 1.0)
    # same names, wrong shapes (a text encoder of another width)
    wide = tiny_base_model()
    wide.text_encoder = __import__("tiny_models").tiny_text_encoder(hidden=48)
    path = save(kohya_lora_state_dict(wide, text_encoder=True), tmp_path / "wide.safetensors")
    before = _snapshot(sd15.unet)
    with pytest.raises(UserInputError, match="wide.safetensors: .* do not fit this SD1.5 model"):
        apply_lora(sd15, path, 1.0)
    assert _max_diff(before[0], _snapshot(sd15.unet)[0]) == 0  # nothing merged on failure
    bad = save({"unet.foo.lora_A.weight": torch.zeros(2, 2)}, tmp_path / "peft.safetensors")
    with pytest.raises(UserInputError, match=r"peft.safetensors: keys without a matching layer .*: 1 \(1 layer\), e.g. unet.foo.lora_A"):
        apply_lora(sd15, bad, 1.0)
    bad = save({"foo.weight": torch.zeros(2, 2), "bar.weight": torch.zeros(2)}, tmp_path / "odd.safetensors")
    with pytest.raises(UserInputError, match="odd.safetensors: not a LoRA of a known format: .*: 2, e.g. bar.weight, foo.weight"):
        apply_lora(sd15, bad, 1.0)


def test_motion_lora_merge_and_unmerge(tmp_path):
    motion = randomize_(MotionModules(tiny_config("v2")))
    before = _snapshot(motion)[0]
    lora = motion_lora_state_dict("v2", rank=4)
    path = save({**lora, "animatediff_config": ""}, tmp_path / "v2_lora_ZoomIn.ckpt")
    handle = apply_motion_lora(motion, path, 0.5)
    key = "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.1.to_out.0.weight"
    prefix = key.replace("to_out.0.weight", "processor.to_out_lora.")
    expected = before[key] + 0.5 * lora[prefix + "up.weight"] @ lora[prefix + "down.weight"]  # no rank scaling
    torch.testing.assert_close(motion.state_dict()[key], expected, rtol=0, atol=1e-6)
    assert handle.num_layers == 4 * 2 * tiny_config("v2").num_modules
    handle.unmerge()
    assert _max_diff(before, _snapshot(motion)[0]) == 0


def test_diffusers_layout_motion_lora_merges_like_the_official_file():
    from animatediff.weights.convert import motion_module_to_diffusers

    lora = motion_lora_state_dict("v2", rank=4)
    diffusers = {"unet." + k: v for k, v in motion_module_to_diffusers(lora).items()}
    assert not any("temporal_transformer" in k for k in diffusers)
    merged = []
    for state in (lora, diffusers):
        motion = randomize_(MotionModules(tiny_config("v2")))
        apply_motion_lora(motion, state, 0.5)
        merged.append(_snapshot(motion)[0])
    assert _max_diff(*merged) == 0


def test_trained_lora_exports_the_official_processor_keys():
    from animatediff.training.lora_layers import LoRANetwork, motion_attention_targets, spatial_attention_targets

    motion, unet = MotionModules(tiny_config("v2")), tiny_unet()
    exported = LoRANetwork(motion_attention_targets(motion), rank=4).official_state_dict()
    assert exported.keys() == motion_lora_state_dict("v2", rank=4).keys()
    exported = LoRANetwork(spatial_attention_targets(unet), rank=4).official_state_dict()
    assert exported.keys() == domain_adapter_state_dict(unet, rank=4).keys()


def test_v2_motion_lora_on_v3_module_is_a_user_error(tmp_path):
    path = save(motion_lora_state_dict("v2"), tmp_path / "v2_lora_PanLeft.ckpt")
    with pytest.raises(UserInputError, match="v2_lora_PanLeft.ckpt: .*mid-block.*v3.*no mid block"):
        apply_motion_lora(MotionModules(tiny_config("v3")), path, 1.0)
    with pytest.raises(UserInputError, match="v2_lora_PanLeft.ckpt: .*MotionLoRA"):
        apply_domain_adapter(tiny_unet(), path, 1.0)


def test_domain_adapter_merge_and_errors(tmp_path):
    unet = tiny_unet()
    before = _snapshot(unet)[0]
    adapter = domain_adapter_state_dict(unet, rank=4)
    assert any(".attn2.processor.to_k_lora.down.weight" in k for k in adapter)
    handle = apply_domain_adapter(unet, save(adapter, tmp_path / "v3_sd15_adapter.ckpt"), 1.0)
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    prefix = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_lora."
    torch.testing.assert_close(unet.state_dict()[key], before[key] + adapter[prefix + "up.weight"] @ adapter[prefix + "down.weight"], rtol=0, atol=1e-6)
    handle.unmerge()
    assert _max_diff(before, _snapshot(unet)[0]) == 0
    xl_adapter = save(domain_adapter_state_dict(tiny_unet(sdxl=True)), tmp_path / "xl_adapter.ckpt")
    with pytest.raises(UserInputError, match="xl_adapter.ckpt: "):
        apply_domain_adapter(unet, xl_adapter, 1.0)


# ---- merge + unmerge is exact in every dtype (swapping LoRAs never drifts the base model) --------------
def _params(*modules):
    return [(name, p.detach().clone()) for m in modules for name, p in m.named_parameters()]


def _assert_identical(before, modules):
    after = _params(*modules)
    changed = [name for (name, a), (_, b) in zip(before, after) if not torch.equal(a, b)]
    assert not changed, f"{len(changed)} parameters changed, e.g. {changed[:3]}"


def _cycle(apply, target, lora, scale, times):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # thousands of tiny ops: much faster on one thread of a shared machine
    try:
        for _ in range(times):
            apply(target, lora, scale).unmerge()
    finally:
        torch.set_num_threads(threads)


def test_kohya_merge_unmerge_1000_times_on_fp16_is_exact():
    base = tiny_base_model()
    lora = kohya_lora_state_dict(base, conv=True, text_encoder=False, seed=5)
    base.unet.half()
    before = _params(base.unet)
    _cycle(apply_lora, base, lora, 0.8, 1000)
    _assert_identical(before, (base.unet,))


def test_motion_lora_and_domain_adapter_merge_unmerge_1000_times_on_fp16_are_exact():
    motion = randomize_(MotionModules(tiny_config("v2"))).half()
    before = _params(motion)
    _cycle(apply_motion_lora, motion, motion_lora_state_dict("v2", seed=3), 0.7, 1000)
    _assert_identical(before, (motion,))
    unet = tiny_unet().half()
    before = _params(unet)
    _cycle(apply_domain_adapter, unet, domain_adapter_state_dict(unet, seed=4), 1.0, 1000)
    _assert_identical(before, (unet,))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_overlapping_loras_unmerged_in_either_order_restore_exactly(dtype):
    base = tiny_base_model()
    first, second = kohya_lora_state_dict(base, seed=1), kohya_lora_state_dict(base, seed=2, alpha=None)  # same layers
    base.unet.to(dtype), base.text_encoder.to(dtype)
    before = _params(base.unet, base.text_encoder)
    h1, h2 = apply_lora(base, first, 0.7), apply_lora(base, second, -1.2)
    h2.unmerge()  # reverse order, as Animator.clear_loras does
    h1.unmerge()
    _assert_identical(before, (base.unet, base.text_encoder))
    h1, h2 = apply_lora(base, first, 0.7), apply_lora(base, second, -1.2)
    h1.unmerge()  # merge order: the end state is exact too
    h2.unmerge()
    _assert_identical(before, (base.unet, base.text_encoder))


def test_a_dropped_handle_stays_merged_while_others_unmerge_around_it():
    loras = [kohya_lora_state_dict(tiny_base_model(), seed=seed) for seed in (1, 2, 3)]  # all on the same layers
    reference = tiny_base_model()
    apply_lora(reference, loras[1], 1.0)
    expected = _snapshot(reference.unet)[0]
    for order in ((0, 2), (2, 0)):
        base = tiny_base_model()
        first = apply_lora(base, loras[0], 1.0)
        apply_lora(base, loras[1], 1.0)  # handle dropped: merged for good
        third = apply_lora(base, loras[2], 1.0)
        for handle in [(first, third)[i // 2] for i in order]:
            handle.unmerge()
        assert _max_diff(expected, _snapshot(base.unet)[0]) < 1e-5


# ---- every community LoRA format merges by its published formula, and unmerges exactly ----------------------
import json  # noqa: E402

from fixtures import kohya_to_diffusers_lora, lokr_state_dict, loha_state_dict  # noqa: E402

_ATTN_Q = "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"  # a Linear (32 -> 32)
_CONV = "down_blocks_0_resnets_0_conv1"  # a 3x3 conv (32 -> 32)


def _weight(base, kohya: str) -> torch.Tensor:
    return kohya_layer_names(base)["lora_unet_" + kohya].weight


def _merge_and_delta(base, lora, scale, kohya):
    """The merged ``W' - W`` of one layer, and whether unmerging restores every parameter bit-exactly."""
    before = _params(base.unet, *base.text_encoders)
    w0 = _weight(base, kohya).detach().clone()
    handle = apply_lora(base, lora, scale)
    delta = _weight(base, kohya).detach() - w0
    handle.unmerge()
    after = _params(base.unet, *base.text_encoders)
    return delta, all(torch.equal(a, b) for (_, a), (_, b) in zip(before, after))


def test_loha_merges_by_the_published_formula_and_unmerges_exactly():
    """LyCORIS LoHa: ΔW = (w1_a @ w1_b) * (w2_a @ w2_b) * alpha/rank; Tucker convs rebuild each product from its core."""
    base = tiny_base_model()
    lora = loha_state_dict(base, rank=4, alpha=2.0, conv=True, tucker=True, seed=3)
    k = lambda layer, part: lora[f"lora_unet_{layer}.{part}"]  # noqa: E731
    delta, exact = _merge_and_delta(base, lora, 0.7, _ATTN_Q)
    expected = 0.7 * (2.0 / 4) * (k(_ATTN_Q, "hada_w1_a") @ k(_ATTN_Q, "hada_w1_b")) * (k(_ATTN_Q, "hada_w2_a") @ k(_ATTN_Q, "hada_w2_b"))
    torch.testing.assert_close(delta, expected, rtol=1e-5, atol=1e-6)
    assert exact
    delta, exact = _merge_and_delta(base, lora, 0.7, _CONV)
    rebuild = [torch.einsum("abhw,ao,bi->oihw", k(_CONV, f"hada_t{w}"), k(_CONV, f"hada_w{w}_a"), k(_CONV, f"hada_w{w}_b")) for w in "12"]
    torch.testing.assert_close(delta, 0.7 * 0.5 * rebuild[0] * rebuild[1], rtol=1e-5, atol=1e-6)
    assert exact
    delta, _ = _merge_and_delta(base, loha_state_dict(base, alpha=None, conv=True, seed=3), 1.0, _CONV)  # no alpha: factor 1
    flat = loha_state_dict(base, alpha=None, conv=True, seed=3)
    w = lambda n: flat[f"lora_unet_{_CONV}.hada_{n}"]  # noqa: E731
    torch.testing.assert_close(delta, ((w("w1_a") @ w("w1_b")) * (w("w2_a") @ w("w2_b"))).reshape(delta.shape), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["full", "w2", "both", "tucker"])
def test_lokr_merges_by_the_published_formula_and_unmerges_exactly(mode):
    """LyCORIS LoKr: ΔW = kron(w1, w2) * alpha/rank (rank of the factorised part); no alpha scaling when both are full."""
    base = tiny_base_model()
    lora = lokr_state_dict(base, rank=2, alpha=3.0, mode=mode, conv=True, seed=4)
    factor = 1.0 if mode == "full" else 3.0 / 2
    for layer in (_ATTN_Q, _CONV):
        p = {key.split(".", 1)[1]: v for key, v in lora.items() if key.startswith(f"lora_unet_{layer}.")}
        w1 = p["lokr_w1"] if "lokr_w1" in p else p["lokr_w1_a"] @ p["lokr_w1_b"]
        weight = _weight(base, layer)
        if "lokr_w2" in p:
            w2 = p["lokr_w2"]
        elif "lokr_t2" in p:
            w2 = torch.einsum("abhw,ak,bn->knhw", p["lokr_t2"], p["lokr_w2_a"], p["lokr_w2_b"])
        else:
            w2 = (p["lokr_w2_a"] @ p["lokr_w2_b"]).reshape(p["lokr_w2_a"].shape[0], -1, *weight.shape[2:])
        expected = torch.kron(w1.reshape(*w1.shape, *[1] * (w2.ndim - 2)), w2.contiguous()).reshape(weight.shape)
        delta, exact = _merge_and_delta(base, lora, 0.5, layer)
        torch.testing.assert_close(delta, 0.5 * factor * expected, rtol=1e-5, atol=1e-6)
        assert exact, layer


@pytest.mark.parametrize("style", ["diffusers", "old", "peft-unet", "peft-text"])
def test_diffusers_and_peft_loras_merge_like_the_same_kohya_lora(tmp_path, style):
    """diffusers (``unet.``/``text_encoder.`` + lora_A/lora_B or the older .lora.down), PEFT (``base_model.model.``):
    the same tensors as a kohya LoRA, so the same merge: alpha/rank with a stored ``.alpha``, else factor 1."""
    base = tiny_base_model()
    alpha = None if style.startswith("peft") else 2.0  # PEFT keeps its alpha in adapter_config.json
    kohya = kohya_lora_state_dict(base, rank=4, alpha=alpha, conv=True, seed=6)
    converted = kohya_to_diffusers_lora(kohya, base, style.split("-")[0])
    if style.startswith("peft"):  # a PEFT file adapts one model
        text = style == "peft-text"
        kohya = {k: v for k, v in kohya.items() if k.startswith("lora_te_") == text}
        converted = {k: v for k, v in converted.items() if k.startswith("base_model.model.text_model.") == text}
    merged = []
    for lora in (kohya, converted):
        model = tiny_base_model()
        before = _params(model.unet, model.text_encoder)
        handle = apply_lora(model, lora, 0.8)
        merged.append(_snapshot(model.unet, model.text_encoder))
        handle.unmerge()
        _assert_identical(before, (model.unet, model.text_encoder))
    for a, b in zip(*merged):
        assert _max_diff(a, b) == 0
    if style == "peft-unet":  # lora_alpha from the adapter_config.json next to the file: factor lora_alpha / r
        path = save(converted, tmp_path / "adapter_model.safetensors")
        (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8}))
        delta, exact = _merge_and_delta(base, str(path), 0.5, _ATTN_Q)
        up, down = kohya[f"lora_unet_{_ATTN_Q}.lora_up.weight"], kohya[f"lora_unet_{_ATTN_Q}.lora_down.weight"]
        torch.testing.assert_close(delta, 0.5 * (8 / 4) * up @ down, rtol=1e-5, atol=1e-6)
        assert exact


def test_sdxl_diffusers_and_peft_text_encoder_2_loras():
    """SDXL: ``text_encoder_2.`` is kohya's ``lora_te2_``; a PEFT file of the second text encoder goes there
    because its layers fit only there."""
    base = tiny_base_model(sdxl=True)
    base.text_encoder_2 = __import__("tiny_models").tiny_text_encoder(48, seed=3, projection=True)  # unlike te1's width
    kohya = kohya_lora_state_dict(base, rank=4, alpha=2.0, seed=8)
    diffusers = kohya_to_diffusers_lora(kohya, base)
    assert any(k.startswith("text_encoder_2.") for k in diffusers)
    peft_te2 = {k.replace("text_encoder_2.", "base_model.model.", 1).replace(".lora_A.", ".lora_A.").replace(".lora_B.", ".lora_B."): v
                for k, v in diffusers.items() if k.startswith("text_encoder_2.") and not k.endswith(".alpha")}
    kohya_te2 = {k: v for k, v in kohya.items() if k.startswith("lora_te2_") and not k.endswith(".alpha")}
    for reference, lora in ((kohya, diffusers), (kohya_te2, peft_te2)):
        merged = []
        for state in (reference, lora):
            before = _params(base.unet, *base.text_encoders)
            handle = apply_lora(base, state, 1.1)
            merged.append(_snapshot(base.unet, *base.text_encoders))
            handle.unmerge()
            _assert_identical(before, (base.unet, *base.text_encoders))
        for a, b in zip(*merged):
            assert _max_diff(a, b) == 0


def test_processor_format_unet_lora_via_lora_merges_like_the_adapter():
    """An old diffusers attention-processor LoRA (the v3 adapter's layout, with or without ``unet.``) given as a
    community LoRA merges exactly like ``apply_domain_adapter``: factor 1."""
    base = tiny_base_model()
    adapter = domain_adapter_state_dict(base.unet, rank=4, seed=9)
    merged = []
    for apply, state in ((lambda m, s: apply_domain_adapter(m.unet, s, 0.6), adapter),
                         (lambda m, s: apply_lora(m, s, 0.6), {"unet." + k: v for k, v in adapter.items()})):
        model = tiny_base_model()
        before = _params(model.unet)
        handle = apply(model, state)
        merged.append(_snapshot(model.unet)[0])
        handle.unmerge()
        _assert_identical(before, (model.unet,))
    assert _max_diff(*merged) == 0


def test_every_format_merge_unmerge_100_times_on_fp16_is_exact():
    base = tiny_base_model()
    loras = [loha_state_dict(base, conv=True, tucker=True, seed=1), lokr_state_dict(base, conv=True, mode="tucker", seed=2),
             kohya_to_diffusers_lora(kohya_lora_state_dict(base, conv=True, seed=3), base)]
    base.unet.half(), base.text_encoder.half()
    before = _params(base.unet, base.text_encoder)
    for lora in loras:
        _cycle(apply_lora, base, lora, 0.9, 100)
    _assert_identical(before, (base.unet, base.text_encoder))


def test_lora_format_errors_name_the_layer_and_count_keys(tmp_path):
    base = tiny_base_model()
    loha = loha_state_dict(base, text_encoder=False)
    del loha[f"lora_unet_{_ATTN_Q}.hada_w2_b"]
    with pytest.raises(UserInputError, match=rf"layer lora_unet_{_ATTN_Q} lacks hada_w2_b"):
        apply_lora(base, loha, 1.0)
    dora = dict(kohya_lora_state_dict(base, text_encoder=False))
    dora[f"lora_unet_{_ATTN_Q}.dora_scale"] = torch.ones(32, 1)
    with pytest.raises(UserInputError, match=rf"1 unsupported LoRA tensor .*e.g. lora_unet_{_ATTN_Q}.dora_scale"):
        apply_lora(base, dora, 1.0)
    with pytest.raises(UserInputError, match="this is a MotionLoRA"):
        apply_lora(base, {"unet." + k: v for k, v in motion_lora_state_dict("v2").items()}, 1.0)
    before = _params(base.unet)
    wide = tiny_base_model()
    wide.unet = tiny_unet(sdxl=True)  # another width: LoKr factors that do not fit
    with pytest.raises(UserInputError, match=r"do not fit this SD1.5 model .*lokr_w1"):
        apply_lora(base, {k: v for k, v in lokr_state_dict(wide, text_encoder=False).items()
                          if k.partition(".")[0] in kohya_layer_names(base)}, 1.0)
    _assert_identical(before, (base.unet,))


def test_full_size_sdxl_kohya_names_resolve_to_layers_of_the_right_shape():
    """Real SDXL kohya LoRAs (sd-scripts) name layers the LDM way, ``lora_te1_``/``lora_te2_`` for the text encoders;
    on the full-size SDXL architecture (built on the meta device: shapes only) each resolves to the layer it means."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from animatediff.components import BaseModel, package_data

    root = package_data("sdxl")
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(json.loads((root / "unet" / "config.json").read_text()))
        te1 = CLIPTextModel(CLIPTextConfig.from_pretrained(str(root / "text_encoder"), local_files_only=True))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(str(root / "text_encoder_2"), local_files_only=True))
    base = BaseModel(kind="sdxl", unet=unet, vae=AutoencoderKL(), text_encoder=te1, tokenizer=None, text_encoder_2=te2)
    layers = kohya_layer_names(base)
    expected = {  # kohya name (from SDXL LoRA files) -> weight shape
        "lora_unet_input_blocks_4_1_proj_in": (640, 640),
        "lora_unet_input_blocks_4_1_transformer_blocks_1_attn1_to_q": (640, 640),
        "lora_unet_input_blocks_8_1_transformer_blocks_9_attn2_to_k": (1280, 2048),
        "lora_unet_middle_block_1_transformer_blocks_9_ff_net_0_proj": (10240, 1280),
        "lora_unet_output_blocks_0_1_transformer_blocks_9_attn2_to_v": (1280, 2048),
        "lora_unet_output_blocks_5_1_proj_out": (640, 640),
        "lora_unet_input_blocks_1_0_in_layers_2": (320, 320, 3, 3),  # LoCon: ResNet convs, samplers
        "lora_unet_input_blocks_3_0_op": (320, 320, 3, 3),
        "lora_unet_output_blocks_2_2_conv": (1280, 1280, 3, 3),
        "lora_unet_output_blocks_8_0_skip_connection": (320, 640, 1, 1),
        "lora_te1_text_model_encoder_layers_11_self_attn_q_proj": (768, 768),
        "lora_te2_text_model_encoder_layers_31_mlp_fc2": (1280, 5120),
    }
    assert {name: tuple(layers[name].weight.shape) for name in expected} == expected
