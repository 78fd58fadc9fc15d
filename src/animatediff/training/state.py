"""``training_state.pt``: what a checkpoint needs beyond its weights to resume bit-exactly, loaded safely.

The file holds only what ``torch.load(weights_only=True)`` accepts: tensors, numbers, strings, None and
lists/tuples/dicts of them (optimizer, LR-schedule and grad-scaler state dicts are such already). The RNG states
are stored that way too: NumPy's MT19937 key goes in as an int64 tensor, not a pickled ``ndarray``.

Files written before this (NumPy state as a pickled ``ndarray``) still load: only NumPy's array-rebuilding
functions are allowed for that one load (``torch.serialization.safe_globals``, never globally). Anything else a
pickle asks for (a class whose ``__reduce__`` would run code) is refused with one line naming the file.
"""

from __future__ import annotations

import pickle
import random
import re
from pathlib import Path

import numpy as np
import torch

from ..errors import UserInputError


def rng_states() -> dict:
    """The torch, Python, NumPy (and CUDA) RNG states as plain types and tensors."""
    name, key, pos, has_gauss, cached_gaussian = np.random.get_state()  # key: (624,) uint32
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),  # (version, tuple of 625 ints, None or float): plain types
        "numpy": (str(name), torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(cached_gaussian)),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_states(state: dict) -> None:
    """Restore what ``rng_states`` returned (or an older file's NumPy ``ndarray`` key)."""
    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(state["python"]))
    name, key, pos, has_gauss, cached_gaussian = state["numpy"]
    key = key.numpy() if isinstance(key, torch.Tensor) else np.asarray(key)
    np.random.set_state((name, key.astype(np.uint32), pos, has_gauss, cached_gaussian))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(value):
    # random.setstate wants tuples all the way down; a list here would be refused
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def _legacy_numpy_globals() -> list:
    """What a pickled uint32 ``ndarray`` needs to be rebuilt (files written before the int64-tensor key)."""
    try:
        from numpy._core.multiarray import _reconstruct  # NumPy 2
    except ImportError:
        from numpy.core.multiarray import _reconstruct
    return [_reconstruct, np.ndarray, np.dtype, np.dtypes.UInt32DType]


def load_training_state(path: str | Path) -> dict:
    """``training_state.pt`` -> its dict, loaded with ``weights_only=True``.

    Raises ``UserInputError`` (one line naming ``path``) for a file that is not a training state, is damaged,
    or asks the unpickler for anything beyond tensors and plain types (nothing in it is executed)."""
    path = Path(path)
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            with torch.serialization.safe_globals(_legacy_numpy_globals()):  # an older file's NumPy RNG key
                state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle asking for code, or truncated, corrupt, not a torch file: one line
        text = " ".join(str(e).split())
        found = re.search(r"GLOBAL ([\w.]+)|but got <class '([\w.]+)'>", text) if isinstance(e, pickle.UnpicklingError) else None
        if found:
            raise UserInputError(f"{path}: refused, its pickle asks for {next(filter(None, found.groups()))} (a training "
                                 "state holds only tensors and plain values; nothing in it was run)") from None
        # torch's own text advises weights_only=False (running the file's code): keep only its reason
        reason = text.partition("WeightsUnpickler error:")[2].partition(" Check the documentation")[0].strip() \
            if "Weights only load failed" in text else text.split(". ")[0]
        raise UserInputError(f"{path}: not a readable training state, damaged or not written by animatediff train "
                             f"({type(e).__name__}{': ' + reason[:160] if reason else ''})") from None
    if not isinstance(state, dict) or not {"step", "optimizer", "lr_scheduler", "rng"} <= state.keys():
        raise UserInputError(f"{path}: not a training state written by animatediff train (missing step/optimizer/rng)")
    return state
