"""Every numeric key's range, tested on both sides of each bound: the last value refused and the first value
accepted, at the bound itself (lora.dropout 0.999 passes, 1.0 fails), not far from it (1.5).

A bound tested only far away lets ``< 1`` become ``<= 1`` unnoticed. The tables name every int and float key
of the run config and of the commands' configs: a new numeric key fails
:func:`test_every_numeric_key_has_its_bounds_tested` until its bounds (or why it has none) are written here.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from dpo_lab.config.commands import CompareConfig, GenerateConfig, PairsConfig
from dpo_lab.config.fields import leaves
from dpo_lab.config.pruning import PrunerName
from dpo_lab.config.schemas import RunConfig
from dpo_lab.config.validation import non_finite, problems, to_run_config
from dpo_lab.errors import ConfigError
from tests.helpers import compose_config

# held-out rows carved off the train split: data.test_size decides how many
CARVED = {"data.test_split": None, "data.test_size": 0.5}
# (key, value, accepted, other keys set first so that only this key's bound decides). Each bound has a row
# on each side of it: the value at an inclusive bound and the closest value past it.
RUN_BOUNDS: list[tuple[str, Any, bool, dict[str, Any]]] = [
    ("lora.r", 0, False, {}),
    ("lora.r", 1, True, {}),
    ("lora.alpha", 0, False, {}),
    ("lora.alpha", 1, True, {}),
    ("lora.dropout", -0.001, False, {}),
    ("lora.dropout", 0.0, True, {}),
    ("lora.dropout", 0.999, True, {}),
    ("lora.dropout", 1.0, False, {}),
    ("dpo.beta", 0.0, False, {}),
    ("dpo.beta", -0.1, False, {}),
    ("dpo.beta", 1e-9, True, {}),
    ("dpo.max_length", 15, False, {}),
    ("dpo.max_length", 16, True, {}),
    ("dpo.label_smoothing", -0.001, False, {}),
    ("dpo.label_smoothing", 0.0, True, {}),
    ("dpo.label_smoothing", 0.5, True, {}),
    ("dpo.label_smoothing", 0.501, False, {}),
    # robust DPO's flip probability must stay below 0.5 (at 0.5 its loss divides by zero)
    ("dpo.label_smoothing", 0.0, True, {"dpo.loss_type": ["robust"]}),
    ("dpo.label_smoothing", 0.499, True, {"dpo.loss_type": ["robust"]}),
    ("dpo.label_smoothing", 0.5, False, {"dpo.loss_type": ["robust"]}),
    ("dpo.label_smoothing", -0.001, False, {"dpo.loss_type": ["robust"]}),
    # a fraction in (0, 1), or a whole row count >= 1
    ("data.test_size", 0.0, False, CARVED),
    ("data.test_size", -0.5, False, CARVED),
    ("data.test_size", 0.001, True, CARVED),
    ("data.test_size", 0.999, True, CARVED),
    ("data.test_size", 1.0, True, CARVED),
    ("data.test_size", 1.5, False, CARVED),
    ("data.test_size", 2.0, True, CARVED),
    ("data.max_train_samples", 0, False, {}),
    ("data.max_train_samples", 1, True, {}),
    ("data.max_train_samples", None, True, {}),
    ("data.max_eval_samples", 0, False, {}),
    ("data.max_eval_samples", 1, True, {}),
    ("data.max_eval_samples", None, True, {}),
    ("train.learning_rate", 0.0, False, {}),
    ("train.learning_rate", -1e-5, False, {}),
    ("train.learning_rate", 1e-12, True, {}),
    ("train.per_device_train_batch_size", 0, False, {}),
    ("train.per_device_train_batch_size", 1, True, {}),
    ("train.per_device_eval_batch_size", 0, False, {}),
    ("train.per_device_eval_batch_size", 1, True, {}),
    ("train.gradient_accumulation_steps", 0, False, {}),
    ("train.gradient_accumulation_steps", 1, True, {}),
    ("train.logging_steps", 0, False, {}),
    ("train.logging_steps", 1, True, {"train.save_steps": 0}),
    # a positive step count, or -1 for num_train_epochs
    ("train.max_steps", -2, False, {}),
    ("train.max_steps", -1, True, {}),
    ("train.max_steps", 0, False, {}),
    ("train.max_steps", 1, True, {}),
    ("train.num_train_epochs", 0.0, False, {"train.max_steps": -1}),
    ("train.num_train_epochs", 1e-9, True, {"train.max_steps": -1}),
    ("train.num_train_epochs", 0.0, True, {"train.max_steps": 5}),  # ignored when max_steps counts steps
    ("train.eval_steps", -1, False, {}),
    ("train.eval_steps", 0, True, {}),
    ("train.save_steps", -1, False, {"train.logging_steps": 1}),
    ("train.save_steps", 0, True, {"train.logging_steps": 1}),
    # save_steps must be a multiple of logging_steps (5 here), 0 included
    ("train.save_steps", 0, True, {"train.logging_steps": 5}),
    ("train.save_steps", 1, False, {"train.logging_steps": 5}),
    ("train.save_steps", 4, False, {"train.logging_steps": 5}),
    ("train.save_steps", 5, True, {"train.logging_steps": 5}),
    ("train.save_steps", 6, False, {"train.logging_steps": 5}),
    ("train.save_steps", 10, True, {"train.logging_steps": 5}),
    ("train.save_total_limit", 0, False, {}),
    ("train.save_total_limit", 1, True, {}),
    ("train.warmup_steps", -0.001, False, {}),
    ("train.warmup_steps", 0.0, True, {}),
    ("train.weight_decay", -0.001, False, {}),
    ("train.weight_decay", 0.0, True, {}),
    ("train.max_grad_norm", -0.001, False, {}),
    ("train.max_grad_norm", 0.0, True, {}),
    ("train.dataloader_num_workers", -1, False, {}),
    ("train.dataloader_num_workers", 0, True, {}),
    ("eval.num_prompts", 0, False, {}),
    ("eval.num_prompts", 1, True, {}),
    ("eval.checker.rel_tol", -0.001, False, {}),
    ("eval.checker.rel_tol", 0.0, True, {}),
    ("eval.checker.abs_tol", -0.001, False, {}),
    ("eval.checker.abs_tol", 0.0, True, {}),
    ("eval.generation.max_new_tokens", 0, False, {}),
    ("eval.generation.max_new_tokens", 1, True, {}),
    ("eval.generation.temperature", 0.0, False, {}),
    ("eval.generation.temperature", 1e-6, True, {}),
    ("eval.generation.top_p", 0.0, False, {}),
    ("eval.generation.top_p", 1e-6, True, {}),
    ("eval.generation.top_p", 1.0, True, {}),
    ("eval.generation.top_p", 1.001, False, {}),
    ("eval.generation.top_k", -1, False, {}),
    ("eval.generation.top_k", 0, True, {}),
    ("eval.generation.repetition_penalty", 0.0, False, {}),
    ("eval.generation.repetition_penalty", 1e-6, True, {}),
    ("eval.generation.batch_size", 0, False, {}),
    ("eval.generation.batch_size", 1, True, {}),
    ("eval.reward_kl.num_prompts", 0, False, {}),
    ("eval.reward_kl.num_prompts", 1, True, {}),
    ("eval.reward_kl.samples_per_prompt", 0, False, {}),
    ("eval.reward_kl.samples_per_prompt", 1, True, {}),
    ("eval.reward_kl.max_new_tokens", 0, False, {}),
    ("eval.reward_kl.max_new_tokens", 1, True, {}),
    ("eval.reward_kl.batch_size", 0, False, {}),
    ("eval.reward_kl.batch_size", 1, True, {}),
    # the pruner keys, each with a pruner that reads it (another pruner refuses any non-default value)
    ("prune.min_steps", -1, False, {"prune.pruner": PrunerName.median, "train.eval_steps": 5}),
    ("prune.min_steps", 0, True, {"prune.pruner": PrunerName.median, "train.eval_steps": 5}),
    ("prune.n_startup_trials", -1, False, {"prune.pruner": PrunerName.median, "train.eval_steps": 5}),
    ("prune.n_startup_trials", 0, True, {"prune.pruner": PrunerName.median, "train.eval_steps": 5}),
    ("prune.reduction_factor", 1, False, {"prune.pruner": PrunerName.hyperband, "train.eval_steps": 5}),
    ("prune.reduction_factor", 2, True, {"prune.pruner": PrunerName.hyperband, "train.eval_steps": 5}),
    ("prune.min_resource", 0, False, {"prune.pruner": PrunerName.successive_halving, "train.eval_steps": 5}),
    ("prune.min_resource", 1, True, {"prune.pruner": PrunerName.successive_halving, "train.eval_steps": 5}),
    # max_resource must be above 1 (min_resource null) or above min_resource
    ("prune.max_resource", 1, False, {"prune.pruner": PrunerName.hyperband, "train.eval_steps": 5}),
    ("prune.max_resource", 2, True, {"prune.pruner": PrunerName.hyperband, "train.eval_steps": 5}),
    (
        "prune.max_resource",
        4,
        False,
        {"prune.pruner": PrunerName.hyperband, "train.eval_steps": 5, "prune.min_resource": 4},
    ),
    (
        "prune.max_resource",
        5,
        True,
        {"prune.pruner": PrunerName.hyperband, "train.eval_steps": 5, "prune.min_resource": 4},
    ),
    ("prune.trial", -1, False, {"prune.pruner": PrunerName.median, "train.eval_steps": 5}),
    ("prune.trial", 0, True, {"prune.pruner": PrunerName.median, "train.eval_steps": 5}),
    ("prune.stop_at", 0, False, {"prune.pruner": PrunerName.successive_halving, "train.eval_steps": 5}),
    ("prune.stop_at", 1, True, {"prune.pruner": PrunerName.successive_halving, "train.eval_steps": 5}),
]
# numeric keys that take any value, and why
RUN_UNBOUNDED = {
    "seed": "any integer seeds the generators",
    "eval.reward_kl.seed": "any integer seeds the sampling",
    "dpo.loss_weights": "a list: its length is checked (test_config.py::test_invariants), weights are free",
}

# the commands' own numeric keys (their generation / checker groups are the run's, tested above)
PAIRS = dict(prompts="p.txt", out="pairs.jsonl", reward="sentiment", run="some/run")
COMMAND_BOUNDS: list[tuple[Any, str, Any, bool]] = [
    (CompareConfig(a="a"), "num_prompts", 0, False),
    (CompareConfig(a="a"), "num_prompts", 1, True),
    (PairsConfig(**PAIRS), "num_samples", 1, False),  # a pair needs two samples
    (PairsConfig(**PAIRS), "num_samples", 2, True),
    (PairsConfig(**PAIRS), "temperature", 0.0, False),
    (PairsConfig(**PAIRS), "temperature", 1e-6, True),
    (PairsConfig(**PAIRS), "top_p", 0.0, False),
    (PairsConfig(**PAIRS), "top_p", 1e-6, True),
    (PairsConfig(**PAIRS), "top_p", 1.0, True),
    (PairsConfig(**PAIRS), "top_p", 1.001, False),
    (PairsConfig(**PAIRS), "top_k", -1, False),
    (PairsConfig(**PAIRS), "top_k", 0, True),
    (PairsConfig(**PAIRS), "max_new_tokens", 0, False),
    (PairsConfig(**PAIRS), "max_new_tokens", 1, True),
    (PairsConfig(**PAIRS), "batch_size", 0, False),
    (PairsConfig(**PAIRS), "batch_size", 1, True),
    (PairsConfig(**PAIRS), "max_prompts", 0, False),
    (PairsConfig(**PAIRS), "max_prompts", 1, True),
    (PairsConfig(**PAIRS), "max_prompts", None, True),
    (GenerateConfig(run="r"), "generation.top_p", 1.001, False),
    (GenerateConfig(run="r"), "generation.top_p", 1.0, True),
    (CompareConfig(a="a"), "checker.rel_tol", -0.001, False),
    (CompareConfig(a="a"), "checker.rel_tol", 0.0, True),
]
COMMAND_UNBOUNDED = {"seed"}


@pytest.fixture(scope="module")
def default_run() -> RunConfig:
    return to_run_config(compose_config())


def _set(obj: Any, key: str, value: Any) -> None:
    *path, last = key.split(".")
    for part in path:
        obj = getattr(obj, part)
    setattr(obj, last, value)


def _refused_keys(obj: Any) -> set[str]:
    return {key for key, _ in (*non_finite(obj), *problems(obj))}


@pytest.mark.parametrize(
    ("key", "value", "accepted", "context"),
    RUN_BOUNDS,
    ids=[f"{k}={v}{'+' + ','.join(c) if c else ''}" for k, v, _, c in RUN_BOUNDS],
)
def test_run_config_bound(default_run, key: str, value: Any, accepted: bool, context: dict) -> None:
    cfg = copy.deepcopy(default_run)
    for other, other_value in context.items():
        _set(cfg, other, other_value)
    assert _refused_keys(cfg) == set(), "the context alone must be valid"
    _set(cfg, key, value)
    refused = _refused_keys(cfg)
    if accepted:
        assert refused == set(), f"{key}={value!r} is in range but was refused ({refused})"
    else:
        assert refused == {key}, f"{key}={value!r} is out of range; refused: {refused}"


@pytest.mark.parametrize(("eval_steps", "accepted"), [(0, False), (1, True)])
def test_a_pruner_needs_evaluations_during_training(default_run, eval_steps: int, accepted: bool) -> None:
    cfg = copy.deepcopy(default_run)
    cfg.prune.pruner = PrunerName.median
    cfg.train.eval_steps = eval_steps
    assert _refused_keys(cfg) == (set() if accepted else {"prune.pruner"})


@pytest.mark.parametrize(
    ("config", "key", "value", "accepted"),
    COMMAND_BOUNDS,
    ids=[f"{type(c).__name__}.{k}={v}" for c, k, v, _ in COMMAND_BOUNDS],
)
def test_command_config_bound(config: Any, key: str, value: Any, accepted: bool) -> None:
    cfg = copy.deepcopy(config)
    assert _refused_keys(cfg) == set()
    _set(cfg, key, value)
    refused = _refused_keys(cfg)
    assert refused == (set() if accepted else {key}), f"{key}={value!r}: refused {refused}"


def _numeric_keys(obj: Any) -> set[str]:
    numbers = set()
    for key, f, _ in leaves(obj):
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        if any(name in kind for name in ("int", "float")):
            numbers.add(key)
    return numbers


def test_every_numeric_key_has_its_bounds_tested(default_run) -> None:
    tested = {key for key, *_ in RUN_BOUNDS}
    numeric = _numeric_keys(default_run)
    assert {"lora.dropout", "dpo.beta", "train.max_steps", "prune.reduction_factor"} <= numeric
    assert numeric - tested - set(RUN_UNBOUNDED) == set(), "give each new numeric key its bound rows"
    assert tested - numeric == set()
    for key in tested:  # both sides of every bound: at least one value refused and one accepted
        assert {ok for k, _, ok, _ in RUN_BOUNDS if k == key} == {True, False}, key
    for schema in (CompareConfig(a="a"), PairsConfig(**PAIRS), GenerateConfig(run="r")):
        own = {k for k in _numeric_keys(schema) if not k.startswith(("generation.", "checker."))}
        covered = {k for c, k, *_ in COMMAND_BOUNDS if type(c) is type(schema)}
        assert own - covered - COMMAND_UNBOUNDED == set(), type(schema).__name__


def test_the_bounds_are_the_same_through_the_command_line() -> None:
    """Two rows through Hydra and the typed conversion: the table's objects are what the command line
    builds."""
    assert to_run_config(compose_config(["lora.dropout=0.999"])).lora.dropout == 0.999
    with pytest.raises(ConfigError, match=r"lora.dropout: must be in \[0, 1\), got 1.0"):
        to_run_config(compose_config(["lora.dropout=1.0"]))
