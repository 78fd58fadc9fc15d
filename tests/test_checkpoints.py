import pytest
import torch
from safetensors.torch import save_file

from animatediff.weights.files import file_sha256, read_keys, read_state_dict
from animatediff.errors import UserInputError

from fixtures import write_code_execution_pickle, write_corrupt, write_truncated_safetensors


def test_reads_safetensors_and_unwrapped_pickles(tmp_path):
    tensors = {"a.weight": torch.randn(3, 2), "b": torch.arange(4)}
    save_file(tensors, str(tmp_path / "x.safetensors"))
    for name, obj in [("plain.ckpt", tensors), ("wrapped.ckpt", {"state_dict": tensors, "global_step": 7}),
                      ("sparse.pth", {"controlnet": tensors}), ("ds.pt", {"module": tensors}),
                      ("extra.bin", {**tensors, "animatediff_config": {"x": 1}})]:
        torch.save(obj, tmp_path / name)
    for name in ("x.safetensors", "plain.ckpt", "wrapped.ckpt", "sparse.pth", "ds.pt", "extra.bin"):
        loaded = read_state_dict(tmp_path / name)
        assert loaded.keys() == tensors.keys(), name
        assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    assert read_keys(tmp_path / "x.safetensors") == {"a.weight": (3, 2), "b": (4,)}


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing.safetensors", "file not found"),
        (lambda p: write_truncated_safetensors(p / "trunc.safetensors"), "truncated or corrupt"),
        (lambda p: write_corrupt(p / "noise.safetensors"), "truncated or corrupt"),
        (lambda p: write_corrupt(p / "noise.ckpt"), "truncated or corrupt"),
        (lambda p: write_code_execution_pickle(p / "evil.ckpt"), "needs code execution"),
        (lambda p: (p / "notes.txt").write_text("hi") and p / "notes.txt", "unsupported file type"),
    ],
)
def test_bad_files_raise_one_line_user_errors(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(UserInputError) as info:
        read_state_dict(path)
    text = str(info.value)
    assert path.name in text and message in text and "\n" not in text


def test_truncated_ckpt_is_a_user_error(tmp_path):
    torch.save({"w": torch.randn(256, 256)}, tmp_path / "full.ckpt")
    data = (tmp_path / "full.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserInputError, match="cut.ckpt"):
        read_state_dict(tmp_path / "cut.ckpt")


def test_sha256_is_streamed_and_cached_per_mtime(tmp_path):
    import hashlib

    path = tmp_path / "f.bin"
    path.write_bytes(b"abc" * 1000)
    assert file_sha256(path) == hashlib.sha256(b"abc" * 1000).hexdigest()
    path.write_bytes(b"changed!")
    import os

    os.utime(path, ns=(1, 10**18))
    assert file_sha256(path) == hashlib.sha256(b"changed!").hexdigest()


def test_lightning_callback_metadata_in_sd_ckpt_is_tolerated(tmp_path, monkeypatch):
    """Community SD .ckpt files carry Lightning's ModelCheckpoint state; it is inert data, not code."""
    import sys
    import types

    module = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")

    class ModelCheckpoint:
        def __init__(self):
            self.best_model_path = "x"

    ModelCheckpoint.__module__ = module.__name__
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    module.ModelCheckpoint = ModelCheckpoint
    for name in ("pytorch_lightning", "pytorch_lightning.callbacks", module.__name__):
        monkeypatch.setitem(sys.modules, name, module if name == module.__name__ else types.ModuleType(name))
    torch.save({"state_dict": {"w": torch.ones(2)}, "callbacks": {"ModelCheckpoint": ModelCheckpoint()}}, tmp_path / "sd.ckpt")
    monkeypatch.delitem(sys.modules, module.__name__)
    assert list(read_state_dict(tmp_path / "sd.ckpt")) == ["w"]


# ---- a file that is not weights says what it is, and never suggests weights_only=False --------------------
from fixtures import BROKEN_DOWNLOADS, write_broken_download  # noqa: E402


@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors", ".bin"])
@pytest.mark.parametrize("kind", list(BROKEN_DOWNLOADS))
def test_broken_download_says_what_the_file_is(tmp_path, kind, suffix):
    from animatediff.weights.detect import describe_file

    path = write_broken_download(tmp_path / f"mm_sd_v15_v2{suffix}", kind)
    for read in (read_state_dict, read_keys, describe_file):
        with pytest.raises(UserInputError) as info:
            read(path)
        text = str(info.value)
        assert text.startswith(f"{path}: ") and BROKEN_DOWNLOADS[kind][1] in text and "\n" not in text, text
        assert "weights_only" not in text and "truncated" not in text, text
    if kind == "lfs":
        assert "git lfs pull" in text


def test_corrupt_pickle_error_keeps_the_reason_without_the_weights_only_advice(tmp_path):
    path = write_corrupt(tmp_path / "noise.ckpt")
    with pytest.raises(UserInputError) as info:
        read_state_dict(path)
    text = str(info.value)
    assert "truncated or corrupt" in text and "weights_only" not in text and "Unsupported operand" in text, text
