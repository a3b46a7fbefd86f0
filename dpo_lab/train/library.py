"""Every private name of trl, transformers and peft that dpo_lab reaches, in one module.

TRL's DPO API changed a lot between releases (0.29 and 1.x removed ``rpo_alpha``, ``ref_adapter_name``,
``max_prompt_length``...), and private methods change without notice. dpo_lab therefore reaches them here
only, under public names: :class:`TrainerHooks` overrides each private hook of ``trl.DPOTrainer`` /
``transformers.Trainer`` that dpo_lab changes and forwards it to a public method that
:class:`dpo_lab.train.trainer.DPOTrainer` overrides; the functions below read or set the private state the
packed step needs. ``tests/train/test_library.py`` checks, against the installed versions, that each name
still exists with the signature and behaviour assumed here; pyproject's ranges are the ones it passes on.

Where a public API does the job, it is used instead (``Trainer.evaluate`` for ``_evaluate``,
``DPOTrainer.compute_loss`` for ``_compute_loss``, ``args.train_batch_size`` for ``_train_batch_size``,
``Tensor.to`` for PEFT's ``_cast_input_dtype``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import trl

# (owner class, private name) of everything this module reaches; the test checks each exists
PRIVATE_NAMES: tuple[tuple[str, str], ...] = (
    ("trl.DPOTrainer", "_prepare_dataset"),
    ("trl.DPOTrainer", "_precompute_ref_logps"),
    ("trl.DPOTrainer", "_metrics"),
    ("trl.DPOTrainer", "_total_train_tokens"),
    ("transformers.Trainer", "_save"),
    ("transformers.Trainer", "_get_train_sampler"),
    ("transformers.Trainer", "_get_eval_sampler"),
    ("transformers.Trainer", "_prepare_inputs"),
    ("transformers.Trainer", "_track_num_input_tokens"),
    ("transformers.Trainer", "_initial_num_input_tokens_seen"),
    ("transformers.Trainer", "_tr_loss"),
    ("transformers.PreTrainedModel", "_is_accelerate_prepared"),
)


class TrainerHooks(trl.DPOTrainer):
    """``trl.DPOTrainer`` whose private hooks that dpo_lab changes call public methods of the same purpose;
    a subclass overrides those (their defaults do what TRL / transformers do)."""

    # TRL: a split's preparation (chat template, tokenisation, length filter)
    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        return self.prepare_split(dataset, processing_class, args, dataset_name)

    def prepare_split(self, dataset, processing_class, args, dataset_name):
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    # TRL: the reference log-probs of a whole split, computed before training
    def _precompute_ref_logps(self, dataset, name, batch_size):
        return self.reference_logps_of_split(dataset, name, batch_size)

    def reference_logps_of_split(self, dataset, name, batch_size):
        return super()._precompute_ref_logps(dataset, name, batch_size)

    # transformers: a save of the model (checkpoints and the final adapter) into a folder
    def _save(self, output_dir: str | None = None, state_dict=None):
        super()._save(output_dir, state_dict)
        self.after_save(Path(output_dir or self.args.output_dir))

    def after_save(self, folder: Path) -> None:
        """Called after every save into ``folder``; nothing by default."""

    # transformers: the samplers of the training and evaluation data loaders
    def _get_train_sampler(self, train_dataset=None):
        return self.train_sampler(train_dataset)

    def train_sampler(self, train_dataset=None):
        return super()._get_train_sampler(train_dataset)

    def _get_eval_sampler(self, eval_dataset):
        return self.eval_sampler(eval_dataset)

    def eval_sampler(self, eval_dataset):
        return super()._get_eval_sampler(eval_dataset)

    # transformers: the loss summed since the last log while train() runs
    def unlogged_loss(self) -> float | None:
        """The training loss summed since the last log, inside ``train()``; None outside it."""
        running = getattr(self, "_tr_loss", None)
        return float(running.item()) if isinstance(running, torch.Tensor) else None


def pending_metrics(trainer: trl.DPOTrainer, mode: str) -> dict[str, list[float]]:
    """TRL's metrics collected since the last log, for ``train`` or ``eval`` (name -> values); the dict
    itself, so changes reach TRL's next log."""
    return trainer._metrics[mode]


def set_pending_metrics(trainer: trl.DPOTrainer, mode: str, metrics: Mapping[str, list[float]]) -> None:
    store = trainer._metrics[mode]
    store.clear()
    store.update({k: list(v) for k, v in metrics.items()})


def logged_train_tokens(trainer: trl.DPOTrainer) -> int:
    """The tokens TRL counts for its logged ``num_tokens`` (kept in the trainer, not in its state)."""
    return int(trainer._total_train_tokens)


def set_logged_train_tokens(trainer: trl.DPOTrainer, tokens: int) -> None:
    trainer._total_train_tokens = tokens


def prepare_inputs(trainer: trl.DPOTrainer, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """A collated batch moved to the trainer's device, as ``training_step`` prepares it."""
    return trainer._prepare_inputs(inputs)


def count_input_tokens(trainer: trl.DPOTrainer, inputs: Mapping[str, Any]) -> None:
    """Add a batch's tokens to ``state.num_input_tokens_seen`` as ``train()`` does for each micro-batch."""
    trainer._track_num_input_tokens(inputs)


def start_input_token_count(trainer: trl.DPOTrainer, tokens: int = 0) -> None:
    """The token count ``train()`` starts from (its tokens/s log is over the tokens seen since)."""
    trainer._initial_num_input_tokens_seen = tokens


def mark_accelerate_prepared(model: torch.nn.Module) -> None:
    """Tell transformers that ``model`` went through accelerate's ``prepare`` already (its evaluation then
    takes it as it is, with no second wrapping)."""
    model._is_accelerate_prepared = True
