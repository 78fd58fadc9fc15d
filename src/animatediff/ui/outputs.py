"""Results under ``--outputs DIR``: unique names (never overwriting anything), the history, downloads.

Each result is written by ``Animator.save`` with its JSON sidecar (``clip.gif`` + ``clip.gif.json``; a PNG
folder holds ``settings.json``), so the history is simply the folder's sidecars, newest first, and the
sidecar is the source when a past result's settings are sent back to the form.
"""

from __future__ import annotations

import json
import threading
import time
import zipfile
from pathlib import Path

from ..recipes import slug
from ..video_io import SIDECAR_IN_FOLDER, sidecar_path
from .safety import inside

FORMATS = {"gif": ".gif", "mp4": ".mp4", "webp": ".webp", "png frames": ""}  # the form's choices -> suffix


class Outputs:
    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def new_path(self, prompt: str, fmt: str, job_id: int) -> Path:
        """A name no file has yet: ``20260101-120000-0007-a-red-circle.gif`` (a counter is added on a clash)."""
        suffix = FORMATS[fmt]
        stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{job_id:04d}-{slug(prompt or 'prompt-travel', 6)[:60]}"
        with self._lock:
            for n in range(1000):
                path = self.root / f"{stem}{f'-{n}' if n else ''}{suffix}"
                if sidecar_path(path).exists():
                    continue
                try:  # claim the name atomically (another server on the same folder cannot take it too)
                    path.mkdir() if not suffix else open(path, "x").close()
                except FileExistsError:
                    continue
                return path
        raise RuntimeError(f"no free output name for {stem}")

    def release(self, path: Path) -> None:
        """Give back a claimed name whose job wrote nothing (still our empty file or folder)."""
        if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
            path.rmdir()
        elif path.is_file() and path.stat().st_size == 0 and not sidecar_path(path).exists():
            path.unlink()

    def history(self, limit: int = 50) -> list[Path]:
        """Past results, newest first: files with an animatediff sidecar, and PNG folders with settings.json."""
        found = []
        for sidecar in self.root.glob("*.json"):
            result = sidecar.with_name(sidecar.name.removesuffix(".json"))
            if result.is_file() and _is_ours(sidecar):
                found.append(result)
        for settings in self.root.glob(f"*/{SIDECAR_IN_FOLDER}"):
            if _is_ours(settings):
                found.append(settings.parent)
        found.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        return found[:limit]

    def resolve(self, name: str, field: str = "history") -> Path:
        """A past result named by the client (a name inside the outputs folder; anything else refused)."""
        return inside(name, self.root, field)

    def sidecar(self, result: Path) -> dict:
        return json.loads(sidecar_path(result).read_text())

    def preview(self, result: Path) -> Path:
        """What the page shows: the file itself, or a PNG folder's first frame."""
        return min(result.glob("*.png")) if result.is_dir() else result

    def downloads(self, result: Path) -> list[str]:
        """The files to offer: the clip (a PNG folder zipped once, next to it) and its sidecar."""
        if result.is_dir():
            archive = result.with_suffix(".zip")
            if not archive.exists():
                with zipfile.ZipFile(archive.with_suffix(".zip.part"), "w") as z:
                    for frame in sorted(result.iterdir()):
                        z.write(frame, f"{result.name}/{frame.name}")
                archive.with_suffix(".zip.part").rename(archive)
            return [str(archive)]
        return [str(result), str(sidecar_path(result))]


def _is_ours(sidecar: Path) -> bool:
    try:
        return json.loads(sidecar.read_text()).get("generator") == "animatediff"
    except (OSError, ValueError, AttributeError):
        return False
