"""What differs between the four training modes: which parameters train and what is exported.

| mode           | model trained on           | trainable (chosen by module object)      | export                                |
|----------------|----------------------------|------------------------------------------|---------------------------------------|
| image          | single frames, 2-D UNet    | the whole UNet                           | diffusers ``unet/`` folder            |
| domain-adapter | single frames, 2-D UNet    | LoRA on spatial attn1/attn2 q/k/v/out    | ``...attn1.processor.to_q_lora...``   |
| motion-module  | clips, inflated UNet       | the ``MotionModules`` object             | ``down_blocks.i.motion_modules...``   |
| motion-lora    | clips, inflated UNet       | LoRA on the motion modules' q/k/v/out    | ``...attention_blocks.j.processor...``|
| sparsectrl     | clips, inflated UNet       | a SparseCtrl encoder (training/sparsectrl.py) | official SparseCtrl keys          |

The VAE and text encoder(s) never train; everything not listed as trainable has ``requires_grad=False``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file
from torch import nn

from ..components import BaseModel
from ..weights.convert import is_position_encoding_key
from ..errors import UserInputError
from ..inflation import AnimateDiffUNet
from ..weights.load import load_base_model, load_motion_modules
from ..weights.lora import apply_domain_adapter
from ..motion_module import MotionModules
from ..presets import get_preset
from .config import TrainConfig
from .lora_layers import LoRANetwork, motion_attention_targets, spatial_attention_targets

logger = logging.getLogger(__name__)


class TrainModel(nn.Module):
    """The one module handed to Accelerate (DDP sees every trainable parameter through it)."""

    def __init__(self, denoiser: AnimateDiffUNet, lora: LoRANetwork | None):
        super().__init__()
        self.denoiser = denoiser
        self.lora = lora

    def forward(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.denoiser(noisy_latents, timesteps, text)  # (b, c, f, h, w) -> (b, c, f, h, w)


@dataclass
class Setup:
    model: TrainModel
    trainable: nn.Module  # holds exactly the trained parameters
    motion: MotionModules | None  # attached motion modules (for validation)
    condition: Callable | None = None  # extra model inputs per batch (sparsectrl: the keyframe hints)

    def export_state(self, config: TrainConfig) -> dict[str, torch.Tensor] | None:
        """Official-layout tensors of the trained weights (None for image mode: a diffusers folder)."""
        if config.mode == "image":
            return None
        if isinstance(self.trainable, LoRANetwork):
            return self.trainable.official_state_dict()
        state = {k: v.detach().float().cpu() for k, v in self.trainable.state_dict().items()}
        if config.export_pos_encoding:  # release-era official loaders expect the (recomputable) pe buffers
            state.update({k: v.detach().float().cpu() for k, v in self.trainable.named_buffers() if k.endswith("pos_encoder.pe")})
        return state

    def raw_state(self) -> dict[str, torch.Tensor] | None:
        """Unscaled LoRA weights for an exact resume (the export folds the scale into ``up``)."""
        return {k: v.detach().cpu().clone() for k, v in self.trainable.state_dict().items()} if isinstance(self.trainable, LoRANetwork) else None

    def restore(self, config: TrainConfig, checkpoint: Path, raw: dict | None) -> None:
        if isinstance(self.trainable, LoRANetwork):
            self.trainable.load_state_dict(raw, strict=True)
        elif config.mode == "image":
            self.trainable.load_state_dict(load_file(str(checkpoint / "unet" / "diffusion_pytorch_model.safetensors")), strict=True)
        else:
            name = "sparsectrl.safetensors" if config.mode == "sparsectrl" else "motion_module.safetensors"
            state = {k: v for k, v in load_file(str(checkpoint / name)).items() if not is_position_encoding_key(k)}
            self.trainable.load_state_dict(state, strict=True)

    def signature(self, base: BaseModel) -> str:
        """Hash of the architecture (UNet + trainable keys and shapes): resume refuses another model."""
        h = hashlib.sha256()
        for module in (base.unet, self.trainable):
            for key, value in sorted(module.state_dict().items()):
                h.update(f"{key}:{tuple(value.shape)};".encode())
        return h.hexdigest()[:16]


# ---- loading ------------------------------------------------------------------------------------------
def load_base(source: str) -> BaseModel:
    return load_base_model(source)


def load_motion(path: str, config: TrainConfig, unet) -> MotionModules:
    motion = load_motion_modules(path, unet=unet)
    if motion.max_frames is not None and motion.max_frames < config.num_frames:  # the sinusoid is recomputed: extend it
        motion = load_motion_modules(path, max_frames=config.num_frames, unet=unet)
    return motion


def fresh_motion(config: TrainConfig, unet, mid_block: bool | None = None) -> MotionModules:
    """A zero-initialised motion module set with the preset's switches, shaped for this UNet."""
    preset = get_preset(config.motion_preset)
    motion_config = dataclasses.replace(
        preset,
        block_out_channels=tuple(unet.config.block_out_channels),
        layers_per_block=unet.config.layers_per_block,
        norm_num_groups=unet.config.norm_num_groups,
        mid_block=preset.mid_block if mid_block is None else mid_block,
    )
    if (motion_config.position_encoding_length or 0) < config.num_frames:
        motion_config = motion_config.with_max_frames(config.num_frames)
    return MotionModules(motion_config)


