"""SparseCtrl (Guo et al. 2023, AnimateDiff v3): keyframe images steer a clip through a ControlNet-style encoder.

Usage: ``GenerationConfig(sparsectrl="v3_sd15_sparsectrl_rgb.ckpt", keyframes=[{"image": "a.png", "index": 0},
{"image": "b.png", "index": -1}])`` interpolates between two images; one keyframe at index 0 animates a still
(``keyframes_from_image``); several scribbles make a storyboard.

The encoder (advanced-features.md §1.2-1.3): diffusers' ``ControlNetModel`` built from the base UNet's config
(the SD1.5 encoder half, its 12 + 1 zero output convs), with on the instance
- a single-attention motion module (motion_module.py, per-frame GroupNorm, PE length 32) after every down-block
  layer, hooked as inflation.py hooks the UNet's: keys ``down_blocks.i.motion_modules.k.temporal_transformer.*``;
- the condition embedding of the file's flavour: RGB, ONE conv on (VAE latent, mask) at latent size; scribble,
  diffusers' conv stack on (pixels, mask) at image size.
Its ``state_dict()`` is the official file's minus the recomputed ``pos_encoder.pe`` (weights/sparsectrl.py).
Every frame is a row of the 2-D batch ``(b f)`` except inside the motion modules, so the ResNet and spatial
GroupNorms are per frame (the official ``use_inflated_groupnorm=True``).

Forward, as the official configs run it (``set_noisy_sample_input_to_zero: true``): the noisy latent is
replaced by zeros (``conv_in`` adds only its bias), so the encoder sees the timestep, the text and the
condition; the condition is the same for both halves of classifier-free guidance (the official batch-1
broadcast). Residuals are scaled by ``sparsectrl_scale`` (one number, or one per frame) and skipped outside
``[sparsectrl_start, sparsectrl_end)`` of the steps run (ControlNet's rule, controlnet.py).

Condition (official ``animate.py``): keyframe image i goes to frame ``index`` (negative: from the end; outside
the clip or repeated: an error); each image is centre-cropped to the clip's aspect, then resized (the official
``RandomResizedCrop(scale=(1, 1))`` falls back to exactly that); ``sparsectrl_normalize`` turns it into grey
(channel mean) min-max scaled to [0, 1] (the official ``normalize_condition_images``, meant for scribbles).
RGB: the VAE posterior MEAN x scaling_factor, deterministic (the official code draws a posterior sample with
the unseeded global RNG, so its conditions are not reproducible). Scribble: pixels in [0, 1]. Frames without a
keyframe get a zero condition and mask 0 (for RGB a zero latent, not a black image).

With context windows the condition rides in the conditioning as ``sparsectrl_hint`` ``(batch, num_frames,
C + 1, H', W')`` (and ``sparsectrl_scale`` ``(batch, num_frames)``), sliced per window like ControlNet hints;
a window without a keyframe gets only the zero condition (no nearest-hint placement, as the official code).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..errors import UserInputError
from ..inflation import FrameContext, _hook_target
from ..motion_module import VanillaTemporalModule
from ..presets import MotionModuleConfig
from ..weights import sparsectrl as layout
from . import video_input

logger = logging.getLogger(__name__)

FIELD = "sparsectrl"
PER_CLIP_NDIM = {"sparsectrl_hint": 4, "sparsectrl_scale": 1}  # the per-frame forms have a frame axis 1
PE_LENGTH = 32  # the official motion_module_kwargs: max frames one encoder call sees


def keyframes_from_image(path: str) -> list[dict]:
    """Image-to-video with SparseCtrl RGB: the image on frame 0."""
    return [{"image": path, "index": 0}]


def parse_keyframe_arg(text: str) -> dict:
    """``IMAGE@INDEX`` -> ``{"image": IMAGE, "index": INDEX}`` (INDEX may be negative: from the end)."""
    image, at, index = text.rpartition("@")
    try:
        number = int(index)
    except ValueError:
        number = None
    if not at or not image or number is None:
        raise UserInputError("expected IMAGE@INDEX, e.g. first.png@0 or last.png@-1", field="keyframes", value=text)
    return {"image": image, "index": number}


# ---- checking ------------------------------------------------------------------------------------------
def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def keyframe_indices(config) -> list[int]:
    """The keyframes' frame indices in 0 .. num_frames-1; ``UserInputError`` (field ``keyframes``) for an index
    outside the clip or one given twice."""
    n, seen = config.num_frames, {}
    for entry in config.keyframes:
        index = entry["index"]
        if not -n <= index < n:
            raise UserInputError(f"index {index} is outside the clip ({n} frames: 0 .. {n - 1}, or -{n} .. -1 from the end)",
                                 field="keyframes", value=entry["image"])
        frame = index % n
        if frame in seen:
            raise UserInputError(f"frame {frame} has two keyframes ({seen[frame]} and {entry['image']})", field="keyframes",
                                 value=index)
        seen[frame] = entry["image"]
    return [entry["index"] % n for entry in config.keyframes]


def check_fields(config) -> None:
    """``UserInputError`` naming the field for bad SparseCtrl settings (files are read later)."""
    if config.sparsectrl is None:
        for name, default in (("keyframes", None), ("sparsectrl_scale", 1.0), ("sparsectrl_start", 0.0),
                              ("sparsectrl_end", 1.0), ("sparsectrl_normalize", False)):
            if getattr(config, name) != default:
                raise UserInputError("needs a SparseCtrl encoder (sparsectrl)", field=name, value=getattr(config, name))
        return
    if not isinstance(config.sparsectrl, str) or not config.sparsectrl:
        raise UserInputError("must be the path of a SparseCtrl encoder file", field=FIELD, value=config.sparsectrl)
    if not Path(config.sparsectrl).is_file():
        raise UserInputError("no such file", field=FIELD, value=config.sparsectrl)
    frames = config.keyframes
    if not frames and getattr(config, "image", None) is not None:  # before resolved(): --image is frame 0's keyframe
        frames = keyframes_from_image(config.image)
    if not isinstance(frames, (list, tuple)) or not frames:
        raise UserInputError("SparseCtrl needs keyframes: a list of {image, index}", field="keyframes", value=frames)
    for entry in frames:
        if not (isinstance(entry, dict) and set(entry) == {"image", "index"} and isinstance(entry["image"], str)
                and entry["image"] and isinstance(entry["index"], int) and not isinstance(entry["index"], bool)):
            raise UserInputError("each keyframe is {'image': path, 'index': whole number}", field="keyframes", value=entry)
    if isinstance(config.num_frames, int) and config.keyframes:
        keyframe_indices(config)
    scale = config.sparsectrl_scale
    values = scale if isinstance(scale, (list, tuple)) else [scale]
    if not values or not all(_number(v) and v >= 0 for v in values):
        raise UserInputError("must be a number >= 0 or a list of them (one per frame)", field="sparsectrl_scale", value=scale)
    if isinstance(scale, (list, tuple)) and len(scale) != config.num_frames:
        raise UserInputError(f"has {len(scale)} values for {config.num_frames} frames", field="sparsectrl_scale", value=scale)
    start, end = config.sparsectrl_start, config.sparsectrl_end
    for name, value in (("sparsectrl_start", start), ("sparsectrl_end", end)):
        if not _number(value):
            raise UserInputError("must be a number (a fraction of the steps)", field=name, value=value)
    if not 0 <= start < end <= 1:
        raise UserInputError(f"needs 0 <= start < end <= 1 (end is {end})", field="sparsectrl_start", value=start)
    if not isinstance(config.sparsectrl_normalize, bool):
        raise UserInputError("must be true or false", field="sparsectrl_normalize", value=config.sparsectrl_normalize)


# ---- the encoder -----------------------------------------------------------------------------------------
def motion_config(unet_config) -> MotionModuleConfig:
    """The official SparseCtrl motion modules: one temporal self-attention, 8 heads, PE 32, per-frame GroupNorm."""
    return MotionModuleConfig(name="sparsectrl", block_out_channels=tuple(unet_config.block_out_channels),
                              layers_per_block=unet_config.layers_per_block, num_attention_blocks=1,
                              position_encoding_length=PE_LENGTH, norm_num_groups=unet_config.norm_num_groups)


class SparseCtrlEncoder:
    """A ``ControlNetModel`` with motion modules hooked into its down blocks (see the module docstring).

    ``model`` holds every weight (``model.state_dict()`` has the canonical keys); call the encoder with video
    tensors, it folds the frames and sets the frame count the hooks need."""

    def __init__(self, unet, flavour: str, condition_channels: int, widths: tuple[int, ...] = (16, 32, 96, 256),
                 from_unet: bool = False):
        """``from_unet``: copy conv_in, the time embedding, down and mid blocks from ``unet`` (a fresh encoder to
        train; the output convs, the condition embedding's last conv and the motion modules' proj_out are zero)."""
        from diffusers import ControlNetModel

        self.flavour = flavour
        self.context = FrameContext()
        unet_config = unet.config
        model = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=widths, load_weights_from_unet=from_unet,
                                          conditioning_channels=condition_channels + 1)
        if flavour == "rgb":  # one zero-initialised conv at latent size on (latent, mask): the official simplified embedding
            model.controlnet_cond_embedding = nn.Conv2d(condition_channels + 1, unet_config.block_out_channels[0], 3, padding=1)
            nn.init.zeros_(model.controlnet_cond_embedding.weight)
            nn.init.zeros_(model.controlnet_cond_embedding.bias)
        mm = motion_config(unet_config)
        for block, channels in zip(model.down_blocks, unet_config.block_out_channels):
            block.motion_modules = nn.ModuleList(VanillaTemporalModule(channels, mm) for _ in range(len(block.resnets)))
            for k, module in enumerate(block.motion_modules):
                _hook_target(block, k).register_forward_hook(self._hook(module))
        self.model = model

    def _hook(self, module: VanillaTemporalModule):
        context = self.context

        def hook(_layer, _inputs, output):
            if isinstance(output, tuple):  # Transformer2DModel(return_dict=False) returns (sample,)
                return (module(output[0], context.num_frames), *output[1:])
            return module(output, context.num_frames)

        return hook

    def __call__(self, latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor, hint: torch.Tensor,
                 scale: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """latents ``(b, 4, f, h, w)`` (only the shape is used: the sample is zeroed); t per clip or scalar; text
        ``(b f, 77, d)``; hint ``(b, f, C + 1, H', W')``; scale ``(b, f)``. Returns the 12 down residuals and
        the mid residual, each ``(b, C, f, h', w')``, in the model's dtype."""
        b, c, f, h, w = latents.shape
        if f > PE_LENGTH:
            raise ValueError(f"SparseCtrl sees at most {PE_LENGTH} frames per call, got {f}")
        dtype = self.model.dtype
        x = torch.zeros(b * f, c, h, w, device=latents.device, dtype=dtype)  # set_noisy_sample_input_to_zero
        t = torch.as_tensor(t, device=latents.device)
        rows = (t.expand(b) if t.ndim == 0 or t.numel() == 1 else t).reshape(b).repeat_interleave(f)  # one per frame
        self.context.num_frames = f
        try:
            down, mid = self.model(x, rows, encoder_hidden_states=text.to(dtype), controlnet_cond=hint.flatten(0, 1).to(dtype),
                                   return_dict=False)
        finally:
            self.context.num_frames = None
        s = scale.to(device=latents.device, dtype=dtype)

        def video(r: torch.Tensor) -> torch.Tensor:  # (b f) C h w -> b C f h w, times the frame's scale
            r = r.reshape(b, f, *r.shape[1:]) * s.view(b, f, 1, 1, 1)
            return r.transpose(1, 2)

        return tuple(video(r) for r in down), video(mid)


def load_encoder(path: str, unet, dtype: torch.dtype, device: torch.device) -> SparseCtrlEncoder:
    """The encoder of a SparseCtrl file (either layout) for a base UNet, loaded strictly: a file of another
    kind, an SDXL one (or an SDXL base), missing, unexpected or misshapen keys are one ``UserInputError``."""
    from accelerate import init_empty_weights

    from ..weights.files import read_state_dict
    from ..weights.load import assign_state_dict

    raw = read_state_dict(path, mmap=False)
    kind = layout.flavour(raw)
    if kind is None:
        raise UserInputError("is not a SparseCtrl encoder (no controlnet_cond_embedding weights)", field=FIELD, value=path)
    base, unet_base = layout.base_of(raw), "sdxl" if unet.config.addition_embed_type is not None else "sd15"
    if base != "sd15" or unet_base != "sd15":
        names = {"sd15": "SD1.5", "sdxl": "SDXL"}
        raise UserInputError(f"an {names[base]} SparseCtrl encoder with an {names[unet_base]} base model: SparseCtrl "
                             f"works with SD1.5 bases (the encoder must match the base)", field=FIELD, value=path)
    state = layout.to_official(raw)
    widths = layout.embedding_widths(state) if kind == "scribble" else (16, 32, 96, 256)
    with init_empty_weights():  # weights come from the file by assignment; PE buffers stay real (recomputed)
        encoder = SparseCtrlEncoder(unet, kind, layout.condition_channels(state), widths)
    try:
        assign_state_dict(encoder.model, state, path, "SparseCtrl", dtype)
    except UserInputError as e:
        raise UserInputError(e.detail.removeprefix(f"{path}: "), field=FIELD, value=path) from None
    encoder.model.to(device).eval()
    return encoder


