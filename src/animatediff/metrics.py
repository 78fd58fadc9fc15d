"""Weight-free video metrics on raw uint8 frames (num_frames, H, W, 3); formulas from
``../shared/reference/metrics.md`` (issue 4).

Motion metrics share one optical flow: OpenCV DIS (medium preset) run on each RGB channel separately, each
pixel taking the flow of the channel with the most local texture — grayscale alone loses iso-luminant edges
(a red square on a blue background is nearly invisible in gray).

- :func:`warping_error` — Lai et al. 2018 Eq. 2, with the forward-backward occlusion mask (UnFlow constants).
- :func:`temporal_flicker` — VBench ``temporal_flickering``: (255 - mean |I_{t+1} - I_t|) / 255.
- :func:`dynamic_degree` — VBench ``dynamic_degree``: mean of the top 5 % flow magnitudes per pair, thresholds
  scaled to the resolution and frame rate; :func:`is_static` — VBench's static filter (top 2 %).
- :func:`camera_motion` — similarity transform fitted to the flow (zoom, roll, pan, tilt + one of the eight
  MotionLoRA labels, camera-centric, the same conventions as :func:`animatediff.demo.world.camera_move`).
- Demo-world metrics: :func:`attribute_accuracy` (a text-alignment stand-in for CLIP), :func:`watermark_score`,
  :func:`style_score`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import cv2
import numpy as np

from .demo import world as synthetic

# ------------------------------------------------------------------------------------------ optical flow

_DIS = None  # one DIS instance, created on first use (not thread-safe; metrics run single-threaded)


def optical_flow(frame_a: np.ndarray, frame_b: np.ndarray) -> np.ndarray:
    """Flow F_{a->b} (H, W, 2) float32 in pixels, so that frame_a(x) ~ frame_b(x + F(x)), from two RGB uint8
    frames; per-channel DIS (medium), per pixel the flow of the channel with the most gradient energy."""
    global _DIS
    if _DIS is None:
        _DIS = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    flows, energies = [], []
    for c in range(frame_a.shape[2]):
        a, b = np.ascontiguousarray(frame_a[..., c]), np.ascontiguousarray(frame_b[..., c])
        flows.append(_DIS.calc(a, b, None))
        gx, gy = cv2.Sobel(a, cv2.CV_32F, 1, 0), cv2.Sobel(a, cv2.CV_32F, 0, 1)
        energies.append(cv2.GaussianBlur(gx * gx + gy * gy, (0, 0), 2.0))
    best = np.argmax(np.stack(energies), axis=0)  # (H, W) channel index
    return np.take_along_axis(np.stack(flows), best[None, ..., None], axis=0)[0]  # (c, H, W, 2) -> (H, W, 2)


def warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """warp(X, F)(x) = X(x + F(x)), bilinear, border replicated."""
    height, width = flow.shape[:2]
    grid_x, grid_y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    return cv2.remap(image, grid_x + flow[..., 0], grid_y + flow[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


def consistency_mask(flow_fw: np.ndarray, flow_bw: np.ndarray) -> np.ndarray:
    """Non-occlusion mask (H, W) bool: |F_f + B|^2 < 0.01 (|F_f|^2 + |B|^2) + 0.5 with B = warp(F_b, F_f)."""
    back = warp(flow_bw, flow_fw)
    lhs = np.sum((flow_fw + back) ** 2, axis=-1)
    return lhs < 0.01 * (np.sum(flow_fw ** 2, axis=-1) + np.sum(back ** 2, axis=-1)) + 0.5


@dataclass
class ClipFlows:
    """Forward and backward flows of consecutive pairs: (num_frames - 1, H, W, 2) each."""

    forward: np.ndarray
    backward: np.ndarray


def clip_flows(frames: np.ndarray) -> ClipFlows:
    frames = _check_frames(frames)
    fw = [optical_flow(frames[t], frames[t + 1]) for t in range(len(frames) - 1)]
    bw = [optical_flow(frames[t + 1], frames[t]) for t in range(len(frames) - 1)]
    return ClipFlows(np.stack(fw), np.stack(bw))


def _check_frames(frames: np.ndarray, min_frames: int = 2) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames (num_frames, H, W, 3), got {frames.dtype} {frames.shape}")
    if len(frames) < min_frames:
        raise ValueError(f"need at least {min_frames} frames, got {len(frames)}")
    return frames


# ---------------------------------------------------------------------------------- smoothness / flicker

def warping_error(frames: np.ndarray, flows: ClipFlows | None = None) -> float:
    """E_warp = mean_t sum_x M ||I_t/255 - warp(I_{t+1}/255, F_{t->t+1})||^2 / (3 sum_x M)   (lower = smoother)."""
    frames = _check_frames(frames)
    flows = flows or clip_flows(frames)
    errors = []
    for t in range(len(frames) - 1):
        mask = consistency_mask(flows.forward[t], flows.backward[t])
        current = frames[t].astype(np.float32) / 255.0
        warped = warp(frames[t + 1].astype(np.float32) / 255.0, flows.forward[t])
        sq = np.sum((current - warped) ** 2, axis=-1)  # (H, W)
        errors.append(float(np.sum(sq * mask) / (3.0 * max(int(mask.sum()), 1))))
    return float(np.mean(errors))


def temporal_flicker(frames: np.ndarray) -> dict[str, float]:
    """VBench temporal flickering: ``mae`` = mean_t mean_{x,c} |I_{t+1} - I_t| (gray levels) and
    ``score`` = (255 - mae) / 255 (higher = less flicker; meaningful on static clips only)."""
    frames = _check_frames(frames).astype(np.float32)
    mae = float(np.mean(np.abs(np.diff(frames, axis=0))))
    return {"score": (255.0 - mae) / 255.0, "mae": mae}


# --------------------------------------------------------------------------------------- amount of motion

def _top_fraction_mean(flow: np.ndarray, fraction: float) -> float:
    magnitude = np.sqrt(np.sum(flow ** 2, axis=-1)).ravel()
    cut = max(1, int(magnitude.size * fraction))
    return float(np.mean(np.sort(magnitude)[::-1][:cut]))


def subsample_to_8fps(frames: np.ndarray, fps: float) -> np.ndarray:
    """VBench reads every round(fps / 8)-th frame."""
    return frames[::max(1, round(fps / 8))]


def dynamic_degree(frames: np.ndarray, fps: float = 8.0, flows: ClipFlows | None = None) -> dict:
    """VBench dynamic degree.  Per pair m_t = mean of the top 5 % of |F_{t->t+1}|; the clip is dynamic if at
    least round(4 T / 16) pairs have m_t > max(1, 8 / fps) * 6 * min(H, W) / 256 (T frames after subsampling
    to ~8 fps).  Also ``degree`` = mean_t m_t / min(H, W), a continuous amount of motion."""
    frames = _check_frames(frames)
    interval = max(1, round(fps / 8))
    if interval > 1 or flows is None:
        frames = subsample_to_8fps(frames, fps)
        flows = clip_flows(frames) if len(frames) > 1 else None
    if flows is None:
        return {"dynamic": False, "degree": 0.0, "top5_flow": [], "threshold": 0.0, "count_num": 0}
    num_frames, height, width = frames.shape[:3]
    scores = [_top_fraction_mean(f, 0.05) for f in flows.forward]
    threshold = max(1.0, 8.0 / fps) * 6.0 * min(height, width) / 256.0
    count_num = round(4 * num_frames / 16.0)
    dynamic = sum(s > threshold for s in scores) >= count_num
    return {"dynamic": bool(dynamic), "degree": float(np.mean(scores) / min(height, width)),
            "top5_flow": [round(s, 4) for s in scores], "threshold": threshold, "count_num": count_num}


def is_static(frames: np.ndarray, fps: float = 8.0, flows: ClipFlows | None = None) -> bool:
    """VBench static filter with DIS instead of RAFT: top-2 % flow per pair, thres = 3 min(H, W) / 256,
    count_num = round(2 T / 16); static if at most count_num pairs exceed thres and the first<->last pairs stay
    below 2 count_num thres."""
    frames = _check_frames(frames)
    if round(fps / 8) > 1 or flows is None:
        frames = subsample_to_8fps(frames, fps)
        if len(frames) < 2:
            return True
        flows = clip_flows(frames)
    num_frames, height, width = frames.shape[:3]
    threshold = 3.0 * min(height, width) / 256.0
    count_num = round(2 * num_frames / 16.0)
    moving = sum(_top_fraction_mean(f, 0.02) > threshold for f in flows.forward)
    ends = [_top_fraction_mean(optical_flow(frames[0], frames[-1]), 0.02),
            _top_fraction_mean(optical_flow(frames[-1], frames[0]), 0.02)]
    return bool(moving <= count_num and all(e < 2 * max(count_num, 1) * threshold for e in ends))


# ---------------------------------------------------------------------------------------- camera motion

# Per-clip scales that count as "one unit" of each move (about half of camera_move's default strength 0.25:
# log-zoom 0.29, pan 0.33 of the frame, roll 22.5 degrees); a move is present when |value| / tau >= 1.
CAMERA_TAU = {"zoom": 0.1, "pan": 0.1, "tilt": 0.1, "roll_deg": 8.0}
_CAMERA_LABELS = {"zoom": ("ZoomIn", "ZoomOut"), "pan": ("PanRight", "PanLeft"), "tilt": ("TiltUp", "TiltDown"),
                  "roll_deg": ("RollingClockwise", "RollingAnticlockwise")}


def fit_similarity(flow: np.ndarray, weights: np.ndarray, iterations: int = 5,
                   cauchy_px: float = 0.5) -> tuple[float, float, float, float]:
    """Least-squares similarity motion of the CONTENT from a flow field, in centred pixel coordinates:
    u = (a-1) x - b y + t_x,  v = b x + (a-1) y + t_y.  Returns (ln s, theta (rad, + = clockwise on screen since
    y points down), t_x, t_y) with s = |(a, b)|.  Robust IRLS with Cauchy weights 1 / (1 + (r / cauchy_px)^2)
    on the residual r (px), so independently moving objects drop out (metrics.md suggests the milder
    1 / max(1, r); it let 3 moving objects bias the fit on 64 px clips)."""
    height, width = flow.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    xs -= (width - 1) / 2
    ys -= (height - 1) / 2
    keep = weights > 0
    x, y = xs[keep], ys[keep]
    u, v = flow[..., 0][keep].astype(np.float64), flow[..., 1][keep].astype(np.float64)
    if x.size < 8:
        return 0.0, 0.0, 0.0, 0.0
    ones, zeros = np.ones_like(x), np.zeros_like(x)
    # Unknowns p = (a - 1, b, t_x, t_y); rows for u then v.
    design = np.concatenate([np.stack([x, -y, ones, zeros], 1), np.stack([y, x, zeros, ones], 1)])  # (2n, 4)
    target = np.concatenate([u, v])
    w = np.concatenate([weights[keep], weights[keep]]).astype(np.float64)
    for _ in range(iterations):
        sw = np.sqrt(w)
        params = np.linalg.lstsq(design * sw[:, None], target * sw, rcond=None)[0]
        residual = np.abs(design @ params - target)
        w = np.concatenate([weights[keep], weights[keep]]) / (1.0 + (residual / cauchy_px) ** 2)
    a, b, tx, ty = params[0] + 1.0, params[1], params[2], params[3]
    return math.log(max(math.hypot(a, b), 1e-6)), math.atan2(b, a), float(tx), float(ty)


def camera_motion(frames: np.ndarray, flows: ClipFlows | None = None) -> dict:
    """Camera motion over the clip, camera-centric (same conventions as ``synthetic.camera_move``):

    - ``zoom``: summed log-scale change of the content (+ = ZoomIn),
    - ``pan``: summed horizontal camera motion as a fraction of the width (+ = PanRight: content moves left),
    - ``tilt``: summed vertical camera motion as a fraction of the height (+ = TiltUp: content moves down),
    - ``roll_deg``: summed camera roll in degrees (+ = RollingClockwise: content turns anticlockwise),
    - ``label``: the move whose |value| / CAMERA_TAU is largest, or "static" if all are below 1;
      ``moves``: every move at or above 1 (two MotionLoRAs combined should show two).

    Pixels used: textured (Sobel magnitude of the gray frame > 20), forward-backward consistent, 4 px from the
    border, outside the demo world's watermark box (an overlay fixed on screen that does not follow the camera);
    independent object motion is down-weighted by the robust fit.
    """
    frames = _check_frames(frames)
    flows = flows or clip_flows(frames)
    height, width = frames.shape[1:3]
    border = np.zeros((height, width), bool)
    border[4:-4, 4:-4] = True
    x0, y0, x1, y1 = synthetic.WATERMARK_BOX
    border[int(y0 * height) - 2:int(math.ceil(y1 * height)) + 2, int(x0 * width) - 2:int(math.ceil(x1 * width)) + 2] = False
    totals = {"zoom": 0.0, "pan": 0.0, "tilt": 0.0, "roll_deg": 0.0}
    for t in range(len(frames) - 1):
        gray = cv2.cvtColor(frames[t], cv2.COLOR_RGB2GRAY)
        grad = np.hypot(cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1))
        mask = (grad > 20) & consistency_mask(flows.forward[t], flows.backward[t]) & border
        log_scale, theta, tx, ty = fit_similarity(flows.forward[t], mask.astype(np.float64))
        totals["zoom"] += log_scale
        totals["roll_deg"] -= math.degrees(theta)  # content clockwise = camera anticlockwise
        totals["pan"] -= tx / width  # content right = camera left
        totals["tilt"] += ty / height  # content down = camera up
    z = {k: v / CAMERA_TAU[k] for k, v in totals.items()}
    moves = [_CAMERA_LABELS[k][0 if v > 0 else 1] for k, v in sorted(z.items(), key=lambda kv: -abs(kv[1]))
             if abs(v) >= 1.0]
    return {**{k: round(v, 4) for k, v in totals.items()}, "label": moves[0] if moves else "static",
            "moves": moves}


# ------------------------------------------------------------------------------------ demo-world metrics

_SHAPE_WORDS = {"circle": "circle", "circles": "circle", "ball": "circle", "disc": "circle", "square": "square",
                "squares": "square", "box": "square", "triangle": "triangle", "triangles": "triangle",
                "star": "star", "stars": "star", "diamond": "diamond", "diamonds": "diamond",
                "rhombus": "diamond"}


def parse_prompt(prompt: str) -> dict:
    """Objects ("colour shape" pairs) and the background colour named in a demo-world prompt."""
    words = re.findall(r"[a-z]+", prompt.lower())
    objects, background = [], None
    for i, word in enumerate(words):
        if word in synthetic.COLORS and i + 1 < len(words) and words[i + 1] in _SHAPE_WORDS:
            objects.append((word, _SHAPE_WORDS[words[i + 1]]))
    match = re.search(r"\bon an? (\w+)\b[\w\s]*?\bbackground", prompt.lower())
    if match and match.group(1) in synthetic.COLORS:
        background = match.group(1)
    return {"objects": objects, "background": background}


def color_classes(image: np.ndarray, min_saturation: float = 0.3, min_value: float = 0.35) -> np.ndarray:
    """(H, W) int: index into ``synthetic.COLORS`` of the nearest hue, or -1 for grey / dark pixels."""
    hsv = cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2HSV)  # H in degrees
    hues = np.array(list(synthetic.COLORS.values()), np.float32)
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


def attribute_accuracy(frames: np.ndarray, prompt: str, num_samples: int = 4) -> dict:
    """Fraction of the prompt's attributes found in the frames (a text-alignment stand-in for CLIP).

    Attributes: each "colour shape" object gives two (its colour is present as a blob; a blob of that colour
    has that shape), the background colour one (the most common hue along the frame border).  Scored on
    ``num_samples`` evenly spaced frames and averaged.  ``frames`` may be one image (H, W, 3)."""
    frames = np.asarray(frames)
    frames = frames[None] if frames.ndim == 3 else frames
    parsed = parse_prompt(prompt)
    names = list(synthetic.COLORS)
    height, width = frames.shape[1:3]
    min_area, max_area = max(6, int(0.003 * height * width)), int(0.3 * height * width)
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


def watermark_score(frames: np.ndarray) -> float:
    """How visible the demo world's corner watermark is: per frame the estimated opacity
    alpha = (mean L(logo) - mean L(ring)) / (255 - mean L(ring)) from the gray level L on the logo's pixels vs
    the pixels next to them, divided by the opacity the generator uses and averaged over frames
    (~1: as visible as in the training videos, ~0: absent)."""
    frames = np.asarray(frames)
    frames = frames[None] if frames.ndim == 3 else frames
    height, width = frames.shape[1:3]
    template = synthetic.watermark_mask(height, width)
    logo = template > 0.5
    near = cv2.dilate((template > 0.05).astype(np.uint8), np.ones((3, 3), np.uint8), iterations=2).astype(bool)
    ring = near & (template <= 0.05)
    values = []
    for frame in frames:
        gray = frame.astype(np.float32).mean(axis=-1)
        inside, outside = float(gray[logo].mean()), float(gray[ring].mean())
        values.append((inside - outside) / max(255.0 - outside, 1.0))
    return float(np.mean(values) / synthetic.WATERMARK_ALPHA)


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


# ------------------------------------------------------------------------------------------------ all

def video_metrics(frames: np.ndarray, prompt: str | None = None, fps: float = 8.0) -> dict:
    """Every metric on one clip (flows computed once); JSON-able.  Single frames get only the image metrics."""
    frames = np.asarray(frames)
    frames = frames[None] if frames.ndim == 3 else frames
    result: dict = {"num_frames": int(len(frames)), "height": int(frames.shape[1]), "width": int(frames.shape[2])}
    if len(frames) >= 2:
        flows = clip_flows(frames)
        native = round(fps / 8) <= 1  # flows of consecutive frames are the 8 fps flows VBench uses
        result["warping_error"] = warping_error(frames, flows)
        result["temporal_flicker"] = temporal_flicker(frames)
        result["dynamic_degree"] = dynamic_degree(frames, fps, flows if native else None)
        result["static"] = is_static(frames, fps, flows if native else None)
        result["camera"] = camera_motion(frames, flows)
    result["watermark_score"] = watermark_score(frames)
    result["style"] = style_score(frames)
    if prompt:
        result["attributes"] = attribute_accuracy(frames, prompt)
    return result
