"""The loaded pieces of a Stable Diffusion base model, as one typed bundle."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: package_data is used where importing diffusers would cost seconds (the CLI)
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer


def package_data(*parts: str) -> Path:
    """Path of a file or folder shipped in ``animatediff/data`` (configs, tokenizer)."""
    return Path(str(resources.files("animatediff").joinpath("data", *parts)))


@dataclass
class BaseModel:
    """A text-to-image model: SD1.5 (one text encoder) or SDXL (two, pooled embedding, size conditioning)."""

    kind: str  # "sd15" or "sdxl"
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    text_encoder_2: CLIPTextModelWithProjection | None = None
    tokenizer_2: CLIPTokenizer | None = None
    source: str = ""  # where it was loaded from (path or repo id), for the sidecar
    prediction_type: str = "epsilon"  # what the UNet predicts: "epsilon" (SD1.5, SDXL) or "v_prediction"

    @property
    def is_sdxl(self) -> bool:
        return self.kind == "sdxl"

    @property
    def text_encoders(self) -> list:
        return [e for e in (self.text_encoder, self.text_encoder_2) if e is not None]
