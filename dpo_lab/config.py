"""Typed schemas for every config group, registered with Hydra's ConfigStore, and their invariants.

Each YAML option under ``conf/<group>/`` extends the schema registered here as ``base_<group>``, so a
misspelt key or a wrong type fails while Hydra composes. Value ranges and cross-field rules are checked by
:func:`validate`, which ``run.py`` calls once on the typed object before anything heavy is loaded.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


class ConfigError(ValueError):
    """A config value that is not allowed: carries the full key path and what is allowed."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key


class Quantization(str, Enum):
    """How the frozen base weights are stored while the adapter trains."""

    none = "none"
    nf4 = "nf4"  # QLoRA: 4-bit NormalFloat with double quantization (bitsandbytes)
    int8 = "int8"  # LLM.int8() 8-bit weights (bitsandbytes)


class DType(str, Enum):
    """dtype of the (non-quantized) base weights; ``auto`` follows the training precision."""

    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class Precision(str, Enum):
    """Mixed-precision mode of training; ``auto`` picks bf16 only where the device computes it natively."""

    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class DataFormat(str, Enum):
    """Shape of the preference rows; ``auto`` detects it from the first row."""

    auto = "auto"
    standard = "standard"  # prompt / chosen / rejected strings
    conversational = "conversational"  # lists of {role, content} messages
    implicit_prompt = "implicit_prompt"  # chosen / rejected full conversations sharing a prefix
    hh = "hh"  # Anthropic HH-RLHF "\n\nHuman: ... \n\nAssistant: ..." transcripts


class OnInvalid(str, Enum):
    """What to do with preference rows that fail validation."""

    error = "error"
    drop = "drop"


class LoggerBackend(str, Enum):
    none = "none"
    wandb = "wandb"


class WandbMode(str, Enum):
    auto = "auto"  # online when an API key and the network are there, offline otherwise
    online = "online"
    offline = "offline"
    disabled = "disabled"


# Loss names accepted by TRL 1.x DPOConfig.loss_type (checked against the installed trl by a test).
DPO_LOSS_TYPES = (
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
    "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
)  # fmt: skip
LORA_BIAS = ("none", "all", "lora_only")


@dataclass
class ModelConfig:
    # a hub id or a local folder with config.json, weights and tokenizer
    name_or_path: str = MISSING
    # none | nf4 | int8: nf4 is QLoRA; quantized weights cut memory ~4x and stay frozen
    quantization: Quantization = Quantization.none
    # auto | float32 | bfloat16 | float16: dtype of unquantized weights; auto follows train.precision
    dtype: DType = DType.auto
    # a branch, tag or commit of the hub repo, for reproducible runs
    revision: str | None = None
    # allow model code shipped in the repo (only for models you trust)
    trust_remote_code: bool = False
    # a Jinja chat template (inline, or a path to a .jinja file) for tokenizers that lack one
    chat_template: str | None = None
    # attention kernel passed to from_pretrained (sdpa, eager, flash_attention_2); null = transformers' choice
    attn_implementation: str | None = None

    def problems(self) -> Iterator[tuple[str, str]]:
        if not self.name_or_path.strip():
            yield "name_or_path", "must name a hub id or a local model folder"


