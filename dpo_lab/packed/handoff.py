"""What a job receives from the pack that trained its adapter, and how its own trainer takes it.

The packed launcher trains a group's adapters together (dpo_lab.packed.group), then runs each job through
the normal entry point with its :class:`PackedOutcome` as an explicit argument (``run.train(cfg,
packed=...)`` -> ``run_experiment(..., packed=...)``). The job's trainer takes the trained weights and
replays the training log through the job's own callbacks (:func:`finish_as_trained`); the job's step clock
takes the pack's step times and its task evaluation the answers the pack generated for it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from peft import set_peft_model_state_dict
from transformers import TrainerState
from transformers.trainer_utils import TrainOutput

from dpo_lab.errors import NonFiniteError
from dpo_lab.train.trainer import DPOTrainer

log = logging.getLogger(__name__)


@dataclass
class PackedOutcome:
    """One job's outcome of a packed training, enough to finish the job as if it had trained alone: the
    hand-off a job of a packed sweep receives.

    ``adapter``: the trained weights as PEFT saves them; ``log_history``: the job's training log entries
    (Trainer's ``state.log_history``); ``metrics``: Trainer.train()'s output metrics; ``step_times``: wall and
    process CPU time at the end of each optimizer step; ``error``: why the job left the pack, if it did;
    ``pruned_at_step`` / ``pruning``: where the pack's pruner stopped it, and its trial.
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
    # the job's held-out evaluation at its last step, per pair (dpo_lab.train.heldout_pairs records)
    heldout_after: list[dict[str, Any]] | None = None
    # the step at which the pack's pruner stopped the job (None: it trained to its end, or failed)
    pruned_at_step: int | None = None
    # the Optuna trial the pack reported the job's evaluations to, handed over so that the job's run goes on
    # with it instead of asking for another: {"trial": number, "owned": the job asked for it (it tells the
    # study how it ended) or the sweeper did, "pruned_at_step": as above} (dpo_lab.sweep.pruning)
    pruning: dict[str, Any] | None = None

    def to_state(self) -> dict[str, Any]:
        """Plain values and tensors only (what ``torch.load(weights_only=True)`` reads back)."""
        state = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "error"}
        state["error"] = None if self.error is None else [self.error.step, self.error.what]
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> PackedOutcome:
        result = cls(**{**state, "error": None})
        if state["error"] is not None:
            result.error = NonFiniteError(state["error"][0], state["error"][1], None)
        return result


def finish_as_trained(trainer: DPOTrainer, packed: PackedOutcome) -> TrainOutput:
    """What ``trainer.train()`` would have done, for a job whose adapter the pack trained.

    The trainer (a normal job's, with a fresh adapter and the job's callbacks) runs the held-out evaluation
    "before" if its arguments ask for it (the adapter is still untrained), takes the pack's weights for its
    adapter, and replays the pack's training log through its callbacks (log history file, W&B); the caller
    sets its step clock from ``packed.step_times``. A job that left the pack raises its NonFiniteError.
    """
    args, handler = trainer.args, trainer.callback_handler
    trainer.state = TrainerState()
    trainer.state.compute_steps(args, max(packed.global_step, 1))
    trainer.state.init_training_references(trainer, max(packed.global_step, 1), args.num_train_epochs, None)
    trainer.control = handler.on_train_begin(args, trainer.state, trainer.control)
    if args.eval_on_start:
        trainer.evaluate()
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
    trainer.control = handler.on_train_end(args, state, trainer.control)
    if not math.isfinite(packed.training_loss):
        log.warning("packed job finished with a non-finite mean training loss")
    return TrainOutput(state.global_step, packed.training_loss, dict(packed.metrics))
