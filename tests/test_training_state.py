"""training_state.pt: written so that ``torch.load(weights_only=True)`` reads it, and read only that way."""

from __future__ import annotations

import os
import random
import shutil

import numpy as np
import pytest
import torch

from animatediff.errors import UserInputError
from animatediff.training.loop import train
from animatediff.training.state import load_training_state, rng_states, set_rng_states

from test_training import make_config
from tiny_models import tiny_base_model

torch.set_num_threads(1)  # the machine is shared


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished 2-step motion-module run (checkpoint at step 2)."""
    from animatediff.demo.world import write_dataset

    root = tmp_path_factory.mktemp("state")
    csv_path = write_dataset(root / "videos", 2, num_frames=8, height=32, width=32)
    config = make_config("motion-module", csv_path, root / "run")
    train(config, base=tiny_base_model())
    return config, root / "run" / "checkpoints" / "step-000002"


class RunsCode:
    """Unpickling this would call ``os.mkdir(marker)``: proof that code in the file ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_saved_state_loads_with_weights_only(run):
    _, checkpoint = run
    state = torch.load(checkpoint / "training_state.pt", map_location="cpu", weights_only=True)
    assert state["step"] == 2 and set(state["rng"]) >= {"torch", "python", "numpy"}


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    random.seed(3), np.random.seed(4), torch.manual_seed(5)
    np.random.standard_normal()  # a cached Gaussian in NumPy's state too
    torch.save({"step": 0, "optimizer": {}, "lr_scheduler": {}, "rng": rng_states()}, tmp_path / "training_state.pt")
    expected = (random.random(), np.random.standard_normal(3), torch.rand(3))
    set_rng_states(load_training_state(tmp_path / "training_state.pt")["rng"])
    again = (random.random(), np.random.standard_normal(3), torch.rand(3))
    assert expected[0] == again[0] and np.array_equal(expected[1], again[1]) and torch.equal(expected[2], again[2])


def test_an_older_state_file_with_a_pickled_numpy_key_still_loads(tmp_path):
    """Files written before the RNG key became a tensor held NumPy's ndarray (the lead's runs may resume)."""
    np.random.seed(9)
    old = {"step": 1, "optimizer": {}, "lr_scheduler": {},
           "rng": {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}}
    torch.save(old, tmp_path / "training_state.pt")
    expected = np.random.standard_normal(4)
    set_rng_states(load_training_state(tmp_path / "training_state.pt")["rng"])
    assert np.array_equal(np.random.standard_normal(4), expected)


def test_a_state_whose_pickle_would_run_code_is_refused_in_one_line(run, tmp_path):
    config, checkpoint = run
    resume = tmp_path / "step-000002"
    shutil.copytree(checkpoint, resume)
    marker = tmp_path / "code-ran"
    state = torch.load(resume / "training_state.pt", weights_only=False)
    state["rng"]["payload"] = RunsCode(marker)
    torch.save(state, resume / "training_state.pt")
    config.output_dir = str(tmp_path / "resumed")
    with pytest.raises(UserInputError) as caught:
        train(config, base=tiny_base_model(), resume=resume)
    line = str(caught.value)
    assert "\n" not in line and line.startswith(f"{resume / 'training_state.pt'}: refused") and "posix.mkdir" in line, line
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"not a torch file", b"PK\x03\x04 truncated zip"])
def test_a_damaged_state_file_is_one_line_naming_it(tmp_path, content):
    path = tmp_path / "training_state.pt"
    path.write_bytes(content)
    with pytest.raises(UserInputError) as caught:
        load_training_state(path)
    line = str(caught.value)
    assert "\n" not in line and line.startswith(f"{path}: not a readable training state") and "weights_only" not in line, line