@dataclass
class LoraConfig:
    # adapter rank: capacity of the update; larger = more trainable parameters
    r: int = 16
    # scaling numerator: the update is multiplied by alpha / r (or alpha / sqrt(r) with rslora)
    alpha: int = 32
    # dropout on the adapter input; 0 disables it
    dropout: float = 0.05
    # module names to adapt; ["all-linear"] adapts every linear layer but the output head
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    # none | all | lora_only: which biases train alongside the adapter
    bias: str = "none"
    # rank-stabilised scaling alpha / sqrt(r), steadier when sweeping r
    use_rslora: bool = False
    # weight-decomposed LoRA (DoRA): slower, sometimes better at low rank
    use_dora: bool = False

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
class DPOConfig:
    # temperature of the implicit reward: lower values let the policy drift further from the reference
    beta: float = 0.1
    # TRL 1.x loss list, e.g. [sigmoid] (DPO), [ipo], [hinge], [robust], [sigmoid, sft] (RPO)
    loss_type: list[str] = field(default_factory=lambda: ["sigmoid"])
    # one weight per loss_type entry; null = 1.0 each
    loss_weights: list[float] | None = None
    # longest prompt + response in tokens; longer pairs are truncated (the data report counts them)
    max_length: int = 1024
    # label flip probability for robust DPO / smoothing for EXO; 0 for plain DPO
    label_smoothing: float = 0.0
    # compute reference log-probs once before training: no reference forward per step
    precompute_ref_log_probs: bool = False

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.beta <= 0:
            yield "beta", f"must be > 0, got {self.beta}"
        if not self.loss_type:
            yield "loss_type", f"must list at least one of: {', '.join(DPO_LOSS_TYPES)}"
        for name in self.loss_type:
            if name not in DPO_LOSS_TYPES:
                yield "loss_type", f"unknown loss {name!r}; allowed: {', '.join(DPO_LOSS_TYPES)}"
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
    # source column holding the prompt (standard / conversational shapes)
    prompt: str = "prompt"
    # source column holding the preferred response
    chosen: str = "chosen"
    # source column holding the dispreferred response
    rejected: str = "rejected"


@dataclass
class DataConfig:
    # a local file (jsonl, json, parquet, csv, jsonl.gz), a folder (saved dataset or files), or a hub id
    path: str = MISSING
    # split (or file) to train on
    split: str = "train"
    # held-out split to evaluate on; null = carve test_size off the train split
    test_split: str | None = "test"
    # fraction (0-1) or row count held out when test_split is null; split with the run's seed
    test_size: float | None = None
    # auto | standard | conversational | implicit_prompt | hh
    format: DataFormat = DataFormat.auto
    # source column names, for data whose columns are not prompt / chosen / rejected
    columns: DataColumns = field(default_factory=DataColumns)
    # error | drop: stop at the first bad row (default), or drop bad rows and report counts
    on_invalid: OnInvalid = OnInvalid.error
    # use only the first N training rows (quick experiments); null = all
    max_train_samples: int | None = None
    # use only the first N held-out rows; null = all
    max_eval_samples: int | None = None
    # system message prepended to every prompt that has none; null = none
    system_prompt: str | None = None

    def problems(self) -> Iterator[tuple[str, str]]:
        if not self.path.strip():
            yield "path", "must name a file, a folder or a hub dataset id"
        if self.test_split is None and self.test_size is None:
            yield "test_size", "set data.test_split to a held-out split, or data.test_size to carve one off"
        if self.test_size is not None and self.test_size <= 0:
            yield "test_size", f"must be a fraction in (0, 1) or a row count >= 1, got {self.test_size}"
        if self.test_size is not None and self.test_size >= 1 and self.test_size != int(self.test_size):
            yield "test_size", f"a row count must be a whole number, got {self.test_size}"
        for key in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, key)
            if value is not None and value < 1:
                yield key, f"must be >= 1 or null, got {value}"


