"""Checkpoints that never lose work, in a folder that is never a user's: atomic saves of the trainable
weights (official key layout) plus the full training state for an exact resume.

Layout of ``output_dir`` (every name training writes there; nothing else in the folder is ever touched)::

    animatediff-train.json              marks the folder as a training output (written before anything else)
    checkpoints/step-000500/            one directory per save, renamed into place only when complete
        motion_module.safetensors       (or motion_lora / domain_adapter .safetensors, or unet/ for image)
        training_state.pt               optimiser, LR schedule, step, RNG states, raw LoRA weights
        run.json                        mode + model identity, checked by --resume
    latest                              a text file naming the newest complete checkpoint
    <mode>-final.safetensors            a copy of the last export (unet-final/ folder for image mode)
    train_log.csv, tensorboard/, samples/step-N/    the loop's logs and validation clips

``check_output_dir`` decides before any work whether a run may write there at all. Temporary files and
folders get new unique names, created here, so removing one removes only what this run made; the only
other things ever removed are this program's own ``checkpoints/step-N`` and ``unet-final`` folders.

The exported files carry no ``module.`` prefix (we export from the module objects, never from the DDP
wrapper) and store the config as safetensors metadata.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..errors import UserInputError
from ..video_io import check_parent_writable, write_json_atomic

logger = logging.getLogger(__name__)

WEIGHT_FILES = {
    "motion-module": "motion_module.safetensors",
    "motion-lora": "motion_lora.safetensors",
    "domain-adapter": "domain_adapter.safetensors",
    "sparsectrl": "sparsectrl.safetensors",  # the official SparseCtrl key layout (training/sparsectrl.py)
    "image": "unet",  # a diffusers UNet folder (config.json + diffusion_pytorch_model.safetensors)
}

# ---- the output folder: ours, or refused ------------------------------------------------------------
FIELD = "output_dir"
MARKER = "animatediff-train.json"
OUR_FILES = {MARKER, "latest", "train_log.csv"} | {f"{m}-final.safetensors" for m in WEIGHT_FILES if m != "image"}
OUR_FOLDERS = {"checkpoints", "unet-final", "samples", "tensorboard"}
_CHECKPOINT_NAME = re.compile(r"step-\d{6,}")
_UNET_FILE = re.compile(r"config\.json|diffusion_pytorch_model(-\d+-of-\d+)?\.safetensors(\.index\.json)?")


def _is_our_checkpoint(path: Path) -> bool:
    """A complete ``checkpoints/step-N`` as save_checkpoint writes it (run.json with a model signature)."""
    if not (_CHECKPOINT_NAME.fullmatch(path.name) and path.is_dir() and not path.is_symlink()):
        return False
    try:
        info = json.loads((path / "run.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and "model_signature" in info and (path / "training_state.pt").is_file()


def _is_our_unet_export(path: Path) -> bool:
    """``unet-final`` as export_final writes it: a real folder holding only a diffusers UNet's files."""
    return path.is_dir() and not path.is_symlink() and all(_UNET_FILE.fullmatch(p.name) and p.is_file() for p in path.iterdir())


def _has_marker(folder: Path) -> bool:
    try:
        return json.loads((folder / MARKER).read_text()).get("generator") == "animatediff"
    except (OSError, ValueError, AttributeError):
        return False


def is_training_output(folder: str | os.PathLike) -> bool:
    """A folder ``claim_output_dir`` marked, or one an earlier version wrote (``latest`` naming its checkpoint)."""
    folder = Path(folder)
    if _has_marker(folder):
        return True
    try:
        name = (folder / "latest").read_text().strip()
    except (OSError, UnicodeDecodeError):
        return False
    return bool(_CHECKPOINT_NAME.fullmatch(name)) and _is_our_checkpoint(folder / "checkpoints" / name)


