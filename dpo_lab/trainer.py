"""The only module that imports trl: DPOConfig from the schemas, and the DPOTrainer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trl
from datasets import Dataset
from peft import LoraConfig as PeftLoraConfig
from torch.utils.data import Sampler, SequentialSampler
from transformers import PreTrainedModel, TrainerCallback
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from dpo_lab.batching import PAIR_ID_COLUMNS, dpo_length_sampler
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


class DPOTrainer(trl.DPOTrainer):
    """TRL's DPOTrainer whose ``group_by_length`` works on its tokenised pair columns (see batching.py).

    Evaluation stays sequential, so held-out metrics come from the same batches with or without grouping.
    """

    def _groups_by_length(self, dataset: Dataset | None) -> bool:
        return self.args.train_sampling_strategy == "group_by_length" and set(PAIR_ID_COLUMNS) <= set(
            getattr(dataset, "column_names", None) or ()
        )

    def _get_train_sampler(self, train_dataset: Dataset | None = None) -> Sampler | None:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if not self._groups_by_length(dataset):
            return super()._get_train_sampler(train_dataset)
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return dpo_length_sampler(dataset, self.args.per_device_train_batch_size, self.args.max_length, seed)

    def _get_eval_sampler(self, eval_dataset: Dataset) -> Sampler | None:
        if not self._groups_by_length(eval_dataset):
            return super()._get_eval_sampler(eval_dataset)
        return SequentialSampler(eval_dataset) if self.args.world_size <= 1 else None


def build_trainer(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    args: trl.DPOConfig,
    train_dataset: Dataset,
    eval_dataset: Dataset | None,
    peft_config: PeftLoraConfig,
    callbacks: list[TrainerCallback] | None = None,
) -> DPOTrainer:
    """DPOTrainer on the base model + a fresh LoRA adapter. With no ``ref_model``, TRL computes the
    reference log-probs with the adapter disabled: the base model is the reference, never a second copy."""
    return DPOTrainer(
        model=model,
        ref_model=None,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )
