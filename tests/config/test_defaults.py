"""The documented defaults, pinned: every key's default as docs/configuration.md states it, written here as
literal values, compared with the schema and with what the shipped YAML options compose to.

The page's tables are generated from the schemas, so comparing the schema with the page (or with itself)
lets a changed default through. A default that changes on purpose changes here too, in the same commit as
the page's regenerated tables.
"""

from __future__ import annotations

from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from dpo_lab.config.commands import ENTRY_POINTS
from dpo_lab.config.fields import leaves, plain
from dpo_lab.config.resolvers import asset_path, register_resolvers
from dpo_lab.config.schemas import RunConfig
from dpo_lab.config.store import register_configs
from dpo_lab.config.validation import to_run_config
from tests.helpers import CONF, compose_config

REQUIRED = "???"

# docs/configuration.md, the "default" column (the schema's default), group by group
RUN_DEFAULTS: dict[str, Any] = {
    "model.name_or_path": REQUIRED,
    "model.gguf_file": None,
    "model.quantization": "none",
    "model.dtype": "auto",
    "model.revision": None,
    "model.trust_remote_code": False,
    "model.chat_template": None,
    "model.attn_implementation": None,
    "model.license": None,
    "lora.r": 16,
    "lora.alpha": 32,
    "lora.dropout": 0.05,
    "lora.target_modules": ["all-linear"],
    "lora.bias": "none",
    "lora.use_rslora": False,
    "lora.use_dora": False,
    "dpo.beta": 0.1,
    "dpo.loss_type": ["sigmoid"],
    "dpo.loss_weights": None,
    "dpo.max_length": 1024,
    "dpo.label_smoothing": 0.0,
    "dpo.loss_params": {},
    "dpo.precompute_ref_log_probs": False,
    "data.path": REQUIRED,
    "data.data_dir": None,
    "data.split": "train",
    "data.test_split": "test",
    "data.test_size": None,
    "data.format": "auto",
    "data.columns.prompt": "prompt",
    "data.columns.chosen": "chosen",
    "data.columns.rejected": "rejected",
    "data.on_invalid": "error",
    "data.max_train_samples": None,
    "data.max_eval_samples": None,
    "data.system_prompt": None,
    "train.learning_rate": 5e-6,
    "train.per_device_train_batch_size": 4,
    "train.per_device_eval_batch_size": 8,
    "train.gradient_accumulation_steps": 1,
    "train.num_train_epochs": 1.0,
    "train.max_steps": -1,
    "train.eval_steps": 0,
    "train.save_steps": 0,
    "train.save_total_limit": 2,
    "train.logging_steps": 5,
    "train.lr_scheduler_type": "linear",
    "train.warmup_steps": 0.0,
    "train.weight_decay": 0.0,
    "train.max_grad_norm": 1.0,
    "train.optim": "adamw_torch_fused",
    "train.gradient_checkpointing": False,
    "train.precision": "auto",
    "train.eval_before_training": True,
    "train.group_by_length": False,
    "train.dataloader_num_workers": 0,
    "train.extra": {},
    "logger.backend": "wandb",
    "logger.name": None,
    "logger.group": None,
    "logger.tags": [],
    "logger.notes": None,
    "logger.log_model": False,
    "logger.wandb.project": "dpo_lab",
    "logger.wandb.entity": None,
    "logger.wandb.job_type": "train",
    "logger.wandb.mode": "auto",
    "logger.wandb.dir": None,
    "logger.options": {},
    "eval.enabled": True,
    "eval.num_prompts": 16,
    "eval.checker.name": "auto",
    "eval.checker.answer_column": "answer",
    "eval.checker.rel_tol": 0.001,
    "eval.checker.abs_tol": 0.01,
    "eval.generation.max_new_tokens": 128,
    "eval.generation.do_sample": False,
    "eval.generation.temperature": 0.7,
    "eval.generation.top_p": 0.9,
    "eval.generation.top_k": 50,
    "eval.generation.repetition_penalty": 1.0,
    "eval.generation.batch_size": 16,
    "eval.reward_kl.reward": None,
    "eval.reward_kl.num_prompts": 64,
    "eval.reward_kl.samples_per_prompt": 4,
    "eval.reward_kl.max_new_tokens": 64,
    "eval.reward_kl.batch_size": 16,
    "eval.reward_kl.seed": 0,
    "objective.metric": "rewards/accuracies",
    "objective.direction": "maximize",
    "prune.pruner": "none",
    "prune.min_steps": 0,
    "prune.n_startup_trials": 5,
    "prune.min_resource": None,
    "prune.reduction_factor": 3,
    "prune.max_resource": None,
    "prune.storage": None,
    "prune.study": None,
    "prune.trial": None,
    "prune.stop_at": None,
    "reuse": True,
    "keep_freed_memory": True,
    "seed": 42,
    "resume": None,
}