def check_output_dir(output_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse an ``output_dir`` training may not write; call it before any data or model is read. Returns it.

    Allowed: a new folder (missing parents are created), an empty folder, or a folder this program made
    (:func:`is_training_output`: a re-run or ``--resume`` writes there again, replacing only its own files).
    Refused with ``UserInputError`` naming ``output_dir``: a file, a path under a file, a folder without
    write permission, a file where training writes a folder (``checkpoints``) or the reverse, and, unless
    ``overwrite``, any other folder. With ``overwrite`` a run writes its files into such a folder (files at
    the names in the module docstring are replaced, nothing else is touched), but it is still refused where
    it would remove a folder of the user's (``unet-final``, ``checkpoints/step-N``)."""
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise UserInputError("exists and is a file; the training output is a folder (nothing was written)", field=FIELD, value=path)
    check_parent_writable(path, FIELD, path)  # path itself when it exists, else its nearest existing ancestor
    if not path.is_dir():
        return path
    wrong = sorted(n for n in OUR_FILES if (path / n).is_dir()) + sorted(n for n in OUR_FOLDERS if (path / n).is_file())
    if wrong:
        raise UserInputError(f"{', '.join(wrong)} in it: training writes a {'file' if wrong[0] in OUR_FILES else 'folder'} under "
                             "that name; move it away or choose another output_dir (nothing was written)", field=FIELD, value=path)
    entries = sorted(p.name for p in path.iterdir())
    if not entries or is_training_output(path):
        return path
    if not overwrite:
        examples = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise UserInputError(
            f"the folder exists, was not made by animatediff train and holds {len(entries)} entries ({examples}); choose "
            "a new or empty folder, or overwrite to write this run's files into it (nothing else is touched)", field=FIELD, value=path)
    checkpoints = path / "checkpoints"
    theirs = (["unet-final"] if (path / "unet-final").exists() else []) + [
        f"checkpoints/{p.name}" for p in sorted(checkpoints.iterdir() if checkpoints.is_dir() else [])
        if _CHECKPOINT_NAME.fullmatch(p.name) and not _is_our_checkpoint(p)]
    if theirs:
        raise UserInputError(f"{', '.join(theirs)} in it: not written by animatediff train, and overwrite never replaces a "
                             "folder of yours; move it away or choose another output_dir (nothing was written)", field=FIELD, value=path)
    return path


def claim_output_dir(output_dir: Path) -> None:
    """Create the folder (after :func:`check_output_dir`) and mark it as this program's before writing anything else."""
    output_dir.mkdir(parents=True, exist_ok=True)
    if not _has_marker(output_dir):
        write_json_atomic({"generator": "animatediff", "written_by": "animatediff train",
                           "note": "a later run into this folder replaces the files animatediff train writes here"}, output_dir / MARKER)


# ---- atomic writes ------------------------------------------------------------------------------------
def _new_temp(path: Path, folder: bool = False) -> Path:
    """Create a new, uniquely named temporary file or folder next to ``path`` (it never existed: it is ours)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    if folder:
        tmp.mkdir()
    else:
        tmp.touch(exist_ok=False)
    return tmp


def _remove_temp(tmp: Path) -> None:
    if tmp.is_dir():
        shutil.rmtree(tmp, ignore_errors=True)  # ours: made by _new_temp for this write
    else:
        tmp.unlink(missing_ok=True)


def _place_file(write, path: Path) -> None:
    """``write(tmp)`` a complete file, then move it to ``path`` with one atomic rename."""
    tmp = _new_temp(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        _remove_temp(tmp)
        raise


def _place_folder(tmp: Path, target: Path) -> None:
    """Move the complete folder ``tmp`` to ``target``. An existing ``target`` (the caller checked it is ours)
    is renamed aside first and removed after, so a complete folder is in place at all but one instant."""
    if not target.exists():
        os.replace(tmp, target)
        return
    old = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.old")
    os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old)  # ours: the previous copy of this program's own checkpoint / unet-final, replaced just now


def write_text_atomic(path: Path, text: str) -> None:
    _place_file(lambda tmp: tmp.write_text(text), path)


# ---- checkpoints and the final export ---------------------------------------------------------------------
def save_checkpoint(
    output_dir: Path, step: int, mode: str, weights: dict[str, torch.Tensor] | None, unet, metadata: dict[str, str],
    training_state: dict, run_info: dict, keep: int | None,
) -> Path:
    """Write ``checkpoints/step-{step}`` via a temporary directory and one rename; update ``latest``.
    Replaces an earlier save at the same step only if it is this program's (else ``UserInputError``)."""
    root = Path(output_dir) / "checkpoints"
    final = root / f"step-{step:06d}"
    if final.exists() and not _is_our_checkpoint(final):
        raise UserInputError(f"{final} exists and was not written by animatediff train; not replacing it", field=FIELD, value=output_dir)
    root.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp(final, folder=True)
    try:
        if mode == "image":
            unet.save_pretrained(tmp / "unet", safe_serialization=True)
        else:
            save_file(weights, str(tmp / WEIGHT_FILES[mode]), metadata=metadata)
        torch.save(training_state, tmp / "training_state.pt")
        (tmp / "run.json").write_text(json.dumps(run_info, indent=2))
        _place_folder(tmp, final)  # a save at the same step (e.g. signal right after a periodic save) replaces it
    except BaseException:
        _remove_temp(tmp)
        raise
    write_text_atomic(Path(output_dir) / "latest", final.name)
    _prune(root, keep)
    logger.info("saved checkpoint %s", final)
    return final


def _prune(root: Path, keep: int | None) -> None:
    if not keep:
        return
    steps = sorted((p for p in root.iterdir() if _is_our_checkpoint(p)), key=lambda p: int(p.name[len("step-"):]))
    for old in steps[:-keep]:
        shutil.rmtree(old, ignore_errors=True)  # ours: a complete step-N this program wrote (_is_our_checkpoint)


def export_final(output_dir: Path, checkpoint: Path, mode: str) -> Path:
    """Copy the newest weights next to the checkpoints as ``<mode>-final...`` (atomically). An existing
    ``unet-final`` is replaced only if it is a UNet folder (``check_output_dir`` refused a user's)."""
    source = checkpoint / WEIGHT_FILES[mode]
    if mode == "image":
        target = Path(output_dir) / "unet-final"
        if target.exists() and not _is_our_unet_export(target):
            raise UserInputError(f"{target} exists and is not a UNet folder animatediff train wrote; not replacing it "
                                 f"(the trained UNet is in {source})", field=FIELD, value=output_dir)
        tmp = _new_temp(target, folder=True)
        try:
            shutil.copytree(source, tmp, dirs_exist_ok=True)
            _place_folder(tmp, target)
        except BaseException:
            _remove_temp(tmp)
            raise
        return target
    target = Path(output_dir) / f"{mode}-final.safetensors"
    _place_file(lambda tmp: shutil.copyfile(source, tmp), target)
    return target


def find_checkpoint(resume: str | Path) -> Path:
    """``--resume`` accepts an output directory (its ``latest``) or one ``step-N`` checkpoint directory."""
    path = Path(resume)
    if (path / "training_state.pt").is_file():
        return path
    latest = path / "latest"
    if latest.is_file():
        checkpoint = path / "checkpoints" / latest.read_text().strip()
        if (checkpoint / "training_state.pt").is_file():
            return checkpoint
    raise UserInputError(f"--resume {path}: no checkpoint there (expected a training output dir or a checkpoints/step-N dir)")


def check_resumable(checkpoint: Path, run_info: dict) -> None:
    """Refuse a checkpoint from another mode or model (architecture) than this run."""
    saved = json.loads((checkpoint / "run.json").read_text())
    for key in ("mode", "base_model", "model_signature"):
        if saved.get(key) != run_info.get(key):
            raise UserInputError(f"--resume {checkpoint}: {key} is {saved.get(key)!r} there, {run_info.get(key)!r} in this run")
