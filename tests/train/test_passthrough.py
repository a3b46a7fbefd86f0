"""Every schema value dpo_lab passes on reaches its destination: the ``dpo`` and ``train`` groups (and
``train.extra``) reach ``trl.DPOConfig``; the ``lora`` group reaches ``peft.LoraConfig`` and the
``adapter_config.json`` of a trained run. The loops go over the schemas' fields, so a field that is
added to a schema is checked too (tests/helpers/schema_values.py must give it a value)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import trl
import yaml

from dpo_lab.config.schemas import DPOSettings, LoraSettings, TrainSettings
from dpo_lab.model.loading import build_lora_config
from dpo_lab.runs.checkpoints import list_checkpoints
from dpo_lab.runtime.precision import Precision
from dpo_lab.train.trainer import build_dpo_args
from tests.helpers.inference import cli
from tests.helpers.schema_values import (
    CARD_ROWS,
    EXTRA_VALUES,
    LORA_VALUES,
    TABLES,
    card_hyperparameters,
    card_value,
    override,
    plain,
    same_cell,
    schema_default,
    typed,
)

# Schema fields that do not reach trl.DPOConfig as themselves, and why; each is checked by its own test.
NOT_PASSED = {
    "dpo.loss_params": (
        "dpo_lab's own: the parameters of custom loss functions, read by dpo_lab's trainer, not by TRL "
        "(tests/train/test_losses.py)"
    ),
    "train.precision": (
        "run.py resolves auto to bf16/fp32 for the device and passes build_dpo_args(precision=) "
        "(test_derived_arguments_reach_dpo_config)"
    ),
    "train.eval_before_training": (
        "run.py's HeldOutBefore decides (never on a resume) and passes build_dpo_args(eval_on_start=) "
        "(test_derived_arguments_reach_dpo_config)"
    ),
    "train.save_total_limit": (
        "dpo_lab rotates only complete checkpoints itself (checkpoints.CheckpointCallback); TRL's own "
        "save_total_limit stays None (test_derived_arguments_reach_dpo_config, test_trained_run_keeps_*)"
    ),
    "train.extra": (
        "merged as keyword arguments, each key a trl.DPOConfig field (test_train_extra_reaches_dpo_config)"
    ),
}


def observed(args: trl.DPOConfig, name: str) -> Any:
    """What ``args`` holds for the schema field ``name`` (fields TRL names or encodes differently first)."""
    if name == "group_by_length":
        return args.train_sampling_strategy == "group_by_length"
    if name == "eval_steps":  # 0 = no evaluation during training
        return args.eval_steps if args.eval_strategy == "steps" else 0
    if name == "save_steps":  # 0 = no intermediate checkpoints
        return args.save_steps if args.save_strategy == "steps" else 0
    assert hasattr(args, name), (
        f"trl.DPOConfig has no field {name}: map it in observed() or add to NOT_PASSED"
    )
    return plain(getattr(args, name))


def _args(dpo: DPOSettings, train: TrainSettings, out: Path, **kwargs: Any) -> trl.DPOConfig:
    settings = {"seed": 3, "precision": Precision.fp32, "device": "cpu", **kwargs}
    return build_dpo_args(dpo, train, output_dir=out, **settings)


def trl_part(cfg: Any, name: str, value: Any) -> Any:
    """What of a value trl.DPOConfig holds: TRL computes the losses it names; your own
    (``package.module:function``) stay with dpo_lab's trainer (tests/train/test_losses.py)."""
    if name == "loss_type":
        return [n for n in value if ":" not in n]
    if name == "loss_weights" and value is not None:
        return [w for n, w in zip(cfg.loss_type, value, strict=True) if ":" not in n]
    return value


def _passed(group: str) -> list[str]:
    schema = TABLES[group][0]
    return [f.name for f in dataclasses.fields(schema) if f"{group}.{f.name}" not in NOT_PASSED]


