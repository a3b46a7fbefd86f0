"""Stop on a non-finite loss or gradient before it reaches the weights.

The Trainer quietly replaces a NaN / inf loss by the running average in its logs
(``logging_nan_inf_filter``) and lets the optimizer step on NaN gradients, so a diverged run can go on for
hours writing NaN checkpoints. :class:`NonFiniteGuard` sees every micro-batch loss (the trainer hands it
over) and, just before each optimizer step, checks the loss and the gradients of the trainable parameters.
On anything non-finite it raises :class:`NonFiniteError` on every process (the check is agreed across ranks)
before the optimizer step: the weights never take a non-finite update and no checkpoint of that step is
written. A run usually diverges for a few steps before a NaN shows, though, and the checkpoints of those
steps hold finite but exploded weights. The checkpoint the error names as the last good one is therefore the
newest complete one whose adapter weights are all finite and whose training losses up to its step were
finite and, at its step, at most :data:`SANE_LOSS_FACTOR` times the run's first logged loss (newer ones are
named with why they were passed over). ``run.py`` reports the error on one line, finishes the W&B run as
failed and exits with code 1.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import TrainerCallback

from dpo_lab.errors import NonFiniteError
from dpo_lab.runs.checkpoints import Checkpoint, incompleteness, list_checkpoints
from dpo_lab.runtime.collectives import any_process

log = logging.getLogger(__name__)

# A loss that has grown this many times over the run's first logged one (ln 2 for sigmoid DPO) is taken
# for divergence: the weights of that step are not called good.
SANE_LOSS_FACTOR = 4.0


def unhealthy(checkpoint: Checkpoint) -> str | None:
    """Why a complete checkpoint's weights are not good ones (non-finite parameters, a non-finite or
    exploded training loss up to its step), or None."""
    weights = checkpoint.path / "adapter_model.safetensors"
    if weights.is_file():
        try:
            tensors = load_file(str(weights))
        except (SafetensorError, OSError) as err:
            return f"its adapter weights cannot be read ({err})"
        bad = [name for name, tensor in tensors.items() if not bool(torch.isfinite(tensor).all())]
        if bad:
            return f"non-finite adapter weights ({bad[0]})"
    state = json.loads((checkpoint.path / "trainer_state.json").read_text())
    losses = [(e["step"], float(e["loss"])) for e in state.get("log_history", []) if "loss" in e]
    for step, loss in losses:
        if not math.isfinite(loss):
            return f"training loss {loss} at step {step}"
    if losses:
        limit = SANE_LOSS_FACTOR * max(abs(losses[0][1]), math.log(2))
        (step, loss), first = losses[-1], losses[0][1]
        if loss > limit:
            return (
                f"training loss {loss:.4g} at step {step}, over {SANE_LOSS_FACTOR:g}x the first ({first:.4g})"
            )
    return None


def last_good_checkpoint(folder: Path) -> tuple[Checkpoint | None, list[tuple[Checkpoint, str]]]:
    """The newest complete checkpoint under ``folder`` with good weights, and the newer ones passed over."""
    passed_over = []
    for checkpoint in reversed(list_checkpoints(folder)):
        if incompleteness(checkpoint) is not None:
            continue
        reason = unhealthy(checkpoint)
        if reason is None:
            return checkpoint, passed_over
        passed_over.append((checkpoint, reason))
    return None, passed_over


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
            checkpoint, passed_over = last_good_checkpoint(self.checkpoint_dir)
            skipped = "".join(f"; {c.path.name} passed over: {why}" for c, why in passed_over)
            what = problem or "loss or gradient (on another process)"
            raise NonFiniteError(step, what, checkpoint.path if checkpoint else None, skipped)
        return control
