"""Scores that only mean something on the demo world's clips (issue 4): attribute accuracy (a text-alignment
stand-in for CLIP), how visible the world's watermark is, and how much a clip looks like the personal style.

:func:`demo_scores` is the ``animatediff eval --demo-scores`` scorer, registered in the entry-point group
``animatediff.scorers`` (pyproject.toml): ``eval`` finds it there, since nothing below ``demo/`` imports
``demo/``. ``demo.reproduce`` and ``demo.report`` call this module directly.
"""

from __future__ import annotations

import re

import cv2
import numpy as np

from . import world

_SHAPE_WORDS = {"circle": "circle", "circles": "circle", "ball": "circle", "disc": "circle", "square": "square",
                "squares": "square", "box": "square", "triangle": "triangle", "triangles": "triangle",
                "star": "star", "stars": "star", "diamond": "diamond", "diamonds": "diamond",
                "rhombus": "diamond"}


def parse_prompt(prompt: str) -> dict:
    """Objects ("colour shape" pairs) and the background colour named in a demo-world prompt."""
    words = re.findall(r"[a-z]+", prompt.lower())
    objects, background = [], None
    for i, word in enumerate(words):
        if word in world.COLORS and i + 1 < len(words) and words[i + 1] in _SHAPE_WORDS:
            objects.append((word, _SHAPE_WORDS[words[i + 1]]))
    match = re.search(r"\bon an? (\w+)\b[\w\s]*?\bbackground", prompt.lower())
    if match and match.group(1) in world.COLORS:
        background = match.group(1)
    return {"objects": objects, "background": background}


def color_classes(image: np.ndarray, min_saturation: float = 0.3, min_value: float = 0.35) -> np.ndarray:
    """(H, W) int: index into ``world.COLORS`` of the nearest hue, or -1 for grey / dark pixels."""
    hsv = cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2HSV)  # H in degrees
    hues = np.array(list(world.COLORS.values()), np.float32)
    diff = np.abs(hsv[..., :1] - hues[None, None, :])
    nearest = np.argmin(np.minimum(diff, 360.0 - diff), axis=-1)
    chromatic = (hsv[..., 1] >= min_saturation) & (hsv[..., 2] >= min_value)
    return np.where(chromatic, nearest, -1)


def classify_shape(mask: np.ndarray) -> str:
    """Shape name of one binary blob from simple geometry: solidity (star), extent = area / bbox area
    (square ~1, circle ~0.79, triangle and diamond ~0.5), and the share of area in the top half of the bbox
    (triangle with apex up ~0.25, diamond ~0.5)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=cv2.contourArea)
    area = float(mask.sum())
    hull_area = max(cv2.contourArea(cv2.convexHull(contour)), 1.0)
    x, y, w, h = cv2.boundingRect(contour)
    solidity = cv2.contourArea(contour) / hull_area
    extent = area / float(w * h)
    top_share = float(mask[y:y + h // 2, x:x + w].sum()) / max(area, 1.0) if h >= 2 else 0.5
    if solidity < 0.8:
        return "star"
    if extent > 0.86:
        return "square"
    if extent > 0.66:
        return "circle"
    return "triangle" if top_share < 0.38 else "diamond"


def _components(classes: np.ndarray, color_index: int, min_area: int, max_area: int) -> list[np.ndarray]:
    count, labels, stats, _ = cv2.connectedComponentsWithStats((classes == color_index).astype(np.uint8), 8)
    return [labels == i for i in range(1, count) if min_area <= stats[i, cv2.CC_STAT_AREA] <= max_area]


def _blob_area_limits(height: int, width: int) -> tuple[int, int]:
    """(min, max) pixel area of a blob that can be one of the world's objects (not noise, not the background)."""
    return max(6, int(0.003 * height * width)), int(0.3 * height * width)


