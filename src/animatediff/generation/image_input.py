"""Image-to-video without an encoder: an init-latent blend of a still, then the video-to-video (SDEdit) path.

``image`` (``--image PATH``) animates a still. Frame i of the clip starts from a blend of the still's latent and
noise whose image weight falls off over the frames (A1111 sd-webui-animatediff's latent-power blend,
``animatediff_latent.py``, with power 1), and the blended clip is then denoised like a video-to-video input:

    z    = VAE posterior MEAN of the still x scaling_factor    (1, 4, h, w); the still is scaled to cover
           width x height and centre-cropped (video_input.fit): never stretched
    a_i  = image_strength * max(0, 1 - i / image_falloff)       the image's weight in frame i, i = 0 .. num_frames-1
    c_i  = a_i z + (1 - a_i) n_i                                n: blend noise (b, 4, f, h, w)
    x    = add_noise(c, noise, t_s), then the last int(steps * strength) steps of the schedule run

(``strength``, default 0.8, and the zero-step error are video-to-video's: video_input.py.) So frame 0 at
``image_strength`` 1 starts exactly where video-to-video of the still starts, ``add_noise(z, noise_0, t_s)``,
with the posterior mean in place of a sample. Defaults: ``image_strength`` 1, ``image_falloff`` 32 (A1111's
``latent_scale``; 16 frames end at weight 0.53). Why the mean: the start is a function of the file alone, as
for SparseCtrl's RGB condition (issue 12; the official code samples with an unseeded RNG).

Random numbers, from the one ``torch.Generator("cpu").manual_seed(seed)``: the initial noise ``(b, 4, f, h, w)``
(text-to-video's draw), then the blend noise ``n`` in one ``randn`` of the same shape, then any sampler noise.

Training-free and weak on identity by nature (later frames keep only a tint of the image): with a SparseCtrl RGB
encoder the image is its keyframe at frame 0 instead (see ``init_latents``).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..errors import UserInputError
from . import video_input

DEFAULT_IMAGE_STRENGTH = 1.0
DEFAULT_IMAGE_FALLOFF = 32.0  # A1111's latent_scale (with latent_power 1)


def _number(config, name: str, ok, detail: str) -> None:
    value = getattr(config, name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
        raise UserInputError(detail, field=name, value=value)


def check_fields(config) -> None:
    """``UserInputError`` naming the field for bad ``image`` / ``image_strength`` / ``image_falloff`` values (the
    file is read later; ``strength`` is checked by video_input.check_fields)."""
    image = config.image
    if image is not None and (not isinstance(image, str) or not image):
        raise UserInputError("must be a path to an image file", field="image", value=image)
    _number(config, "image_strength", lambda v: 0 < v <= 1, "must be a number in (0, 1] (the image's weight in frame 0)")
    _number(config, "image_falloff", lambda v: v > 0, "must be a number of frames above 0")
    for name in ("image_strength", "image_falloff"):
        if getattr(config, name) is not None and image is None:
            raise UserInputError("only applies to image-to-video: give an image too", field=name, value=getattr(config, name))
    if image is None:
        return
    if config.video is not None:
        raise UserInputError("give a video (video-to-video) or an image (image-to-video), not both", field="image", value=image)
    if config.freeinit_iterations and config.freeinit_iterations > 1:
        raise UserInputError("is not combined with FreeInit yet", field="image", value=image)


def weights(config) -> list[float]:
    """``a_i``, the image's weight in each frame's start latent (module docstring)."""
    strength = config.image_strength if config.image_strength is not None else DEFAULT_IMAGE_STRENGTH
    falloff = config.image_falloff if config.image_falloff is not None else DEFAULT_IMAGE_FALLOFF
    return [strength * max(0.0, 1.0 - i / falloff) for i in range(config.num_frames)]


@torch.no_grad()
def image_latent(vae, path: str, width: int, height: int) -> torch.Tensor:
    """The still's VAE posterior mean x scaling_factor, ``(1, 4, 1, height/8, width/8)`` fp32 (centre-cropped)."""
    from . import vae as vae_io

    frames = video_input.fit(video_input.read_image(path, "image"), width, height)  # (1, 3, H, W)
    return vae_io.encode(vae, frames.permute(1, 0, 2, 3)[None], sample=False).float()  # f c H W -> 1 c f H W


@torch.no_grad()
def init_latents(vae, config, generator: torch.Generator) -> tuple[torch.Tensor | None, int, dict | None]:
    """``(c (num_videos, 4, f, h, w), start_step, sidecar)`` for a resolved config with an ``image``;
    ``(None, 0, None)`` without one. ``c`` is the blended clean start (module docstring), ``start_step`` the
    first of the ``steps`` schedule's steps that runs; the sampler noises ``c`` to it."""
    # The one place image-to-video picks its path: with a SparseCtrl encoder (config.sparsectrl, issue 12 item 1)
    # the image becomes the encoder's RGB keyframe at frame 0 (wired where SparseCtrl is), not an init blend.
    if config.image is None or getattr(config, "sparsectrl", None) is not None:
        return None, 0, None
    z = image_latent(vae, config.image, config.width, config.height)  # (1, 4, 1, h, w)
    b, (_, c, _, h, w) = config.num_videos, z.shape
    noise = torch.randn((b, c, config.num_frames, h, w), generator=generator, dtype=torch.float32)  # after the initial noise
    a = torch.tensor(weights(config), dtype=torch.float32).view(1, 1, -1, 1, 1)  # per frame
    blended = a * z.cpu() + (1 - a) * noise  # (b, 4, f, h, w)
    strength = config.strength if config.strength is not None else video_input.DEFAULT_STRENGTH
    start_step = config.steps - video_input.steps_to_run(config.steps, strength)
    from ..weights.files import file_sha256

    info = {"path": config.image, "sha256": file_sha256(config.image) if Path(config.image).is_file() else None,
            "strength": strength, "steps_run": config.steps - start_step, "image_weights": [round(x, 6) for x in weights(config)]}
    return blended, start_step, info
