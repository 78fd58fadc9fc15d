"""Text conditioning for the UNet (SD1.5 and SDXL), and its layout per clip or per frame.

A conditioning is a dict of tensors whose first axis is the batch (one entry per clip):

    key                     per clip (all frames alike)   per frame (e.g. prompt travel)
    encoder_hidden_states   (batch, 77, dim)              (batch, num_frames, 77, dim)
    text_embeds   (SDXL)    (batch, pooled_dim)           (batch, num_frames, pooled_dim)
    time_ids      (SDXL)    (batch, 6)                    (batch, num_frames, 6)
    motion_scale            (batch,)                      (batch, num_frames)   per-frame motion knobs
    motion_effect           (batch,)                      (batch, num_frames)   (prompt_travel.py)

The frame axis is explicit, never folded into the batch, so a per-frame tensor cannot be mistaken for a larger
batch. ``per_frame`` turns the per-clip form into the per-frame one; ``fold_frames`` gives the UNet its
``(batch num_frames)`` layout (frame i of clip j at row ``j * num_frames + i``, the order of the latents).
Classifier-free guidance concatenates cond and uncond along the batch, so both must have the same form:
call ``per_frame`` on both when either is per frame. Prompt travel (prompt_travel.py) makes the text per frame;
the motion knobs, when given, are always per frame and identical in cond and uncond.
"""

from __future__ import annotations

import logging

import torch

from ..components import BaseModel
from ..sampling.guidance import Conditioning
from .config import GenerationConfig
from .prompt_travel import PromptSchedule, motion_conditioning, prompt_schedules, travel


logger = logging.getLogger(__name__)

PER_CLIP_NDIM = {"encoder_hidden_states": 3, "text_embeds": 2, "time_ids": 2,  # tensor ndim of the per-clip form
                 "motion_scale": 1, "motion_effect": 1}


# ---- layout: per clip / per frame ----------------------------------------------------------------------
def is_per_frame(cond: Conditioning, key: str = "encoder_hidden_states") -> bool:
    return cond[key].ndim == PER_CLIP_NDIM[key] + 1


def per_frame(cond: Conditioning, num_frames: int) -> Conditioning:
    """Every per-clip tensor ``(batch, ...)`` -> ``(batch, num_frames, ...)`` (the same value for each frame);
    per-frame tensors and keys this module does not know pass unchanged."""
    out = {}
    for key, value in cond.items():
        if PER_CLIP_NDIM.get(key) == value.ndim:
            value = value.unsqueeze(1).expand(-1, num_frames, *value.shape[1:])  # b ... -> b f ...
        out[key] = value
    return out


def fold_frames(cond: Conditioning, num_frames: int) -> Conditioning:
    """The UNet's layout: per-frame tensors ``(batch, num_frames, ...)`` -> ``(batch num_frames, ...)``; per-clip
    tensors stay ``(batch, ...)`` (the inflated UNet repeats them per frame itself). ValueError on a frame count
    that is not the latents'."""
    out = {}
    for key, value in cond.items():
        if key in PER_CLIP_NDIM and is_per_frame(cond, key):
            if value.shape[1] != num_frames:
                raise ValueError(f"per-frame {key} has {value.shape[1]} frames, the latents {num_frames}")
            value = value.flatten(0, 1)  # b f ... -> (b f) ...
        out[key] = value
    return out


# ---- text ----------------------------------------------------------------------------------------------
def _tokenize(tokenizer, prompt: str, device: torch.device) -> torch.Tensor:
    ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    full_length = len(tokenizer(prompt).input_ids)
    if full_length > tokenizer.model_max_length:
        logger.warning("prompt is %d tokens; CLIP reads only the first %d", full_length, tokenizer.model_max_length)
    return ids.to(device)  # (1, 77)


