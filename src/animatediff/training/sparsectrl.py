"""Training mode ``sparsectrl``: a SparseCtrl encoder (generation/sparsectrl.py) on a frozen AnimateDiff model.

The official repository releases no SparseCtrl training code; this follows the paper's recipe as far as it is
stated (Guo et al. 2023, SparseCtrl §3-4): the inflated UNet and its motion module stay frozen, only the encoder
trains, with the ordinary noise-prediction loss (loop.training_loss), on clips whose conditions are given at a
few random frames.

- Initialisation: ``ControlNetModel.from_unet`` copies ``conv_in``, the time embedding, the down blocks and the
  mid block from the base UNet; the condition embedding's last conv, the 13 output convs and the motion modules'
  ``proj_out`` start at zero, so the untrained encoder leaves the frozen model's prediction unchanged.
- Keyframes: per clip, k frames drawn without repetition from the step's generator, k uniform in
  1 .. min(``sparsectrl_max_keyframes``, frames). The other frames get a zero condition and mask 0.
- Conditions: RGB, the clip's own latents (the posterior sample the loss uses) at the keyframes; scribble, edges
  of the frames (``edges``: Sobel magnitude of the grey frame, per frame scaled to its maximum, thresholded at
  0.25: white lines on black, like a scribble).
- Export: the official key layout (``pos_encoder.pe`` included unless ``export_pos_encoding`` is off), loadable
  with ``--sparsectrl`` and by the official loader.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..generation.sparsectrl import SparseCtrlEncoder

FLAVOURS = ("rgb", "scribble")
EDGE_THRESHOLD = 0.25


def new_encoder(unet, flavour: str) -> SparseCtrlEncoder:
    """A fresh encoder for ``unet`` initialised from its weights (see the module docstring)."""
    return SparseCtrlEncoder(unet, flavour, 4 if flavour == "rgb" else 3, from_unet=True)


def random_keyframes(batch: int, num_frames: int, max_keyframes: int, generator: torch.Generator) -> list[list[int]]:
    """For each clip, the sorted frame indices that carry a condition (at least one)."""
    out = []
    for _ in range(batch):
        k = int(torch.randint(1, min(max_keyframes, num_frames) + 1, (1,), generator=generator))
        out.append(sorted(torch.randperm(num_frames, generator=generator)[:k].tolist()))
    return out


def edges(pixels: torch.Tensor) -> torch.Tensor:
    """Frames ``(n, 3, H, W)`` in [-1, 1] -> binary edge maps ``(n, 3, H, W)`` in {0, 1} (white on black)."""
    grey = ((pixels.float() + 1) / 2).mean(dim=1, keepdim=True)  # (n, 1, H, W) in [0, 1]
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=pixels.device)
    kernels = torch.stack([sobel, sobel.T])[:, None]  # (2, 1, 3, 3): d/dx, d/dy
    gradient = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), kernels)
    magnitude = gradient.pow(2).sum(dim=1, keepdim=True).sqrt()
    magnitude = magnitude / magnitude.flatten(1).amax(dim=1).clamp_min(1e-6).view(-1, 1, 1, 1)
    return (magnitude > EDGE_THRESHOLD).float().expand(-1, 3, -1, -1)


def make_condition(flavour: str, max_keyframes: int):
    """``condition(latents, pixel_values, generator) -> {"hint": (b, f, C + 1, H', W')}`` for training_loss."""

    def condition(latents: torch.Tensor, pixel_values: torch.Tensor, generator: torch.Generator) -> dict:
        b, _, f = latents.shape[:3]
        chosen = random_keyframes(b, f, max_keyframes, generator)
        if flavour == "rgb":
            frames = latents.transpose(1, 2)  # b c f h w -> b f c h w
        else:
            frames = edges(pixel_values.flatten(0, 1)).unflatten(0, (b, f)).to(latents.device)  # (b, f, 3, H, W)
        hint = frames.new_zeros(b, f, frames.shape[2] + 1, *frames.shape[3:])
        for clip, indices in enumerate(chosen):
            hint[clip, indices, :-1] = frames[clip, indices].float()
            hint[clip, indices, -1] = 1.0  # the mask channel
        return {"hint": hint}

    return condition


class SparseCtrlTrainModel(nn.Module):
    """The frozen inflated UNet with the trained encoder's residuals added (the one module Accelerate wraps; the
    attributes of modes.TrainModel)."""

    def __init__(self, denoiser, encoder: SparseCtrlEncoder):
        super().__init__()
        self.denoiser, self.lora = denoiser, None
        self.sparsectrl = encoder.model  # a submodule: DDP and the optimizer see its parameters
        self.encoder = encoder

    def forward(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor,
                hint: torch.Tensor | None = None) -> torch.Tensor:
        b, _, f = noisy_latents.shape[:3]
        down, mid = self.encoder(noisy_latents, timesteps, text.repeat_interleave(f, dim=0), hint,
                                 torch.ones(b, f, device=noisy_latents.device))

        def fold(r: torch.Tensor) -> torch.Tensor:  # b C f h w -> (b f) C h w, the UNet's layout
            return r.transpose(1, 2).flatten(0, 1)

        return self.denoiser(noisy_latents, timesteps, text, down_block_additional_residuals=tuple(fold(r) for r in down),
                             mid_block_additional_residual=fold(mid))
