"""Trainable LoRA (paper Eq. 3-4): ``W' x = W x + scale * up(down(x))`` on frozen ``nn.Linear`` layers.

Attached with forward hooks on the Linear *instances* (like inflation.py), so the frozen model's own
state-dict keys never change and its weights stay bit-identical. The LoRA pairs live in one
``LoRANetwork`` module (the thing the optimiser and DDP see); each remembers the parameter it adapts
(``...attn1.to_q.weight``), which ``convert.processor_lora_key`` names in the official export
(``...attn1.processor.to_q_lora.down.weight``).

Which layers get LoRA is decided structurally, by module type, in ``spatial_attention_targets`` (the
domain adapter: every spatial ``BasicTransformerBlock``'s attn1/attn2) and ``motion_attention_targets``
(MotionLoRA: every ``VersatileAttention`` of the motion modules).
"""

from __future__ import annotations

import torch
from diffusers.models.attention import BasicTransformerBlock
from torch import nn

from ..motion_module import MotionModules, VersatileAttention
from ..weights.convert import processor_lora_key


class LoRAPair(nn.Module):
    """``down`` (rank, in) and ``up`` (out, rank); ``up`` starts at zero so training starts from the base model."""

    def __init__(self, in_features: int, out_features: int, rank: int):
        super().__init__()
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=False)
        nn.init.normal_(self.down.weight, std=1.0 / rank)
        nn.init.zeros_(self.up.weight)


class LoRANetwork(nn.Module):
    """All LoRA pairs of one adapter, with their export names; ``attach`` hooks them into the model."""

    def __init__(self, targets: list[tuple[str, nn.Linear]], rank: int, scale: float = 1.0):
        super().__init__()
        self.scale = scale
        self.targets = [target for target, _ in targets]  # the adapted parameters' names, "...attn1.to_q.weight"
        self.pairs = nn.ModuleList(LoRAPair(lin.in_features, lin.out_features, rank) for _, lin in targets)
        self._linears = [lin for _, lin in targets]  # a plain list: not submodules, not in state_dict
        self._handles: list = []

    def attach(self) -> "LoRANetwork":
        for pair, linear in zip(self.pairs, self._linears):
            self._handles.append(linear.register_forward_hook(self._make_hook(pair)))
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _make_hook(self, pair: LoRAPair):
        def hook(_linear, inputs, output):
            x = inputs[0]
            return output + self.scale * pair.up(pair.down(x.to(pair.down.weight.dtype))).to(output.dtype)

        return hook

    def official_state_dict(self) -> dict[str, torch.Tensor]:
        """Processor-format keys; the scale is folded into ``up`` so ``W += alpha * up @ down`` (alpha 1) is exact."""
        out = {}
        for target, pair in zip(self.targets, self.pairs):
            out[processor_lora_key(target, "down")] = pair.down.weight.detach().float().cpu().contiguous()
            out[processor_lora_key(target, "up")] = (pair.up.weight.detach().float() * self.scale).cpu().contiguous()
        return out


def _projection_targets(prefix: str, attention: nn.Module) -> list[tuple[str, nn.Linear]]:
    """(parameter name, Linear) of an attention's q/k/v/out projections; ``to_out`` is a ModuleList."""
    layers = {"to_q": attention.to_q, "to_k": attention.to_k, "to_v": attention.to_v, "to_out.0": attention.to_out[0]}
    return [(f"{prefix}.{name}.weight", linear) for name, linear in layers.items()]


def spatial_attention_targets(unet: nn.Module) -> list[tuple[str, nn.Linear]]:
    """Domain adapter: q/k/v/out of self- (attn1) and cross-attention (attn2) in every spatial transformer block."""
    targets = []
    for name, block in unet.named_modules():
        if isinstance(block, BasicTransformerBlock):
            for attn_name in ("attn1", "attn2"):
                attention = getattr(block, attn_name, None)
                if attention is not None:
                    targets += _projection_targets(f"{name}.{attn_name}", attention)
    return targets


def motion_attention_targets(motion: MotionModules) -> list[tuple[str, nn.Linear]]:
    """MotionLoRA: q/k/v/out of every temporal self-attention of the motion modules."""
    return [
        target
        for name, module in motion.named_modules()
        if isinstance(module, VersatileAttention)
        for target in _projection_targets(name, module)
    ]
