import pytest
import torch

from animatediff.errors import UserInputError
from animatediff.weights.lora import apply_domain_adapter, apply_lora, apply_motion_lora
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
    path = save(kohya_lora_state_dict(sdxl), tmp_path / "xl_lora.safetensors")
    with pytest.raises(UserInputError, match=r"LoRA .*xl_lora.safetensors: \d+ keys match no layer of this SD1.5 model, e.g. lora_te1_"):
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
    with pytest.raises(UserInputError, match="peft.safetensors: not a kohya LoRA"):
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