# the page's values in parentheses: what the default options (model=tiny, data=finance, train=default, ...)
# set instead of the schema's default
SHIPPED_DEFAULTS: dict[str, Any] = {
    "model.name_or_path": asset_path("tiny-llama"),
    "model.license": "apache-2.0",
    "data.path": asset_path("finance"),
    "train.learning_rate": 5e-4,
    "train.per_device_train_batch_size": 8,
    "train.per_device_eval_batch_size": 16,
    "train.max_steps": 120,
    "train.logging_steps": 10,
    "train.warmup_steps": 0.1,
}

GENERATION = {
    "generation.max_new_tokens": 128,
    "generation.do_sample": False,
    "generation.temperature": 0.7,
    "generation.top_p": 0.9,
    "generation.top_k": 50,
    "generation.repetition_penalty": 1.0,
    "generation.batch_size": 16,
}
CHECKER = {
    "checker.name": "auto",
    "checker.answer_column": "answer",
    "checker.rel_tol": 0.001,
    "checker.abs_tol": 0.01,
}
# the commands' schemas (docs/configuration.md, sections generate, merge, compare, pairs)
COMMAND_DEFAULTS: dict[str, dict[str, Any]] = {
    "generate": {
        "run": REQUIRED,
        "prompt": None,
        "prompts_file": None,
        "prompt_field": "prompt",
        "chat": False,
        "system_prompt": None,
        "base_only": False,
        "output": None,
        "stream": True,
        "quantization": None,
        "seed": 42,
        **GENERATION,
    },
    "merge": {"run": REQUIRED, "out": None, "dtype": "auto", "overwrite": False},
    "compare": {
        "a": REQUIRED,
        "b": "base",
        "judge": "checker",
        "reward_model": None,
        "num_prompts": 32,
        **CHECKER,
        **GENERATION,
        "out": None,
        "seed": 42,
    },
    "pairs": {
        "prompts": REQUIRED,
        "prompt_field": "prompt",
        "out": REQUIRED,
        "reward": REQUIRED,
        "run": None,
        "model": None,
        "system_prompt": None,
        "num_samples": 4,
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": 0,
        "max_new_tokens": 64,
        "batch_size": 16,
        "seed": 42,
        "max_prompts": None,
        "precision": None,
    },
}
# what each command's YAML file (conf/<command>.yaml) sets instead
COMMAND_SHIPPED: dict[str, dict[str, Any]] = {
    "generate": {"generation.max_new_tokens": 256},
    "merge": {},
    "compare": {"checker.name": "finance_number"},
    "pairs": {},
}


def _schema_defaults(schema: type) -> dict[str, Any]:
    return {key: plain(value) for key, _, value in leaves(schema)}


def test_run_schema_defaults_are_the_documented_ones() -> None:
    assert _schema_defaults(RunConfig) == RUN_DEFAULTS


def test_the_default_options_compose_to_the_documented_values() -> None:
    composed = {key: plain(value) for key, _, value in leaves(to_run_config(compose_config()))}
    assert set(SHIPPED_DEFAULTS) <= set(RUN_DEFAULTS)
    assert composed == {**RUN_DEFAULTS, **SHIPPED_DEFAULTS}


@pytest.mark.parametrize("command", sorted(COMMAND_DEFAULTS))
def test_command_defaults_are_the_documented_ones(command: str) -> None:
    assert sorted(COMMAND_DEFAULTS) == sorted(ENTRY_POINTS)
    assert _schema_defaults(ENTRY_POINTS[command]) == COMMAND_DEFAULTS[command]


@pytest.mark.parametrize("command", sorted(COMMAND_SHIPPED))
def test_command_yaml_files_compose_to_the_documented_values(command: str) -> None:
    register_configs()
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=command)
    expected = {**COMMAND_DEFAULTS[command], **COMMAND_SHIPPED[command]}
    for key, value in expected.items():
        *parent, last = key.split(".")
        node = OmegaConf.select(cfg, ".".join(parent)) if parent else cfg
        got = REQUIRED if OmegaConf.is_missing(node, last) else plain(node[last])
        assert got == value, f"{command}: {key} composes to {got!r}, the page says {value!r}"
