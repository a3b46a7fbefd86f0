"""Typed schemas for every config group, registered with Hydra's ConfigStore, and their invariants.

Each YAML option under ``conf/<group>/`` extends the schema registered here as ``base_<group>``, so a
misspelt key or a wrong type fails while Hydra composes. Value ranges and cross-field rules are checked by
:func:`validate`, which ``run.py`` calls once on the typed object before anything heavy is loaded.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from dpo_lab.runtime.precision import DType, Precision


class Quantization(str, Enum):
    """How the frozen base weights are stored while the adapter trains."""

    none = "none"
    nf4 = "nf4"  # QLoRA: 4-bit NormalFloat with double quantization (bitsandbytes)
    int8 = "int8"  # LLM.int8() 8-bit weights (bitsandbytes)


class DataFormat(str, Enum):
    """Shape of the preference rows; ``auto`` detects it from the first row that fits one."""

    auto = "auto"
    standard = "standard"  # prompt / chosen / rejected strings
    conversational = "conversational"  # lists of {role, content} messages
    implicit_prompt = "implicit_prompt"  # chosen / rejected full conversations sharing a prefix
    hh = "hh"  # Anthropic HH-RLHF "\n\nHuman: ... \n\nAssistant: ..." transcripts


class OnInvalid(str, Enum):
    """What to do with preference rows that fail validation."""

    error = "error"
    drop = "drop"


class Direction(str, Enum):
    """Which way is better for a sweep's objective metric."""

    maximize = "maximize"
    minimize = "minimize"


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
    # a hub id, a local folder (config.json, weights, tokenizer), or package:<module> of a pip-installed one
    name_or_path: str = MISSING
    # a GGUF file in that folder / hub repo, dequantized once into a cached plain copy; null = not GGUF
    gguf_file: str | None = None
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
        elif self.name_or_path.startswith(("/", "./", "../", "~")):
            path = Path(self.name_or_path).expanduser()
            if not path.exists():
                yield "name_or_path", f"no such folder: {path}; give a local model folder or a hub id"
        if self.gguf_file is not None and not self.gguf_file.endswith(".gguf"):
            yield (
                "gguf_file",
                f"must name a .gguf file in model.name_or_path, or be null; got {self.gguf_file!r}",
            )


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
    # sub-folder of a hub dataset (or local folder), e.g. harmless-base of Anthropic/hh-rlhf; null = all
    data_dir: str | None = None
    # split (or file) to train on
    split: str = "train"
    # held-out split to evaluate on; null = carve test_size off the train split
    test_split: str | None = "test"
    # fraction (0-1) or row count held out when test_split is null, or when data.path is a single file
    # (it has no other split); split with the run's seed
    test_size: float | None = None
    # auto | standard | conversational | implicit_prompt | hh
    format: DataFormat = DataFormat.auto
    # source column names, for data whose columns are not prompt / chosen / rejected
    columns: DataColumns = field(default_factory=DataColumns)
    # error | drop: stop before training on invalid rows (default), or drop them and report counts per reason
    on_invalid: OnInvalid = OnInvalid.error
    # use only the first N training rows (quick experiments); null = all
    max_train_samples: int | None = None
    # use only the first N held-out rows; null = all
    max_eval_samples: int | None = None
    # system message prepended to every prompt that has none; null = none
    system_prompt: str | None = None

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
class TrainConfig:
    # peak learning rate of the adapter (AdamW); the default suits LoRA on a pretrained 1B-8B model. The
    # shipped train/default option, sized for the embedded tiny model, sets 5e-4 (it needs a far larger rate)
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


class Judge(str, Enum):
    """Who decides which of two answers is better in ``dpo-lab compare``."""

    checker = "checker"  # the task checker against the held-out ground truth (eval.checker)
    reward_model = "reward_model"  # a sequence-classification model with one score output


