"""The only module that imports trl: DPOConfig from the schemas, and the DPOTrainer."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trl
from datasets import Dataset
from peft import LoraConfig as PeftLoraConfig
from transformers import PreTrainedModel, TrainerCallback
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from dpo_lab.config import DPOConfig, Precision, TrainConfig


def build_dpo_args(
    dpo: DPOConfig,
    train: TrainConfig,
    *,
    output_dir: Path,
    seed: int,
    precision: Precision,
    device: str,
    run_name: str | None = None,
) -> trl.DPOConfig:
    """trl.DPOConfig from the ``dpo`` and ``train`` groups; precision and checkpointing are ours, not TRL's
    defaults (TRL turns on bf16 and gradient checkpointing everywhere, ~10x slower on CPUs without bf16)."""
    kwargs: dict[str, Any] = {
        "output_dir": str(output_dir),
        "run_name": run_name,
        "seed": seed,
        "data_seed": seed,
        "report_to": "none",  # dpo_lab owns the W&B run (tracking.py)
        "use_cpu": device == "cpu",
        "bf16": precision is Precision.bf16,
        "fp16": precision is Precision.fp16,
        # DPO
        "beta": dpo.beta,
        "loss_type": list(dpo.loss_type),
        "loss_weights": list(dpo.loss_weights) if dpo.loss_weights is not None else None,
        "max_length": dpo.max_length,
        "label_smoothing": dpo.label_smoothing,
        "precompute_ref_log_probs": dpo.precompute_ref_log_probs,
        # optimisation
        "learning_rate": train.learning_rate,
        "per_device_train_batch_size": train.per_device_train_batch_size,
        "per_device_eval_batch_size": train.per_device_eval_batch_size,
        "gradient_accumulation_steps": train.gradient_accumulation_steps,
        "num_train_epochs": train.num_train_epochs,
        "max_steps": train.max_steps,
        "lr_scheduler_type": train.lr_scheduler_type,
        "warmup_steps": train.warmup_steps,
        "weight_decay": train.weight_decay,
        "max_grad_norm": train.max_grad_norm,
        "optim": train.optim,
        "gradient_checkpointing": train.gradient_checkpointing,
        "train_sampling_strategy": "group_by_length" if train.group_by_length else "random",
        "dataloader_num_workers": train.dataloader_num_workers,
        # schedule of logs, evals and checkpoints
        "logging_steps": train.logging_steps,
        "eval_strategy": "steps" if train.eval_steps > 0 else "no",
        "eval_steps": train.eval_steps if train.eval_steps > 0 else None,
        "save_strategy": "steps" if train.save_steps > 0 else "no",
        "save_steps": train.save_steps if train.save_steps > 0 else 500,
        "save_total_limit": train.save_total_limit,
        "include_num_input_tokens_seen": "non_padding",
        "disable_tqdm": True,
    }
    kwargs.update(train.extra)
    return trl.DPOConfig(**kwargs)


@dataclass
class PreparedDatasets:
    """Datasets DPOTrainer prepared in an earlier job of a sweep, by split name (``train``, ``eval``).

    ``tokenized``: the output of TRL's dataset preparation (chat template, tokenisation, length filter).
    ``with_ref_log_probs``: the same plus TRL's precomputed ``ref_chosen_logps`` / ``ref_rejected_logps``.
    The owner (dpo_lab.reuse) hands a job only the slots whose cache key matches that job exactly; an empty
    slot is filled by this job for the next one. ``computed`` counts what this job had to compute itself.
    """

    tokenized: dict[str, Dataset] = field(default_factory=dict)
    with_ref_log_probs: dict[str, Dataset] = field(default_factory=dict)
    computed: dict[str, int] = field(default_factory=lambda: {"tokenized": 0, "ref_log_probs": 0})


class ReusingDPOTrainer(trl.DPOTrainer):
    """TRL's DPOTrainer that takes its prepared datasets (tokenised, with reference log-probs) from
    :class:`PreparedDatasets` when an earlier job with the same inputs already made them."""

    def __init__(self, *args: Any, prepared: PreparedDatasets, **kwargs: Any):
        self._prepared = prepared  # set before super().__init__, which prepares the datasets
        super().__init__(*args, **kwargs)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        cached = self._prepared.tokenized.get(dataset_name)
        if cached is None:
            cached = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
            self._prepared.tokenized[dataset_name] = cached
            self._prepared.computed["tokenized"] += 1
        return cached

    def _precompute_ref_logps(self, dataset, name, batch_size):
        cached = self._prepared.with_ref_log_probs.get(name)
        if cached is None:
            cached = super()._precompute_ref_logps(dataset, name, batch_size)
            self._prepared.with_ref_log_probs[name] = cached
            self._prepared.computed["ref_log_probs"] += 1
        return cached


def build_trainer(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    args: trl.DPOConfig,
    train_dataset: Dataset,
    eval_dataset: Dataset | None,
    peft_config: PeftLoraConfig,
    callbacks: list[TrainerCallback] | None = None,
    prepared: PreparedDatasets | None = None,
) -> trl.DPOTrainer:
    """DPOTrainer on the base model + a fresh LoRA adapter. With no ``ref_model``, TRL computes the
    reference log-probs with the adapter disabled: the base model is the reference, never a second copy.
    ``prepared`` lends datasets an earlier job of the same sweep prepared (see :class:`PreparedDatasets`)."""
    if prepared is not None:
        return ReusingDPOTrainer(
            model=model,
            ref_model=None,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=callbacks,
            prepared=prepared,
        )
    return trl.DPOTrainer(
        model=model,
        ref_model=None,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )
