"""One resumable-state file for the demo family's own small trainers (demo/clip.py, demo/vae_v2.py).

``state.pt`` holds everything an exact resume needs: the config, fp32 weights, the optimizer, the LR schedule,
the batch generator, the step, the losses and the seconds spent. It is read with ``weights_only=True`` like every
other checkpoint here (tensors, numbers and lists only: no code runs on load).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn


def comparable(values: dict) -> dict:
    """A config as resume compares it: ``steps`` and the time budget may grow on a resume; nothing else."""
    return {**json.loads(json.dumps(values)), "steps": 0, "max_seconds": 0}


def step(state, model: nn.Module, loss: torch.Tensor, logged: torch.Tensor, digits: int) -> None:
    """One optimisation step of a demo trainer: backward, clip the gradient norm to 1, AdamW and schedule step, then
    ``state.step += 1`` and ``logged`` (the loss or a part of it) appended to ``state.losses``."""
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    state.optimizer.step()
    state.schedule.step()
    state.step += 1
    state.losses.append(round(float(logged.detach()), digits))


def save(folder: Path, config: dict, model: nn.Module, state) -> None:
    """Write ``folder/state.pt`` atomically (``state``: optimizer, schedule, generator, step, losses, seconds)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "state.pt.tmp"
    torch.save({"config": config, "model": model.state_dict(), "optimizer": state.optimizer.state_dict(),
                "schedule": state.schedule.state_dict(), "generator": state.generator.get_state(), "step": state.step,
                "losses": state.losses, "seconds": state.seconds}, tmp)
    tmp.replace(folder / "state.pt")


def restore(folder: Path, config: dict, model: nn.Module, state, what: str) -> None:
    """Load ``folder/state.pt`` into a fresh ``model`` and ``state`` (strict); ``ValueError`` if it was trained with
    another config (``what`` names the config class in the message)."""
    saved = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
    if comparable(saved["config"]) != comparable(config):
        raise ValueError(f"{folder} was trained with another {what}; not resuming it")
    model.load_state_dict(saved["model"], strict=True)
    state.optimizer.load_state_dict(saved["optimizer"])
    state.schedule.load_state_dict(saved["schedule"])
    state.generator.set_state(saved["generator"])
    state.step, state.losses, state.seconds = saved["step"], saved["losses"], saved["seconds"]