@dataclass
class GenerationConfig:
    # new tokens per answer; the embedded finance answers need ~80-120 with the tiny tokenizer
    max_new_tokens: int = 128
    # false = greedy decoding (deterministic); true = sample with temperature / top_p / top_k
    do_sample: bool = False
    # sampling temperature (only with do_sample): lower = closer to greedy
    temperature: float = 0.7
    # nucleus sampling mass (only with do_sample); 1.0 disables it
    top_p: float = 0.9
    # sample among the k most likely tokens (only with do_sample); 0 disables it
    top_k: int = 50
    # > 1 discourages repeating tokens; 1.0 = off
    repetition_penalty: float = 1.0
    # prompts generated together (left-padded); larger is faster until memory runs out
    batch_size: int = 16

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
class CheckerConfig:
    # a checker registered in dpo_lab.evaluation.task (finance_number, exact_match) or
    # "package.module:function";
    # null = no accuracy, sample generations only (data without ground truth)
    name: str | None = "finance_number"
    # held-out column holding the ground truth the checker compares the answer with
    answer_column: str = "answer"
    # numeric match: |answer - truth| <= max(abs_tol, rel_tol * |truth|); 0.001 = within 0.1%
    rel_tol: float = 0.001
    # numeric match floor in the answer's unit; 0.01 forgives rounding to the cent
    abs_tol: float = 0.01

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
class TaskEvalConfig:
    # generate answers to held-out prompts with the base (before) and the trained adapter (after)
    enabled: bool = True
    # held-out prompts answered (the first N of the held-out split): more = steadier accuracy, slower
    num_prompts: int = 16
    # how answers are scored against the ground truth
    checker: CheckerConfig = field(default_factory=CheckerConfig)
    # decoding settings of these answers (greedy by default, so before/after differ only by training)
    generation: GenerationConfig = field(default_factory=GenerationConfig)

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.num_prompts < 1:
            yield "num_prompts", f"must be an integer >= 1, got {self.num_prompts}"
        yield from _nested("checker", self.checker.problems())
        yield from _nested("generation", self.generation.problems())