# ---- the condition --------------------------------------------------------------------------------------
def fit_keyframe(image, width: int, height: int) -> torch.Tensor:
    """uint8 ``(1, H0, W0, 3)`` -> float32 ``(3, height, width)`` in [0, 1]: the largest centre crop of the
    target aspect (torchvision's fallback crop), then a bilinear antialiased resize."""
    import torch.nn.functional as F

    x = torch.from_numpy(image[0].copy()).permute(2, 0, 1).float() / 255  # H W c -> c H W
    h0, w0 = x.shape[-2:]
    ratio = width / height
    if w0 / h0 > ratio:  # too wide: keep the height
        h1, w1 = h0, int(round(h0 * ratio))
    else:
        w1, h1 = w0, int(round(w0 / ratio))
    top, left = (h0 - h1) // 2, (w0 - w1) // 2
    x = x[:, top:top + h1, left:left + w1]
    if (h1, w1) != (height, width):
        x = F.interpolate(x[None], size=(height, width), mode="bilinear", antialias=True, align_corners=False)[0].clamp(0, 1)
    return x.contiguous()


def normalize(image: torch.Tensor) -> torch.Tensor:
    """``normalize_condition_images``: grey (channel mean), min-max to [0, 1], three channels again."""
    grey = image.mean(dim=0, keepdim=True)
    grey = grey - grey.min()
    return (grey / grey.max().clamp_min(1e-8)).expand(3, -1, -1).contiguous()


