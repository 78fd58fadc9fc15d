"""Writing and reading clips: GIF, MP4 (H.264), WebP, or a folder of PNG frames.

The format follows the output path: ``.gif``, ``.mp4``, ``.webp``, or no extension = a folder of
``frame_0000.png ...``. Every write is atomic: the output is built under a temporary name in the same
folder and moved into place with ``os.replace`` only when complete, so a failure leaves no partial file and
an existing file is never damaged before its replacement is finished.

Settings sidecar (``metadata``): ``clip.gif`` -> ``clip.gif.json`` next to it (the full file name plus
``.json``, so a GIF and an MP4 of one run do not collide); for a PNG folder, ``settings.json`` inside it.

Known format limits: GIF holds 256 colours per frame and Pillow merges identical consecutive GIF frames
into one longer frame; MP4 is lossy, 4:2:0, and odd widths/heights are padded by one edge pixel.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageSequence

from .errors import UserInputError

FORMATS = (".gif", ".mp4", ".webp", "")  # "" = folder of PNG frames
SIDECAR_IN_FOLDER = "settings.json"


def to_uint8_frames(frames: torch.Tensor | np.ndarray) -> np.ndarray:
    """``(3, f, H, W)`` float in [0, 1] (or ``(1, 3, f, H, W)``) or ``(f, H, W, 3)`` uint8 -> ``(f, H, W, 3)`` uint8."""
    if isinstance(frames, np.ndarray) and frames.dtype == np.uint8:
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"uint8 frames must be (num_frames, H, W, 3), got {frames.shape}")
        return frames
    frames = torch.as_tensor(frames)
    if frames.ndim == 5:
        if frames.shape[0] != 1:
            raise ValueError(f"save one clip at a time, got a batch of {frames.shape[0]}")
        frames = frames[0]
    if frames.ndim != 4 or frames.shape[0] != 3:
        raise ValueError(f"float frames must be (3, num_frames, H, W), got {tuple(frames.shape)}")
    frames = (frames.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    return frames.permute(1, 2, 3, 0).numpy()  # c f h w -> f h w c


def video_format(path: Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise UserInputError(f"--out {path}: unknown video format {suffix!r}; use .gif, .mp4, .webp, or a folder name without extension")
    return suffix


def sidecar_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path / SIDECAR_IN_FOLDER if video_format(path) == "" else path.with_name(path.name + ".json")


# ---- writers: each writes a complete output at `tmp` ---------------------------------------------
def _write_gif(frames: np.ndarray, tmp: Path, fps: float) -> None:
    images = [Image.fromarray(frame) for frame in frames]
    # loop=0: loop forever; GIF durations are whole milliseconds (and really centiseconds).
    images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)


def _write_webp(frames: np.ndarray, tmp: Path, fps: float) -> None:
    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(tmp, format="WEBP", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0,
                   quality=95, method=4)


def _write_mp4(frames: np.ndarray, tmp: Path, fps: float) -> None:
    import av

    f, h, w, _ = frames.shape
    # yuv420p subsamples chroma 2x2, so H.264 needs even sizes: repeat the last row/column if odd.
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    with av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():  # flush
            container.mux(packet)


def _write_png_folder(frames: np.ndarray, tmp: Path, fps: float) -> None:
    tmp.mkdir()
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(tmp / f"frame_{i:04d}.png")


_WRITERS = {".gif": _write_gif, ".webp": _write_webp, ".mp4": _write_mp4, "": _write_png_folder}


# ---- atomic placement ------------------------------------------------------------------------------
def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _replace(tmp: Path, path: Path) -> None:
    """Move the finished ``tmp`` to ``path``. Files: one atomic ``os.replace``. Folders cannot replace a
    non-empty folder atomically, so the old one is first renamed aside and removed only after the swap."""
    if not (tmp.is_dir() and path.exists()):
        os.replace(tmp, path)
        return
    backup = _temp_name(path)
    os.replace(path, backup)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(backup, path)  # put the old output back
        raise
    _remove(backup)


def _write_json_atomic(data: dict, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, default=str)
            f.write("\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the sidecar the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_video(frames: torch.Tensor | np.ndarray, path: str | os.PathLike, fps: float = 8,
               metadata: dict | None = None) -> Path:
    """Write one clip to ``path`` (format by extension, see the module docstring); returns the path.

    ``frames``: float ``(3, f, H, W)`` in [0, 1] or uint8 ``(f, H, W, 3)``. ``metadata`` goes to the JSON
    sidecar (non-JSON values such as paths are written as strings)."""
    path = Path(path)
    writer = _WRITERS[video_format(path)]
    if fps <= 0:
        raise UserInputError(f"--fps {fps}: must be positive")
    frames = to_uint8_frames(frames)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        writer(frames, tmp, fps)
        if metadata is not None and tmp.is_dir():  # the folder's sidecar moves in with the frames
            _write_json_atomic(metadata, tmp / SIDECAR_IN_FOLDER)
        _replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    if metadata is not None and not path.is_dir():
        _write_json_atomic(metadata, sidecar_path(path))
    return path


def read_frames(path: str | os.PathLike) -> np.ndarray:
    """Every frame of a GIF, WebP, MP4 or PNG folder as ``(num_frames, H, W, 3)`` uint8."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.png"))
        if not files:
            raise UserInputError(f"{path}: folder holds no PNG frames")
        return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in files])
    if not path.exists():
        raise UserInputError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".mp4":
        import av

        with av.open(str(path)) as container:
            return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
    if suffix in (".gif", ".webp"):
        with Image.open(path) as image:
            return np.stack([np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(image)])
    raise UserInputError(f"{path}: cannot read {suffix!r} videos; use .gif, .mp4, .webp or a PNG folder")
