"""The fused Q/K/V projection of the temporal attention (motion_module.VersatileAttention.qkv_weight): the same
numbers as three projections, the official state dict, and the cases that must stay unfused."""

import torch
from safetensors.torch import load_file, save_file

from animatediff.motion_module import MotionModules, VersatileAttention

from conftest import randomize_, tiny_motion_config


def _modules(seed: int = 3) -> MotionModules:
    return randomize_(MotionModules(tiny_motion_config("v2")).eval(), seed=seed)


def _attentions(motion: MotionModules) -> list[VersatileAttention]:
    return [m for m in motion.modules() if isinstance(m, VersatileAttention)]


def _run(motion: MotionModules, x: torch.Tensor) -> torch.Tensor:
    module = motion.down_blocks[0].motion_modules[0]
    return module(x, 4)


def _unfused_reference(motion: MotionModules, x: torch.Tensor) -> torch.Tensor:
    """The three separate projections, forced by a do-nothing forward hook on each (the hooked path)."""
    handles = [p.register_forward_hook(lambda *_: None) for m in _attentions(motion) for p in (m.to_q, m.to_k, m.to_v)]
    try:
        return _run(motion, x)
    finally:
        for h in handles:
            h.remove()


def test_fused_equals_unfused_within_fp32_noise():
    motion = _modules()
    x = torch.randn(2 * 4, 32, 8, 8, generator=torch.Generator().manual_seed(0))  # (b f) c h w
    with torch.no_grad():
        reference = _unfused_reference(motion, x)
        fused = _run(motion, x)
    assert all(m._fused is not None for m in _attentions(motion)[:2])  # the fused path really ran
    torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-5)


def test_fused_module_saves_the_official_keys_and_values(tmp_path):
    motion = _modules()
    before = {k: v.clone() for k, v in motion.state_dict().items()}
    with torch.no_grad():
        _run(motion, torch.randn(8, 32, 8, 8))
        for m in _attentions(motion):
            m.qkv_weight()  # fuse every attention, not only the ones the call reached
    after = motion.state_dict()
    assert list(after) == list(before)  # same keys, same order: to_q/to_k/to_v, no fused key
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    save_file(after, str(tmp_path / "m.safetensors"))
    loaded = load_file(str(tmp_path / "m.safetensors"))
    assert loaded.keys() == before.keys() and all(torch.equal(loaded[k], before[k]) for k in before)


def test_in_place_weight_changes_reach_the_fused_path_and_dtype_changes_refuse():
    motion = _modules()
    x = torch.randn(8, 32, 8, 8)
    with torch.no_grad():
        _run(motion, x)
        attention = _attentions(motion)[0]
        attention.to_k.weight.add_(0.5)  # what a LoRA merge does
        torch.testing.assert_close(_run(motion, x), _unfused_reference(motion, x), rtol=1e-5, atol=1e-5)
        motion.to(torch.float64)  # new storage: fused again from the new Parameters
        assert attention._fused is None
        out = _run(motion, x.double())
        assert attention._fused.dtype == torch.float64
        torch.testing.assert_close(out, _unfused_reference(motion, x.double()))


def test_training_and_hooks_stay_unfused():
    motion = _modules()
    x = torch.randn(8, 32, 8, 8)
    attention = _attentions(motion)[0]
    _run(motion, x).sum().backward()  # grad enabled, trainable weights: autograd reaches to_q/to_k/to_v
    assert attention._fused is None and attention.to_q.weight.grad is not None and attention.to_v.weight.grad.abs().sum() > 0
    calls = []
    handle = attention.to_q.register_forward_hook(lambda *_: calls.append(1))  # a MotionLoRA pair, as training attaches it
    with torch.no_grad():
        _run(motion, x)
    handle.remove()
    assert calls and attention._fused is None
