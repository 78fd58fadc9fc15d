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
  MotionLoRA labels, camera-centric, the same conventions as :func:`animatediff.training.augment.camera_move`).
- :func:`psnr`, :func:`ssim` — one frame against a spatially aligned reference (e.g. the image an
  image-to-video clip was given for its frame 0); meaningless for frames that moved.

Scores that need a particular world (the demo's attribute accuracy, watermark and style scores) live with
that world (``animatediff.demo.scores``) and reach ``animatediff eval`` as scorer plug-ins.
Needs OpenCV (``pip install "animatediff[demo]"``); without it, importing this module raises one
``UserInputError`` line saying so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import UserInputError

try:
    import cv2
except ModuleNotFoundError:  # OpenCV is an optional dependency (the [demo] extra)
    raise UserInputError('the video metrics need OpenCV: pip install "animatediff[demo]"') from None

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


Box = tuple[float, float, float, float]  # (x0, y0, x1, y1) as fractions of (W, H)


def camera_motion(frames: np.ndarray, flows: ClipFlows | None = None, ignore_box: Box | None = None) -> dict:
    """Camera motion over the clip, camera-centric (same conventions as ``training.augment.camera_move``):

    - ``zoom``: summed log-scale change of the content (+ = ZoomIn),
    - ``pan``: summed horizontal camera motion as a fraction of the width (+ = PanRight: content moves left),
    - ``tilt``: summed vertical camera motion as a fraction of the height (+ = TiltUp: content moves down),
    - ``roll_deg``: summed camera roll in degrees (+ = RollingClockwise: content turns anticlockwise),
    - ``label``: the move whose |value| / CAMERA_TAU is largest, or "static" if all are below 1;
      ``moves``: every move at or above 1 (two MotionLoRAs combined should show two).

    Pixels used: textured (Sobel magnitude of the gray frame > 20), forward-backward consistent, 4 px from the
    border, and, when given, outside ``ignore_box`` (x0, y0, x1, y1 in fractions of W, H; 2 px margin added)
    — for an overlay fixed on screen that does not follow the camera, such as a watermark; independent
    object motion is down-weighted by the robust fit.
    """
    frames = _check_frames(frames)
    flows = flows or clip_flows(frames)
    height, width = frames.shape[1:3]
    border = np.zeros((height, width), bool)
    border[4:-4, 4:-4] = True
    if ignore_box is not None:
        x0, y0, x1, y1 = ignore_box
        border[max(0, int(y0 * height) - 2):int(math.ceil(y1 * height)) + 2,
               max(0, int(x0 * width) - 2):int(math.ceil(x1 * width)) + 2] = False  # max: no wrap-around at 0
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


# ------------------------------------------------------------------------------------ image vs reference

def _check_pair(image: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(image), np.asarray(reference)
    if a.shape != b.shape or a.ndim != 3 or a.shape[-1] != 3 or a.dtype != np.uint8 or b.dtype != np.uint8:
        raise ValueError(f"expected two uint8 images (H, W, 3) of one shape, got {a.dtype} {a.shape} and {b.dtype} {b.shape}")
    return a.astype(np.float64), b.astype(np.float64)


def psnr(image: np.ndarray, reference: np.ndarray) -> float:
    """10 log10(255^2 / MSE) in dB over all pixels and channels (inf for identical images)."""
    a, b = _check_pair(image, reference)
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def ssim(image: np.ndarray, reference: np.ndarray) -> float:
    """Wang et al. 2004 SSIM, per channel then averaged: 11x11 Gaussian window (sigma 1.5), K1 0.01, K2 0.03,
    data range 255 (``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, channel_axis=-1)``, up to its border handling: here borders are reflected)."""
    a, b = _check_pair(image, reference)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    blur = lambda x: cv2.GaussianBlur(x, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)  # noqa: E731
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2, blur(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


# ------------------------------------------------------------------------------------------------ all

def video_metrics(frames: np.ndarray, fps: float = 8.0, ignore_box: Box | None = None) -> dict:
    """Every metric on one clip (flows computed once); JSON-able.  A single frame (H, W, 3) or a one-frame clip
    gets only its size.  ``ignore_box``: a screen-fixed region :func:`camera_motion` leaves out."""
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
        result["camera"] = camera_motion(frames, flows, ignore_box)
    return result