@torch.no_grad()
def build_hint(config, flavour: str, vae) -> torch.Tensor:
    """The condition and mask of every frame, ``(num_frames, C + 1, H', W')`` float32 on the VAE's device:
    RGB ``C = 4`` at latent size, scribble ``C = 3`` at image size (see the module docstring)."""
    from . import vae as vae_io

    indices = keyframe_indices(config)
    images = [fit_keyframe(video_input.read_image(k["image"], "keyframes"), config.width, config.height)
              for k in config.keyframes]
    if config.sparsectrl_normalize:
        images = [normalize(image) for image in images]
    pixels = torch.stack(images)  # (n, 3, H, W)
    if flavour == "rgb":  # the posterior mean: deterministic (the official code samples, unseeded)
        cond = vae_io.encode(vae, pixels.transpose(0, 1)[None], config.decode_chunk_size, sample=False)[0].transpose(0, 1)
    else:
        cond = pixels.to(vae.device)
    n, c, h, w = cond.shape
    hint = torch.zeros(config.num_frames, c + 1, h, w, device=cond.device)
    hint[indices, :c] = cond.float()
    hint[indices, c] = 1.0  # the mask channel
    return hint


# ---- the provider --------------------------------------------------------------------------------------
class SparseCtrlProvider:
    """A residual provider (denoiser.py). ``timesteps()`` returns the timesteps actually run (for start/end)."""

    def __init__(self, encoder: SparseCtrlEncoder, start: float, end: float, timesteps: Callable[[], torch.Tensor]):
        self.encoder, self.start, self.end, self.timesteps = encoder, start, end, timesteps

    def active(self, t: torch.Tensor) -> bool:
        run = self.timesteps().to(torch.float64).cpu()
        i, n = int((run - float(torch.as_tensor(t).flatten()[0])).abs().argmin()), len(run)
        return not (i / n < self.start or (i + 1) / n > self.end)

    def __call__(self, latents: torch.Tensor, t: torch.Tensor, cond: dict) -> dict | None:
        if not self.active(t):
            return None
        f = latents.shape[2]
        text = cond["encoder_hidden_states"]  # per clip (b, 77, d) or per frame (b, f, 77, d): conditioning.py
        text = text.flatten(0, 1) if text.ndim == 4 else text.repeat_interleave(f, dim=0)  # -> (b f, 77, d)
        down, mid = self.encoder(latents, t, text, cond["sparsectrl_hint"], cond["sparsectrl_scale"])
        return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}


