"""Input media for generation: reading a clip or an image to the target size, and video-to-video.

Fitting (``fit``): every input frame (video-to-video frames, ControlNet hints) is scaled, aspect kept, until it
covers ``width x height`` (bilinear, antialiased), then centre-cropped to exactly that size: nothing is
stretched. Frame count (``match_length``): an input with fewer frames than ``num_frames`` repeats its last frame
(one log line), one with more is cut to the first ``num_frames``.

Video-to-video (``--video PATH --strength S``; SDEdit, as diffusers' ``AnimateDiffVideoToVideoPipeline``):
the input frames are encoded with the VAE, noised to the first timestep of the last ``int(steps * S)`` steps of
the schedule with the scheduler's ``add_noise``, and denoised over those steps only. ``int(steps * S) == 0`` is
an error naming ``strength`` (diffusers silently returns an empty video). Random numbers, in this order, from
one ``torch.Generator("cpu").manual_seed(seed)``: the initial noise ``(b, 4, f, h, w)`` (the same draw as
text-to-video), then the VAE posterior sample of the frames (``vae.encode``, chunked as ``decode_chunk_size``),
then any stochastic sampler noise. So at strength 1.0 the run uses text-to-video's noise and timesteps, but
starts from ``sqrt(a_t0) z0 + sqrt(1 - a_t0) noise`` (DDIM; Euler: ``z0 + sigma_0 noise``), not from the noise
alone: the input keeps a small weight (sqrt(a_t0) = 0.05 at DDIM's t0 = 961 for 25 steps).

Frame rate (``video_fps``): the input's own rate is read (MP4, GIF/WebP frame durations; a PNG folder states
none) and recorded in the sidecar. ``video_fps`` resamples the input in time before the frame count is matched:
output frame i shows the input frame on screen at time ``i / video_fps``, i.e. input frame
``floor(i * fps_in / video_fps)`` (frames dropped or repeated, never blended). Without a ``num_frames``, the
interfaces take the resampled count (``resampled_count``), so the clip spans the whole input.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserInputError

logger = logging.getLogger(__name__)

DEFAULT_STRENGTH = 0.8  # diffusers' default
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


# ---- reading --------------------------------------------------------------------------------------------
def read_video(path: str, field: str) -> tuple[np.ndarray, float | None]:
    """``(frames uint8 (n, H, W, 3), fps or None)`` of a GIF, WebP, MP4 or PNG folder; ``UserInputError``
    naming ``field`` for a missing, unreadable or empty one."""
    from ..video_io import read_clip  # the package's one reader (a layer below generation/)

    if not Path(path).exists():
        raise UserInputError("no such file or folder", field=field, value=path)
    try:
        frames, fps = read_clip(path)
    except UserInputError as e:
        raise UserInputError(e.detail.removeprefix(f"{path}: "), field=field, value=path) from None
    except Exception as e:  # noqa: BLE001  a decoder's error (PIL, PyAV) on a broken file: one line
        raise UserInputError(f"cannot read it as a video ({type(e).__name__}: {' '.join(str(e).split())[:120]})",
                             field=field, value=path) from None
    if len(frames) == 0:
        raise UserInputError("has no frames", field=field, value=path)
    return frames, fps


def read_image(path: str, field: str) -> np.ndarray:
    """One image as uint8 ``(1, H, W, 3)`` (any format Pillow reads); ``UserInputError`` naming ``field``."""
    from PIL import Image, UnidentifiedImageError

    if not Path(path).is_file():
        raise UserInputError("no such file", field=field, value=path)
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))[None]
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise UserInputError(f"is not an image Pillow can read ({' '.join(str(e).split())[:120]})", field=field,
                             value=path) from None


def fit(frames: np.ndarray, width: int, height: int) -> torch.Tensor:
    """uint8 ``(n, H0, W0, 3)`` -> float32 ``(n, 3, height, width)`` in [0, 1]: scaled to cover, centre-cropped."""
    x = torch.from_numpy(np.array(frames)).permute(0, 3, 1, 2).float() / 255  # n H W c -> n c H W
    h0, w0 = x.shape[-2:]
    scale = max(width / w0, height / h0)
    h1, w1 = max(height, round(h0 * scale)), max(width, round(w0 * scale))
    if (h1, w1) != (h0, w0):
        x = F.interpolate(x, size=(h1, w1), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    top, left = (h1 - height) // 2, (w1 - width) // 2
    return x[:, :, top:top + height, left:left + width].contiguous()


def match_length(frames: torch.Tensor, num_frames: int, what: str) -> torch.Tensor:
    """``(n, ...)`` -> ``(num_frames, ...)``: the last frame repeated (logged) or the extra frames cut."""
    n = frames.shape[0]
    if n < num_frames and n > 1:
        logger.info("%s has %d frames for %d: repeating its last frame", what, n, num_frames)
    if n < num_frames:
        frames = torch.cat([frames, frames[-1:].expand(num_frames - n, *frames.shape[1:])])
    return frames[:num_frames]


def resample_indices(count: int, fps_in: float, fps_out: float) -> list[int]:
    """Input frame per output frame when ``count`` frames at ``fps_in`` are shown at ``fps_out`` (nearest
    earlier frame in time); ``resampled_count(count, ...)`` of them."""
    return [int(i * fps_in / fps_out + 1e-9) for i in range(resampled_count(count, fps_in, fps_out))]


def resampled_count(count: int, fps_in: float, fps_out: float) -> int:
    """Output frames that span ``count`` input frames at ``fps_in`` when resampled to ``fps_out`` (at least 1)."""
    return max(1, int((count - 1) * fps_out / fps_in + 1e-9) + 1)


def read_input_video(config) -> tuple[np.ndarray, float | None, int]:
    """The video-to-video input, resampled to ``config.video_fps`` when given: ``(frames, fps_in, frames_in)``."""
    raw, fps = read_video(config.video, "video")
    count = len(raw)
    if getattr(config, "video_fps", None) is not None:
        if fps is None:
            raise UserInputError("the input states no frame rate (a PNG folder?): it cannot be resampled",
                                 field="video_fps", value=config.video_fps)
        raw = raw[resample_indices(count, fps, config.video_fps)]
    return raw, fps, count


# ---- video-to-video --------------------------------------------------------------------------------------
def steps_to_run(steps: int, strength: float) -> int:
    """The last ``int(steps * strength)`` steps run (diffusers' truncation)."""
    return min(int(steps * strength), steps)


def check_fields(config) -> None:
    """``UserInputError`` naming the field for bad ``video`` / ``strength`` / ``video_fps`` values (files are read
    later). ``strength`` also serves image-to-video (image_input.py), with the same zero-step check."""
    video, strength = config.video, config.strength
    image = getattr(config, "image", None)
    if video is not None and (not isinstance(video, str) or not video):
        raise UserInputError("must be a path to a video (GIF, MP4, WebP or a folder of PNG frames)", field="video", value=video)
    video_fps = getattr(config, "video_fps", None)
    if video_fps is not None:
        if isinstance(video_fps, bool) or not isinstance(video_fps, (int, float)) or not 0 < video_fps < float("inf"):
            raise UserInputError("must be a number of frames per second above 0", field="video_fps", value=video_fps)
        if video is None:
            raise UserInputError("resamples the video-to-video input: give a video too", field="video_fps", value=video_fps)
    if strength is not None and video is None and image is None:
        raise UserInputError("only applies to video-to-video or image-to-video: give a video or an image too",
                             field="strength", value=strength)
    if video is None and image is None:
        return
    if strength is None:
        strength = DEFAULT_STRENGTH  # the default must not round to zero steps either (e.g. steps 1)
    if not isinstance(strength, (int, float)) or isinstance(strength, bool) or not 0 < strength <= 1:
        raise UserInputError("must be a number in (0, 1] (the fraction of the steps run)", field="strength", value=strength)
    if isinstance(config.steps, int) and config.steps >= 1 and steps_to_run(config.steps, strength) < 1:
        raise UserInputError(f"runs int({config.steps} steps x {strength}) = 0 steps; raise it to at least "
                             f"{1 / config.steps:.3g} (or raise steps)", field="strength", value=strength)
    if video is not None and config.freeinit_iterations and config.freeinit_iterations > 1:
        raise UserInputError("is not combined with FreeInit yet", field="video", value=video)


def video_frame_count(path: str, video_fps: float | None = None) -> tuple[int, float | None]:
    """Frames (after resampling to ``video_fps`` when given) and the input's fps of a video input (an
    interface's default ``num_frames`` when none is given)."""
    frames, fps, _ = read_input_video(SimpleNamespace(video=path, video_fps=video_fps))
    return len(frames), fps


@torch.no_grad()
def init_latents(vae, config, generator: torch.Generator) -> tuple[torch.Tensor | None, int, dict | None]:
    """``(z0 (num_videos, 4, f, h, w), start_step, sidecar)`` for a resolved config with a ``video``;
    ``(None, 0, None)`` without one.

    ``z0`` is a posterior sample drawn with ``generator`` (after the initial noise: see the module docstring);
    ``start_step`` the first of the ``steps`` schedule's steps that runs."""
    if config.video is None:
        return None, 0, None
    raw, fps, count = read_input_video(config)
    frames = match_length(fit(raw, config.width, config.height), config.num_frames, f"video {config.video}")
    frames = frames.permute(1, 0, 2, 3)[None].repeat(config.num_videos, 1, 1, 1, 1)  # f c H W -> b c f H W
    from . import vae as vae_io

    z0 = vae_io.encode(vae, frames, config.decode_chunk_size, generator=generator, sample=True,
                       tile=vae_io.TILE if config.vae_tiling else None)  # speed: tiled, sliced VAE
    strength = config.strength if config.strength is not None else DEFAULT_STRENGTH
    start_step = config.steps - steps_to_run(config.steps, strength)
    from ..weights.files import file_sha256

    info = {"path": config.video, "sha256": file_sha256(config.video) if Path(config.video).is_file() else None,
            "frames": count, "fps": fps,
            "resampled_to_fps": getattr(config, "video_fps", None), "strength": strength, "steps_run": config.steps - start_step}
    return z0.float(), start_step, info
