"""Writing and reading clips: GIF, MP4 (H.264), WebP, or a folder of PNG frames.

The format follows the output path: ``.gif``, ``.mp4``, ``.webp``, or no extension = a folder of
``frame_0000.png ...``. Every write is atomic: the output is built under a temporary name in the same
folder and moved into place with ``os.replace`` only when complete, so a failure leaves no partial file and
an existing file is never damaged before its replacement is finished. ``check_output`` says what may be
replaced at all: never a user's file or folder of another kind (see its docstring).

Frames may come as one array or streamed, as an iterable of uint8 chunks (``GenerationResult.iter_frames``):
writers consume them one frame at a time, so a long clip is never held whole (Pillow's GIF and WebP writers
are the exception, see the writers); the file is the same, byte for byte, either way.

Settings sidecar (``metadata``): ``clip.gif`` -> ``clip.gif.json`` next to it (the full file name plus
``.json``, so a GIF and an MP4 of one run do not collide); for a PNG folder, ``settings.json`` inside it.

Readers (every video read of the package goes through here): :func:`read_clip` / :func:`read_frames` read a
whole clip and repeat back the frames a GIF/WebP writer merged; :func:`count_frames` and
:func:`read_frames_at` decode selected frames of a video file for the training loader.

Known format limits: GIF holds 256 colours per frame and Pillow merges identical consecutive GIF frames
into one longer frame; MP4 is lossy, 4:2:0, and odd widths/heights are padded by one edge pixel.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from fractions import Fraction
from functools import partial
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, ImageSequence

from .errors import UserInputError

logger = logging.getLogger(__name__)

FORMATS = (".gif", ".mp4", ".webp", "")  # "" = folder of PNG frames
SIDECAR_IN_FOLDER = "settings.json"


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """Frames ``(n, 3, H, W)`` float in [0, 1] -> ``(n, H, W, 3)`` uint8, rounded to nearest: the pixels every
    video file stores (``to_uint8_frames`` and the streamed decode in generation/vae.py both use it, so streamed and whole-clip
    files agree)."""
    frames = (frames.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    return frames.permute(0, 2, 3, 1).numpy()  # n c h w -> n h w c


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
    return to_uint8(frames.transpose(0, 1))  # c f h w -> f c h w -> f h w c uint8


Frames = Union[torch.Tensor, np.ndarray, Iterable[np.ndarray]]


def each_frame(frames: Frames) -> Iterator[np.ndarray]:
    """One frame ``(H, W, 3)`` uint8 at a time, from a whole clip (what :func:`to_uint8_frames` takes) or from
    an iterable of uint8 chunks ``(n, H, W, 3)`` (streamed: ``GenerationResult.iter_frames``), which is read
    lazily, one chunk at a time. Raises ``ValueError`` for a chunk of another layout or size, or no frames."""
    if isinstance(frames, (torch.Tensor, np.ndarray)):
        frames = [to_uint8_frames(frames)]
    size = None
    for chunk in frames:
        if not (isinstance(chunk, np.ndarray) and chunk.dtype == np.uint8):
            raise ValueError("streamed frames must be uint8 chunks (num_frames, H, W, 3)")
        chunk = to_uint8_frames(chunk)  # checks the layout
        if size is not None and chunk.shape[1:] != size:
            raise ValueError(f"frames of one clip must share a size: {chunk.shape[1:3]} after {size[:2]}")
        size = chunk.shape[1:]
        yield from chunk
    if size is None:
        raise ValueError("no frames to write")


def video_format(path: str | os.PathLike, field: str = "out") -> str:
    """The output format of ``path``: ``.gif``, ``.mp4``, ``.webp``, or ``""`` (a folder of PNG frames)."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise UserInputError(f"unknown video format {suffix!r}; use .gif, .mp4, .webp, or a folder name without extension",
                             field=field, value=path)
    return suffix


def sidecar_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path / SIDECAR_IN_FOLDER if video_format(path) == "" else path.with_name(path.name + ".json")


