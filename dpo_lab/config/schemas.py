"""Typed schemas for every config group, registered with Hydra's ConfigStore, and their invariants.

Each YAML option under ``conf/<group>/`` extends the schema registered here as ``base_<group>``, so a
misspelt key or a wrong type fails while Hydra composes. Value ranges and cross-field rules are checked by
:func:`validate`, which ``run.py`` calls once on the typed object before anything heavy is loaded.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from dpo_lab.config.choices import (
    DPO_LOSS_TYPES,
    LORA_BIAS,
    DataFormat,
    Direction,
    OnInvalid,
    Quantization,
    WandbMode,
)
from dpo_lab.config.fields import setting
from dpo_lab.config.pruning import PruneSettings, training_problems
from dpo_lab.config.reward_eval import RewardEvalSettings
from dpo_lab.runtime.precision import DType, Precision

# ``package.module:function`` (dpo.loss_type entries, checker and reward names)
_FUNCTION_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")


@dataclass
class ModelSettings:
    name_or_path: str = setting(
        MISSING,
        help=(
            "a hub id, a local folder (config.json, weights, tokenizer), or package:<module> of a "
            "pip-installed one"
        ),
        changes=("base", "tokenizer"),
    )
    gguf_file: str | None = setting(
        None,
        help=(
            "a GGUF file in that folder / hub repo, dequantized once into a cached plain copy; null = not "
            "GGUF"
        ),
        changes=("base", "tokenizer"),
    )
    quantization: Quantization = setting(
        Quantization.none,
        help="none | nf4 | int8: nf4 is QLoRA; quantized weights cut memory ~4x and stay frozen",
        changes=("base",),
    )
    dtype: DType = setting(
        DType.auto,
        help=(
            "auto | float32 | bfloat16 | float16: dtype of unquantized weights; auto follows train.precision"
        ),
        changes=("base",),
    )
    revision: str | None = setting(
        None,
        help="a branch, tag or commit of the hub repo, for reproducible runs",
        changes=("base", "tokenizer"),
    )
    trust_remote_code: bool = setting(
        False,
        help="allow model code shipped in the repo (only for models you trust)",
        changes=("base", "tokenizer"),
    )
    chat_template: str | None = setting(
        None,
        help="a Jinja chat template (inline, or a path to a .jinja file) for tokenizers that lack one",
        changes=("base", "tokenizer"),
    )
    attn_implementation: str | None = setting(
        None,
        help=(
            "attention kernel passed to from_pretrained (sdpa, eager, flash_attention_2); null = "
            "transformers' choice"
        ),
        changes=("base",),
    )
    license: str | None = setting(
        None,
        help=(
            "the base model's licence as the Hub names it (apache-2.0, llama3.1, ...), written into the "
            "adapter's model card; null = unknown"
        ),
    )

    def problems(self) -> Iterator[tuple[str, str]]:
        if not self.name_or_path.strip():
            yield "name_or_path", "must name a hub id or a local model folder"
        elif self.name_or_path.startswith(("/", "./", "../", "~")):
            path = Path(self.name_or_path).expanduser()
            if not path.exists():
                yield "name_or_path", f"no such folder: {path}; give a local model folder or a hub id"
        if self.gguf_file is not None and not self.gguf_file.endswith(".gguf"):
            yield (
                "gguf_file",
                f"must name a .gguf file in model.name_or_path, or be null; got {self.gguf_file!r}",
            )
        if self.license is not None and (not self.license or self.license.strip() != self.license):
            yield (
                "license",
                f"must name a licence (apache-2.0, llama3.1, ...), or be null; got {self.license!r}",
            )


@dataclass
class LoraSettings:
    r: int = setting(
        16,
        help="adapter rank: capacity of the update; larger = more trainable parameters",
        differs_in_pack=True,
    )
    alpha: int = setting(
        32,
        help="scaling numerator: the update is multiplied by alpha / r (or alpha / sqrt(r) with rslora)",
        differs_in_pack=True,
    )
    dropout: float = setting(0.05, help="dropout on the adapter input; 0 disables it", differs_in_pack=True)
    target_modules: list[str] = setting(
        factory=lambda: ["all-linear"],
        help='module names to adapt; ["all-linear"] adapts every linear layer but the output head',
        differs_in_pack=True,
    )
    bias: str = setting("none", help="none | all | lora_only: which biases train alongside the adapter")
    use_rslora: bool = setting(
        False, help="rank-stabilised scaling alpha / sqrt(r), steadier when sweeping r", differs_in_pack=True
    )
    use_dora: bool = setting(
        False, help="weight-decomposed LoRA (DoRA): slower, sometimes better at low rank"
    )

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.r < 1:
            yield "r", f"must be an integer >= 1, got {self.r}"
        if self.alpha < 1:
            yield "alpha", f"must be an integer >= 1, got {self.alpha}"
        if not 0.0 <= self.dropout < 1.0:
            yield "dropout", f"must be in [0, 1), got {self.dropout}"
        if not self.target_modules:
            yield "target_modules", 'must name at least one module, or be ["all-linear"]'
        if self.bias not in LORA_BIAS:
            yield "bias", f"must be one of {', '.join(LORA_BIAS)}, got {self.bias!r}"


@dataclass
class DPOSettings:
    beta: float = setting(
        0.1,
        help=(
            "temperature of the implicit reward: lower values let the policy drift further from the reference"
        ),
        differs_in_pack=True,
        trl="beta",
    )
    loss_type: list[str] = setting(
        factory=lambda: ["sigmoid"],
        help=(
            "the losses, summed with loss_weights: TRL's names, e.g. [sigmoid] (DPO), [ipo], [hinge], "
            "[robust], [sigmoid, sft] (RPO), and your own as package.module:function (dpo_lab.train.losses)"
        ),
        differs_in_pack=True,
        trl="loss_type",
    )
    loss_weights: list[float] | None = setting(
        None, help="one weight per loss_type entry; null = 1.0 each", differs_in_pack=True, trl="loss_weights"
    )
    max_length: int = setting(
        1024,
        help="longest prompt + response in tokens; longer pairs are truncated (the data report counts them)",
        changes=("tokenized",),
        trl="max_length",
    )
    label_smoothing: float = setting(
        0.0,
        help="label flip probability for robust DPO / smoothing for EXO; 0 for plain DPO",
        differs_in_pack=True,
        trl="label_smoothing",
    )
    loss_params: dict[str, Any] = setting(
        factory=dict,
        help=(
            "hyperparameters of your own loss functions in loss_type (package.module:function), e.g. "
            "{gamma: 0.5}; checked against the function's declared params"
        ),
        differs_in_pack=True,
    )
    precompute_ref_log_probs: bool = setting(
        False,
        help=(
            "compute the reference log-probs once, before training, for the pairs the run draws: no "
            "reference forward per step"
        ),
        trl="precompute_ref_log_probs",
    )

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.beta <= 0:
            yield "beta", f"must be > 0, got {self.beta}"
        if not self.loss_type:
            yield "loss_type", f"must list at least one of: {', '.join(DPO_LOSS_TYPES)}"
        for name in self.loss_type:
            if ":" in name and not _FUNCTION_PATH.match(name):
                yield "loss_type", f"{name!r} is not a package.module:function path"
            elif ":" not in name and name not in DPO_LOSS_TYPES:
                yield (
                    "loss_type",
                    f"unknown loss {name!r}; allowed: {', '.join(DPO_LOSS_TYPES)}, or "
                    "package.module:function",
                )
        if self.loss_params and not any(":" in name for name in self.loss_type):
            yield (
                "loss_params",
                "only your own loss functions (package.module:function in dpo.loss_type) read it, and "
                "dpo.loss_type names none",
            )
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            yield (
                "loss_weights",
                (
                    f"needs one weight per loss_type entry ({len(self.loss_type)}), "
                    f"got {len(self.loss_weights)}"
                ),
            )
        if self.max_length < 16:
            yield "max_length", f"must be >= 16 tokens, got {self.max_length}"
        if "robust" in self.loss_type and not 0.0 <= self.label_smoothing < 0.5:
            yield (
                "label_smoothing",
                f"robust DPO needs a flip probability in [0, 0.5), got {self.label_smoothing}",
            )
        elif not 0.0 <= self.label_smoothing <= 0.5:
            yield "label_smoothing", f"must be in [0, 0.5], got {self.label_smoothing}"


@dataclass
class DataColumns:
    prompt: str = setting(
        "prompt",
        help="source column holding the prompt (standard / conversational shapes)",
        changes=("pairs",),
    )
    chosen: str = setting("chosen", help="source column holding the preferred response", changes=("pairs",))
    rejected: str = setting(
        "rejected", help="source column holding the dispreferred response", changes=("pairs",)
    )


@dataclass
class DataSettings:
    path: str = setting(
        MISSING,
        help=(
            "a local file (jsonl, json, parquet, csv, jsonl.gz), a folder (saved dataset or files), or a "
            "hub id"
        ),
        changes=("pairs",),
    )
    data_dir: str | None = setting(
        None,
        help=(
            "sub-folder of a hub dataset (or local folder), e.g. harmless-base of Anthropic/hh-rlhf; null ="
            " all"
        ),
        changes=("pairs",),
    )
    split: str = setting("train", help="split (or file) to train on", changes=("pairs",))
    test_split: str | None = setting(
        "test",
        help="held-out split to evaluate on; null = carve test_size off the train split",
        changes=("pairs",),
    )
    test_size: float | None = setting(
        None,
        help=(
            "fraction (0-1) or row count held out when test_split is null, or when data.path is a single "
            "file (it has no other split); split with the run's seed"
        ),
        changes=("pairs",),
    )
    format: DataFormat = setting(
        DataFormat.auto, help="auto | standard | conversational | implicit_prompt | hh", changes=("pairs",)
    )
    columns: DataColumns = setting(
        factory=DataColumns,
        help="source column names, for data whose columns are not prompt / chosen / rejected",
        changes=("pairs",),
    )
    on_invalid: OnInvalid = setting(
        OnInvalid.error,
        help=(
            "error | drop: stop before training on invalid rows (default), or drop them and report counts "
            "per reason"
        ),
        changes=("pairs",),
    )
    max_train_samples: int | None = setting(
        None, help="use only the first N training rows (quick experiments); null = all", changes=("pairs",)
    )
    max_eval_samples: int | None = setting(
        None, help="use only the first N held-out rows; null = all", changes=("pairs",)
    )
    system_prompt: str | None = setting(
        None, help="system message prepended to every prompt that has none; null = none", changes=("pairs",)
    )

    @property
    def is_single_file(self) -> bool:
        """``path`` names one local file: it holds a single split, so ``test_size`` alone says what to do."""
        return bool(self.path.strip()) and Path(self.path).expanduser().is_file()

    @property
    def held_out_split(self) -> str | None:
        """The split read as the held-out one; None when ``test_size`` rows are carved off ``split``."""
        return None if self.test_size is not None else self.test_split

    def problems(self) -> Iterator[tuple[str, str]]:
        if not self.path.strip():
            yield "path", "must name a file, a folder or a hub dataset id"
        if self.test_split is None and self.test_size is None:
            yield "test_size", "set data.test_split to a held-out split, or data.test_size to carve one off"
        if self.test_split is not None and self.test_size is not None and not self.is_single_file:
            yield "test_size", "set data.test_split=null to carve test_size off data.split, or test_size=null"
        if self.test_size is not None and self.test_size <= 0:
            yield "test_size", f"must be a fraction in (0, 1) or a row count >= 1, got {self.test_size}"
        if self.test_size is not None and self.test_size >= 1 and self.test_size != int(self.test_size):
            yield "test_size", f"a row count must be a whole number, got {self.test_size}"
        for key in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, key)
            if value is not None and value < 1:
                yield key, f"must be >= 1 or null, got {value}"


@dataclass
class TrainSettings:
    learning_rate: float = setting(
        5e-6,
        help=(
            "peak learning rate of the adapter (AdamW); the default suits LoRA on a pretrained 1B-8B model."
            " The shipped train/default option, sized for the embedded tiny model, sets 5e-4 (it needs a "
            "far larger rate)"
        ),
        differs_in_pack=True,
        trl="learning_rate",
        trl_differs="TRL's 1e-6 is sized for full fine-tuning; a LoRA adapter needs a larger rate",
    )
    per_device_train_batch_size: int = setting(
        4,
        help="pairs per device per forward pass",
        changes=("reference",),
        trl="per_device_train_batch_size",
        trl_differs=(
            "4 pairs (8 sequences) fit the tiny and 1B models on a CPU and an 8B model in 4-bit on a 24 GB "
            "GPU"
        ),
    )
    per_device_eval_batch_size: int = setting(
        8,
        help="pairs per device per evaluation forward pass",
        changes=("reference",),
        trl="per_device_eval_batch_size",
    )
    gradient_accumulation_steps: int = setting(
        1,
        help="micro-batches accumulated per optimizer step (effective batch = this x batch size x devices)",
        trl="gradient_accumulation_steps",
    )
    num_train_epochs: float = setting(
        1.0,
        help="passes over the training data; ignored when max_steps > 0",
        trl="num_train_epochs",
        trl_differs=(
            "one pass over the pairs, as in the DPO paper; TrainingArguments' 3.0 is a generic fine-tuning "
            "default"
        ),
    )
    max_steps: int = setting(
        -1, help="optimizer steps to train for; -1 = derive from num_train_epochs", trl="max_steps"
    )
    eval_steps: int = setting(
        0,
        help="evaluate on the held-out split every N steps; 0 = only before and after training",
        differs_in_pack=True,
        trl="eval_steps",
        trl_differs=(
            "0 means held-out evaluations only before and after training; TRL's null (with eval_strategy) "
            "is set from this"
        ),
    )
    save_steps: int = setting(
        0,
        help="save a checkpoint every N steps; 0 = no intermediate checkpoints",
        trl="save_steps",
        trl_differs=(
            "0 means no intermediate checkpoints (a short run needs none); set it for long runs that should"
            " survive a kill"
        ),
    )
    save_total_limit: int = setting(
        2,
        help=(
            "keep at most this many complete checkpoints (oldest deleted first); dpo_lab rotates them "
            "itself, after a checkpoint is known to be complete (TRL's own save_total_limit stays null)"
        ),
        differs_in_pack=True,
    )
    logging_steps: int = setting(
        5,
        help="log training metrics every N steps",
        differs_in_pack=True,
        trl="logging_steps",
        trl_differs="5: short CPU runs still log several points",
    )
    lr_scheduler_type: str = setting(
        "linear",
        help="linear | cosine | constant | constant_with_warmup | ... (transformers scheduler names)",
        differs_in_pack=True,
        trl="lr_scheduler_type",
    )
    warmup_steps: float = setting(
        0.0,
        help="warm-up: a fraction of total steps if < 1, else a number of steps",
        differs_in_pack=True,
        trl="warmup_steps",
    )
    weight_decay: float = setting(
        0.0, help="AdamW weight decay on the adapter weights", differs_in_pack=True, trl="weight_decay"
    )
    max_grad_norm: float = setting(
        1.0, help="gradient clipping norm; 0 disables clipping", differs_in_pack=True, trl="max_grad_norm"
    )
    optim: str = setting(
        "adamw_torch_fused",
        help=(
            "optimizer name as transformers knows it (adamw_torch_fused, adamw_torch, paged_adamw_8bit, ...)"
        ),
        trl="optim",
    )
    gradient_checkpointing: bool = setting(
        False,
        help=(
            "recompute activations in backward: less memory, ~20-30% slower; for long sequences / big models"
        ),
        changes=("base",),
        trl="activation_checkpointing",
        trl_differs=(
            "off: it costs 20-30% more compute, and on CPUs and small models memory is not the limit (TRL "
            "turns it on everywhere, through its deprecated gradient_checkpointing alias)"
        ),
    )
    precision: Precision = setting(
        Precision.auto,
        help="auto | fp32 | bf16 | fp16: auto = bf16 where the device computes it natively, else fp32",
    )
    eval_before_training: bool = setting(
        True, help='evaluate on the held-out split before the first step (the "before" of before/after)'
    )
    group_by_length: bool = setting(
        False,
        help=(
            "batches of similar-length pairs: less padding, but less varied batches where length follows "
            "content"
        ),
    )
    dataloader_num_workers: int = setting(
        0, help="worker processes for the data loader", trl="dataloader_num_workers"
    )
    extra: dict[str, Any] = setting(
        factory=dict,
        help="any other trl.DPOConfig / TrainingArguments field, passed through as-is",
        changes=("tokenized",),
    )

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.learning_rate <= 0:
            yield "learning_rate", f"must be > 0, got {self.learning_rate}"
        positive = (
            "per_device_train_batch_size",
            "per_device_eval_batch_size",
            "gradient_accumulation_steps",
            "logging_steps",
        )
        for key in positive:
            if getattr(self, key) < 1:
                yield key, f"must be an integer >= 1, got {getattr(self, key)}"
        if self.max_steps == 0 or self.max_steps < -1:
            yield (
                "max_steps",
                f"must be a positive step count, or -1 to use num_train_epochs; got {self.max_steps}",
            )
        if self.max_steps == -1 and self.num_train_epochs <= 0:
            yield "num_train_epochs", f"must be > 0 when max_steps is -1, got {self.num_train_epochs}"
        for key in ("eval_steps", "save_steps", "dataloader_num_workers", "warmup_steps", "weight_decay",
                    "max_grad_norm"):  # fmt: skip
            if getattr(self, key) < 0:
                yield key, f"must be >= 0, got {getattr(self, key)}"
        if self.save_total_limit < 1:
            yield "save_total_limit", f"must be >= 1, got {self.save_total_limit}"
        if self.save_steps > 0 and self.logging_steps >= 1 and self.save_steps % self.logging_steps:
            yield (
                "save_steps",
                f"must be a multiple of train.logging_steps ({self.logging_steps}) so that a resumed run "
                f"logs the same averages as an uninterrupted one; got {self.save_steps}",
            )
        if self.extra.get("save_only_model"):
            yield "extra.save_only_model", "a checkpoint needs optimizer, scheduler and RNG state to resume"
        owned = {f.name for f in fields(self) if f.name != "extra"} | _TRAINER_OWNED_KEYS
        for key in self.extra:
            if key in owned:
                yield (
                    f"extra.{key}",
                    f"is set by dpo_lab; use the dedicated key instead of extra ({_owner(key)})",
                )


# TrainingArguments fields that dpo_lab derives itself; `train.extra` may not set them.
_TRAINER_OWNED_KEYS = {
    "output_dir", "bf16", "fp16", "seed", "beta", "loss_type", "loss_weights", "max_length",
    "precompute_ref_log_probs", "label_smoothing", "report_to", "run_name", "eval_strategy", "save_strategy",
    "use_cpu", "train_sampling_strategy", "eval_on_start",
}  # fmt: skip


def _owner(key: str) -> str:
    return {
        "bf16": "train.precision", "fp16": "train.precision", "seed": "seed", "report_to": "logger",
        "run_name": "logger.name", "output_dir": "hydra.run.dir", "eval_strategy": "train.eval_steps",
        "save_strategy": "train.save_steps", "use_cpu": "the detected device",
        "train_sampling_strategy": "train.group_by_length", "eval_on_start": "train.eval_before_training",
    }.get(key, f"dpo.{key}" if key in {f.name for f in fields(DPOSettings)} else f"train.{key}")  # fmt: skip


@dataclass
class WandbSettings:
    project: str = setting("dpo_lab", help="W&B project the runs land in")
    entity: str | None = setting(None, help="W&B team or user; null = the API key's default entity")
    job_type: str = setting("train", help="W&B job type (train, eval, sweep...)")
    mode: WandbMode = setting(
        WandbMode.auto,
        help=(
            "auto | online | offline | disabled; auto = online with an API key and network, offline otherwise"
        ),
    )
    dir: str | None = setting(None, help="folder for W&B files; null = the run folder")

    def problems(self) -> Iterator[tuple[str, str]]:
        if not self.project.strip():
            yield "project", "must name a W&B project"


# the trackers dpo_lab ships (logger.backend); any other is package.module:function (dpo_lab.track.base)
TRACKER_NAMES = ("wandb", "none")


@dataclass
class LoggerSettings:
    backend: str = setting(
        "wandb",
        help=(
            "wandb | none | package.module:function of your own tracker (dpo_lab.track.base.Tracker); "
            "chosen by logger=<option>"
        ),
    )
    name: str | None = setting(
        None,
        help="run name; null = built from the overrides that differ from the defaults (e.g. beta=0.05,r=8)",
    )
    group: str | None = setting(
        None, help="run group; null = one group per multirun sweep, or the run's own name for a single run"
    )
    tags: list[str] = setting(factory=list, help="free-form tags to filter runs by")
    notes: str | None = setting(None, help="free-text notes shown on the run page")
    log_model: bool = setting(
        False,
        help="upload the adapter folder (with its model card) to the tracker as an artifact of type model",
    )
    wandb: WandbSettings = setting(factory=WandbSettings, help="Weights & Biases' own settings")
    options: dict[str, Any] = setting(
        factory=dict, help="settings of a tracker of your own (backend=package.module:function), passed to it"
    )

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.backend not in TRACKER_NAMES and not _FUNCTION_PATH.match(self.backend):
            yield (
                "backend",
                f"unknown tracker {self.backend!r}; use {', '.join(TRACKER_NAMES)} or "
                "package.module:function",
            )
        if self.backend == "wandb":
            yield from nested("wandb", self.wandb.problems())
        if self.options and self.backend in TRACKER_NAMES:
            yield "options", f"only a tracker of your own reads it; logger.backend is {self.backend}"


@dataclass
class GenerationSettings:
    max_new_tokens: int = setting(
        128, help="new tokens per answer; the embedded finance answers need ~80-120 with the tiny tokenizer"
    )
    do_sample: bool = setting(
        False, help="false = greedy decoding (deterministic); true = sample with temperature / top_p / top_k"
    )
    temperature: float = setting(
        0.7, help="sampling temperature (only with do_sample): lower = closer to greedy"
    )
    top_p: float = setting(0.9, help="nucleus sampling mass (only with do_sample); 1.0 disables it")
    top_k: int = setting(
        50, help="sample among the k most likely tokens (only with do_sample); 0 disables it"
    )
    repetition_penalty: float = setting(1.0, help="> 1 discourages repeating tokens; 1.0 = off")
    batch_size: int = setting(
        16, help="prompts generated together (left-padded); larger is faster until memory runs out"
    )

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.max_new_tokens < 1:
            yield "max_new_tokens", f"must be an integer >= 1, got {self.max_new_tokens}"
        if self.temperature <= 0:
            yield "temperature", f"must be > 0, got {self.temperature}"
        if not 0.0 < self.top_p <= 1.0:
            yield "top_p", f"must be in (0, 1], got {self.top_p}"
        if self.top_k < 0:
            yield "top_k", f"must be >= 0, got {self.top_k}"
        if self.repetition_penalty <= 0:
            yield "repetition_penalty", f"must be > 0, got {self.repetition_penalty}"
        if self.batch_size < 1:
            yield "batch_size", f"must be an integer >= 1, got {self.batch_size}"


@dataclass
class CheckerSettings:
    name: str | None = setting(
        "auto",
        help=(
            "auto (finance_number where the held-out rows carry the ground-truth column, answer_column; "
            "else no checker), a registered checker (finance_number, exact_match) or "
            "package.module:function; null = no accuracy, sample generations only (data without ground truth)"
        ),
    )
    answer_column: str = setting(
        "answer", help="held-out column holding the ground truth the checker compares the answer with"
    )
    rel_tol: float = setting(
        0.001, help="numeric match: |answer - truth| <= max(abs_tol, rel_tol * |truth|); 0.001 = within 0.1%"
    )
    abs_tol: float = setting(
        0.01, help="numeric match floor in the answer's unit; 0.01 forgives rounding to the cent"
    )

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.name is not None and not self.name.strip():
            yield "name", "must name a checker (finance_number, exact_match, or module:function) or be null"
        if not self.answer_column.strip():
            yield "answer_column", "must name the held-out column with the ground truth"
        if self.rel_tol < 0:
            yield "rel_tol", f"must be >= 0, got {self.rel_tol}"
        if self.abs_tol < 0:
            yield "abs_tol", f"must be >= 0, got {self.abs_tol}"


@dataclass
class TaskEvalSettings:
    enabled: bool = setting(
        True,
        help="generate answers to held-out prompts with the base (before) and the trained adapter (after)",
    )
    num_prompts: int = setting(
        16,
        help=(
            "held-out prompts answered (the first N of the held-out split): more = steadier accuracy, slower"
        ),
    )
    checker: CheckerSettings = setting(
        factory=CheckerSettings, help="how answers are scored against the ground truth"
    )
    generation: GenerationSettings = setting(
        factory=GenerationSettings,
        help=(
            "decoding settings of these answers (greedy by default, so before/after differ only by training)"
        ),
    )

    reward_kl: RewardEvalSettings = setting(
        factory=RewardEvalSettings,
        help=(
            "reward and KL(policy || reference) on samples of held-out prompts, before (the base) and after "
            "training; off until eval.reward_kl.reward names a reward (sentiment, finance, module:function)"
        ),
    )

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.num_prompts < 1:
            yield "num_prompts", f"must be an integer >= 1, got {self.num_prompts}"
        yield from nested("checker", self.checker.problems())
        yield from nested("generation", self.generation.problems())
        yield from nested("reward_kl", self.reward_kl.problems())


def nested(prefix: str, problems: Iterator[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    for key, message in problems:
        yield f"{prefix}.{key}", message


# The held-out metrics every summary shows (the closing table, the sweep report, the model card).
SUMMARY_METRICS = ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected")
# Held-out metrics TRL's DPOTrainer reports (``eval_<name>``) that a sweep can rank jobs by.
OBJECTIVE_METRICS = (
    *SUMMARY_METRICS, "logps/chosen", "logps/rejected", "logits/chosen", "logits/rejected", "entropy",
    "mean_token_accuracy",
)  # fmt: skip


@dataclass
class ObjectiveSettings:
    metric: str = setting(
        "rewards/accuracies",
        help=(
            "held-out metric that ranks a sweep's jobs and that Optuna optimises (TRL's eval name without "
            '"eval_")'
        ),
    )
    direction: Direction = setting(
        Direction.maximize, help="maximize | minimize: which way is better for the metric (loss: minimize)"
    )

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.metric not in OBJECTIVE_METRICS:
            allowed = ", ".join(OBJECTIVE_METRICS)
            yield "metric", f"unknown held-out metric {self.metric!r}; allowed: {allowed}"
        if self.metric == "loss" and self.direction is Direction.maximize:
            yield (
                "direction",
                "a loss is minimised: use objective.direction=minimize with objective.metric=loss",
            )


@dataclass
class RunConfig:
    model: ModelSettings = field(default_factory=ModelSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    dpo: DPOSettings = field(default_factory=DPOSettings)
    data: DataSettings = field(default_factory=DataSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    logger: LoggerSettings = field(default_factory=LoggerSettings)
    eval: TaskEvalSettings = field(default_factory=TaskEvalSettings)
    objective: ObjectiveSettings = field(default_factory=ObjectiveSettings)
    prune: PruneSettings = field(default_factory=PruneSettings)
    reuse: bool = setting(
        True,
        help=(
            "in a same-process multirun, hand the next job the loaded base model (adapter removed), the "
            "tokenised data and the reference log-probs when they would come out identical; false reloads "
            "them for every job"
        ),
    )
    keep_freed_memory: bool = setting(
        True,
        help=(
            "CPU memory that torch frees stays in the process for the next step (glibc malloc: no fresh "
            "mmap and page faults for every large tensor, every step); false = glibc's defaults "
            "(hardware.keep_freed_memory)"
        ),
    )
    seed: int = setting(
        42,
        help="seeds Python, NumPy, torch, the adapter init, data shuffling and the held-out split",
        changes=("pairs",),
    )
    resume: str | None = setting(
        None,
        help=(
            "a run folder to continue from its newest complete checkpoint, with the overrides it was "
            "started with; null = a new run (re-running with the same hydra.run.dir resumes too)"
        ),
    )

    def problems(self) -> Iterator[tuple[str, str]]:
        for group in GROUPS:
            node = getattr(self, group)
            assert is_dataclass(node)
            yield from nested(group, node.problems())
        if self.dpo.precompute_ref_log_probs and self.train.extra.get("sync_ref_model"):
            yield "dpo.precompute_ref_log_probs", "cannot be combined with train.extra.sync_ref_model"
        yield from training_problems(self.prune, self.train.eval_steps)


GROUPS = {"model": ModelSettings, "lora": LoraSettings, "dpo": DPOSettings, "data": DataSettings,
          "train": TrainSettings, "logger": LoggerSettings, "eval": TaskEvalSettings,
          "objective": ObjectiveSettings, "prune": PruneSettings}  # fmt: skip


# Schemas of the entry points that work on a finished run folder (conf/<name>.yaml each).
