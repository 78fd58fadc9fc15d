"""Outputs never destroy anything (issue 9): for many random small file trees and output targets in them,
``save_video`` either writes or raises ``UserInputError``, and nothing but the target (and its sidecar; in a
PNG folder only its ``frame_NNNN.png`` and ``settings.json``) ever changes; the same for ``train``'s
``output_dir`` on a few hand-made folders. Each case compares every path and its bytes before and after."""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
import torch

from animatediff.errors import UserInputError
from animatediff.training import load_config, train
from animatediff.video_io import save_video

from tiny_models import tiny_base_model

torch.set_num_threads(1)  # the machine is shared

CASES = 240
FRAMES = np.stack([np.full((8, 8, 3), 40 * i, np.uint8) for i in range(3)])  # 3 distinct frames, (f, H, W, 3)


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` (posix, relative) -> ("dir",), ("file", bytes) or ("link", target); links are
    not followed."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            key = path.relative_to(root).as_posix()
            if path.is_symlink():
                out[key] = ("link", os.readlink(path))
            elif path.is_dir():
                out[key] = ("dir",)
            else:
                out[key] = ("file", path.read_bytes())
    return out


# ---- random trees --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def contents(tmp_path_factory) -> dict[str, bytes]:
    """Real files of each kind the writer may meet (ours by format or not), to put under any name."""
    folder = tmp_path_factory.mktemp("kinds")
    kinds = {ext: save_video(FRAMES, folder / f"c{ext}").read_bytes() for ext in (".gif", ".webp", ".mp4")}
    kinds[".png"] = (save_video(FRAMES, folder / "frames") / "frame_0000.png").read_bytes()
    kinds["our sidecar"] = json.dumps({"generator": "animatediff", "fps": 8}).encode()
    kinds["other json"] = json.dumps({"generator": "someone else"}).encode()
    kinds["text"] = b"my notes\n"
    kinds["empty"] = b""
    return kinds


NAMES = ["clip.gif", "clip.gif.json", "clip.mp4", "clip.mp4.json", "clip.webp", "clip.webp.json", "a.GIF", "frames",
         "frame_0000.png", "frame_0001.png", "frame_0007.png", "settings.json", "notes.txt", "holiday.mp4", "sub", "out", "renders", "clips"]
TARGET_NAMES = ["clip.gif", "clip.mp4", "clip.webp", "a.GIF", "frames", "out", "renders", "new", "n.png", "n.txt"]


def build_tree(rng: random.Random, folder: Path, contents: dict[str, bytes], depth: int = 0) -> None:
    """A few random entries: files of a random kind under random names, sub-folders (some holding frames
    this program wrote, some also the user's files), links to files (some dangling)."""
    folder.mkdir(exist_ok=True)
    for name in rng.sample(NAMES, rng.randint(0, 6)):
        roll = rng.random()
        if roll < (0.8 if "." not in name else 0.15) and depth < 2:
            if rng.random() < 0.5:  # a frame folder: our frames, maybe our sidecar, maybe a file of the user's
                (folder / name).mkdir()
                for i in range(rng.randint(0, 5)):
                    (folder / name / f"frame_{i:04d}.png").write_bytes(contents[".png"])
                if rng.random() < 0.5:
                    (folder / name / "settings.json").write_bytes(contents[rng.choice(["our sidecar", "other json"])])
                if rng.random() < 0.5:
                    (folder / name / rng.choice(["notes.txt", "frame_1.png", "frame_0002.PNG"])).write_bytes(contents["text"])
            else:
                build_tree(rng, folder / name, contents, depth + 1)
        elif roll < 0.85 and rng.random() < 0.3:
            files = [p for p in folder.iterdir() if p.is_file() and not p.is_symlink()]
            os.symlink(rng.choice(files).name if files and rng.random() < 0.8 else "gone", folder / name)  # may dangle
        else:
            (folder / name).write_bytes(contents[rng.choice(list(contents))])


def pick_target(rng: random.Random, root: Path) -> Path:
    """An existing entry, a new name in an existing folder, a name under missing folders, or under a file."""
    entries = sorted(root.rglob("*"))
    folders = [root] + [p for p in entries if p.is_dir() and not p.is_symlink()]
    roll = rng.random()
    frame_folders = [p for p in folders[1:] if not p.suffix]
    if roll < 0.3 and frame_folders:
        return rng.choice(frame_folders)
    if roll < 0.45 and entries:
        return rng.choice(entries)
    if roll < 0.8:
        return rng.choice(folders) / rng.choice(TARGET_NAMES)
    if roll < 0.9:
        return rng.choice(folders) / "missing" / "deeper" / rng.choice(TARGET_NAMES)
    files = [p for p in entries if p.is_file()] or [root / "x"]
    return rng.choice(files) / rng.choice(TARGET_NAMES)


# ---- the property ----------------------------------------------------------------------------------------
SIGNATURES = {".gif": lambda b: b[:4] == b"GIF8", ".webp": lambda b: b[:4] == b"RIFF" and b[8:12] == b"WEBP",
              ".mp4": lambda b: b[4:8] == b"ftyp"}
OUR_IN_FOLDER = re.compile(r"frame_\d{4,}\.png|settings\.json")


def may_change(key: str, target: str, fmt: str, before: dict) -> bool:
    """Whether ``save_video(..., target)`` may have created, replaced or removed ``key``."""
    path, goal = PurePosixPath(key), PurePosixPath(target)
    if key in (target, target + ".json" if fmt else target):
        return True
    if fmt == "" and path.parent == goal and OUR_IN_FOLDER.fullmatch(path.name):
        return True
    return key not in before and path in goal.parents  # a missing parent folder, created


def resolved(before: dict, key: str) -> tuple | None:
    """The snapshot entry at ``key``, a link to a file counting as that file (None: nothing, or dangling)."""
    entry = before.get(key)
    if entry is not None and entry[0] == "link":
        return before.get((PurePosixPath(key).parent / entry[1]).as_posix())
    return entry


def is_ours(key: str, before: dict, target: str, fmt: str, contents: dict) -> bool:
    """Whether the writer may replace ``key`` without ``overwrite``: nothing there (or a dangling link), a file
    of the target's format, our sidecar, or, in a target folder holding only files named like ours
    (``frame_NNNN.png``, ``settings.json``), those files. A link is replaced, never the file it names."""
    entry = resolved(before, key)
    if entry is None or entry == ("dir",) and key == target and fmt == "":
        return True
    if entry[0] != "file":
        return False
    if key == target:
        return SIGNATURES[fmt](entry[1])
    if key == target + ".json":
        return entry[1] == contents["our sidecar"]
    inside = [k for k in before if PurePosixPath(k).parent == PurePosixPath(target)]
    return all(OUR_IN_FOLDER.fullmatch(PurePosixPath(k).name) and (resolved(before, k) or ("",))[0] == "file" for k in inside)


@pytest.mark.parametrize("seed", range(4))
def test_save_video_never_changes_anything_but_its_target(seed, contents, tmp_path):
    rng = random.Random(seed)
    results = {"written": 0, "refused": 0}
    for case in range(CASES // 4):
        root = tmp_path / f"case{case}"
        build_tree(rng, root, contents)
        target = pick_target(rng, root)
        overwrite, metadata = rng.random() < 0.5, rng.choice([None, {"prompt": "a red circle"}])
        fmt = target.suffix.lower()
        before = snapshot(root)
        where = f"seed {seed} case {case}: {target.relative_to(root)} overwrite={overwrite}"
        try:
            save_video(FRAMES, target, fps=8, metadata=metadata, overwrite=overwrite)
        except UserInputError:
            results["refused"] += 1
            assert snapshot(root) == before, where  # refused: nothing written, no folder created
            continue
        results["written"] += 1
        after = snapshot(root)
        key = target.relative_to(root).as_posix()
        for path in set(before) | set(after):
            if before.get(path) != after.get(path):
                assert may_change(path, key, fmt, before), f"{where}: {path} changed"
                assert overwrite or is_ours(path, before, key, fmt, contents), f"{where}: replaced {path}"
        if fmt:
            assert after[key][0] == "file" and SIGNATURES[fmt](after[key][1]), where
        else:
            assert all(after.get(f"{key}/frame_{i:04d}.png", (None,))[0] == "file" for i in range(len(FRAMES))), where
    assert results["written"] > 10 and results["refused"] > 10, results  # the trees exercise both outcomes


# ---- train's output_dir -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def captions(tmp_path_factory) -> Path:
    from animatediff.demo.world import write_dataset

    return write_dataset(tmp_path_factory.mktemp("videos"), 2, num_frames=6, height=32, width=32)


# what docs/training.md says a motion-module run writes in its output_dir (nothing else may change)
TRAIN_NAMES = {"animatediff-train.json", "checkpoints", "latest", "motion-module-final.safetensors", "train_log.csv",
               "tensorboard", "samples"}


def train_into(out: Path, captions: Path, **overrides):
    values = dict(caption_file=str(captions), size=32, num_frames=4, max_train_steps=2, checkpointing_steps=1,
                  checkpoints_total_limit=1, num_workers=0, batch_size=1, output_dir=str(out), **overrides)
    return train(load_config("motion-module", "tiny-motion-module", values), base=tiny_base_model())


def users_tree(root: Path) -> None:
    (root / "out" / "sub").mkdir(parents=True)
    (root / "out" / "notes.txt").write_text("mine")
    (root / "out" / "sub" / "clip.mp4").write_bytes(b"not really a video")
    (root / "out" / "checkpoints").mkdir()
    (root / "out" / "checkpoints" / "step-9").mkdir()
    (root / "out" / "checkpoints" / "step-9" / "keep.txt").write_text("a folder named like a checkpoint")


@pytest.mark.parametrize("case", ["new nested", "users folder", "users folder, overwrite", "own folder again", "users unet-final"])
def test_train_changes_only_its_own_files(case, captions, tmp_path):
    out = tmp_path / "out"
    if case == "new nested":
        out = tmp_path / "missing" / "deeper" / "out"
    elif case == "own folder again":
        train_into(out, captions)
        (out / "added-by-me.txt").write_text("kept")
    else:
        users_tree(tmp_path)
        if case == "users unet-final":
            (out / "unet-final").mkdir()
    (tmp_path / "beside.txt").write_text("next to the output folder")
    before = snapshot(tmp_path)
    if case in ("users folder", "users unet-final"):
        with pytest.raises(UserInputError, match="output_dir"):
            train_into(out, captions, overwrite=case == "users unet-final")
        assert snapshot(tmp_path) == before
        return
    train_into(out, captions, overwrite=case == "users folder, overwrite")
    after = snapshot(tmp_path)
    prefix = out.relative_to(tmp_path)
    for path in set(before) | set(after):
        if before.get(path) == after.get(path):
            continue
        relative = PurePosixPath(path).relative_to(prefix) if PurePosixPath(path).is_relative_to(prefix) else None
        created_parent = path not in before and PurePosixPath(path) in ([prefix] + list(prefix.parents))
        assert created_parent or relative is not None and relative.parts[0] in TRAIN_NAMES, f"{case}: {path} changed"
        if relative is not None and relative.parts[:2] == ("checkpoints", "step-9"):
            raise AssertionError(f"{case}: {path} (the user's) changed")
    assert not [p for p in after if PurePosixPath(p).name.startswith(".")]  # no temporary files or folders left
    assert (out / "motion-module-final.safetensors").is_file()