def prepare(base, config, cond: dict, uncond: dict | None, timesteps: Callable[[], torch.Tensor],
            cache: dict) -> tuple[dict, dict | None, list[SparseCtrlProvider], dict | None]:
    """For a resolved config with ``sparsectrl``: ``(cond, uncond, [provider], sidecar)``, the conditionings with
    the same ``sparsectrl_hint`` / ``sparsectrl_scale`` added to both. ``cache`` (path -> encoder) keeps loaded
    encoders between calls. Without ``sparsectrl``: everything unchanged, no provider, sidecar None."""
    if config.sparsectrl is None:
        return cond, uncond, [], None
    from ..weights.files import file_sha256

    unet = base.unet
    if base.is_sdxl:
        raise UserInputError("SparseCtrl works with SD1.5 bases; this base model is SDXL", field=FIELD, value=config.sparsectrl)
    window = config.context_length if config.context not in (None, "none") else config.num_frames
    if window > PE_LENGTH:
        raise UserInputError(f"its motion modules see at most {PE_LENGTH} frames at once; {config.num_frames} frames need "
                             f"context windows of at most {PE_LENGTH}", field=FIELD, value=config.sparsectrl)
    key = config.sparsectrl
    if key not in cache:
        cache.clear()  # one encoder at a time (1.85 GB at full size)
        cache[key] = load_encoder(config.sparsectrl, unet, unet.dtype, unet.device)
    encoder = cache[key]
    hint = build_hint(config, encoder.flavour, base.vae).to(device=unet.device, dtype=unet.dtype)
    scale = torch.as_tensor(config.sparsectrl_scale, dtype=torch.float32).expand(config.num_frames).to(unet.device)

    def add(c: dict) -> dict:
        batch = c["encoder_hidden_states"].shape[0]
        return {**c, "sparsectrl_hint": hint[None].expand(batch, *hint.shape),
                "sparsectrl_scale": scale[None].expand(batch, -1)}

    sidecar = {"path": config.sparsectrl, "sha256": file_sha256(config.sparsectrl), "flavour": encoder.flavour,
               "keyframes": [{**k, "frame": k["index"] % config.num_frames, "sha256": file_sha256(k["image"])}
                             for k in config.keyframes]}
    provider = SparseCtrlProvider(encoder, config.sparsectrl_start, config.sparsectrl_end, timesteps)
    return add(cond), (add(uncond) if uncond is not None else None), [provider], sidecar
