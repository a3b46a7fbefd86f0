"""What a person watches during training: one progress bar (step, loss, rate, time left) on stderr.

Transformers would print every log as a raw dict (PrinterCallback); the numbers go to
``log_history.jsonl`` and W&B instead, and the console shows the bar and, at the end, the before/after
table. Only the main process draws it.
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm
from transformers import TrainerCallback

from dpo_lab.runtime.processes import is_main_process


class ProgressBar(TrainerCallback):
    """A tqdm bar over the optimizer steps, with the latest training loss and held-out reward margin. (Not
    TRL's accuracy: it counts a tie as wrong, so an untrained policy, whose margins are all exactly 0, would
    read 0 where chance is 0.5; the closing table gives the tie-aware accuracy from the per-pair records.)"""

    def __init__(self) -> None:
        self.bar: Any = None
        self.eval_bar: Any = None
        self.shown: dict[str, str] = {}

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        """A held-out evaluation's batches (before training it can take minutes on a real model)."""
        if not is_main_process():
            return
        if self.eval_bar is None:
            total = len(eval_dataloader) if eval_dataloader is not None else None
            when = "before training" if state.global_step == 0 else f"step {state.global_step}"
            self.eval_bar = tqdm(total=total, desc=f"held-out eval ({when})", unit="batch", leave=False,
                                 file=sys.stderr, dynamic_ncols=True, mininterval=1.0)  # fmt: skip
        self.eval_bar.update(1)

    def on_evaluate(self, args, state, control, **kwargs):
        if self.eval_bar is not None:
            self.eval_bar.close()
            self.eval_bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        if is_main_process() and state.max_steps > 0:
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="training", unit="step",
                            file=sys.stderr, dynamic_ncols=True, mininterval=1.0)  # fmt: skip

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is None or not logs:
            return
        if "loss" in logs:
            self.shown["loss"] = f"{logs['loss']:.4f}"
        if "eval_rewards/margins" in logs:
            self.shown["eval margin"] = f"{logs['eval_rewards/margins']:.3f}"
        self.bar.set_postfix(self.shown, refresh=False)

    def on_train_end(self, args, state, control, **kwargs):
        self.close()

    def close(self) -> None:
        """End the bar's line (also when training failed, so that an error message starts its own line)."""
        for bar in (self.eval_bar, self.bar):
            if bar is not None:
                bar.close()
        self.bar = self.eval_bar = None
