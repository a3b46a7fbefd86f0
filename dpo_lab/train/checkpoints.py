"""The Trainer callback that marks each saved checkpoint complete and rotates old ones (what makes a
checkpoint complete, and the folder functions, are in :mod:`dpo_lab.runs.checkpoints`)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import TrainerCallback

from dpo_lab.errors import NonFiniteError
from dpo_lab.runs.checkpoints import latest_complete, mark_complete, rotate
from dpo_lab.runtime.collectives import any_process, wait_for_everyone
from dpo_lab.runtime.processes import is_main_process

log = logging.getLogger(__name__)


class CheckpointCallback(TrainerCallback):
    """After each save: wait for all processes, mark the checkpoint complete, rotate old ones."""

    def __init__(self, save_total_limit: int):
        self.save_total_limit = save_total_limit

    def on_save(self, args, state, control, **kwargs):
        wait_for_everyone()  # every rank has written its part (e.g. its RNG state)
        folder = Path(args.output_dir)
        path = folder / f"checkpoint-{state.global_step}"
        bad = non_finite_weights(path) if is_main_process() else None
        if any_process(bad is not None):  # every rank stops: a checkpoint is never complete over such weights
            last = latest_complete(folder)
            raise NonFiniteError(
                state.global_step, f"adapter weights ({bad})", last.path if last else None,
                consequence=f"an update made them so; {path.name} is not marked complete, never resumed from",
            )  # fmt: skip
        if is_main_process():
            mark_complete(path, state.global_step)
            rotate(folder, self.save_total_limit, protect=state.best_model_checkpoint)
        wait_for_everyone()  # nobody reads the folder while it changes
        return control


def non_finite_weights(checkpoint: Path) -> str | None:
    """The first adapter tensor of a saved checkpoint holding a NaN or an inf (its name), or None. A step's
    loss and gradients can be finite while the update it takes is not (a learning rate that overflows):
    the weights are checked before the checkpoint is called complete."""
    from safetensors.torch import load_file

    weights = checkpoint / "adapter_model.safetensors"
    if not weights.is_file():
        return None
    for name, tensor in load_file(str(weights)).items():
        if not bool(torch.isfinite(tensor).all()):
            return name
    return None