@torch.no_grad()
def encode_prompt(base: BaseModel, prompt: str, clip_skip: int | None = None, zeros: bool = False, *,
                  device: torch.device, dtype: torch.dtype) -> Conditioning:
    """The UNet's text conditioning for one prompt, batch 1, on ``device`` in ``dtype`` (the UNet's).

    SD1.5: CLIP's last hidden state (or an earlier layer, ``clip_skip``; 1 = penultimate), ``(1, 77, 768)``.
    SDXL: both encoders' penultimate hidden states side by side ``(1, 77, 768 + 1280)`` and the pooled
    ``text_embeds`` of text_encoder_2. ``zeros`` returns all-zero tensors of those shapes (SDXL's
    ``force_zeros_for_empty_prompt`` for an empty negative prompt)."""
    if not base.is_sdxl:
        encoder = base.text_encoder
        out = encoder(_tokenize(base.tokenizer, prompt, encoder.device), output_hidden_states=bool(clip_skip))
        hidden = out.last_hidden_state
        if clip_skip:  # an earlier layer still goes through the final LayerNorm, as in diffusers/A1111
            final_norm = getattr(encoder, "text_model", encoder).final_layer_norm  # transformers 5 flattened it
            hidden = final_norm(out.hidden_states[-(clip_skip + 1)])
        cond = {"encoder_hidden_states": hidden}
    else:
        hiddens, pooled = [], None
        for tokenizer, encoder in ((base.tokenizer, base.text_encoder), (base.tokenizer_2, base.text_encoder_2)):
            out = encoder(_tokenize(tokenizer, prompt, encoder.device), output_hidden_states=True)
            hiddens.append(out.hidden_states[-(2 + (clip_skip or 0))])  # penultimate layer, no final norm
            pooled = out[0]  # text_encoder_2 (with projection): text_embeds (1, proj_dim)
        cond = {"encoder_hidden_states": torch.cat(hiddens, dim=-1), "text_embeds": pooled}
    cond = {k: v.to(device=device, dtype=dtype) for k, v in cond.items()}
    return {k: torch.zeros_like(v) for k, v in cond.items()} if zeros else cond


def size_conditioning(height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """SDXL micro-conditioning ``time_ids`` ``(1, 6)``: original size, crop top-left (0, 0), target size."""
    return torch.tensor([[height, width, 0, 0, height, width]], device=device, dtype=dtype)


def _encode_text(base: BaseModel, text: str, schedule: PromptSchedule | None, config: GenerationConfig,
                 zeros: bool = False, **device_dtype) -> Conditioning:
    """One prompt per clip, or a travelling one: each key prompt encoded once, then interpolated per frame."""
    if schedule is None:
        return encode_prompt(base, text, config.clip_skip, zeros=zeros, **device_dtype)
    keys = {k: encode_prompt(base, p, config.clip_skip, **device_dtype) for k, p in schedule.prompts.items()}
    return travel(schedule, keys, config.prompt_interpolation)  # (1, num_frames, ...)


def encode_conditioning(base: BaseModel, config: GenerationConfig, device: torch.device,
                        dtype: torch.dtype) -> tuple[Conditioning, Conditioning | None]:
    """(cond, uncond) for a resolved config, batch ``num_videos``; uncond is None without guidance
    (``guidance_scale <= 1``). Per clip, or per frame with a travelling prompt (``prompt_map``, a negative map)."""
    positive, negative = prompt_schedules(config)  # None: that prompt does not travel
    cond = _encode_text(base, config.prompt, positive, config, device=device, dtype=dtype)
    uncond = None
    if config.guidance_scale > 1:
        # Why zeros: diffusers' SDXL pipelines (and the official sdxl branch) use zero embeddings, not
        # the encoded "", for an empty negative prompt (force_zeros_for_empty_prompt).
        zeros = base.is_sdxl and not config.negative_prompt and negative is None
        uncond = _encode_text(base, config.negative_prompt, negative, config, zeros, device=device, dtype=dtype)
    if base.is_sdxl:
        time_ids = size_conditioning(config.height, config.width, device, dtype)
        cond["time_ids"] = time_ids
        if uncond is not None:
            uncond["time_ids"] = time_ids
    travels = positive is not None or negative is not None  # then both per frame: one layout for the CFG batch
    knobs = motion_conditioning(config, device)  # motion_scale / motion_effect, (1, num_frames) each
    if travels or knobs:
        layout = (lambda c: per_frame(c, config.num_frames)) if travels else (lambda c: c)  # noqa: E731
        cond = {**layout(cond), **knobs}
        uncond = {**layout(uncond), **knobs} if uncond is not None else None
    repeat = lambda c: {k: v.repeat(config.num_videos, *[1] * (v.ndim - 1)) for k, v in c.items()}  # noqa: E731
    return repeat(cond), (repeat(uncond) if uncond is not None else None)