def attribute_accuracy(frames: np.ndarray, prompt: str, num_samples: int = 4) -> dict:
    """Fraction of the prompt's attributes found in the frames (a text-alignment stand-in for CLIP).

    Attributes: each "colour shape" object gives two (its colour is present as a blob; a blob of that colour
    has that shape), the background colour one (the most common hue along the frame border).  Scored on
    ``num_samples`` evenly spaced frames and averaged.  ``frames`` may be one image (H, W, 3)."""
    frames = np.asarray(frames)
    frames = frames[None] if frames.ndim == 3 else frames
    parsed = parse_prompt(prompt)
    names = list(world.COLORS)
    height, width = frames.shape[1:3]
    min_area, max_area = _blob_area_limits(height, width)
    border = np.ones((height, width), bool)
    bh, bw = max(1, height // 10), max(1, width // 10)
    border[bh:-bh, bw:-bw] = False
    per_attribute: dict[str, list[float]] = {}
    for index in np.linspace(0, len(frames) - 1, min(num_samples, len(frames))).round().astype(int):
        classes = color_classes(frames[index])
        for color, shape in parsed["objects"]:
            blobs = _components(classes, names.index(color), min_area, max_area)
            per_attribute.setdefault(f"{color} (colour of {shape})", []).append(float(bool(blobs)))
            found = any(classify_shape(b) == shape for b in blobs)
            per_attribute.setdefault(f"{shape} (shape of {color})", []).append(float(found))
        if parsed["background"] is not None:
            bg = color_classes(frames[index], min_saturation=0.12, min_value=0.2)[border]
            bg = bg[bg >= 0]
            dominant = names[int(np.bincount(bg, minlength=len(names)).argmax())] if bg.size else None
            per_attribute.setdefault(f"{parsed['background']} background", []).append(
                float(dominant == parsed["background"]))
    scores = {k: float(np.mean(v)) for k, v in per_attribute.items()}
    accuracy = float(np.mean(list(scores.values()))) if scores else float("nan")
    return {"accuracy": accuracy, "attributes": scores}


def object_presence(frames: np.ndarray, prompt: str) -> dict:
    """Share of frames in which every object the prompt names ("colour shape") is detected: a blob of that colour
    (``color_classes``, size limits as in :func:`attribute_accuracy`) that ``classify_shape`` calls that shape.
    Every frame is scored (not a sample), so an object that blinks out for a few frames lowers the share.

    ``frames``: (num_frames, H, W, 3) or one image (H, W, 3) uint8.  Returns ``share`` (in [0, 1]; NaN when the
    prompt names no object), ``objects`` (per "colour shape": its own share of frames) and ``per_frame`` (0/1)."""
    frames = np.asarray(frames)
    frames = frames[None] if frames.ndim == 3 else frames
    objects = parse_prompt(prompt)["objects"]
    if not objects:
        return {"share": float("nan"), "objects": {}, "per_frame": []}
    names = list(world.COLORS)
    min_area, max_area = _blob_area_limits(*frames.shape[1:3])
    found = np.zeros((len(frames), len(objects)), bool)  # (num_frames, objects)
    for t, frame in enumerate(frames):
        classes = color_classes(frame)
        for j, (color, shape) in enumerate(objects):
            found[t, j] = any(classify_shape(b) == shape
                              for b in _components(classes, names.index(color), min_area, max_area))
    every = found.all(axis=1)
    return {"share": float(every.mean()), "per_frame": [int(v) for v in every],
            "objects": {f"{c} {s}": float(found[:, j].mean()) for j, (c, s) in enumerate(objects)}}


def watermark_score(frames: np.ndarray) -> float:
    """How visible the demo world's corner watermark is: per frame the estimated opacity
    alpha = (mean L(logo) - mean L(ring)) / (255 - mean L(ring)) from the gray level L on the logo's pixels vs
    the pixels next to them, divided by the opacity the generator uses and averaged over frames
    (~1: as visible as in the training videos, ~0: absent)."""
    frames = np.asarray(frames)
    frames = frames[None] if frames.ndim == 3 else frames
    height, width = frames.shape[1:3]
    template = world.watermark_mask(height, width)
    logo = template > 0.5
    near = cv2.dilate((template > 0.05).astype(np.uint8), np.ones((3, 3), np.uint8), iterations=2).astype(bool)
    ring = near & (template <= 0.05)
    values = []
    for frame in frames:
        gray = frame.astype(np.float32).mean(axis=-1)
        inside, outside = float(gray[logo].mean()), float(gray[ring].mean())
        values.append((inside - outside) / max(255.0 - outside, 1.0))
    return float(np.mean(values) / world.WATERMARK_ALPHA)


def style_score(frames: np.ndarray) -> dict[str, float]:
    """Personal-style score in [0, 1] = mean of ``pastel`` (share of pixels that are light and softly
    saturated: V >= 0.78, 0.08 <= S <= 0.6) and ``outline`` (thick dark lines: pixels with V < 0.3 that survive
    a morphological opening with a (w x w) square, w ~ 3 % of min(H, W), as a share of the frame, divided by
    0.03 and capped at 1 — about what one outlined object covers).  Averaged over frames."""
    frames = np.asarray(frames)
    frames = frames[None] if frames.ndim == 3 else frames
    size = max(2, int(round(0.03 * min(frames.shape[1:3]))))
    kernel = np.ones((size, size), np.uint8)
    pastel, outline = [], []
    for frame in frames:
        hsv = cv2.cvtColor(frame.astype(np.float32) / 255.0, cv2.COLOR_RGB2HSV)
        sat, val = hsv[..., 1], hsv[..., 2]
        pastel.append(float(np.mean((val >= 0.78) & (sat >= 0.08) & (sat <= 0.6))))
        thick = cv2.morphologyEx((val < 0.3).astype(np.uint8), cv2.MORPH_OPEN, kernel)
        outline.append(min(1.0, float(thick.mean()) / 0.03))
    p, o = float(np.mean(pastel)), float(np.mean(outline))
    return {"score": 0.5 * (p + o), "pastel": p, "outline": o}


def demo_scores(frames: np.ndarray, prompt: str | None = None, fps: float = 8.0) -> dict:
    """The scorer plug-in: ``watermark_score``, ``style`` and, with a prompt, ``attributes`` of one clip
    (num_frames, H, W, 3) uint8 or image (H, W, 3); JSON-able. ``fps`` is part of the scorer interface
    (``scorer(frames, prompt, fps) -> dict``) and unused here."""
    result: dict = {"watermark_score": watermark_score(frames), "style": style_score(frames)}
    if prompt:
        result["attributes"] = attribute_accuracy(frames, prompt)
    return result