def merge_domain_adapter(base: BaseModel, path: str) -> None:
    """Merge a domain adapter into the frozen UNet at scale 1 (paper §4.2 trains the motion module on top of it)."""
    apply_domain_adapter(base.unet, path, 1.0)  # permanent: the handle is dropped


# ---- per-mode construction -----------------------------------------------------------------------
def build(config: TrainConfig, base: BaseModel, motion: MotionModules | None = None) -> Setup:
    """Freeze everything, then build the mode's trainable parameters and the denoiser around them."""
    if base.is_sdxl:
        raise UserInputError("training supports SD1.5 bases only (SDXL is not implemented)", field="base_model", value=base.source)
    for module in base.text_encoders + [base.vae, base.unet]:
        module.requires_grad_(False)
    lora = None
    if config.mode in ("image", "domain-adapter"):
        denoiser = AnimateDiffUNet(base.unet)  # no motion modules: frames are independent images
        if config.mode == "image":
            trainable = base.unet
        else:
            trainable = lora = LoRANetwork(spatial_attention_targets(base.unet), config.lora_rank, config.lora_scale)
    else:
        if config.domain_adapter:
            merge_domain_adapter(base, config.domain_adapter)
        if motion is None:
            motion = load_motion(config.motion_module, config, base.unet) if config.motion_module else fresh_motion(config, base.unet)
        motion.requires_grad_(False)
        try:
            denoiser = AnimateDiffUNet(base.unet, motion)
        except ValueError as e:
            raise UserInputError(str(e), field="motion_module") from None
        if config.mode == "sparsectrl":  # the encoder trains on the frozen model (training/sparsectrl.py)
            from .sparsectrl import SparseCtrlTrainModel, make_condition, new_encoder

            encoder = new_encoder(base.unet, config.sparsectrl_flavour)
            encoder.model.requires_grad_(True)
            logger.info("sparsectrl: %.2fM trainable parameters", sum(p.numel() for p in encoder.model.parameters()) / 1e6)
            return Setup(SparseCtrlTrainModel(denoiser, encoder), encoder.model, motion,
                         make_condition(config.sparsectrl_flavour, config.sparsectrl_max_keyframes))
        if config.mode == "motion-module":
            trainable = motion
        else:
            targets = motion_attention_targets(motion)
            if not targets:  # the conv-ablation preset (motion_conv.py) has no temporal attention to adapt
                raise UserInputError(f"the {motion.config.name} motion module has no temporal attention for MotionLoRA",
                                     field="motion_module", value=config.motion_module)
            trainable = lora = LoRANetwork(targets, config.lora_rank, config.lora_scale)
    trainable.requires_grad_(True)
    if lora is not None:
        lora.attach()
    logger.info("%s: %.2fM trainable parameters", config.mode, sum(p.numel() for p in trainable.parameters()) / 1e6)
    return Setup(TrainModel(denoiser, lora), trainable, motion if config.mode in ("motion-module", "motion-lora") else None)


def enable_gradient_checkpointing(setup: Setup) -> None:
    """diffusers checkpoints the UNet's blocks; the motion modules (hooked after attention layers, which
    diffusers does not checkpoint) have their own switch so their activations are recomputed too."""
    setup.model.denoiser.unet.enable_gradient_checkpointing()
    if setup.motion is None:
        return
    for _, _, _, module in setup.motion.placements():
        module.gradient_checkpointing = True