@dataclass
class TrainConfig:
    # peak learning rate of the adapter (AdamW)
    learning_rate: float = 5e-6
    # pairs per device per forward pass
    per_device_train_batch_size: int = 4
    # pairs per device per evaluation forward pass
    per_device_eval_batch_size: int = 8
    # micro-batches accumulated per optimizer step (effective batch = this x batch size x devices)
    gradient_accumulation_steps: int = 1
    # passes over the training data; ignored when max_steps > 0
    num_train_epochs: float = 1.0
    # optimizer steps to train for; -1 = derive from num_train_epochs
    max_steps: int = -1
    # evaluate on the held-out split every N steps; 0 = only before and after training
    eval_steps: int = 0
    # save a checkpoint every N steps; 0 = no intermediate checkpoints
    save_steps: int = 0
    # keep at most this many checkpoints (oldest deleted first)
    save_total_limit: int = 2
    # log training metrics every N steps
    logging_steps: int = 5
    # linear | cosine | constant | constant_with_warmup | ... (transformers scheduler names)
    lr_scheduler_type: str = "linear"
    # warm-up: a fraction of total steps if < 1, else a number of steps
    warmup_steps: float = 0.0
    # AdamW weight decay on the adapter weights
    weight_decay: float = 0.0
    # gradient clipping norm; 0 disables clipping
    max_grad_norm: float = 1.0
    # optimizer name as transformers knows it (adamw_torch_fused, adamw_torch, paged_adamw_8bit, ...)
    optim: str = "adamw_torch_fused"
    # recompute activations in backward: less memory, ~20-30% slower; for long sequences / big models
    gradient_checkpointing: bool = False
    # auto | fp32 | bf16 | fp16: auto = bf16 where the device computes it natively, else fp32
    precision: Precision = Precision.auto
    # evaluate on the held-out split before the first step (the "before" of before/after)
    eval_before_training: bool = True
    # batches of similar-length pairs: less padding, but less varied batches where length follows content
    group_by_length: bool = False
    # worker processes for the data loader
    dataloader_num_workers: int = 0
    # any other trl.DPOConfig / TrainingArguments field, passed through as-is
    extra: dict[str, Any] = field(default_factory=dict)

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
    "use_cpu", "train_sampling_strategy",
}  # fmt: skip


def _owner(key: str) -> str:
    return {
        "bf16": "train.precision", "fp16": "train.precision", "seed": "seed", "report_to": "logger",
        "run_name": "logger.name", "output_dir": "hydra.run.dir", "eval_strategy": "train.eval_steps",
        "save_strategy": "train.save_steps", "use_cpu": "the detected device",
        "train_sampling_strategy": "train.group_by_length",
    }.get(key, f"dpo.{key}" if key in {f.name for f in fields(DPOConfig)} else f"train.{key}")  # fmt: skip


@dataclass
class LoggerConfig:
    # none | wandb
    backend: LoggerBackend = LoggerBackend.wandb
    # W&B project the runs land in
    project: str = "dpo_lab"
    # W&B team or user; null = the API key's default entity
    entity: str | None = None
    # run name; null = built from the overrides that differ from the defaults (e.g. beta=0.05,r=8)
    name: str | None = None
    # run group; null = one group per multirun sweep, or the run's own name for a single run
    group: str | None = None
    # free-form tags to filter runs by
    tags: list[str] = field(default_factory=list)
    # W&B job type (train, eval, sweep...)
    job_type: str = "train"
    # free-text notes shown on the run page
    notes: str | None = None
    # auto | online | offline | disabled; auto = online with an API key and network, offline otherwise
    mode: WandbMode = WandbMode.auto
    # folder for W&B files; null = the run folder
    dir: str | None = None
    # upload the adapter folder (with its model card) as a W&B artifact of type model
    log_model: bool = False

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.backend is LoggerBackend.wandb and not self.project.strip():
            yield "project", "must name a W&B project"


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    # seeds Python, NumPy, torch, the adapter init, data shuffling and the held-out split
    seed: int = 42


GROUPS = {"model": ModelConfig, "lora": LoraConfig, "dpo": DPOConfig, "data": DataConfig,
          "train": TrainConfig, "logger": LoggerConfig}  # fmt: skip


def register_configs() -> None:
    """Register every group schema as ``<group>/base_<group>`` and the root schema as ``base_config``."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=RunConfig)
    for group, schema in GROUPS.items():
        cs.store(group=group, name=f"base_{group}", node=schema)


def validate(cfg: RunConfig) -> None:
    """Raise :class:`ConfigError` for the first value outside its allowed range (key path included)."""
    problems = list(iter_problems(cfg))
    if problems:
        key, message = problems[0]
        raise ConfigError(key, message)


def iter_problems(cfg: RunConfig) -> Iterator[tuple[str, str]]:
    for group in GROUPS:
        node = getattr(cfg, group)
        assert is_dataclass(node)
        for key, message in node.problems():
            yield f"{group}.{key}", message
    if cfg.dpo.precompute_ref_log_probs and cfg.train.extra.get("sync_ref_model"):
        yield "dpo.precompute_ref_log_probs", "cannot be combined with train.extra.sync_ref_model"