@pytest.mark.parametrize("group", sorted(TABLES))
def test_value_tables_cover_every_field(group: str) -> None:
    schema, values = TABLES[group]
    assert set(values) == {f.name for f in dataclasses.fields(schema)}, "give every field a test value"
    assert list(typed(group).problems()) == [], "the test values must be allowed by the schema"
    for name, value in values.items():
        assert plain(value) != plain(schema_default(schema, name)), (
            f"{group}.{name}: test value is the default"
        )
    numbers = [v for v in values.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    assert len(set(numbers)) == len(numbers), f"{group}: numbers must be distinct, so that a swap shows"


def test_every_passed_dpo_and_train_field_reaches_dpo_config(tmp_path: Path) -> None:
    """With the non-default values and with the schema defaults: a dropped field would show TRL's default,
    which one of the two differs from (checked too)."""
    args = _args(typed("dpo"), typed("train"), tmp_path)
    default_args = _args(DPOSettings(), TrainSettings(), tmp_path)
    trl_default = trl.DPOConfig(output_dir=str(tmp_path), use_cpu=True)
    checked = []
    for group, cfg in (("dpo", typed("dpo")), ("train", typed("train"))):
        schema = type(cfg)
        for name in _passed(group):
            key, value, default = (
                f"{group}.{name}",
                plain(getattr(cfg, name)),
                plain(schema_default(schema, name)),
            )
            value, default = trl_part(cfg, name, value), trl_part(schema(), name, default)
            assert observed(args, name) == value, f"{key}={value!r} did not reach trl.DPOConfig"
            assert observed(default_args, name) == default, f"{key}={default!r} (default) did not reach it"
            trl_own = observed(trl_default, name)
            assert trl_own != value or trl_own != default, f"{key}: both test values are TRL's own default"
            checked.append(key)
    assert "dpo.label_smoothing" in checked and "train.learning_rate" in checked


def test_train_extra_reaches_dpo_config(tmp_path: Path) -> None:
    args = _args(DPOSettings(), TrainSettings(extra=dict(EXTRA_VALUES)), tmp_path)
    trl_default = trl.DPOConfig(output_dir=str(tmp_path), use_cpu=True)
    for key, value in EXTRA_VALUES.items():
        assert getattr(trl_default, key) != value, f"extra.{key}: the test value is TRL's default"
        assert getattr(args, key) == value, f"train.extra.{key}={value!r} did not reach trl.DPOConfig"


@pytest.mark.parametrize(
    ("precision", "bf16", "fp16"),
    [(Precision.fp32, False, False), (Precision.bf16, True, False), (Precision.fp16, False, True)],
)
def test_derived_arguments_reach_dpo_config(
    tmp_path: Path, precision: Precision, bf16: bool, fp16: bool
) -> None:
    """What run.py derives from the schema (NOT_PASSED) and hands build_dpo_args as arguments."""
    for eval_on_start in (True, False):
        args = _args(typed("dpo"), typed("train"), tmp_path, seed=19, precision=precision,
                     eval_on_start=eval_on_start, run_name="beta=0.37")  # fmt: skip
        assert (args.bf16, args.fp16) == (bf16, fp16)
        assert args.eval_on_start is eval_on_start
        assert (args.seed, args.data_seed, args.run_name) == (19, 19, "beta=0.37")
        assert args.save_total_limit is None, "TRL must not rotate: it could delete the last complete one"
        assert args.output_dir == str(tmp_path)


def _lora_observed(config: dict[str, Any], name: str) -> Any:
    """What a PEFT LoRA config (as a dict, or adapter_config.json) holds for the ``lora`` field ``name``."""
    value = config[{"alpha": "lora_alpha", "dropout": "lora_dropout"}.get(name, name)]
    if name == "target_modules":  # PEFT keeps a set, "all-linear" as a string
        return sorted([value] if isinstance(value, str) else value)
    return value


def _lora_expected(name: str, value: Any) -> Any:
    return sorted(value) if name == "target_modules" else value


def test_every_lora_field_reaches_peft_lora_config() -> None:
    peft_config = build_lora_config(typed("lora")).to_dict()
    default_config = build_lora_config(LoraSettings()).to_dict()
    for f in dataclasses.fields(LoraSettings):
        value, default = _lora_expected(f.name, LORA_VALUES[f.name]), schema_default(LoraSettings, f.name)
        assert _lora_observed(peft_config, f.name) == value, f"lora.{f.name}={value!r} did not reach PEFT"
        assert _lora_observed(default_config, f.name) == _lora_expected(f.name, default), f"lora.{f.name}"
    assert peft_config["task_type"] == "CAUSAL_LM"


# One short run with every lora field non-default, 3 steps saving a checkpoint at each, keeping 2.
TRAINED = [
    "logger=none", "eval.enabled=false", "data.max_train_samples=8", "data.max_eval_samples=4",
    "dpo.max_length=128", "dpo.beta=0.37", "dpo.loss_type=[sigmoid,sft]", "train.learning_rate=3e-4",
    "train.per_device_train_batch_size=2", "train.per_device_eval_batch_size=4",
    "train.gradient_accumulation_steps=2", "train.num_train_epochs=2.5", "train.max_steps=3",
    "train.logging_steps=1", "train.save_steps=1", "train.save_total_limit=2", "seed=7",
    *(override("lora", name, value) for name, value in LORA_VALUES.items()),
]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("passthrough")
    run = tmp / "run"
    cli([*TRAINED, f"hydra.run.dir={run}"], tmp, "dpo_lab.run")
    return run


@pytest.mark.slow
def test_trained_run_saves_every_lora_field_in_adapter_config(trained: Path) -> None:
    saved = json.loads((trained / "adapter" / "adapter_config.json").read_text())
    resolved = yaml.safe_load((trained / "config.yaml").read_text())["lora"]
    for f in dataclasses.fields(LoraSettings):
        value = _lora_expected(f.name, LORA_VALUES[f.name])
        assert resolved[f.name] == LORA_VALUES[f.name], f"lora.{f.name} override not in the run's config"
        assert _lora_observed(saved, f.name) == value, f"lora.{f.name}={value!r} not in adapter_config.json"


@pytest.mark.slow
def test_trained_run_keeps_the_newest_checkpoints(trained: Path) -> None:
    """train.save_total_limit=2 with a checkpoint at steps 1, 2, 3: steps 2 and 3 are left."""
    assert [c.step for c in list_checkpoints(trained / "checkpoints")] == [2, 3]


@pytest.mark.slow
def test_trained_run_card_has_every_hyperparameter_row(trained: Path) -> None:
    resolved = yaml.safe_load((trained / "config.yaml").read_text())
    precision = json.loads((trained / "metrics.json").read_text())["precision"]
    for card_file in (trained / "README.md", trained / "adapter" / "README.md"):
        rows = card_hyperparameters(card_file.read_text())
        for key in CARD_ROWS:
            expected = card_value(resolved, key, precision)
            assert key in rows, f"{card_file.name}: the model card has no {key} row"
            assert same_cell(rows[key], expected), (
                f"{card_file}: row {key} shows {rows[key]!r}, not {expected!r}"
            )