def _nested(prefix: str, problems: Iterator[tuple[str, str]]) -> Iterator[tuple[str, str]]:
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
class ObjectiveConfig:
    # held-out metric that ranks a sweep's jobs and that Optuna optimises (TRL's eval name without "eval_")
    metric: str = "rewards/accuracies"
    # maximize | minimize: which way is better for the metric (loss: minimize)
    direction: Direction = Direction.maximize

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
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    eval: TaskEvalConfig = field(default_factory=TaskEvalConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    # in a same-process multirun, hand the next job the loaded base model (adapter removed), the tokenised
    # data and the reference log-probs when they would come out identical; false reloads them for every job
    reuse: bool = True
    # CPU memory that torch frees stays in the process for the next step (glibc malloc: no fresh mmap and
    # page faults for every large tensor, every step); false = glibc's defaults (hardware.keep_freed_memory)
    keep_freed_memory: bool = True
    # seeds Python, NumPy, torch, the adapter init, data shuffling and the held-out split
    seed: int = 42
    # a run folder to continue from its newest complete checkpoint, with the overrides it was started with;
    # null = a new run (re-running with the same hydra.run.dir resumes too)
    resume: str | None = None

    def problems(self) -> Iterator[tuple[str, str]]:
        for group in GROUPS:
            node = getattr(self, group)
            assert is_dataclass(node)
            yield from _nested(group, node.problems())
        if self.dpo.precompute_ref_log_probs and self.train.extra.get("sync_ref_model"):
            yield "dpo.precompute_ref_log_probs", "cannot be combined with train.extra.sync_ref_model"


GROUPS = {"model": ModelConfig, "lora": LoraConfig, "dpo": DPOConfig, "data": DataConfig,
          "train": TrainConfig, "logger": LoggerConfig, "eval": TaskEvalConfig,
          "objective": ObjectiveConfig}  # fmt: skip


def register_configs() -> None:
    """Register every group schema as ``<group>/base_<group>`` and the root schema as ``base_config``."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=RunConfig)
    for group, schema in GROUPS.items():
        cs.store(group=group, name=f"base_{group}", node=schema)
    for name, schema in ENTRY_POINTS.items():
        cs.store(name=f"base_{name}", node=schema)


# Schemas of the entry points that work on a finished run folder (conf/<name>.yaml each).


@dataclass
class GenerateConfig:
    # run folder written by python -m dpo_lab.run (holds config.yaml and adapter/)
    run: str = MISSING
    # one prompt to answer; with no prompt, prompts_file or chat, the prompts piped on standard input
    # (one per line) are answered
    prompt: str | None = None
    # prompts to answer: .txt (one per line, blank lines skipped) or .jsonl (a prompt field per line)
    prompts_file: str | None = None
    # field of each .jsonl line holding the prompt (a string, or a list of {role, content} messages)
    prompt_field: str = "prompt"
    # interactive multi-turn chat reading stdin (piped input works too); /reset clears, /exit ends
    chat: bool = False
    # system message of every conversation; null = the run's data.system_prompt
    system_prompt: str | None = None
    # answer with the adapter disabled (the untrained base model), to see what training changed
    base_only: bool = False
    # also write {prompt, answer} lines to this jsonl file
    output: str | None = None
    # print tokens as they are generated (one prompt at a time); false = batched, printed per answer
    stream: bool = True
    # null = the run's model.quantization; e.g. nf4 to chat with a big base on a small GPU
    quantization: Quantization | None = None
    # seeds sampling (do_sample=true); greedy decoding is deterministic anyway
    seed: int = 42
    # decoding settings
    generation: GenerationConfig = field(default_factory=GenerationConfig)

    def problems(self) -> Iterator[tuple[str, str]]:
        sources = [k for k in ("prompt", "prompts_file") if getattr(self, k) is not None]
        sources += ["chat"] if self.chat else []
        if len(sources) > 1:
            found = ", ".join(sources)
            yield "prompt", f"give one of prompt=..., prompts_file=... or chat=true (got {found})"
        if self.prompt is not None and not self.prompt.strip():
            yield "prompt", "must not be empty"
        yield from _nested("generation", self.generation.problems())


@dataclass
class MergeConfig:
    # run folder written by python -m dpo_lab.run (holds config.yaml and adapter/)
    run: str = MISSING
    # folder for the standalone merged model; null = <run>/merged
    out: str | None = None
    # auto | float32 | bfloat16 | float16: dtype of the merged weights; auto = the run's base dtype
    dtype: DType = DType.auto
    # replace the out folder if it already holds files
    overwrite: bool = False


@dataclass
class CompareConfig:
    # run folder of model A (its held-out split supplies the prompts)
    a: str = MISSING
    # run folder of model B, or "base" for A's base model with the adapter disabled
    b: str = "base"
    # checker | reward_model: score against the ground truth, or by a reward model's score
    judge: Judge = Judge.checker
    # folder of a sequence-classification model with one output (judge=reward_model)
    reward_model: str | None = None
    # held-out prompts compared (the first N of A's held-out split)
    num_prompts: int = 32
    # answers scored against the ground truth (judge=checker)
    checker: CheckerConfig = field(default_factory=CheckerConfig)
    # decoding settings of both models' answers
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    # per-prompt results (jsonl) and a summary next to it (.json); null = <a>/compare/vs-<b>.jsonl
    out: str | None = None
    # seeds sampling (do_sample=true); greedy decoding is deterministic anyway
    seed: int = 42

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.num_prompts < 1:
            yield "num_prompts", f"must be an integer >= 1, got {self.num_prompts}"
        if self.judge is Judge.reward_model and not self.reward_model:
            yield "reward_model", "judge=reward_model needs reward_model=<folder of the reward model>"
        if self.judge is Judge.checker and self.checker.name is None:
            yield "checker.name", "judge=checker needs a checker name (finance_number, exact_match, ...)"
        yield from _nested("checker", self.checker.problems())
        yield from _nested("generation", self.generation.problems())


ENTRY_POINTS = {"generate": GenerateConfig, "merge": MergeConfig, "compare": CompareConfig}
