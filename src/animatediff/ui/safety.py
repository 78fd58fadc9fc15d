"""What the web UI accepts from a client: picked names, never paths; uploads of a known kind and size.

A browser (or any HTTP client) can send any string in any field. The UI never opens a path it was sent:
model pickers send a label that is looked up in the server's own list (``pick``), past results are names
looked up inside ``--outputs`` (``inside``), and uploads must be files Gradio itself received, of an allowed
type and size (``check_upload``). Every refusal is logged with the client's value (``ui.safety`` logger) and
raised as ``UserInputError`` naming the field, so the page shows one line like any other bad input.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import UserInputError

logger = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 64 * 2**20  # default upload limit (--max-upload-mb)
VIDEO_TYPES = (".gif", ".mp4", ".webp", ".webm", ".mov", ".png")
IMAGE_TYPES = (".png", ".jpg", ".jpeg", ".webp")
# first bytes of each accepted type: an upload is checked by content, not only by its name
_SIGNATURES = {".gif": (b"GIF8",), ".png": (b"\x89PNG",), ".jpg": (b"\xff\xd8",), ".jpeg": (b"\xff\xd8",),
               ".webp": (b"RIFF",), ".webm": (b"\x1a\x45\xdf\xa3",), ".mkv": (b"\x1a\x45\xdf\xa3",)}


def refuse(detail: str, field: str, value: object) -> UserInputError:
    """Log a refused client value (a possible attack) and return the error to raise."""
    logger.warning("refused %s %r: %s", field, value, detail)
    return UserInputError(detail, field=field, value=value)


def looks_like_path(value: str) -> bool:
    """A picker value that tries to name a file (``../x``, ``/etc/passwd``, ``C:\\x``) instead of a listed entry."""
    return any(part in value for part in ("/", "\\", "..", "\x00")) or (len(value) > 1 and value[1] == ":")


def pick(value: str | None, choices: dict[str, str], field: str) -> str | None:
    """The server-side path of the picker entry ``value`` (a label of ``choices``); None for no choice.

    Anything not listed is refused (and logged as a traversal attempt when it looks like a path)."""
    if value in (None, ""):
        return None
    if value in choices:
        return choices[value]
    if isinstance(value, str) and looks_like_path(value):
        raise refuse("not a listed entry; paths are never accepted (path traversal refused)", field, value)
    raise refuse("not in the list (refresh the page?)", field, value)


def inside(name: str, root: str | os.PathLike, field: str) -> Path:
    """``root / name`` if it resolves inside ``root`` (symlinks followed), else refused and logged."""
    root = Path(root).resolve()
    if not isinstance(name, str) or not name or "\x00" in name:
        raise refuse("not a file name", field, name)
    target = (root / name).resolve()
    if target != root and root not in target.parents:
        raise refuse(f"outside {root} (path traversal refused)", field, name)
    return target


def check_upload(path: str | None, field: str, types: tuple[str, ...], upload_roots: list[Path],
                 max_bytes: int = MAX_UPLOAD_BYTES) -> str | None:
    """An uploaded file's path if it is one Gradio received (inside its upload folder), of an allowed type by
    name and content, and at most ``max_bytes``; None when nothing was uploaded."""
    if path in (None, ""):
        return None
    where = Path(path)
    roots = [Path(r).resolve() for r in upload_roots]
    resolved = where.resolve()
    if not any(resolved == r or r in resolved.parents for r in roots):
        raise refuse("not an uploaded file (only uploads are read; path traversal refused)", field, path)
    suffix = where.suffix.lower()
    if suffix not in types:
        raise refuse(f"file type {suffix or '(none)'} not accepted; expected {', '.join(types)}", field, where.name)
    if not resolved.is_file():
        raise refuse("upload is missing", field, where.name)
    size = resolved.stat().st_size
    if size > max_bytes:
        raise refuse(f"upload of {size / 2**20:.1f} MiB is over the {max_bytes / 2**20:g} MiB limit", field, where.name)
    signatures = _SIGNATURES.get(suffix, ())
    if signatures or suffix in (".mp4", ".mov"):
        with open(resolved, "rb") as f:
            head = f.read(16)
        if not head.startswith(signatures) and not (suffix in (".mp4", ".mov") and head[4:8] == b"ftyp"):
            raise refuse(f"content is not {suffix[1:].upper()}", field, where.name)
    return str(resolved)
