"""The weight change ``ΔW`` of one layer of each LoRA family, as pure tensor math; ``lora.py`` merges
``W += scale * factor * ΔW`` and keeps the original for an exact unmerge.

Families and their published formulas (LyCORIS ``functional/loha.py`` / ``functional/lokr.py``; A1111 and
ComfyUI merge them the same way). ``factor`` is what the training tool multiplied the delta by:

| family | tensors of one layer (kohya names)                         | ΔW                                   | rank r          | factor |
|--------|------------------------------------------------------------|--------------------------------------|-----------------|--------|
| LoRA   | ``lora_down.weight`` (r, in[, kh, kw]), ``lora_up.weight`` (out, r[, 1, 1]) | ``up @ down`` (conv: flattened)  | rows of down    | alpha/r |
| LoHa   | ``hada_w1_a`` (out, r), ``hada_w1_b`` (r, in·k), same for ``w2`` | ``(w1_a @ w1_b) ⊙ (w2_a @ w2_b)``  | rows of w1_b    | alpha/r |
| LoHa + Tucker | ``hada_t1/t2`` (r, r, kh, kw), ``w*_a`` (r, out), ``w*_b`` (r, in) | ``T(t1, w1_a, w1_b) ⊙ T(t2, w2_a, w2_b)`` | rows of w1_b | alpha/r |
| LoKr   | ``lokr_w1`` or ``lokr_w1_a @ lokr_w1_b``; ``lokr_w2`` or ``lokr_w2_a @ lokr_w2_b`` [+ ``lokr_t2``] | ``kron(w1, w2)`` | rows of the ``_b`` factor (w1's, else w2's) | alpha/r; 1 when w1 and w2 are both full |

``T(t, a, b)[o, c, ...] = Σ_ij t[i, j, ...] a[i, o] b[j, c]`` (the Tucker rebuild). ``alpha`` missing or 0 means
factor 1 in every family (LyCORIS and kohya then set alpha = r). DoRA (``dora_scale``), LoCon Tucker
(``lora_mid``), (IA)^3, OFT and GLoRA are not merged: ``layer_delta`` names them as unsupported.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import torch

_FAMILY_PARTS = {
    "lora": {"lora_down.weight", "lora_up.weight"},
    "loha": {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"},
    "lokr": {"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"},
}


def family_of(part: str) -> str | None:
    """``"hada_w1_a"`` -> ``"loha"``; None for ``alpha`` and for parts of no supported family."""
    return next((family for family, parts in _FAMILY_PARTS.items() if part in parts), None)


def _tucker(t: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(r, r, *k) core, (r, out), (r, in) -> (out, in, *k)."""
    return torch.einsum("ij...,io,jc->oc...", t, a, b)


def rank_part(family: str, names) -> str | None:
    """The part whose rows are the rank: ``lora_down.weight``, ``hada_w1_b``, LoKr's ``lokr_w1_b`` (else
    ``lokr_w2_b``); None for a LoKr layer whose factors are both full (no rank)."""
    names = set(names)
    if family == "lora":
        return "lora_down.weight"
    if family == "loha":
        return "hada_w1_b"
    return "lokr_w1_b" if "lokr_w1_b" in names else "lokr_w2_b" if "lokr_w2_b" in names else None


def out_in(family: str, p: dict[str, tuple[int, ...]]) -> tuple[int, int, tuple[int, ...]]:
    """(rows, values per row, kernel) of ``ΔW`` from the factor shapes alone (kernel () when not stored);
    ``KeyError``/``IndexError`` when a needed factor is missing."""
    if family == "lora":
        down = p["lora_down.weight"]
        return p["lora_up.weight"][0], prod(down[1:]), down[2:]
    if family == "loha":
        if "hada_t1" in p:
            return p["hada_w1_a"][1], p["hada_w1_b"][1] * prod(p["hada_t1"][2:]), p["hada_t1"][2:]
        return p["hada_w1_a"][0], prod(p["hada_w1_b"][1:]), p["hada_w1_b"][2:]
    w1 = p["lokr_w1"] if "lokr_w1" in p else (p["lokr_w1_a"][0], p["lokr_w1_b"][1])
    if "lokr_w2" in p:
        w2 = p["lokr_w2"]
    elif "lokr_t2" in p:
        w2 = (p["lokr_w2_a"][1], p["lokr_w2_b"][1], *p["lokr_t2"][2:])
    else:
        w2 = (p["lokr_w2_a"][0], prod(p["lokr_w2_b"][1:]))
    return w1[0] * w2[0], w1[1] * prod(w2[1:]), tuple(w2[2:])


