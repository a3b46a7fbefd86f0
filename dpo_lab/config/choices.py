"""The closed choices of the config (enums whose values are the YAML spellings) and the name lists values
are checked against."""

from __future__ import annotations

from enum import Enum


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


class WandbMode(str, Enum):
    auto = "auto"  # online when an API key and the network are there, offline otherwise
    online = "online"
    offline = "offline"
    disabled = "disabled"


# Loss names accepted by TRL 1.x DPOSettings.loss_type (checked against the installed trl by a test).
DPO_LOSS_TYPES = (
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
    "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
)  # fmt: skip


LORA_BIAS = ("none", "all", "lora_only")


class Judge(str, Enum):
    """Who decides which of two answers is better in ``dpo-lab compare``."""

    checker = "checker"  # the task checker against the held-out ground truth (eval.checker)
    reward_model = "reward_model"  # a sequence-classification model with one score output