# ---- frame rates ----------------------------------------------------------------------------------
GIF_MIN_DELAY_CS = 2  # browsers play GIF delays of 0-1 centiseconds at about 10 fps, so 2 cs (50 fps) is the floor


def gif_delay_cs(fps: float) -> int:
    """GIF frame delay in whole centiseconds (the format's unit): the nearest to ``1/fps``, at least 2."""
    return max(GIF_MIN_DELAY_CS, round(100 / fps))


def effective_fps(path: str | os.PathLike, fps: float) -> float:
    """The frame rate a player will actually show for ``fps`` in this format (GIF: ``100 / delay``)."""
    return 100 / gif_delay_cs(fps) if video_format(path) == ".gif" else float(fps)


# ---- writers: each writes a complete output at `tmp` from an iterator of (H, W, 3) uint8 frames ------
# GIF and WebP go through Pillow, which keeps every frame until the file is assembled (GIF: palette frames,
# 1 byte per pixel; WebP: RGB images, 3 bytes per pixel); MP4 and PNG frames are written as they arrive.
def _write_gif(frames: Iterator[np.ndarray], tmp: Path, fps: float) -> None:
    first = Image.fromarray(next(frames))
    # loop=0: loop forever. Pillow truncates milliseconds to centiseconds, so hand it whole centiseconds.
    first.save(tmp, format="GIF", save_all=True, append_images=map(Image.fromarray, frames),
               duration=10 * gif_delay_cs(fps), loop=0)


def _write_webp(frames: Iterator[np.ndarray], tmp: Path, fps: float) -> None:
    first = Image.fromarray(next(frames))
    first.save(tmp, format="WEBP", save_all=True, append_images=map(Image.fromarray, frames), duration=round(1000 / fps),
               loop=0, quality=95, method=4)


MP4_CRF = 18  # H.264 constant rate factor: 18 is visually lossless; lower is closer to the frames and larger


def _write_mp4(frames: Iterator[np.ndarray], tmp: Path, fps: float, crf: int = MP4_CRF) -> None:
    import av

    first = next(frames)
    h, w, _ = first.shape
    with av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = w + w % 2, h + h % 2
        stream.pix_fmt = "yuv420p"
        # One x264 thread: its frame threads make the bytes depend on CPU timing (about 1 run in 8 differed on a
        # busy machine), while one thread is byte-reproducible and costs little at these sizes (~14 ms per 512² frame).
        stream.options = {"crf": str(crf), "threads": "1"}
        for frame in itertools.chain([first], frames):
            # yuv420p subsamples chroma 2x2, so H.264 needs even sizes: repeat the last row/column if odd.
            frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():  # flush
            container.mux(packet)


def _write_png_folder(frames: Iterator[np.ndarray], tmp: Path, fps: float) -> None:
    tmp.mkdir()
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(tmp / frame_name(i))


_WRITERS = {".gif": _write_gif, ".webp": _write_webp, ".mp4": _write_mp4, "": _write_png_folder}


# ---- output targets: what may be written where ------------------------------------------------------
_OUR_FOLDER_FILE = re.compile(r"frame_\d{4,}\.png|" + re.escape(SIDECAR_IN_FOLDER))
_SIGNATURES = {  # how a file of each format starts: anything else at the target is not ours to replace
    ".gif": lambda head: head[:4] == b"GIF8",
    ".webp": lambda head: head[:4] == b"RIFF" and head[8:12] == b"WEBP",
    ".mp4": lambda head: head[4:8] == b"ftyp",
}
_KIND_NAMES = {".gif": "GIF", ".webp": "WebP", ".mp4": "MP4"}


def frame_name(index: int) -> str:
    return f"frame_{index:04d}.png"


def _is_ours_in_folder(name: str) -> bool:
    return bool(_OUR_FOLDER_FILE.fullmatch(name))


def _has_signature(path: Path, fmt: str) -> bool:
    try:
        with open(path, "rb") as f:
            return _SIGNATURES[fmt](f.read(12))
    except OSError:
        return False


