"""The Trainer callback that marks each saved checkpoint complete and rotates old ones (what makes a
checkpoint complete, and the folder functions, are in :mod:`dpo_lab.runs.checkpoints`)."""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import TrainerCallback

from dpo_lab.runs.checkpoints import mark_complete, rotate
from dpo_lab.runtime.collectives import wait_for_everyone
from dpo_lab.runtime.processes import is_main_process

log = logging.getLogger(__name__)


class CheckpointCallback(TrainerCallback):
    """After each save: wait for all processes, mark the checkpoint complete, rotate old ones."""

    def __init__(self, save_total_limit: int):
        self.save_total_limit = save_total_limit

    def on_save(self, args, state, control, **kwargs):
        wait_for_everyone()  # every rank has written its part (e.g. its RNG state)
        if is_main_process():
            folder = Path(args.output_dir)
            mark_complete(folder / f"checkpoint-{state.global_step}", state.global_step)
            rotate(folder, self.save_total_limit, protect=state.best_model_checkpoint)
        wait_for_everyone()  # nobody reads the folder while it changes
        return control
