"""The demo world: seedable images and videos of simple coloured shapes on textured backgrounds.

Everything the bundled model family is trained and evaluated on comes from here (issue 4):

- ``random_spec(rng, kind)`` draws a :class:`SceneSpec` (1-3 objects, colours, background, motion);
  ``make_image(spec)`` / ``make_video(spec, num_frames)`` render it deterministically (no randomness at
  render time: the background texture is drawn from ``spec.background_seed``); ``caption(spec)`` builds the
  text ("a red circle bouncing and a blue square on a green striped background").
- Two deliberate domain properties, as in the paper (§4.1, Fig. 6): every *video* frame carries a small
  semi-transparent watermark in the bottom-right corner (:func:`add_watermark`, the WebVid artifact the
  domain adapter must absorb); images never do.  ``kind="style"`` specs render the *personal style*
  (pastel palette + thick dark outlines) used for the DreamBooth / LoRA analogs.
- ``SceneSpec.camera`` applies one of the eight official MotionLoRA camera moves with the training
  augmentation :func:`animatediff.training.augment.camera_move` (paper §4.3), before the watermark.
- :func:`write_dataset` writes a folder in the WebVid layout read by the official loader
  (``{videoid}.mp4`` + a CSV with ``videoid,name,page_dir``).

Rendering is numpy + OpenCV, supersampled 2x then area-downsampled so sub-pixel motion is smooth.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from ..presets import CAMERA_MOVES
from ..training.augment import camera_move
from ..video_io import save_video

logger = logging.getLogger(__name__)

SHAPES = ("circle", "square", "triangle", "star", "diamond")
# Hue in degrees.  Six hues far enough apart to be told apart after a small model has blurred them.
COLORS = {"red": 0.0, "orange": 30.0, "yellow": 55.0, "green": 120.0, "blue": 220.0, "purple": 280.0}
PATTERNS = ("striped", "checkered", "cloudy")
MOTIONS = ("static", "linear", "bouncing", "orbiting")
# Path length over the whole clip, as a fraction of the frame size.
SPEEDS = {"slow": 0.25, "medium": 0.45, "fast": 0.7}
DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
ORBIT_DIRECTIONS = ("clockwise", "anticlockwise")
CAMERA_PHRASES = {"ZoomIn": "camera zooms in", "ZoomOut": "camera zooms out", "PanLeft": "camera pans left",
                  "PanRight": "camera pans right", "TiltUp": "camera tilts up", "TiltDown": "camera tilts down",
                  "RollingClockwise": "camera rolls clockwise",
                  "RollingAnticlockwise": "camera rolls anticlockwise"}

# (saturation, value) of objects and of the two background tones, per style.
PALETTES = {
    "plain": {"object": (0.85, 0.95), "bg_dark": (0.55, 0.45), "bg_light": (0.55, 0.70)},
    "personal": {"object": (0.45, 1.00), "bg_dark": (0.22, 0.82), "bg_light": (0.22, 0.95)},
}
OUTLINE_RGB = (28, 24, 32)
OUTLINE_WIDTH = 0.05  # personal style: outline thickness as a fraction of min(H, W) (3 px at 64)
WATERMARK_ALPHA = 0.55
# Watermark logo (a box with a bar, white), in fractions of (W, H): bottom-right corner.
WATERMARK_BOX = (0.68, 0.80, 0.94, 0.94)
_SUPERSAMPLE = 2


@dataclass(frozen=True)
class ObjectSpec:
    """One shape.  ``x, y``: centre at clip start (fractions of W, H; for orbiting, the orbit centre);
    ``size``: radius as a fraction of min(H, W); ``direction``: left/right/up/down for linear and bouncing
    motion, clockwise/anticlockwise for orbiting."""

    shape: str
    color: str
    x: float
    y: float
    size: float = 0.13
    motion: str = "static"
    speed: str = "medium"
    direction: str = "right"

    def __post_init__(self) -> None:
        assert self.shape in SHAPES, self.shape
        assert self.color in COLORS, self.color
        assert self.motion in MOTIONS, self.motion
        assert self.speed in SPEEDS, self.speed
        valid = ORBIT_DIRECTIONS if self.motion == "orbiting" else tuple(DIRECTIONS)
        assert self.direction in valid, (self.motion, self.direction)


@dataclass(frozen=True)
class SceneSpec:
    """A whole scene.  ``style``: "plain" or "personal" (pastel + thick outlines); ``camera``: one of
    :data:`CAMERA_MOVES` applied by :func:`make_video` (``None``: fixed camera)."""

    objects: tuple[ObjectSpec, ...]
    background: str = "striped"
    background_color: str = "green"
    background_seed: int = 0
    style: str = "plain"
    camera: str | None = None
    camera_strength: float = 0.25

    def __post_init__(self) -> None:
        assert 1 <= len(self.objects), "a scene needs at least one object"
        assert self.background in PATTERNS, self.background
        assert self.background_color in COLORS, self.background_color
        assert self.style in PALETTES, self.style
        assert self.camera is None or self.camera in CAMERA_MOVES, self.camera


# ----------------------------------------------------------------------------------------------- specs

def random_spec(rng: np.random.Generator, kind: Literal["video", "image", "style"] = "video",
                num_objects: int | None = None, shapes: tuple[str, ...] = SHAPES,
                colors: tuple[str, ...] = tuple(COLORS), camera: str | None = None,
                camera_strength: float = 0.25, moving: bool = True) -> SceneSpec:
    """Draw a scene: 1-3 objects of distinct colours, none sharing the background's colour, not overlapping
    at the start.  ``kind="image"`` and ``"style"`` give static objects; ``"style"`` uses the personal style;
    ``moving=False`` makes a video of static objects (MotionLoRA clips: the camera is the only motion)."""
    n = int(num_objects if num_objects is not None else rng.integers(1, 4))
    bg_color = str(rng.choice(list(colors)))
    obj_colors = rng.permutation([c for c in colors if c != bg_color])[:n]
    assert len(obj_colors) == n, "not enough distinct colours for the objects"
    objects: list[ObjectSpec] = []
    for color in obj_colors:
        for _attempt in range(50):
            obj = _random_object(rng, str(rng.choice(list(shapes))), str(color), video=kind == "video" and moving)
            if all(math.hypot(obj.x - o.x, obj.y - o.y) > 1.3 * (obj.size + o.size) for o in objects):
                break
        objects.append(obj)
    return SceneSpec(objects=tuple(objects), background=str(rng.choice(PATTERNS)), background_color=bg_color,
                     background_seed=int(rng.integers(0, 2**31 - 1)),
                     style="personal" if kind == "style" else "plain",
                     camera=camera, camera_strength=camera_strength)


def _random_object(rng: np.random.Generator, shape: str, color: str, video: bool) -> ObjectSpec:
    size = float(rng.uniform(0.10, 0.16))
    margin = size * 1.3
    motion = str(rng.choice(MOTIONS[1:] if video else ("static",)))
    speed = str(rng.choice(list(SPEEDS)))
    x, y = rng.uniform(margin, 1 - margin, size=2)
    direction = "right"
    if motion == "linear":
        direction = str(rng.choice(list(DIRECTIONS)))
        dx, dy = DIRECTIONS[direction]
        span = SPEEDS[speed]
        # Start far enough from the wall it moves towards that it stays in the frame for the whole clip.
        lo, hi = margin, max(margin, 1 - margin - span)
        if dx:
            x = rng.uniform(lo, hi) if dx > 0 else 1 - rng.uniform(lo, hi)
        if dy:
            y = rng.uniform(lo, hi) if dy > 0 else 1 - rng.uniform(lo, hi)
    elif motion == "bouncing":
        direction = str(rng.choice(list(DIRECTIONS)))
    elif motion == "orbiting":
        direction = str(rng.choice(ORBIT_DIRECTIONS))
        x, y = rng.uniform(margin + _ORBIT_RADIUS, 1 - margin - _ORBIT_RADIUS, size=2)
    return ObjectSpec(shape=shape, color=color, x=float(x), y=float(y), size=size, motion=motion,
                      speed=speed, direction=direction)


def caption(spec: SceneSpec, motion: bool = True) -> str:
    """"a red circle moving left slowly and a blue square on a green striped background, camera pans left".
    ``motion=False`` leaves out object motion and camera (image captions)."""
    parts = []
    for obj in spec.objects:
        words = [f"a {obj.color} {obj.shape}"]
        if motion and obj.motion != "static":
            words.append({"linear": f"moving {obj.direction}", "bouncing": "bouncing",
                          "orbiting": f"circling {obj.direction}"}[obj.motion])
            words += {"slow": ["slowly"], "medium": [], "fast": ["quickly"]}[obj.speed]
        parts.append(" ".join(words))
    objects = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    text = f"{objects} on a {spec.background_color} {spec.background} background"
    if motion and spec.camera is not None:
        text += ", " + CAMERA_PHRASES[spec.camera]
    return text


# ------------------------------------------------------------------------------------------- rendering

_ORBIT_RADIUS = 0.15


def object_position(obj: ObjectSpec, tau: float) -> tuple[float, float]:
    """Centre (fractions of W, H) at clip time ``tau`` in [0, 1] (path length does not depend on num_frames)."""
    span = SPEEDS[obj.speed]
    if obj.motion == "static":
        return obj.x, obj.y
    if obj.motion == "linear":
        dx, dy = DIRECTIONS[obj.direction]
        return obj.x + dx * span * tau, obj.y + dy * span * tau
    if obj.motion == "bouncing":
        # Diagonal at 45 degrees to the named direction, reflected off walls at a margin of one radius.
        dx, dy = DIRECTIONS[obj.direction]
        vx, vy = (dx - dy) / math.sqrt(2), (dy + dx) / math.sqrt(2)
        lo, hi = obj.size * 1.1, 1 - obj.size * 1.1
        return _reflect(obj.x + vx * 2 * span * tau, lo, hi), _reflect(obj.y + vy * 2 * span * tau, lo, hi)
    # Orbiting; angle 0 at the right of the centre; image y points down, so +angle is clockwise on screen.
    sign = 1.0 if obj.direction == "clockwise" else -1.0
    angle = sign * 2 * span / _ORBIT_RADIUS * tau
    return obj.x + _ORBIT_RADIUS * math.cos(angle), obj.y + _ORBIT_RADIUS * math.sin(angle)


def _reflect(p: float, lo: float, hi: float) -> float:
    period = 2 * (hi - lo)
    q = (p - lo) % period
    return lo + (q if q <= hi - lo else period - q)


def _hsv_to_rgb(hue: float, sat: float, val: float) -> np.ndarray:
    hsv = np.array([[[hue, sat, val]]], dtype=np.float32)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0] * 255.0  # (3,) float in [0, 255]


def color_rgb(color: str, style: str = "plain", role: str = "object") -> tuple[int, int, int]:
    """RGB of a named colour in a style ("plain" / "personal") and role ("object", "bg_dark", "bg_light")."""
    sat, val = PALETTES[style][role]
    return tuple(int(round(c)) for c in _hsv_to_rgb(COLORS[color], sat, val))


def shape_polygon(shape: str, cx: float, cy: float, radius: float) -> np.ndarray:
    """Vertices (n, 2) of a shape centred at (cx, cy) in pixels; ``radius`` ~ the half-extent."""
    if shape == "circle":
        angles = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        radii = np.full_like(angles, radius)
    elif shape == "square":
        angles = np.deg2rad([45, 135, 225, 315])
        radii = np.full(4, radius * 0.9 * math.sqrt(2))
    elif shape == "diamond":
        angles = np.deg2rad([0, 90, 180, 270])
        radii = np.full(4, radius * 1.2)
    elif shape == "triangle":  # apex up (y down, so -90 degrees)
        angles = np.deg2rad([-90, 30, 150])
        radii = np.full(3, radius * 1.25)
    elif shape == "star":  # five points, apex up
        angles = np.deg2rad(-90 + 36 * np.arange(10))
        radii = np.where(np.arange(10) % 2 == 0, radius * 1.3, radius * 0.55)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)


def render_background(spec: SceneSpec, height: int, width: int) -> np.ndarray:
    """(H, W, 3) float32 RGB in [0, 255]: two tones of the background colour in a pattern, plus a faint
    grain (so that motion along the stripes, and on flat areas, is still measurable by optical flow)."""
    rng = np.random.default_rng(spec.background_seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) / min(height, width)
    period = float(rng.uniform(0.14, 0.22))
    if spec.background == "striped":
        theta = float(rng.choice([0.0, 45.0, 90.0, 135.0])) + float(rng.uniform(-10, 10))
        proj = xs * math.cos(math.radians(theta)) + ys * math.sin(math.radians(theta))
        mix = 0.5 + 0.5 * np.tanh(3.0 * np.sin(2 * np.pi * proj / period))
    elif spec.background == "checkered":
        phase = rng.uniform(0, 1, size=2)
        mix = 0.5 + 0.5 * np.tanh(3.0 * np.sin(2 * np.pi * (xs / period + phase[0]))
                                  * np.sin(2 * np.pi * (ys / period + phase[1])) * 2)
    else:  # cloudy: soft gaussian blobs, small enough to give texture everywhere
        mix = np.zeros_like(xs)
        for _ in range(40):
            bx, by = rng.uniform(0, max(width, height) / min(height, width), size=2)
            r = rng.uniform(0.03, 0.08)
            mix += np.exp(-((xs - bx) ** 2 + (ys - by) ** 2) / (2 * r * r))
        mix = np.clip(mix, 0, 1)
    dark = np.array(color_rgb(spec.background_color, spec.style, "bg_dark"), np.float32)
    light = np.array(color_rgb(spec.background_color, spec.style, "bg_light"), np.float32)
    image = dark + mix[..., None] * (light - dark)  # (H, W, 3)
    grain = cv2.GaussianBlur(rng.normal(0, 1, (height, width)).astype(np.float32), (0, 0), 1.2 * height / 128)
    grain *= 8.0 / (grain.std() + 1e-6)
    return np.clip(image + grain[..., None], 0, 255)


def _render_frame(spec: SceneSpec, background: np.ndarray, tau: float) -> np.ndarray:
    """Draw the objects at time ``tau`` on a copy of a (supersampled) background; float32 (H, W, 3)."""
    frame = background.copy()
    height, width = frame.shape[:2]
    unit = min(height, width)
    shift = 4  # sub-pixel vertex precision for cv2 drawing
    for obj in spec.objects:
        x, y = object_position(obj, tau)
        poly = shape_polygon(obj.shape, x * width, y * height, obj.size * unit)
        pts = np.round(poly * (1 << shift)).astype(np.int32)[None]
        cv2.fillPoly(frame, pts, color_rgb(obj.color, spec.style, "object"), cv2.LINE_AA, shift)
        if spec.style == "personal":
            thickness = max(1, int(round(OUTLINE_WIDTH * unit)))
            cv2.polylines(frame, pts, True, OUTLINE_RGB, thickness, cv2.LINE_AA, shift)
    return frame


def _downsample(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    small = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
    return np.clip(np.round(small), 0, 255).astype(np.uint8)


def make_image(spec: SceneSpec, height: int = 64, width: int = 64) -> np.ndarray:
    """(H, W, 3) uint8: the scene at clip start; never watermarked."""
    ss = _SUPERSAMPLE
    background = render_background(spec, height * ss, width * ss)
    return _downsample(_render_frame(spec, background, 0.0), height, width)


def make_video(spec: SceneSpec, num_frames: int = 16, height: int = 64, width: int = 64,
               watermark: bool = True) -> np.ndarray:
    """(num_frames, H, W, 3) uint8: objects move along their paths, then the camera move (if any) is applied,
    then the watermark is stamped (fixed on screen, like WebVid's)."""
    ss = _SUPERSAMPLE
    background = render_background(spec, height * ss, width * ss)
    taus = np.linspace(0.0, 1.0, num_frames) if num_frames > 1 else np.zeros(1)
    frames = np.stack([_render_frame(spec, background, float(t)) for t in taus])  # (f, ss*H, ss*W, 3)
    if spec.camera is not None:
        frames = camera_move(frames, spec.camera, spec.camera_strength)
    video = np.stack([_downsample(f, height, width) for f in frames])  # (f, H, W, 3)
    return add_watermark(video) if watermark else video


# ------------------------------------------------------------------------------------------- watermark

def watermark_mask(height: int, width: int) -> np.ndarray:
    """(H, W) float32 opacity template in [0, 1] (before scaling by :data:`WATERMARK_ALPHA`): a box with a
    horizontal bar, bottom-right corner.  Stroke width ~3 % of min(H, W), at least ~1.5 px."""
    ss = 4
    canvas = np.zeros((height * ss, width * ss), np.float32)
    x0, y0, x1, y1 = WATERMARK_BOX
    p0 = (int(x0 * width * ss), int(y0 * height * ss))
    p1 = (int(x1 * width * ss), int(y1 * height * ss))
    stroke = max(int(round(1.5 * ss)), int(round(0.03 * min(height, width) * ss)))
    cv2.rectangle(canvas, p0, p1, 1.0, stroke)
    ymid = (p0[1] + p1[1]) // 2
    cv2.line(canvas, (p0[0], ymid), (p1[0], ymid), 1.0, stroke)
    return cv2.resize(canvas, (width, height), interpolation=cv2.INTER_AREA)


def add_watermark(frames: np.ndarray, alpha: float = WATERMARK_ALPHA) -> np.ndarray:
    """Blend a white semi-transparent logo into every frame of (f, H, W, 3) or (H, W, 3) uint8."""
    mask = watermark_mask(frames.shape[-3], frames.shape[-2])[..., None] * alpha  # (H, W, 1)
    out = frames.astype(np.float32) * (1 - mask) + 255.0 * mask
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- dataset

def write_dataset(folder: str | Path, n: int, kind: Literal["video", "image", "style"] = "video",
                  seed: int = 0, num_frames: int = 16, height: int = 64, width: int = 64, fps: int = 8,
                  video_format: Literal["mp4", "gif"] = "mp4", camera: str | None = None,
                  camera_strength: float = 0.25, moving: bool = True, camera_share: float = 0.0,
                  camera_in_caption: bool = True) -> Path:
    """Write ``n`` samples and ``captions.csv`` (``videoid,name,page_dir``, the WebVid layout the official
    loader reads: ``{folder}/{videoid}.mp4``).  Videos are MP4 (H.264, near-lossless) or GIF; images and
    style images are PNG.  Sample i is drawn from ``default_rng([seed, i])``, so any subset is reproducible.
    ``moving=False``: videos of static objects. ``camera_share``: this fraction of the videos (``camera=None``
    only) gets one of the eight camera moves at random and its phrase in the caption, as web videos mix fixed and
    moving cameras; drawn from a separate stream, so the scenes are the same as with ``camera_share=0``.
    ``camera_in_caption=False`` leaves the move's phrase out of the captions (MotionLoRA clips: the LoRA, not the
    prompt, has to carry the move). Returns the CSV path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        move = camera
        if camera is None and kind == "video" and camera_share > 0:
            pick = np.random.default_rng([seed, i, 1])  # its own stream: scene i is unchanged by camera_share
            move = str(pick.choice(CAMERA_MOVES)) if pick.random() < camera_share else None
        spec = random_spec(rng, kind, camera=move, camera_strength=camera_strength, moving=moving)
        videoid = f"{kind}_{seed}_{i:06d}"
        if kind == "video":
            frames = make_video(spec, num_frames, height, width)
            # near-lossless MP4 (crf 12); no settings sidecar next to each of the many small files
            save_video(frames, folder / f"{videoid}.{video_format}", fps, crf=12)
            text = caption(spec if camera_in_caption else dataclasses.replace(spec, camera=None))
        else:
            cv2.imwrite(str(folder / f"{videoid}.png"), make_image(spec, height, width)[..., ::-1])
            text = caption(spec, motion=False)
        rows.append({"videoid": videoid, "name": text, "page_dir": "synthetic"})
    csv_path = folder / "captions.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["videoid", "name", "page_dir"])
        writer.writeheader()
        writer.writerows(rows)
    logger.info("wrote %d %s samples to %s", n, kind, folder)
    return csv_path


__all__ = ["SHAPES", "COLORS", "PATTERNS", "MOTIONS", "SPEEDS", "ObjectSpec", "SceneSpec", "random_spec", "caption",
           "make_image", "make_video", "add_watermark", "watermark_mask", "write_dataset", "color_rgb", "shape_polygon",
           "object_position", "render_background"]
