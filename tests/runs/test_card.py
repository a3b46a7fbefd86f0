"""The model card's hyperparameter table: one row per key of CARD_ROWS, each showing the run's value."""

from __future__ import annotations

from dpo_lab.config.choices import Quantization
from dpo_lab.config.schemas import ModelSettings, RunConfig
from dpo_lab.runs.card import card_hyperparameters as _card_hyperparameters
from dpo_lab.runs.card import render_model_card
from tests.helpers.schema_values import CARD_ROWS, card_hyperparameters, card_value, same_cell, typed


def test_every_hyperparameter_has_its_row_with_the_runs_value() -> None:
    run_cfg = RunConfig(
        model=ModelSettings(name_or_path="org/base-model", quantization=Quantization.nf4),
        lora=typed("lora"),
        dpo=typed("dpo"),
        train=typed("train"),
        seed=29,
    )
    precision = "fp16"  # not train.precision (bf16): the card shows the precision training resolved
    card = render_model_card(
        base_model="org/base-model",
        dataset="finance",
        hyperparameters=_card_hyperparameters(run_cfg, precision),
        metrics={"eval/loss": 0.5},
        quantization="nf4",
    )
    rows = card_hyperparameters(card)
    expected = {key: card_value(run_cfg, key, precision) for key in CARD_ROWS}
    numbers = [v for v in expected.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    assert len(set(numbers)) == len(numbers), "distinct values, so that a row showing another key's shows"
    for key in CARD_ROWS:
        assert key in rows, f"the model card has no {key} row"
        assert same_cell(rows[key], expected[key]), (
            f"card row {key} shows {rows[key]!r}, not {expected[key]!r}"
        )
    assert set(rows) == set(CARD_ROWS), "a new card row: add it to CARD_ROWS (tests/helpers/schema_values.py)"