@dataclass(eq=False)
class Delta:
    """One layer's factors (kohya part names -> tensors) in one family; ``weight`` rebuilds ``ΔW`` in float32."""

    family: str  # lora | loha | lokr
    parts: dict[str, torch.Tensor]
    rank: int | None  # None: LoKr with both factors full
    factor: float  # alpha / rank, or 1

    def fits(self, shape: tuple[int, ...]) -> bool:
        """Whether ``ΔW`` has the shape of a weight of ``shape`` ((out, in) or (out, in, kh, kw))."""
        try:
            rows, cols, kernel = out_in(self.family, {k: tuple(v.shape) for k, v in self.parts.items()})
        except (KeyError, IndexError):
            return False
        if self.family == "lora" and self.parts["lora_up.weight"].flatten(1).shape[1] != self.parts["lora_down.weight"].shape[0]:
            return False
        if kernel and len(shape) == 4 and tuple(kernel) != tuple(shape[2:]):
            return False
        return rows == shape[0] and cols == prod(shape[1:])

    def weight(self, shape: tuple[int, ...], device=None) -> torch.Tensor:
        """``ΔW`` (float32, ``shape``), without ``factor``."""
        p = {k: v.to(device, torch.float32) for k, v in self.parts.items()}
        if self.family == "lora":  # (out, r) @ (r, in*kh*kw); a 3x3 down and 1x1 up (LoCon) is exactly this conv
            return (p["lora_up.weight"].flatten(1) @ p["lora_down.weight"].flatten(1)).reshape(shape)
        if self.family == "loha":
            if "hada_t1" in p:
                return (_tucker(p["hada_t1"], p["hada_w1_a"], p["hada_w1_b"])
                        * _tucker(p["hada_t2"], p["hada_w2_a"], p["hada_w2_b"])).reshape(shape)
            w1 = p["hada_w1_a"] @ p["hada_w1_b"].flatten(1)  # (out, r) @ (r, in*k)
            w2 = p["hada_w2_a"] @ p["hada_w2_b"].flatten(1)
            return (w1 * w2).reshape(shape)
        w1 = p["lokr_w1"] if "lokr_w1" in p else p["lokr_w1_a"] @ p["lokr_w1_b"]  # (out_l, in_m)
        if "lokr_w2" in p:
            w2 = p["lokr_w2"]
        elif "lokr_t2" in p:
            w2 = _tucker(p["lokr_t2"], p["lokr_w2_a"], p["lokr_w2_b"])
        else:  # (out_k, r) @ (r, in_n*k) -> (out_k, in_n, *k)
            w2 = (p["lokr_w2_a"] @ p["lokr_w2_b"].flatten(1)).reshape(shape[0] // w1.shape[0], -1, *shape[2:])
        w1 = w1.reshape(*w1.shape, *[1] * (w2.ndim - 2))  # kron of (l, m, 1, 1) and (k, n, kh, kw): (l*k, m*n, kh, kw)
        return torch.kron(w1, w2.contiguous()).reshape(shape)  # kron needs a contiguous second factor


def layer_delta(parts: dict[str, torch.Tensor]) -> Delta:
    """The ``Delta`` of one layer's tensors (kohya part names: ``lora_down.weight``, ``hada_w1_a``, ``lokr_w1``,
    ``alpha``). ``ValueError`` with a short reason for unsupported or incomplete layers."""
    families = {family_of(part) for part in parts if part != "alpha"}
    if not families:
        raise ValueError("has an alpha but no LoRA tensors")
    if None in families:
        raise ValueError(f"has unsupported tensors {', '.join(sorted(p for p in parts if p != 'alpha' and family_of(p) is None))}")
    if len(families) > 1:
        raise ValueError(f"mixes tensors of several LoRA families ({', '.join(sorted(families))})")
    family = families.pop()
    have = set(parts)
    if family == "lora":
        required = {"lora_down.weight", "lora_up.weight"}
    elif family == "loha":
        tucker = {"hada_t1", "hada_t2"}  # both cores or neither
        required = {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"} | (tucker if tucker & have else set())
    else:
        required = {"lokr_w1"} if "lokr_w1" in have else {"lokr_w1_a", "lokr_w1_b"}
        required |= {"lokr_w2"} if "lokr_w2" in have else {"lokr_w2_a", "lokr_w2_b"}
    rank_of = rank_part(family, have)
    missing = required - have
    if missing:
        raise ValueError(f"lacks {', '.join(sorted(missing))}")
    rank = int(parts[rank_of].shape[0]) if rank_of else None
    alpha = float(parts["alpha"]) if "alpha" in parts else 0.0
    # Why alpha/rank: the training tools multiply by it in the forward pass; alpha 0 or absent means alpha = rank.
    factor = alpha / rank if alpha and rank else 1.0
    return Delta(family, {k: v for k, v in parts.items() if k != "alpha"}, rank, factor)
