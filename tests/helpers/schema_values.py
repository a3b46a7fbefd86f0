"""Non-default values for every field of the schemas whose values dpo_lab passes on (``dpo``, ``train``,
``lora``), shared by the pass-through and model-card tests.

Each value differs from its schema default, numbers are distinct within a group (two fields swapped must
show), and every table passes its schema's own checks. A table must name every field of its schema:
``test_value_tables_cover_every_field`` fails for a new field until it gets a value here.
"""

from __future__ import annotations

import dataclasses
from enum import Enum
from typing import Any

from dpo_lab.config.schemas import DPOSettings, LoraSettings, TrainSettings
from dpo_lab.runtime.precision import Precision

DPO_VALUES: dict[str, Any] = {
    "beta": 0.37,
    # TRL's losses and one of your own (package.module:function), which reads loss_params
    "loss_type": ["sigmoid", "sft", "dpo_lab.train.losses:sigmoid_dpo"],
    "loss_weights": [0.8, 0.2, 0.45],
    "max_length": 200,
    "label_smoothing": 0.23,
    "loss_params": {"gamma": 0.5},
    "precompute_ref_log_probs": True,
}

# any trl.DPOConfig / TrainingArguments fields dpo_lab does not own, with values TRL does not default to
EXTRA_VALUES: dict[str, Any] = {"ld_alpha": 0.5, "logging_first_step": True, "dataloader_drop_last": True}

TRAIN_VALUES: dict[str, Any] = {
    "learning_rate": 3e-4,
    "per_device_train_batch_size": 3,
    "per_device_eval_batch_size": 5,
    "gradient_accumulation_steps": 6,
    "num_train_epochs": 2.5,
    "max_steps": 17,
    "eval_steps": 7,
    "save_steps": 22,  # a multiple of logging_steps (a schema rule)
    "save_total_limit": 4,
    "logging_steps": 11,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.15,
    "weight_decay": 0.01,
    "max_grad_norm": 0.7,
    "optim": "adamw_torch",
    "gradient_checkpointing": True,
    "precision": Precision.bf16,
    "eval_before_training": False,
    "group_by_length": True,
    "dataloader_num_workers": 2,
    "extra": EXTRA_VALUES,
}

# r and alpha distinct and alpha != 2 * r, so alpha replaced by r (or by its default ratio) shows
LORA_VALUES: dict[str, Any] = {
    "r": 4,
    "alpha": 12,
    "dropout": 0.15,
    "target_modules": ["q_proj", "v_proj"],
    "bias": "lora_only",
    "use_rslora": True,
    "use_dora": True,
}

TABLES: dict[str, tuple[type, dict[str, Any]]] = {
    "dpo": (DPOSettings, DPO_VALUES),
    "train": (TrainSettings, TRAIN_VALUES),
    "lora": (LoraSettings, LORA_VALUES),
}


def typed(group: str) -> Any:
    """The schema object of ``group`` holding its table's values."""
    schema, values = TABLES[group]
    return schema(**values)


def plain(value: Any) -> Any:
    """A schema or library value in comparable form: enums by value, tuples as lists."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple):
        return list(value)
    return value


def schema_default(schema: type, name: str) -> Any:
    """The schema's own default of ``name``."""
    field = {f.name: f for f in dataclasses.fields(schema)}[name]
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def override(group: str, name: str, value: Any) -> str:
    """``group.name=value`` as a Hydra command-line override."""
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, list):
        text = "[" + ",".join(str(v) for v in value) + "]"
    else:
        text = str(plain(value))
    return f"{group}.{name}={text}"


# The model card's hyperparameter rows: the config keys a reader needs to reproduce the run (and
# "precision", the one training resolved for the device from train.precision).
CARD_ROWS = [
    "dpo.beta", "dpo.loss_type", "dpo.loss_weights", "dpo.label_smoothing", "dpo.max_length", "lora.r",
    "lora.alpha", "lora.dropout", "lora.target_modules", "lora.bias", "lora.use_rslora", "lora.use_dora",
    "model.quantization", "train.learning_rate", "train.per_device_train_batch_size",
    "train.gradient_accumulation_steps", "train.max_steps", "train.num_train_epochs", "precision", "seed",
]  # fmt: skip


def card_hyperparameters(card: str) -> dict[str, str]:
    """key -> cell of the "## Hyperparameters" table of a model card's markdown."""
    section = card.split("## Hyperparameters\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| ")]
    cells = {key.strip(): value.strip() for key, value in rows}
    cells.pop("key")  # the header row
    return cells


def card_value(config: Any, key: str, precision: str) -> Any:
    """The value the card row ``key`` must show, from a typed config or a resolved config mapping."""
    if key == "precision":
        return precision
    value = config
    for part in key.split("."):
        value = value[part] if isinstance(value, dict) else getattr(value, part)
    value = plain(value)
    if value is None:
        return "-"
    return (
        ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
        if isinstance(value, list)
        else value
    )


def same_cell(cell: str, expected: Any) -> bool:
    """Whether a card cell shows ``expected`` (numbers to the card's 4 significant digits)."""
    if isinstance(expected, (int, float)) and not isinstance(expected, bool):
        return abs(float(cell) - expected) <= 5e-4 * abs(expected)
    return cell == str(expected)
