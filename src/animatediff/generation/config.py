"""``GenerationConfig``: every setting that determines a generated clip, and the one place they are checked.

Interfaces fill it (the CLI from flags, the official YAML reader from jobs, the API from keyword arguments);
``validate`` raises ``UserInputError`` naming the field, which each interface translates to its own wording.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

from ..errors import UserInputError
from ..sampling.context import context_options
from ..sampling.freeinit import check_fields as check_freeinit_fields
from ..sampling.freenoise import check_fields as check_freenoise_fields
from ..sampling.schedulers import check_preset, check_scheduler, check_steps, sampling_defaults
from . import prompt_travel
from .feature_cache import check_fields as check_cache_fields
from .vae import check_tiling_field


@dataclass
class GenerationConfig:
    """Everything that determines a generated clip (recorded in the output's sidecar).

    ``scheduler``, ``steps`` and ``guidance_scale`` left as None take the preset's recommended values
    (``schedulers.SAMPLING_DEFAULTS``); ``scheduler_preset`` None takes the motion module's own preset
    (Lightning, AnimateLCM, SDXL beta) or "animatediff". ``seed`` None draws a random seed, which
    ``resolved()`` records."""

    prompt: str
    negative_prompt: str = ""
    num_frames: int = 16
    width: int = 512
    height: int = 512
    steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = None
    scheduler: str | None = None
    scheduler_preset: str | None = None
    decode_chunk_size: int = 16
    eta: float = 0.0
    clip_skip: int | None = None  # 1 = penultimate CLIP layer (diffusers convention)
    num_videos: int = 1  # clips per prompt, drawn from one generator

    # ---- context windows (sampling/context.py): long clips in overlapping windows of frames ----
    context: str | None = None  # none | static | uniform | looped | batched; None: uniform beyond the encoding length
    context_length: int | None = None  # frames per window; None: 16, or the encoding length if shorter
    context_overlap: int | None = None  # frames shared by neighbouring windows; None: context_length // 4
    context_stride: int = 1  # dilation levels (ADE's stride; not diffusers' hop between windows)
    context_fuse: str = "pyramid"  # pyramid | flat | gauss | relative
    closed_loop: bool = False  # looped: also overlap the last frames with the first
    context_batch: int = 1  # windows per UNet call

    # ---- FreeNoise, view windows, FreeInit (sampling/freenoise.py, sampling/freeinit.py) ----
    noise_type: str = "plain"  # plain | random (= plain) | shuffle | repeat: FreeNoise initial noise over context windows
    view_context: str = "none"  # none | static | uniform | looped | batched: motion modules run in windows of frames
    view_length: int = 16  # frames per view window
    view_overlap: int = 4  # frames shared by neighbouring view windows
    view_fuse: str = "pyramid"  # pyramid | flat | gauss | relative: per-frame weights across view windows
    freeinit_iterations: int | None = None  # None: off; 1 = plain sampling; K: K sampling passes
    freeinit_filter: str = "butterworth"  # butterworth (order 4) | gaussian | ideal | box
    freeinit_spatial: float = 0.25  # spatial stop frequency (fraction of Nyquist)
    freeinit_temporal: float = 0.25  # temporal stop frequency (fraction of Nyquist)
    freeinit_fast: bool = False  # coarse-to-fine: fewer steps in the early iterations

    # ---- prompt travel and motion scale/effect (generation/prompt_travel.py; issue 10) ----
    prompt_map: dict[int, str] | str | None = None  # frame -> prompt, or text "0: a | 16: b" / the A1111 box
    negative_prompt_map: dict[int, str] | str | None = None  # the negative prompt's travel (same forms)
    prompt_interpolation: str = "lerp"  # between keys: lerp | slerp (whole-tensor)
    prompt_wrap: bool = False  # after the last key, travel back to the first (loops)
    head_prompt: str = ""  # joined before every key prompt
    tail_prompt: str = ""  # joined after every key prompt
    motion_scale: float | list[float] | None = None  # temporal-attention key scale; a number or one per frame
    motion_effect: float | list[float] | None = None  # motion-module residual blend; a number or one per frame

    # ---- ControlNet per frame and video-to-video (generation/controlnet.py, generation/video_input.py; issue 12) ----
    controlnets: list[dict] | None = None  # each {"path", "strength": 1, "start": 0, "end": 1, "video" | "image", "config"}
    control_preprocess: str = "none"  # none | canny | scribble | lineart: applied to every ControlNet's hint frames
    guess_mode: bool = False  # ControlNets only in the conditional half of CFG (the unconditional half gets none)
    video: str | None = None  # video-to-video input: GIF, MP4, WebP or a folder of PNG frames
    strength: float | None = None  # video-to-video: the last int(steps * strength) steps run; None: 0.8

    # ---- image-to-video, video resampling, IP-Adapter (generation/image_input.py, ip_adapter.py; issue 12) ----
    image: str | None = None  # image-to-video: the still to animate (init-latent blend; strength as video-to-video's)
    image_strength: float | None = None  # the image's weight in frame 0's start latent, in (0, 1]; None: 1
    image_falloff: float | None = None  # frames over which that weight falls linearly to 0; None: 32 (A1111)
    video_fps: float | None = None  # video-to-video: resample the input to this frame rate (None: its frames as they are)
    ip_adapter: list[dict] | None = None  # each {"path", "scale": 1}: IP-Adapter files (diffusers' load_ip_adapter formats)
    ip_adapter_image_encoder: str | None = None  # local CLIPVisionModelWithProjection folder (the adapters' image encoder)
    ip_images: list[dict] | None = None  # each {"image", "frame": 0}: reference images; several: keyframed travel
    # ---- SparseCtrl (generation/sparsectrl.py; issue 12) ----
    sparsectrl: str | None = None  # SparseCtrl encoder file (official .ckpt or diffusers SparseControlNetModel keys)
    keyframes: list[dict] | None = None  # each {"image": path, "index": frame}; negative index: from the end
    sparsectrl_scale: float | list[float] = 1.0  # residual scale: a number or one per frame
    sparsectrl_start: float = 0.0  # fractions of the steps run: the encoder runs in [start, end)
    sparsectrl_end: float = 1.0
    sparsectrl_normalize: bool = False  # keyframes to grey, min-max [0, 1] (official normalize_condition_images)
    # ---- speed (generation/vae.py): tiled, sliced VAE decode/encode ----
    vae_tiling: bool = False  # decode/encode one frame at a time in 256x256-pixel tiles: fixed VAE memory at any size
    # ---- speed (generation/feature_cache.py): DeepCache-style feature caching, quality for speed ----
    cache_interval: int = 1  # run the whole UNet every N steps, only its outer ring in between (1: off)
    cache_branch: int = 0  # the skip branch whose up block receives the cached feature (0: shallowest, fastest)

    def resolved(self, default_preset: str = "animatediff") -> "GenerationConfig":
        """A copy with every None filled in (preset, its sampling defaults, a random seed)."""
        preset = self.scheduler_preset or default_preset
        defaults = sampling_defaults(preset)  # UserInputError(field="scheduler_preset") for an unknown one
        return dataclasses.replace(
            self,
            scheduler_preset=preset,
            scheduler=self.scheduler or defaults.scheduler,
            steps=self.steps if self.steps is not None else defaults.steps,
            guidance_scale=self.guidance_scale if self.guidance_scale is not None else defaults.guidance_scale,
            seed=self.seed if self.seed is not None else random.SystemRandom().randrange(2**32),
            keyframes=self._keyframes_with_image(),
        )

    def _keyframes_with_image(self) -> list[dict] | None:
        # image-to-video with a SparseCtrl encoder: the still is the RGB keyframe at frame 0, not an init blend
        # (image_input.init_latents then steps aside); a keyframe of its own at frame 0 is a duplicate-index error.
        if self.image is None or self.sparsectrl is None:
            return self.keyframes
        from .sparsectrl import keyframes_from_image

        return keyframes_from_image(self.image) + list(self.keyframes or [])

    def validate(self, vae_scale_factor: int | None = None, max_frames: int | None = None,
                 motion_name: str | None = None) -> None:
        """Raise ``UserInputError(detail, field=..., value=...)`` for the first value that cannot be generated.

        The one place generation settings are checked. Fields still None (before ``resolved()``) are skipped.
        What depends on the model comes as arguments: ``vae_scale_factor`` (width and height must be multiples
        of it, 8 for SD/SDXL) and ``max_frames``, the motion module's position-encoding length (``motion_name``
        for the message), which ``num_frames`` may exceed only with context windows."""

        def require(name: str, ok: bool, detail: str) -> None:
            if not ok:
                raise UserInputError(detail, field=name, value=getattr(self, name))

        def at_least(name: str, low: int) -> None:
            value = getattr(self, name)
            require(name, value is None or value >= low, "must be at least 1" if low else "must not be negative")

        whole = ("num_frames", "width", "height", "steps", "decode_chunk_size", "num_videos", "clip_skip", "seed")
        optional = ("steps", "guidance_scale", "seed", "clip_skip")  # None until resolved(); clip_skip None = off
        for name in whole + ("guidance_scale", "eta"):
            value = getattr(self, name)
            kinds, what = (int, "a whole number") if name in whole else ((int, float), "a number")
            require(name, (value is None and name in optional) or (isinstance(value, kinds) and not isinstance(value, bool)),
                    f"must be {what}")
        factor = vae_scale_factor or 1
        for name in ("width", "height"):
            value = getattr(self, name)
            require(name, value >= factor and value % factor == 0, f"must be a positive multiple of {factor}")
        at_least("num_frames", 1)
        # context windows or view windows may run more frames than the encoding holds (their lengths are checked)
        windowed = context_options(self, max_frames, motion_name) is not None or self.view_context != "none"
        if max_frames is not None and not windowed:
            owner = f"the {motion_name} motion module's" if motion_name else "the motion module's"
            require("num_frames", self.num_frames <= max_frames,
                    f"exceeds {owner} position-encoding length {max_frames} (use max_frames to extend it)")
        for name in ("steps", "decode_chunk_size", "num_videos"):
            at_least(name, 1)
        for name in ("guidance_scale", "eta", "clip_skip"):
            at_least(name, 0)
        require("seed", self.seed is None or 0 <= self.seed < 2**64, "must be in 0 .. 2**64 - 1")  # torch.Generator's range
        if self.scheduler is not None:
            check_scheduler(self.scheduler)
        if self.scheduler_preset is not None:
            check_preset(self.scheduler_preset)
        check_steps(self.steps, self.scheduler_preset)
        check_freenoise_fields(self, max_frames)
        check_freeinit_fields(self)
        prompt_travel.check_config(self)
        check_control_fields(self)
        check_image_fields(self)
        check_tiling_field(self)  # speed: vae_tiling
        check_cache_fields(self, max_frames, motion_name)  # speed: cache_interval, cache_branch


def check_control_fields(config: GenerationConfig) -> None:
    """ControlNet and video-to-video fields (issue 12). Imported here: controlnet.py needs conditioning.py,
    which needs this module."""
    from .controlnet import check_fields as check_controlnet_fields
    from .video_input import check_fields as check_video_fields

    check_video_fields(config)
    check_controlnet_fields(config)
    from .sparsectrl import check_fields as check_sparsectrl_fields  # SparseCtrl

    check_sparsectrl_fields(config)


def check_image_fields(config: GenerationConfig) -> None:
    """Image-to-video and IP-Adapter fields (issue 12; imported here for the same reason as above)."""
    from .image_input import check_fields as check_image_input_fields
    from .ip_adapter import check_fields as check_ip_adapter_fields

    check_image_input_fields(config)
    check_ip_adapter_fields(config)
