"""ControlNet per frame (Zhang et al. 2023) as residual providers of the denoiser (denoiser.py).

Each ControlNet (diffusers' ``ControlNetModel``) runs on the same ``(batch num_frames)`` 2-D batch as the UNet:
frame i of clip j at row ``j * num_frames + i``, with that frame's hint image and text conditioning; its
residuals are returned in the video layout ``(batch, C, num_frames, h, w)`` and summed over ControlNets by
the denoiser. Settings per ControlNet (a ``GenerationConfig.controlnets`` entry, a dict):

    path      diffusers folder (config.json + weights) or one .safetensors/.ckpt file: the original ControlNet
              layout (``control_model.*``, converted by diffusers) or diffusers' keys; a single file uses
              ``config`` (a folder or config.json), default the shipped SD1.5 config. Loaded strictly.
    strength  conditioning scale (default 1.0; 0 skips the net entirely)
    start, end  fractions of the steps actually run (default 0, 1): at step i of N the net runs unless
              ``i / N < start`` or ``(i + 1) / N > end`` (diffusers' rule)
    video | image  the hints: a control video (GIF, MP4, WebP, PNG folder) or one image for every frame;
              none given: the video-to-video input frames. Fitted to the clip's size and length as in
              video_input.py (centre crop; a short video repeats its last frame, a long one is cut).

``control_preprocess`` applies to every hint; the built-in ones need no weights, only OpenCV (the ``[demo]`` extra):
``none`` (frames used as given), ``canny`` (edges, thresholds 100/200), ``scribble`` (thick simplified strokes,
for scribble ControlNets) and ``lineart`` (soft thin lines, for lineart ControlNets), all white on black; see
:func:`canny`, :func:`scribble`, :func:`lineart`. Learned annotators (pose, depth, HED, the lineart network,
segmentation ...) are the user's job: give their output as the control video with ``none``. ``guess_mode``: the ControlNets see the prompt only in the conditional half of classifier-free
guidance; the unconditional half gets no control (diffusers means this but crashes, its bug B1), and the
residuals are scaled 0.1 .. 1 from the shallowest to the deepest (diffusers' ``guess_mode``).

Hints ride in the conditioning as ``control_hint`` ``(batch, num_frames, nets, 3, H, W)`` with a frame axis, so
context windows slice them per window; ``control_uncond`` ``(batch,)`` marks the unconditional rows.
SD1.5 bases only (an SDXL ControlNet, or an SDXL base, is refused).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import UserInputError
from . import video_input

logger = logging.getLogger(__name__)

PER_CLIP_NDIM = {"control_hint": 5}  # (batch, nets, 3, H, W) per clip; its per-frame form is what we store
PREPROCESSORS = ("none", "canny", "scribble", "lineart")
FIELD = "controlnets"
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


@dataclass(frozen=True)
class ControlNetSpec:
    """One ``controlnets`` entry, checked (see the module docstring)."""

    path: str
    strength: float = 1.0
    start: float = 0.0
    end: float = 1.0
    video: str | None = None
    image: str | None = None
    config: str | None = None

    @classmethod
    def from_value(cls, value) -> "ControlNetSpec":
        if isinstance(value, ControlNetSpec):
            return value
        if not isinstance(value, dict) or not isinstance(value.get("path"), str) or not value["path"]:
            raise UserInputError("each entry needs a path (a dict with path, strength, start, end, video or image)",
                                 field=FIELD, value=value)
        unknown = set(value) - {"path", "strength", "start", "end", "video", "image", "config"}
        if unknown:
            raise UserInputError(f"unknown keys {', '.join(sorted(unknown))}", field=FIELD, value=value["path"])
        spec = cls(**value)
        for name in ("strength", "start", "end"):
            number = getattr(spec, name)
            if not isinstance(number, (int, float)) or isinstance(number, bool):
                raise UserInputError(f"{name} must be a number", field=FIELD, value=value["path"])
        if spec.strength < 0:
            raise UserInputError(f"strength {spec.strength} must not be negative", field=FIELD, value=spec.path)
        if not 0 <= spec.start < spec.end <= 1:
            raise UserInputError(f"needs 0 <= start < end <= 1, got start {spec.start}, end {spec.end}", field=FIELD,
                                 value=spec.path)
        if spec.video is not None and spec.image is not None:
            raise UserInputError("give a control video or a control image, not both", field=FIELD, value=spec.path)
        return spec


def parse_controlnet_arg(text: str) -> dict:
    """``FILE[:STRENGTH[:START:END]]`` -> a ``controlnets`` entry. Numbers are split off the end only while
    they parse, so Windows paths and names with colons still work."""
    parts = text.split(":")
    numbers: list[float] = []
    while len(parts) > 1 and len(numbers) < 3:
        try:
            numbers.insert(0, float(parts[-1]))
        except ValueError:
            break
        parts.pop()
    path = ":".join(parts)
    if not path:
        raise UserInputError("empty file name; expected FILE[:STRENGTH[:START:END]]", field=FIELD, value=text)
    if len(numbers) == 2:
        raise UserInputError("give STRENGTH, or STRENGTH:START:END", field=FIELD, value=text)
    entry = {"path": path}
    if numbers:
        entry["strength"] = numbers[0]
    if len(numbers) == 3:
        entry["start"], entry["end"] = numbers[1], numbers[2]
    return entry


def check_fields(config) -> None:
    """``UserInputError`` naming the field for bad ``controlnets`` / ``control_preprocess`` / ``guess_mode``."""
    if config.control_preprocess not in PREPROCESSORS:
        raise UserInputError(f"unknown; choose one of {', '.join(PREPROCESSORS)}", field="control_preprocess",
                             value=config.control_preprocess)
    if not isinstance(config.guess_mode, bool):
        raise UserInputError("must be true or false", field="guess_mode", value=config.guess_mode)
    if config.controlnets is None:
        return
    if not isinstance(config.controlnets, (list, tuple)):
        raise UserInputError("must be a list of ControlNets", field=FIELD, value=config.controlnets)
    for value in config.controlnets:
        spec = ControlNetSpec.from_value(value)
        if not Path(spec.path).exists():
            raise UserInputError("no such file or folder", field=FIELD, value=spec.path)
        if spec.video is None and spec.image is None and config.video is None:
            raise UserInputError("needs a control video or image (or a video-to-video input)", field=FIELD, value=spec.path)


def specs(config) -> list[ControlNetSpec]:
    return [ControlNetSpec.from_value(v) for v in config.controlnets or []]


# ---- hints -----------------------------------------------------------------------------------------------
def _cv2(name: str):
    try:
        import cv2
    except ImportError:
        raise UserInputError(f"{name} needs OpenCV: pip install 'animatediff[demo]' (or opencv-python-headless)",
                             field="control_preprocess", value=name) from None
    return cv2


def _per_frame(frames: torch.Tensor, edit: Callable[[np.ndarray], np.ndarray]) -> torch.Tensor:
    """float ``(n, 3, H, W)`` in [0, 1] -> uint8 ``(H, W, 3)`` per frame -> ``edit`` -> ``(H, W)`` uint8 or float in
    [0, 1] -> the same grey map in all three channels, float ``(n, 3, H, W)`` in [0, 1]."""
    pixels = (frames.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()  # n c H W -> n H W c
    maps = [edit(np.ascontiguousarray(p)) for p in pixels]
    out = torch.from_numpy(np.stack([m.astype(np.float32) / (255 if m.dtype == np.uint8 else 1) for m in maps]))
    return out[:, None].expand(-1, 3, -1, -1).contiguous()  # n H W -> n 3 H W


def canny(frames: torch.Tensor, low: int = 100, high: int = 200) -> torch.Tensor:
    """Canny edges of float ``(n, 3, H, W)`` in [0, 1] -> white 1-px edges on black, same shape (OpenCV)."""
    cv2 = _cv2("canny")
    return _per_frame(frames, lambda p: cv2.Canny(p, low, high))


def scribble(frames: torch.Tensor) -> torch.Tensor:
    """A scribble-like hint: only the main contours, as thick strokes (what scribble ControlNets were trained
    on: hand-drawn white lines on black). Per frame: grey, Gaussian blur (sigma 3 px: texture and small detail
    go), Canny with low thresholds 30/60 (the remaining contours), dilated by a 5x5 ellipse (strokes about
    5 px wide). Binary, white on black; same shape as the input."""
    cv2 = _cv2("scribble")
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))

    def strokes(p: np.ndarray) -> np.ndarray:
        grey = cv2.GaussianBlur(cv2.cvtColor(p, cv2.COLOR_RGB2GRAY), (0, 0), 3)
        return cv2.dilate(cv2.Canny(grey, 30, 60), kernel)

    return _per_frame(frames, strokes)


def lineart(frames: torch.Tensor, gain: float = 8.0, floor: float = 0.03) -> torch.Tensor:
    """A line-drawing hint: soft, thin lines where the frame has dark lines or dark sides of edges (lineart
    ControlNets take white lines on black). Per frame: grey in [0, 1], difference of Gaussians
    ``blur(sigma 2) - blur(sigma 0.8)`` (positive where a pixel is darker than its surroundings), less ``floor``
    (fine texture and noise, up to ~8 grey levels, stay black), times ``gain``, clipped to [0, 1]. Graded, not
    binary; 0 on flat areas; same shape as the input."""
    cv2 = _cv2("lineart")

    def lines(p: np.ndarray) -> np.ndarray:
        grey = cv2.cvtColor(p, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255
        dog = cv2.GaussianBlur(grey, (0, 0), 2.0) - cv2.GaussianBlur(grey, (0, 0), 0.8)
        return np.clip((dog - floor) * gain, 0, 1)

    return _per_frame(frames, lines)


PREPROCESS = {"canny": canny, "scribble": scribble, "lineart": lineart}


def read_hint(spec: ControlNetSpec, config) -> tuple[torch.Tensor, dict]:
    """``(hint (num_frames, 3, H, W) float32 in [0, 1], sidecar entry)`` for one ControlNet."""
    if spec.image is not None:
        raw, kind, source = video_input.read_image(spec.image, FIELD), "image", spec.image
    else:
        source = spec.video if spec.video is not None else config.video
        # the video-to-video input's own frames: resampled to video_fps like the init latents
        raw, kind = (video_input.read_video(source, FIELD)[0] if spec.video is not None
                     else video_input.read_input_video(config)[0]), "video"
    frames = video_input.fit(raw, config.width, config.height)
    if kind == "video":  # one image is broadcast silently; a video of another length is matched (logged)
        frames = video_input.match_length(frames, config.num_frames, f"control video {source}")
    else:
        frames = frames.expand(config.num_frames, -1, -1, -1)
    if config.control_preprocess != "none":
        frames = PREPROCESS[config.control_preprocess](frames)
    return frames, {kind: source, "frames": len(raw)}


# ---- loading -----------------------------------------------------------------------------------------
def _config_dict(spec: ControlNetSpec) -> dict:
    from diffusers import ControlNetModel

    from ..components import package_data

    path = Path(spec.path)
    where = Path(spec.config) if spec.config else path if path.is_dir() else package_data("sd15", "controlnet")
    try:
        return dict(ControlNetModel.load_config(str(where), local_files_only=True))
    except Exception as e:  # noqa: BLE001  a missing or malformed config.json
        raise UserInputError(f"cannot read the ControlNet config in {where} ({type(e).__name__})", field=FIELD,
                             value=spec.path) from None


def _state_dict(spec: ControlNetSpec, config: dict, sdxl_base: bool) -> dict[str, torch.Tensor]:
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    from ..weights.files import read_state_dict

    path = Path(spec.path)
    if path.is_dir():
        found = [path / name for name in WEIGHT_FILES if (path / name).is_file()]
        if not found:
            raise UserInputError(f"folder has no {' or '.join(WEIGHT_FILES)}", field=FIELD, value=spec.path)
        path = found[0]
    state = read_state_dict(path, mmap=False)
    sdxl = config.get("addition_embed_type") is not None or any(
        k.startswith(("add_embedding.", "label_emb.", "control_model.label_emb.")) for k in state)
    if sdxl or sdxl_base:  # SDXL's added text/size embedding: its ControlNets need SDXL's conditioning
        what, base = ("an SDXL ControlNet" if sdxl else "a ControlNet"), ("an SDXL" if sdxl_base else "an SD1.5")
        raise UserInputError(f"{what} with {base} base model: ControlNets work with SD1.5 bases here (the "
                             f"ControlNet must match the base)", field=FIELD, value=spec.path)
    if any(k.startswith("control_model.") for k in state) or "time_embed.0.weight" in state:  # original layout
        try:
            state = convert_controlnet_checkpoint(state, config)
        except Exception as e:  # noqa: BLE001  keys of another architecture
            raise UserInputError(f"cannot convert it as an SD1.5 ControlNet ({type(e).__name__}: {e})", field=FIELD,
                                 value=spec.path) from None
    return state


def load_controlnet(spec: ControlNetSpec, unet, dtype: torch.dtype, device: torch.device):
    """A ``ControlNetModel`` for a base UNet, strictly: unknown, missing or misshapen keys and an SDXL
    ControlNet on an SD1.5 base are one-line ``UserInputError``s naming the file."""
    from diffusers import ControlNetModel

    config = _config_dict(spec)
    state = _state_dict(spec, config, sdxl_base=unet.config.addition_embed_type is not None)
    model = ControlNetModel.from_config(config)
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    misshapen = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or misshapen:
        from ..weights.files import examples

        detail = "; ".join(f"{n} {what} keys ({examples(keys)})" for what, keys, n in (
            ("missing", missing, len(missing)), ("unexpected", unexpected, len(unexpected)),
            ("misshapen", misshapen, len(misshapen))) if keys)
        raise UserInputError(f"not a ControlNet for this base model (config {spec.config or 'default SD1.5'}): {detail}",
                             field=FIELD, value=spec.path)
    model.load_state_dict(state, strict=True)
    if model.config.cross_attention_dim != unet.config.cross_attention_dim:
        raise UserInputError(f"cross-attention width {model.config.cross_attention_dim} does not match the base "
                             f"model's {unet.config.cross_attention_dim}", field=FIELD, value=spec.path)
    return model.to(device=device, dtype=dtype).eval()


# ---- the provider --------------------------------------------------------------------------------------
class ControlNetProvider:
    """A residual provider (denoiser.py) for ControlNet number ``index`` of the conditioning's hints.

    ``timesteps()`` returns the timesteps actually run (for start/end); returns None (no contribution) at
    steps outside [start, end) and for strength 0, so such a net leaves the UNet call untouched."""

    def __init__(self, model, index: int, spec: ControlNetSpec, guess_mode: bool,
                 timesteps: Callable[[], torch.Tensor]):
        self.model, self.index, self.spec, self.guess_mode, self.timesteps = model, index, spec, guess_mode, timesteps

    def active(self, t: torch.Tensor) -> bool:
        if self.spec.strength == 0:
            return False
        run = self.timesteps().to(torch.float64).cpu()
        i, n = int((run - float(torch.as_tensor(t).flatten()[0])).abs().argmin()), len(run)
        return not (i / n < self.spec.start or (i + 1) / n > self.spec.end)

    def __call__(self, latents: torch.Tensor, t: torch.Tensor, cond: dict) -> dict | None:
        if not self.active(t):
            return None
        b, c, f, h, w = latents.shape
        rows = torch.ones(b, dtype=torch.bool, device=latents.device)
        if self.guess_mode and "control_uncond" in cond:
            rows = ~cond["control_uncond"].to(latents.device)  # the unconditional half gets no control
        dtype = self.model.dtype
        x = latents[rows].transpose(1, 2).reshape(-1, c, h, w).to(dtype)  # b' c f h w -> (b' f) c h w
        hint = cond["control_hint"][rows][:, :, self.index].flatten(0, 1).to(dtype)  # b' f 3 H W -> (b' f) 3 H W
        text = cond["encoder_hidden_states"][rows]  # per clip (b', 77, d) or per frame (b', f, 77, d): conditioning.py
        text = text.flatten(0, 1) if text.ndim == 4 else text.repeat_interleave(f, dim=0)  # -> (b' f, 77, d)
        down, mid = self.model(x, t, encoder_hidden_states=text.to(dtype), controlnet_cond=hint,
                               conditioning_scale=float(self.spec.strength), guess_mode=self.guess_mode, return_dict=False)

        def video(r: torch.Tensor) -> torch.Tensor:  # (b' f) C h' w' -> b C f h' w', zeros in rows without control
            out = r.new_zeros(b, f, *r.shape[1:])
            out[rows] = r.reshape(-1, f, *r.shape[1:])
            return out.transpose(1, 2)

        return {"down_block_additional_residuals": tuple(video(r) for r in down), "mid_block_additional_residual": video(mid)}


def prepare(base, config, cond: dict, uncond: dict | None, timesteps: Callable[[], torch.Tensor],
            cache: dict) -> tuple[dict, dict | None, list[ControlNetProvider], list[dict]]:
    """For a resolved config with ControlNets: ``(cond, uncond, providers, sidecar)``, the conditionings with
    ``control_hint`` / ``control_uncond`` added. ``cache`` (path -> model) keeps loaded nets between calls."""
    chosen = specs(config)
    if not chosen:
        return cond, uncond, [], []
    unet = base.unet
    hints, sidecar, providers = [], [], []
    for i, spec in enumerate(chosen):
        hint, info = read_hint(spec, config)  # every hint is read before any ControlNet loads
        hints.append(hint)
        sidecar.append({"path": spec.path, "strength": spec.strength, "start": spec.start, "end": spec.end, **info})
    for i, spec in enumerate(chosen):
        key = (spec.path, spec.config)
        if key not in cache:
            cache[key] = load_controlnet(spec, unet, unet.dtype, unet.device)
        providers.append(ControlNetProvider(cache[key], i, spec, config.guess_mode, timesteps))
    from ..weights.files import file_sha256

    for entry in sidecar:
        for name in ("path", "video", "image"):
            if entry.get(name) and Path(entry[name]).is_file():
                entry[f"{name}_sha256"] = file_sha256(entry[name])
    stacked = torch.stack(hints, dim=1).to(device=unet.device, dtype=unet.dtype)  # (f, nets, 3, H, W)

    def add(c: dict, is_uncond: bool) -> dict:
        batch = c["encoder_hidden_states"].shape[0]
        return {**c, "control_hint": stacked[None].expand(batch, *stacked.shape),
                "control_uncond": torch.full((batch,), is_uncond, device=unet.device)}

    return add(cond, False), (add(uncond, True) if uncond is not None else None), providers, sidecar
