"""The held-out metrics "after" training, from the evaluation the Trainer runs at its last step.

``run_experiment`` used to call ``trainer.evaluate()`` once ``train()`` returned; with ``train.eval_steps``
dividing the step count the Trainer had just evaluated the same weights at its last step, so the held-out
split was evaluated twice (identical numbers). :class:`HeldOutAfter` asks the Trainer for an evaluation at
its last step (whatever ``train.eval_steps`` says) and keeps its metrics; ``trainer.evaluate()`` is only the
fallback for a ``train()`` that ran no step (a resumed run whose checkpoint was already the last step).
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback


class HeldOutAfter(TrainerCallback):
    """Evaluate at the last optimizer step inside ``train()``; :attr:`metrics` holds that evaluation."""

    def __init__(self) -> None:
        self.metrics: dict[str, Any] | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if state.max_steps > 0 and state.global_step >= state.max_steps:
            control.should_evaluate = True
        return control

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if metrics is not None and state.max_steps > 0 and state.global_step >= state.max_steps:
            self.metrics = dict(metrics)
        return control

    def final_metrics(self, trainer: Any) -> dict[str, Any]:
        """The last step's held-out metrics, evaluating now only if no evaluation ran there: not in this
        ``train()``, nor in the attempt whose final checkpoint a resumed run started from (its log history,
        restored with the checkpoint, holds that evaluation)."""
        if self.metrics is None:
            logged = evaluated_at(trainer.state.log_history, trainer.state.global_step)
            self.metrics = logged if logged is not None else trainer.evaluate(metric_key_prefix="eval")
        return self.metrics


def evaluated_at(log_history: list[dict[str, Any]], step: int) -> dict[str, Any] | None:
    """The held-out metrics logged at ``step`` (the newest such record, without its ``step``), or None."""
    for record in reversed(log_history):
        if record.get("step") == step and "eval_loss" in record:
            return {k: v for k, v in record.items() if k != "step"}
    return None
