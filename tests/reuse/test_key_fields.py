"""Each key that decides what a job may take from another, with every config field varied alone.

A key must change exactly when the artefact it guards would come out different: the base model
(:func:`model_key`), TRL's tokenised data (:func:`tokenized_key`), the reference log-probs
(:func:`ref_log_probs_key`), which jobs may train as one pack (:func:`pack_key`) and a pack's record of a
job (:func:`job_digest`). The expected fields are written out here, not read from the schemas' metadata that
builds the keys: a field marked wrongly there fails here.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from dpo_lab.config.choices import Direction
from dpo_lab.config.fields import leaves
from dpo_lab.config.pruning import PrunerName
from dpo_lab.config.resolvers import asset_path
from dpo_lab.config.schemas import DataSettings, ModelSettings, RunConfig
from dpo_lab.packed.plan import pack_key
from dpo_lab.packed.store import job_digest
from dpo_lab.reuse.cache import model_key, ref_log_probs_key, tokenized_key
from dpo_lab.runtime.precision import Precision
from tests.helpers.schema_values import DPO_VALUES, LORA_VALUES, TRAIN_VALUES
from tests.reuse.test_cache_keys import DATA_CHANGES, NOT_IN_DATA_KEY, TOKENIZER_CHANGES

# another value for every field of the run config
OTHER_VALUES: dict[str, Any] = {
    **{f"model.{k}": v for k, v in TOKENIZER_CHANGES.items()},
    **{f"model.{k}": v for k, (v, _) in NOT_IN_DATA_KEY.items() if k != "license"},
    "model.license": "mit",
    **{f"data.{k}": v for k, v in DATA_CHANGES.items()},
    **{f"dpo.{k}": v for k, v in DPO_VALUES.items()},
    **{f"train.{k}": v for k, v in TRAIN_VALUES.items()},
    **{f"lora.{k}": v for k, v in LORA_VALUES.items()},
    "logger.backend": "none",
    "logger.name": "a-name",
    "logger.group": "a-group",
    "logger.tags": ["t"],
    "logger.notes": "notes",
    "logger.log_model": True,
    "logger.wandb.project": "other",
    "logger.wandb.entity": "team",
    "logger.wandb.job_type": "eval",
    "logger.wandb.mode": "offline",
    "logger.wandb.dir": "/tmp/wandb",
    "logger.options": {"a": 1},
    "eval.enabled": False,
    "eval.num_prompts": 3,
    "eval.checker.name": "exact_match",
    "eval.checker.answer_column": "label",
    "eval.checker.rel_tol": 0.2,
    "eval.checker.abs_tol": 0.3,
    "eval.generation.max_new_tokens": 7,
    "eval.generation.do_sample": True,
    "eval.generation.temperature": 0.2,
    "eval.generation.top_p": 0.5,
    "eval.generation.top_k": 3,
    "eval.generation.repetition_penalty": 1.3,
    "eval.generation.batch_size": 2,
    "eval.reward_kl.reward": "sentiment",
    "eval.reward_kl.num_prompts": 5,
    "eval.reward_kl.samples_per_prompt": 2,
    "eval.reward_kl.max_new_tokens": 9,
    "eval.reward_kl.batch_size": 4,
    "eval.reward_kl.seed": 3,
    "objective.metric": "loss",
    "objective.direction": Direction.minimize,
    "prune.pruner": PrunerName.median,
    "prune.min_steps": 2,
    "prune.n_startup_trials": 1,
    "prune.min_resource": 2,
    "prune.reduction_factor": 4,
    "prune.max_resource": 9,
    "prune.storage": "sqlite:///s.db",
    "prune.study": "s",
    "prune.trial": 1,
    "prune.stop_at": 4,
    "reuse": False,
    "keep_freed_memory": False,
    "seed": 7,
    "resume": "/some/run",
}

TOKENIZER = {"model.name_or_path", "model.gguf_file", "model.revision", "model.trust_remote_code",
             "model.chat_template"}  # fmt: skip
BASE = TOKENIZER | {"model.quantization", "model.dtype", "model.attn_implementation",
                    "train.gradient_checkpointing"}  # fmt: skip
PAIRS = {f"data.{k}" for k in DATA_CHANGES} | {"seed"}
# TRL's tokenisation: the pairs, the tokenizer, the truncation length and any pass-through trainer option
TOKENIZED = PAIRS | TOKENIZER | {"dpo.max_length", "train.extra"}
# the reference (the base, adapter off) on the same batches: not beta, the loss, the rate or the LoRA shape
REFERENCE = TOKENIZED | BASE | {"train.per_device_train_batch_size", "train.per_device_eval_batch_size"}
# what may differ between the jobs of one pack (each job has its own adapter, loss and optimizer)
DIFFERS_IN_PACK = {
    "lora.r", "lora.alpha", "lora.dropout", "lora.target_modules", "lora.use_rslora",
    "dpo.beta", "dpo.loss_type", "dpo.loss_weights", "dpo.label_smoothing", "dpo.loss_params",
    "train.learning_rate", "train.lr_scheduler_type", "train.warmup_steps", "train.weight_decay",
    "train.max_grad_norm", "train.eval_steps", "train.logging_steps", "train.save_total_limit",
}  # fmt: skip


def _base() -> RunConfig:
    model = ModelSettings(name_or_path=asset_path("tiny-llama"))
    return RunConfig(model=model, data=DataSettings(path=asset_path("finance")))


def _all_keys() -> list[str]:
    return [key for key, _, _ in leaves(_base())]


def _in_pack_key() -> set[str]:
    groups = ("model.", "data.", "dpo.", "train.", "lora.")
    return {k for k in _all_keys() if k.startswith(groups) and k not in DIFFERS_IN_PACK} | {"seed", "reuse"}


def _changed(key: str) -> RunConfig:
    cfg = copy.deepcopy(_base())
    *path, last = key.split(".")
    node: Any = cfg
    for part in path:
        node = getattr(node, part)
    assert getattr(node, last) != OTHER_VALUES[key], f"{key}: not a change"
    setattr(node, last, OTHER_VALUES[key])
    return cfg


KEYS = {
    "model_key": (
        lambda c: model_key(c.model, Precision.fp32, c.train.gradient_checkpointing, "cpu"),
        lambda: BASE,
    ),
    "tokenized_key": (tokenized_key, lambda: TOKENIZED),
    "ref_log_probs_key": (lambda c: ref_log_probs_key(c, Precision.fp32, "cpu"), lambda: REFERENCE),
    "pack_key": (pack_key, _in_pack_key),
    "job_digest": (job_digest, lambda: set(_all_keys())),
}


def test_the_value_table_names_every_field() -> None:
    assert set(OTHER_VALUES) == set(_all_keys()), "give a new field another value here"
    assert DIFFERS_IN_PACK <= set(_all_keys())


@pytest.mark.parametrize("name", sorted(KEYS))
def test_each_key_changes_exactly_with_its_fields(name: str) -> None:
    fn, expected = KEYS[name]
    before = fn(_base())
    changes = {key for key in _all_keys() if fn(_changed(key)) != before}
    assert changes == expected(), (
        f"{name}: changes with {sorted(changes - expected())} that do not change its artefact, "
        f"and not with {sorted(expected() - changes)} that do"
    )


def test_the_resolved_precision_and_the_device_change_the_base_and_the_reference() -> None:
    cfg = _base()
    key = model_key(cfg.model, Precision.fp32, False, "cpu")
    assert model_key(cfg.model, Precision.bf16, False, "cpu") != key
    assert model_key(cfg.model, Precision.fp32, False, "cuda") != key
    assert model_key(cfg.model, Precision.fp32, True, "cpu") != key
    ref = ref_log_probs_key(cfg, Precision.fp32, "cpu")
    assert ref_log_probs_key(cfg, Precision.bf16, "cpu") != ref
    assert ref_log_probs_key(cfg, Precision.fp32, "cuda") != ref
    assert ref_log_probs_key(cfg, Precision.fp32, "cpu") == ref  # and it is stable


def test_keys_do_not_depend_on_the_order_values_were_given() -> None:
    a, b = _base(), _base()
    a.train.extra = {"ld_alpha": 0.5, "logging_first_step": True}
    b.train.extra = {"logging_first_step": True, "ld_alpha": 0.5}
    assert tokenized_key(a) == tokenized_key(b) and pack_key(a) == pack_key(b)
