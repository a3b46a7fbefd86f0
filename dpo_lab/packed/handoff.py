"""What a job receives from the pack that trained its adapter, and how its own trainer takes it: the
trained weights, the training log replayed through the job's callbacks, the step times, the task answers."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from peft import set_peft_model_state_dict
from transformers import TrainerState
from transformers.trainer_utils import TrainOutput

from dpo_lab.errors import NonFiniteError
from dpo_lab.evaluation.ahead import lend_answers
from dpo_lab.train.speed import StepClock
from dpo_lab.train.trainer import DPOTrainer

log = logging.getLogger(__name__)

_lent: Any = None  # the PackedTraining of the job about to run (set by the launcher around one job)


@contextmanager
def lend(training: Any) -> Iterator[None]:
    """Around one job's run: its share of the packed training, for :func:`train_or_finish` to take."""
    global _lent
    _lent = training
    try:
        yield
    finally:
        _lent = None
        lend_answers(None)


def train_or_finish(trainer: Any, resume_from_checkpoint: str | None) -> Any:
    """``trainer.train(...)``, or, for a job whose adapter a pack trained, the same outcome from the pack
    (dpo_lab.packed.handoff.finish_as_trained)."""
    global _lent
    training, _lent = _lent, None
    if training is None:
        return trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    lend_answers(training.task_answers)
    return finish_as_trained(trainer, training)


@dataclass
class PackedTraining:
    """One job's outcome of a packed training, enough to finish the job as if it had trained alone.

    ``adapter``: the trained weights as PEFT saves them; ``log_history``: the job's training log entries
    (Trainer's ``state.log_history``); ``metrics``: Trainer.train()'s output metrics; ``step_times``: wall and
    process CPU time at the end of each optimizer step; ``error``: why the job left the pack, if it did.
    """

    adapter: dict[str, torch.Tensor] = field(default_factory=dict)
    log_history: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    global_step: int = 0
    epoch: float = 0.0
    num_input_tokens_seen: int = 0
    training_loss: float = 0.0
    step_times: list[tuple[float, float]] = field(default_factory=list)
    pack_size: int = 1
    error: NonFiniteError | None = None
    # the task evaluation's answers, generated in the pack (see Pack.generate): conversations, answers of
    # the base ("before") and of this job's adapter ("after"), and the seconds the pack's generation took
    task_answers: dict[str, Any] | None = None
    # LoRA matrix elements of every job of the pack, in pack order (the FLOP model of a packed step)
    pack_lora_params: list[int] = field(default_factory=list)

    def to_state(self) -> dict[str, Any]:
        """Plain values and tensors only (what ``torch.load(weights_only=True)`` reads back)."""
        state = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "error"}
        state["error"] = None if self.error is None else [self.error.step, self.error.what]
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> PackedTraining:
        result = cls(**{**state, "error": None})
        if state["error"] is not None:
            result.error = NonFiniteError(state["error"][0], state["error"][1], None)
        return result


def finish_as_trained(trainer: DPOTrainer, packed: PackedTraining) -> TrainOutput:
    """What ``trainer.train()`` would have done, for a job whose adapter the pack trained.

    The trainer (a normal job's, with a fresh adapter and the job's callbacks) runs the held-out evaluation
    "before" if its arguments ask for it (the adapter is still untrained), takes the pack's weights for its
    adapter, and replays the pack's training log through its callbacks (log history file, W&B), with the
    step clock set from the pack's step times. A job that left the pack raises its NonFiniteError.
    """
    args, handler = trainer.args, trainer.callback_handler
    trainer.state = TrainerState()
    trainer.state.compute_steps(args, max(packed.global_step, 1))
    trainer.state.init_training_references(trainer, max(packed.global_step, 1), args.num_train_epochs, None)
    trainer.control = handler.on_train_begin(args, trainer.state, trainer.control)
    if args.eval_on_start:
        trainer._evaluate(None, None, skip_scheduler=True)
    if packed.error is not None:
        raise packed.error
    set_peft_model_state_dict(trainer.model, packed.adapter)
    state = trainer.state
    for entry in packed.log_history:
        logs = {k: v for k, v in entry.items() if k != "step"}
        state.global_step = entry.get("step", packed.global_step)
        state.epoch = logs.get("epoch", state.epoch)
        state.num_input_tokens_seen = logs.get("num_input_tokens_seen", state.num_input_tokens_seen)
        state.log_history.append(dict(entry))
        trainer.control = handler.on_log(args, state, trainer.control, logs)
    state.global_step, state.epoch = packed.global_step, packed.epoch
    state.num_input_tokens_seen = packed.num_input_tokens_seen
    for callback in handler.callbacks:
        if isinstance(callback, StepClock) and packed.step_times:
            (first, first_cpu), (last, last_cpu) = packed.step_times[0], packed.step_times[-1]
            callback.first_step_at, callback.first_step_cpu = first, first_cpu
            callback.last_step_at, callback.last_step_cpu = last, last_cpu
            callback.steps = len(packed.step_times)
            callback.pack_lora_params = list(packed.pack_lora_params)
    trainer.control = handler.on_train_end(args, state, trainer.control)
    if not math.isfinite(packed.training_loss):
        log.warning("packed job finished with a non-finite mean training loss")
    return TrainOutput(state.global_step, packed.training_loss, dict(packed.metrics))
