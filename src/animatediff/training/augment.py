"""MotionLoRA training augmentation: the eight camera moves turned into pixels (paper §4.3, "gradually
reducing (zoom-in) or enlarging (zoom-out) the cropping area").

:func:`camera_move` turns any clip into one camera move; :func:`camera_move_truth` says what
:func:`animatediff.metrics.camera_motion` should measure on the result. The demo world renders its camera
clips with the same function, so training and evaluation share one sign convention.

Needs OpenCV (``pip install "animatediff[demo]"``); it is imported on first use, so only a MotionLoRA run asks.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import UserInputError
from ..presets import CAMERA_MOVES


def opencv():
    """The ``cv2`` module, or one clear ``UserInputError`` (field ``camera_move``) when it is not installed."""
    try:
        import cv2
    except ModuleNotFoundError:
        raise UserInputError('camera moves need OpenCV: pip install "animatediff[demo]"', field="camera_move") from None
    return cv2


def camera_move(frames: np.ndarray, move: str, strength: float = 0.25) -> np.ndarray:
    """Apply one of the eight MotionLoRA camera moves to a clip (f, H, W, C); returns the same shape and dtype.

    Each output frame is a crop of the input frame, resized back to (H, W) (paper §4.3: "gradually reducing
    (zoom-in) or enlarging (zoom-out) the cropping area"); the crop never leaves the frame, so there are no
    borders.  Move names describe the CAMERA; the content moves the opposite way on screen:

    ==================== ============================================ ==========================================
    move                 crop window over time                        what the content does on screen
    ==================== ============================================ ==========================================
    ZoomIn               shrinks from the full frame to (1-s) of it   grows by 1/(1-s) (log-scale -ln(1-s))
    ZoomOut              grows from (1-s) of the frame to full        shrinks by (1-s)
    PanLeft / PanRight   size (1-s), slides s*W to the left / right   moves RIGHT / LEFT by s/(1-s) of the width
    TiltUp / TiltDown    size (1-s), slides s*H up / down             moves DOWN / UP by s/(1-s) of the height
    RollingClockwise     rotates clockwise on screen by 90*s degrees  rotates ANTICLOCKWISE by 90*s degrees
    RollingAnticlockwise rotates anticlockwise by 90*s degrees        rotates CLOCKWISE by 90*s degrees
    ==================== ============================================ ==========================================

    (s = ``strength`` in (0, 1); image y points down.)  For rolls the window is also shrunk just enough to stay
    inside the frame at every angle.  Zoom changes the log-scale linearly in time, the others change linearly.
    :func:`camera_move_truth` gives the expected estimate.  Raises ``ValueError`` for an unknown move or a
    strength outside [0, 1).
    """
    if move not in CAMERA_MOVES:
        raise ValueError(f"unknown camera move {move!r}; expected one of {', '.join(CAMERA_MOVES)}")
    if not 0.0 <= strength < 1.0:
        raise ValueError(f"camera move strength must be in [0, 1), got {strength}")
    cv2 = opencv()
    frames = np.asarray(frames)
    assert frames.ndim == 4, f"expected (f, H, W, C), got {frames.shape}"
    num_frames, height, width = frames.shape[:3]
    work = frames.astype(np.float32) if frames.dtype not in (np.uint8, np.float32) else frames
    out = np.empty_like(work)
    for t in range(num_frames):
        tau = t / (num_frames - 1) if num_frames > 1 else 0.0
        matrix = _crop_matrix(move, strength, tau, height, width)
        # matrix maps output pixel -> input pixel (crop window), hence WARP_INVERSE_MAP.
        out[t] = cv2.warpAffine(work[t], matrix, (width, height), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_REFLECT101).reshape(out[t].shape)
    return out.astype(frames.dtype)


def _crop_matrix(move: str, strength: float, tau: float, height: int, width: int) -> np.ndarray:
    """2x3 matrix from output pixel coordinates to input coordinates at clip time tau in [0, 1]."""
    scale, angle, shift_x, shift_y = 1.0, 0.0, 0.0, 0.0  # crop side fraction, window angle (cw), centre shift
    s = strength
    if move == "ZoomIn":
        scale = (1 - s) ** tau
    elif move == "ZoomOut":
        scale = (1 - s) ** (1 - tau)
    elif move in ("PanLeft", "PanRight", "TiltUp", "TiltDown"):
        scale = 1 - s
        offset = s * (0.5 - tau)  # window goes from +s/2 to -s/2 of the frame: the camera moves to smaller x/y
        if move == "PanLeft":
            shift_x = offset * width
        elif move == "PanRight":
            shift_x = -offset * width
        elif move == "TiltUp":
            shift_y = offset * height
        else:
            shift_y = -offset * height
    else:
        max_angle = math.radians(90.0 * s)
        angle = max_angle * tau * (1 if move == "RollingClockwise" else -1)
        scale = _roll_crop(max_angle, height, width)
    cos, sin = math.cos(angle), math.sin(angle)
    cx, cy = (width - 1) / 2, (height - 1) / 2
    # input = centre + shift + scale * R(angle) @ (output - centre); in y-down pixels, R(+angle) turns the
    # window clockwise on screen, so the content appears to turn anticlockwise.
    a, b = scale * cos, -scale * sin
    c, d = scale * sin, scale * cos
    return np.array([[a, b, cx + shift_x - a * cx - b * cy],
                     [c, d, cy + shift_y - c * cx - d * cy]], dtype=np.float64)


def _roll_crop(max_angle: float, height: int, width: int) -> float:
    """Largest crop fraction whose window, rotated by any angle in [0, max_angle], stays inside the frame."""
    scale = 1.0
    for angle in np.linspace(0, max_angle, 16):
        cos, sin = abs(math.cos(angle)), abs(math.sin(angle))
        scale = min(scale, width / (width * cos + height * sin), height / (width * sin + height * cos))
    return scale


def camera_move_truth(move: str, strength: float = 0.25) -> dict[str, float]:
    """Ground truth of :func:`camera_move` over the whole clip, in the camera-centric convention of
    :func:`animatediff.metrics.camera_motion`: zoom (log-scale, + in), pan (fraction of the width, + right),
    tilt (fraction of the height, + up), roll_deg (degrees, + clockwise)."""
    s = strength
    truth = {"zoom": 0.0, "pan": 0.0, "tilt": 0.0, "roll_deg": 0.0}
    key, sign = {"ZoomIn": ("zoom", 1), "ZoomOut": ("zoom", -1), "PanRight": ("pan", 1), "PanLeft": ("pan", -1),
                 "TiltUp": ("tilt", 1), "TiltDown": ("tilt", -1), "RollingClockwise": ("roll_deg", 1),
                 "RollingAnticlockwise": ("roll_deg", -1)}[move]
    truth[key] = sign * {"zoom": -math.log(1 - s), "pan": s / (1 - s), "tilt": s / (1 - s),
                         "roll_deg": 90.0 * s}[key]
    return truth