def _is_our_sidecar(path: Path) -> bool:
    try:
        return json.loads(path.read_text()).get("generator") == "animatediff"
    except (OSError, ValueError, AttributeError):
        return False


def check_parent_writable(folder: Path, field: str, target: Path) -> None:
    """``folder`` (or, if it does not exist yet, its nearest existing ancestor) must be a writable folder."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserInputError(f"cannot create {folder}: {existing} is a file, not a folder", field=field, value=target)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserInputError(f"no permission to write in {existing}", field=field, value=target)


def check_output(path: str | os.PathLike, overwrite: bool = False, field: str = "out") -> Path:
    """Refuse an output target that cannot be written or whose writing would destroy something; call it
    before any heavy work (``save_video`` calls it again just before writing). Returns the path.

    Allowed: a new path; an existing file of the same format (a GIF at ``clip.gif``: a re-run replaces it);
    an existing folder for PNG frames that is empty or holds only this program's ``frame_NNNN.png`` and
    ``settings.json``. Refused with ``UserInputError`` naming ``field``: an unknown extension, a parent that
    is a file or not writable, a folder where a file goes, a file where a folder goes, and, unless
    ``overwrite``, a file of another kind or a folder holding other files (with ``overwrite`` only our own
    files in it are replaced; the rest stay). The sidecar (``clip.gif.json``) follows the same rules."""
    path = Path(path)
    fmt = video_format(path, field)
    check_parent_writable(path.parent, field, path)
    if fmt == "":
        if path.exists() and not path.is_dir():
            raise UserInputError("exists and is a file; PNG frames need a folder name (nothing was written)", field=field, value=path)
        if path.is_dir():
            if not os.access(path, os.W_OK | os.X_OK):
                raise UserInputError(f"no permission to write in the folder {path}", field=field, value=path)
            foreign = sorted(p.name for p in path.iterdir() if not (_is_ours_in_folder(p.name) and p.is_file()))
            if foreign and not overwrite:
                examples = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
                raise UserInputError(
                    f"the folder exists and holds {len(foreign)} entries that are not frames written by animatediff "
                    f"({examples}); choose a new name, or overwrite to replace only its frame_NNNN.png and "
                    f"{SIDECAR_IN_FOLDER} (nothing else is touched)", field=field, value=path)
            taken = sorted(p.name for p in path.iterdir() if _is_ours_in_folder(p.name) and not p.is_file())
            if taken:  # overwrite replaces our files by name, never a folder of the user's under such a name
                raise UserInputError(f"{', '.join(taken[:3])} in the folder: not a file, and overwrite never replaces a "
                                     "folder; move it away or choose a new name (nothing was written)", field=field, value=path)
        return path
    check_file_target(path, lambda p: _has_signature(p, fmt), f"a {_KIND_NAMES[fmt]} file", overwrite, field)
    check_file_target(sidecar_path(path), _is_our_sidecar, "an animatediff settings sidecar", overwrite, field, value=path)
    return path


def check_file_target(target: Path, is_ours, kind: str, overwrite: bool, field: str, value: object = None) -> None:
    """A file output may replace an existing file only if ``is_ours(target)`` (it is ``kind``) or ``overwrite``;
    never a folder. Raises ``UserInputError`` naming ``field`` (with ``value``, default the target)."""
    target = Path(target)
    value = target if value is None else value
    if target.is_dir():
        raise UserInputError(f"{target} is a folder; give a file name", field=field, value=value)
    if target.exists() and not overwrite and not is_ours(target):
        raise UserInputError(f"{target} exists and is not {kind}; choose a new name, or overwrite to replace it",
                             field=field, value=value)


# ---- atomic placement ------------------------------------------------------------------------------
def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


def _remove_temp(tmp: Path) -> None:
    """Remove a temporary output this module created (never anything else)."""
    if tmp.is_dir() and not tmp.is_symlink():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.unlink(missing_ok=True)


def _place_folder(tmp: Path, path: Path) -> None:
    """Move the finished frame folder ``tmp`` to ``path``. A new folder moves in with one atomic rename; into
    an existing folder each file is moved with its own atomic ``os.replace``, stale frames of an earlier, longer
    clip are removed (they are ours by name) and everything else in the folder is left alone."""
    if not path.exists():
        os.replace(tmp, path)
        return
    new = {p.name for p in tmp.iterdir()}
    for name in sorted(new - {SIDECAR_IN_FOLDER}) + sorted(new & {SIDECAR_IN_FOLDER}):  # sidecar last
        os.replace(tmp / name, path / name)
    for old in path.iterdir():
        if old.name not in new and old.is_file() and _is_ours_in_folder(old.name) and old.name != SIDECAR_IN_FOLDER:
            old.unlink()
    tmp.rmdir()


def write_json_atomic(data: dict, path: Path) -> None:
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


def save_video(frames: Frames, path: str | os.PathLike, fps: float = 8,
               metadata: dict | Callable[[], dict] | None = None, overwrite: bool = False, crf: int = MP4_CRF) -> Path:
    """Write one clip to ``path`` (format by extension, see the module docstring); returns the path.

    ``frames``: float ``(3, f, H, W)`` in [0, 1], uint8 ``(f, H, W, 3)``, or an iterable of uint8 chunks
    ``(n, H, W, 3)`` (e.g. ``GenerationResult.iter_frames()``), consumed chunk by chunk while the file is
    written, only after the target passed its checks; the file is the same, byte for byte, as from the whole
    clip at once. ``fps``: frames per second (fractional rates such as 24000/1001 are kept in MP4/WebP; GIF
    rounds to whole centiseconds, at most 50 fps). ``metadata`` goes to the JSON sidecar with ``fps`` set to
    the rate actually written (and ``fps_requested`` when that differs); non-JSON values such as paths are
    written as strings; a function returning the dict is called after the frames are written (so it can
    report what streaming measured, e.g. the decode time). The target is checked with ``check_output(path,
    overwrite)`` first: nothing of the user's is ever replaced. ``crf``: the H.264 quality of an MP4 (lower =
    closer to the frames, larger); other formats ignore it. A failure (a bad frame, an exception inside the
    iterable) leaves no partial output and any earlier output unchanged; the iterable is closed."""
    path = Path(path)
    writer = _WRITERS[video_format(path)]
    if writer is _write_mp4 and crf != MP4_CRF:
        writer = partial(writer, crf=crf)
    if not fps > 0:
        raise UserInputError("must be positive", field="fps", value=fps)
    if isinstance(frames, (torch.Tensor, np.ndarray)):
        frames = [to_uint8_frames(frames)]  # a bad layout is refused before anything is written
    written_fps = effective_fps(path, fps)
    if written_fps != fps and fps > 100 / GIF_MIN_DELAY_CS:
        logger.warning("fps %g: a GIF cannot play faster than %g fps; writing %g fps", fps, written_fps, written_fps)

    def settings() -> dict | None:
        found = metadata() if callable(metadata) else metadata
        if found is not None and written_fps != fps:
            found = {**found, "fps": written_fps, "fps_requested": fps}
        return found

    check_output(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        with closing(each_frame(frames)) as stream:
            writer(stream, tmp, fps)
        if tmp.is_dir() and (found := settings()) is not None:  # the folder's sidecar moves in with the frames
            write_json_atomic(found, tmp / SIDECAR_IN_FOLDER)
        if tmp.is_dir():
            _place_folder(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException:
        _remove_temp(tmp)
        if hasattr(frames, "close"):
            frames.close()  # a generator that decodes (and may hold an upcast VAE) stops here
        raise
    if not path.is_dir() and (found := settings()) is not None:
        write_json_atomic(found, sidecar_path(path))
    return path


# ---- readers -----------------------------------------------------------------------------------------
READABLE = (".gif", ".webp", ".mp4", ".png", "")  # "" = folder of PNG frames; ".png" = one image
MERGED_CLIP_PERIOD_MS = 125.0  # a GIF/WebP whose every frame merged into one: assume 8 fps


def read_clip(path: str | os.PathLike, fps: float | None = None) -> tuple[np.ndarray, float | None]:
    """``(frames, fps)``: every frame of a GIF, WebP, MP4, PNG folder or single PNG image as uint8
    ``(num_frames, H, W, 3)``, and the frame rate the file states (None when it states none: PNG, or a
    GIF/WebP without frame durations).

    GIF and WebP frame durations are honoured: Pillow's writer merges identical consecutive frames into one
    longer frame, so a frame shown k times as long as one frame period is repeated k times (a static 16-frame
    clip stays 16 frames). The period is 1000 / ``fps`` ms when given, else the shortest duration in the
    file (else 125 ms, 8 fps, when the whole clip merged into one frame); the rate returned is 1000 / period.
    Raises ``UserInputError`` for a missing path, an empty folder or another extension."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.png"))
        if not files:
            raise UserInputError(f"{path}: folder holds no PNG frames")
        return np.stack([_read_rgb(p) for p in files]), None
    if not path.exists():
        raise UserInputError(f"{path}: no such file or folder")
    suffix = path.suffix.lower()
    if suffix == ".png":
        return _read_rgb(path)[None], None
    if suffix == ".mp4":
        import av

        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            rate = float(stream.average_rate) if stream.average_rate else None
            return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]), rate
    if suffix in (".gif", ".webp"):
        return _read_animated(path, fps)
    raise UserInputError(f"{path}: cannot read {suffix!r} files; use .gif, .mp4, .webp, .png or a PNG folder")


