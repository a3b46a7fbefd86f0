"""Stop on a non-finite loss or gradient before it reaches the weights.

The Trainer quietly replaces a NaN / inf loss by the running average in its logs
(``logging_nan_inf_filter``) and lets the optimizer step on NaN gradients, so a diverged run can go on for
hours writing NaN checkpoints. :class:`NonFiniteGuard` sees every micro-batch loss (the trainer hands it
over) and, just before each optimizer step, checks the loss and the gradients of the trainable parameters.
On anything non-finite it raises :class:`NonFiniteError` on every process (the check is agreed across ranks)
before the optimizer step: the weights never take a non-finite update and no checkpoint of that step is
written, so the newest complete checkpoint is the last good one. ``run.py`` reports the error on one line,
finishes the W&B run as failed and exits with code 1.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from dpo_lab.train.checkpoints import latest_complete
from dpo_lab.train.distributed import any_process

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """A non-finite loss or gradient at a training step; names the step and the last good checkpoint."""

    def __init__(self, step: int, what: str, last_checkpoint: Path | None):
        kept = str(last_checkpoint) if last_checkpoint else "none (no checkpoint was saved before this step)"
        super().__init__(
            f"non-finite {what} at step {step}; stopped before the optimizer step, so no weights took it. "
            f"Last good checkpoint: {kept}"
        )
        self.step = step
        self.what = what
        self.last_checkpoint = last_checkpoint


def first_nonfinite_grad(model: torch.nn.Module) -> str | None:
    """Name of the first trainable parameter whose gradient holds a NaN or inf, or None."""
    named = [(n, p.grad) for n, p in model.named_parameters() if p.requires_grad and p.grad is not None]
    if not named:
        return None
    finite = torch.stack([torch.isfinite(g).all() for _, g in named])
    if bool(finite.all()):
        return None
    return named[int((~finite).nonzero()[0])][0]


class NonFiniteGuard(TrainerCallback):
    """Raises :class:`NonFiniteError` before an optimizer step on a non-finite loss or gradient."""

    def __init__(self, checkpoint_dir: Path):
        self.checkpoint_dir = checkpoint_dir
        self.bad_loss: float | None = None

    def observe(self, step: int, loss: torch.Tensor, inputs: Mapping[str, Any]) -> None:
        """Called by the trainer with each micro-batch loss of optimizer step ``step``."""
        if self.bad_loss is None and not bool(torch.isfinite(loss).all()):
            self.bad_loss = float(loss.detach().float().reshape(-1)[0])

    def local_problem(self, model: torch.nn.Module | None) -> str | None:
        if self.bad_loss is not None:
            return f"loss ({self.bad_loss})"
        name = first_nonfinite_grad(model) if model is not None else None
        return f"gradient (in {name})" if name else None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        problem = self.local_problem(model)
        if any_process(problem is not None):
            step = state.global_step + 1
            raise NonFiniteError(step, problem or "loss or gradient (on another process)", self._last_good())
        return control

    def _last_good(self) -> Path | None:
        checkpoint = latest_complete(self.checkpoint_dir)
        return checkpoint.path if checkpoint else None
