"""Named motion-module presets: the per-version switches of the official inference configs.

| preset      | modules | mid block | PE length | UNet ResNet GroupNorm  | motion GroupNorm | base  |
|-------------|---------|-----------|-----------|------------------------|------------------|-------|
| v1          | 20      | no        | 24        | pooled across frames   | per frame        | SD1.5 |
| v2          | 21      | yes       | 32        | per frame (inflated)   | per frame        | SD1.5 |
| v3          | 20      | no        | 32        | per frame (inflated)   | per frame        | SD1.5 |
| sdxl-beta   | 15      | no        | 32        | per frame              | across frames    | SDXL  |
| animatelcm  | 21      | yes       | 64 (none stored) | per frame       | per frame        | SD1.5 |
| lightning   | 21      | yes       | 32        | per frame (v2 layout)  | per frame        | SD1.5 |
| conv-ablation | 20    | no        | none      | per frame (inflated)   | per frame        | SD1.5 |

``conv-ablation`` is not a released format: it is the paper's §5.3 ablation, the v3 placement with every temporal
self-attention replaced by a kernel-3 temporal convolution of the same parameter count (motion_conv.py). Train it
with ``animatediff train motion-module --motion_preset conv-ablation``; its files load back with this preset.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .errors import UserInputError


@dataclass(frozen=True)
class MotionModuleConfig:
    """Architecture of one motion module set and how the image UNet must be inflated for it."""

    name: str = "v3"
    base: str = "sd15"  # "sd15" or "sdxl": which UNet the module set fits
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    mid_block: bool = False
    num_attention_heads: int = 8
    num_transformer_blocks: int = 1
    num_attention_blocks: int = 2  # ("Temporal_Self", "Temporal_Self"); SparseCtrl encoders use 1
    position_encoding_length: int | None = 32  # max frames; None = no position encoding at all
    norm_num_groups: int = 32
    zero_initialize: bool = True
    # "attention": the paper's temporal Transformer; "conv": the §5.3 ablation (motion_conv.py), where each of the
    # num_attention_blocks temporal self-attentions is a kernel-3 temporal convolution instead.
    temporal_layer: str = "attention"
    # Why two GroupNorm switches: v1 was trained with plain GroupNorm on 5-D tensors in the ResNets
    # (statistics pooled over frames, `use_inflated_groupnorm: false`); the SDXL beta does the same
    # inside its motion modules. v2/v3 normalise every frame on its own.
    unet_groupnorm_across_frames: bool = False
    motion_groupnorm_across_frames: bool = False
    # Recommended sampling defaults for this family (see schedulers.py).
    scheduler_preset: str = "animatediff"

    def with_max_frames(self, max_frames: int) -> "MotionModuleConfig":
        """The same architecture with a longer (or shorter) recomputed position encoding."""
        return replace(self, position_encoding_length=max_frames)

    @property
    def num_modules(self) -> int:
        n = len(self.block_out_channels)
        return n * self.layers_per_block + n * (self.layers_per_block + 1) + int(self.mid_block)


# The eight camera moves of the official MotionLoRAs (paper §4.3), named for what the CAMERA does.
CAMERA_MOVES = ("ZoomIn", "ZoomOut", "PanLeft", "PanRight", "TiltUp", "TiltDown",
                "RollingClockwise", "RollingAnticlockwise")


MOTION_PRESETS: dict[str, MotionModuleConfig] = {
    "v1": MotionModuleConfig(name="v1", position_encoding_length=24, unet_groupnorm_across_frames=True),
    "v2": MotionModuleConfig(name="v2", mid_block=True, position_encoding_length=32),
    "v3": MotionModuleConfig(name="v3", position_encoding_length=32),
    "sdxl-beta": MotionModuleConfig(
        name="sdxl-beta",
        base="sdxl",
        block_out_channels=(320, 640, 1280),
        position_encoding_length=32,
        motion_groupnorm_across_frames=True,
        scheduler_preset="sdxl-beta",
    ),
    # AnimateLCM files store no `pos_encoder.pe`; the sinusoid is still used (recomputed). 64 as in ADE.
    "animatelcm": MotionModuleConfig(name="animatelcm", mid_block=True, position_encoding_length=64, scheduler_preset="animatelcm"),
    # AnimateDiff-Lightning is distilled from v2 and ships in the v2 layout.
    "lightning": MotionModuleConfig(name="lightning", mid_block=True, position_encoding_length=32, scheduler_preset="lightning"),
    # Not an official format: the paper's §5.3 ablation (temporal convolution in place of temporal attention),
    # placed as v3 (the demo recipe's preset). No position encoding: the convolution sees frame order itself.
    "conv-ablation": MotionModuleConfig(name="conv-ablation", position_encoding_length=None, temporal_layer="conv"),
}


def get_preset(name: str) -> MotionModuleConfig:
    """The preset called ``name``, case-insensitive (``V2`` is ``v2``).

    Raises ``UserInputError`` (field ``motion_preset``) naming the known presets for any other name."""
    preset = MOTION_PRESETS.get(name.lower()) if isinstance(name, str) else None
    if preset is None:
        raise UserInputError(f"unknown motion module preset; choose one of {', '.join(MOTION_PRESETS)}",
                             field="motion_preset", value=name)
    return preset