def read_frames(path: str | os.PathLike, fps: float | None = None) -> np.ndarray:
    """Every frame of a GIF, WebP, MP4, PNG folder or PNG image as ``(num_frames, H, W, 3)`` uint8; merged
    GIF/WebP frames are repeated back (see :func:`read_clip`)."""
    return read_clip(path, fps)[0]


def _read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _read_animated(path: Path, fps: float | None) -> tuple[np.ndarray, float | None]:
    frames, durations = [], []
    with Image.open(path) as image:
        for frame in ImageSequence.Iterator(image):
            frames.append(np.asarray(frame.convert("RGB")))
            durations.append(float(frame.info.get("duration") or 0))
    if not all(d > 0 for d in durations):
        return np.stack(frames), None
    period = 1000.0 / fps if fps else (min(durations) if len(frames) > 1 else MERGED_CLIP_PERIOD_MS)
    repeats = [max(1, int(round(d / period))) for d in durations]
    clip = np.stack([f for f, k in zip(frames, repeats) for _ in range(k)])  # (num_frames, H, W, 3)
    return clip, 1000.0 / period


def count_frames(path: str | os.PathLike) -> int:
    """Frames in a video file (container header, else a decode pass); raises the decoder's error on an
    unreadable file. A GIF counts its stored frames (merged ones once), as :func:`read_frames_at` indexes them."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if stream.frames:
            return int(stream.frames)
        return sum(1 for _ in container.decode(stream))


def read_frames_at(path: str | os.PathLike, indices: np.ndarray) -> np.ndarray:
    """Decode only the frames at ``indices`` (sorted, may repeat) of a video file -> uint8
    ``(len(indices), H, W, 3)``; stops decoding after the last one (the training loader's reader). Raises
    ``ValueError`` when the file ends before the last index."""
    import av

    wanted = set(int(i) for i in indices)
    last = int(np.max(indices))
    frames: dict[int, np.ndarray] = {}
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in wanted:
                frames[i] = frame.to_ndarray(format="rgb24")
            if i >= last:
                break
    if wanted - set(frames):
        raise ValueError(f"{path}: only {len(frames)} of the frames up to {last} could be decoded")
    return np.stack([frames[int(i)] for i in indices])
