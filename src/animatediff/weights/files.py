"""Reading users' weight files safely: ``.safetensors``, and pickled ``.ckpt``/``.pt``/``.pth``/``.bin`` only
through ``torch.load(weights_only=True)``, so a file can never run code on this machine.

Every failure (missing, truncated, corrupt, a pickle that wants to execute code) becomes one
``UserInputError`` line that names the file and the problem. When a file fails to load, its first bytes say
what it really is (an empty file, a Git LFS pointer, a saved web page, JSON, text) and the error says that;
torch's advice to retry with ``weights_only=False`` is never passed on (it would run the file's code).
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import zipfile
from functools import lru_cache
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ..errors import UserInputError

logger = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
WEIGHT_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)
# Wrappers seen around the actual weights: LDM/Lightning and AnimateDiff training ("state_dict"),
# official SparseCtrl ("controlnet"), DeepSpeed/DDP dumps ("module").
_WRAPPER_KEYS = ("state_dict", "controlnet", "module")


class _InertPickledObject:
    """Stands in for harmless metadata objects that Lightning stores in SD ``.ckpt`` files."""

    def __setstate__(self, state):  # keep nothing: only the tensors matter
        pass


# Why: many community SD1.5 .ckpt files carry Lightning's ModelCheckpoint callback state next to the
# weights; it is plain data, so we let weights_only unpickle it as an inert object instead of refusing.
_HARMLESS_GLOBALS = [
    (_InertPickledObject, "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"),
    (_InertPickledObject, "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint"),
]


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt", device="cpu") as f:
        return {key: f.get_tensor(key) for key in f.keys()}


def _load_pickle(path: Path, mmap: bool) -> object:
    with torch.serialization.safe_globals(_HARMLESS_GLOBALS):
        if not mmap:
            return torch.load(path, map_location="cpu", weights_only=True)
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            if "mmap" not in str(error) and "zip" not in str(error).lower():
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format


def _unwrap(obj: object) -> object:
    while isinstance(obj, dict):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None or any(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        obj = inner
    return obj


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    if "Weights only load failed" in text:  # keep torch's reason, drop its advice to load with weights_only=False
        reason = text.split("WeightsUnpickler error:")[-1].split(" Check the documentation")[0].strip()
        text = f"not a PyTorch checkpoint ({reason})" if "WeightsUnpickler error:" in text else "not a PyTorch checkpoint"
    return text[:300] + ("..." if len(text) > 300 else "")


def sniff(path: Path) -> str | None:
    """What a file that failed to load actually is, from its first bytes (``"is an HTML page ..."``), or None
    when they look like no known non-weight file (then it is a truncated or corrupt weight file)."""
    try:
        with open(path, "rb") as f:
            head = f.read(1024)
    except OSError:
        return None
    if not head:
        return "is empty (0 bytes; an interrupted download?), not a checkpoint"
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip()  # a UTF-8 byte-order mark, leading blank lines
    if text.startswith(b"version https://git-lfs.github.com/spec/"):
        return "is a Git LFS pointer, not the weights: run git lfs pull in the repository it came from"
    lower = text[:512].lower()
    if lower.startswith((b"<!doctype html", b"<html")) or b"<html" in lower:
        return "is an HTML page (a download that saved the web page?), not a checkpoint"
    try:
        decoded = head.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.start < len(head) - 3:  # a multi-byte character cut at the end of the sample is still text
            return None
        decoded = head[: error.start].decode("utf-8")
    if "\x00" in decoded or any(not c.isprintable() and c not in "\t\r\n" for c in decoded):
        return None
    first = " ".join(decoded.split())[:60]
    kind = "a JSON file" if text[:1] in (b"{", b"[") else "a text file"
    return f"is {kind}, not a checkpoint (it begins: {first!r})"


def _unreadable(path: Path, fallback: str) -> UserInputError:
    """The error for a file that did not load: what its bytes show it is, else ``fallback``."""
    return UserInputError(f"{path}: {sniff(path) or fallback}")


def read_state_dict(path: str | Path, *, mmap: bool = True) -> dict[str, torch.Tensor]:
    """All tensors of a weight file, unwrapped from ``state_dict``/``controlnet``/``module`` containers.

    Non-tensor entries (``animatediff_config``, ``global_step``, ...) are dropped. ``mmap`` (pickles): map
    the file instead of reading it (cheap inspection). Loaders pass ``mmap=False``: weights that stay mapped
    from the user's file would count twice in RSS once copied, and break if the file is rewritten."""
    path = Path(path)
    if not path.exists():
        raise UserInputError(f"{path}: file not found")
    if path.is_dir():
        raise UserInputError(f"{path}: is a folder, expected a weight file ({', '.join(WEIGHT_SUFFIXES)})")
    suffix = path.suffix.lower()
    if suffix not in WEIGHT_SUFFIXES:
        raise UserInputError(f"{path}: unsupported file type {suffix or '(none)'}; expected one of {', '.join(WEIGHT_SUFFIXES)}")
    try:
        raw = _load_safetensors(path) if suffix == ".safetensors" else _load_pickle(path, mmap)
    except pickle.UnpicklingError as error:
        detail = " ".join(str(error).split())
        if "Unsupported global" not in detail and "GLOBAL" not in detail:
            raise _unreadable(path, f"cannot read checkpoint (truncated or corrupt?): {_one_line(error)}") from None
        unsupported = detail.split("Unsupported global:")[-1].split(" was not")[0].strip() if "Unsupported global" in detail else ""
        what = f" ({unsupported})" if unsupported else ""
        raise UserInputError(
            f"{path}: refusing to load, this pickle needs code execution{what}; only plain tensor checkpoints are "
            f"accepted (convert it to .safetensors from a source you trust)"
        ) from None
    except SafetensorError as error:
        raise _unreadable(path, f"not a valid safetensors file (truncated or corrupt): {_one_line(error)}") from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, KeyError, IndexError, TypeError) as error:
        raise _unreadable(path, f"cannot read checkpoint (truncated or corrupt?): {_one_line(error)}") from None
    obj = _unwrap(raw)
    if not isinstance(obj, dict):
        raise UserInputError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    dropped = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if dropped:
        logger.debug("%s: ignoring %d non-tensor entries (%s)", path, len(dropped), ", ".join(map(str, dropped[:5])))
    if not tensors:
        raise UserInputError(f"{path}: contains no tensors")
    return tensors


def examples(keys, n: int = 3) -> str:
    """A few of ``keys``, sorted, for one-line error messages: ``"a, b, c, ..."``."""
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")


def read_keys(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Key -> shape, cheaply for ``.safetensors`` (header only); loads pickles fully."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors" and path.is_file():
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
        except SafetensorError as error:
            raise _unreadable(path, f"not a valid safetensors file (truncated or corrupt): {_one_line(error)}") from None
    return {k: tuple(v.shape) for k, v in read_state_dict(path).items()}


@lru_cache(maxsize=256)
def _sha256_cached(path: str, mtime_ns: int, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, streamed in 1 MiB chunks and cached per (path, mtime, size)."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        raise UserInputError(f"{path}: file not found") from None
    return _sha256_cached(str(path.resolve()), stat.st_mtime_ns, stat.st_size)
