"""``train.extra`` passes any other trl.DPOConfig / TrainingArguments field through, but never one that
dpo_lab sets itself: each such key is refused with the dedicated key (or what decides it) named."""

from __future__ import annotations

import dataclasses

import pytest

from dpo_lab.config.schemas import DPOSettings, TrainSettings
from dpo_lab.config.validation import problems

# extra key -> what the message must send the user to (written out, not read from the schema)
OWNED = {
    "bf16": "train.precision",
    "fp16": "train.precision",
    "seed": "seed",
    "report_to": "logger",
    "run_name": "logger.name",
    "output_dir": "hydra.run.dir",
    "eval_strategy": "train.eval_steps",
    "save_strategy": "train.save_steps",
    "use_cpu": "the detected device",
    "train_sampling_strategy": "train.group_by_length",
    "eval_on_start": "train.eval_before_training",
    # DPO fields TRL takes in the same config: the dpo group owns them
    "beta": "dpo.beta",
    "loss_type": "dpo.loss_type",
    "loss_weights": "dpo.loss_weights",
    "max_length": "dpo.max_length",
    "precompute_ref_log_probs": "dpo.precompute_ref_log_probs",
    "label_smoothing": "dpo.label_smoothing",
    # the train group's own keys
    "learning_rate": "train.learning_rate",
    "max_grad_norm": "train.max_grad_norm",
    "gradient_accumulation_steps": "train.gradient_accumulation_steps",
}


@pytest.mark.parametrize(("key", "owner"), sorted(OWNED.items()))
def test_an_owned_key_in_extra_names_its_owner(key: str, owner: str) -> None:
    found = dict(problems(TrainSettings(extra={key: 1})))
    assert found == {f"extra.{key}": f"is set by dpo_lab; use the dedicated key instead of extra ({owner})"}


def test_every_train_and_dpo_field_is_owned() -> None:
    """A field of the train group, or one of the dpo group that TRL also reads, is never a pass-through."""
    names = {f.name for f in dataclasses.fields(TrainSettings) if f.name != "extra"}
    names |= {f.name for f in dataclasses.fields(DPOSettings) if f.metadata.get("trl")}
    for name in sorted(names):
        assert f"extra.{name}" in dict(problems(TrainSettings(extra={name: 1}))), name


def test_other_fields_pass_through_and_save_only_model_is_refused() -> None:
    assert list(problems(TrainSettings(extra={"ld_alpha": 0.5, "logging_first_step": True}))) == []
    found = dict(problems(TrainSettings(extra={"save_only_model": True})))
    needs = "a checkpoint needs optimizer, scheduler and RNG state to resume"
    assert found == {"extra.save_only_model": needs}
    assert list(problems(TrainSettings(extra={"save_only_model": False}))) == []
