"""The compact values of run names, and the group a run lands in (the names themselves, from a composed
config, are tested with the tracker in tests/track/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dpo_lab.runs.naming import changed_keys, format_value, run_group


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (True, "true"),
        (False, "false"),
        (5e-06, "5e-06"),
        (0.05, "0.05"),
        (1.0, "1"),
        (["sigmoid", "sft"], "sigmoid+sft"),
        ((0.5, True), "0.5+true"),
        ([], ""),
        ("/models/Llama-3.1-8B/", "Llama-3.1-8B"),  # a path: its last part
        ("org/model", "model"),
        ("/", "/"),  # a path with no last part stays itself
        ("sigmoid", "sigmoid"),
        (8, "8"),
        (None, "None"),
    ],
)
def test_format_value(value, text: str) -> None:
    assert format_value(value) == text


def test_run_group() -> None:
    assert run_group("multirun/2026-12-03/05-00-00-1", "n", Path("r")) == "sweep-2026-12-03_05-00-00-1"
    assert run_group(None, "n", Path("r"), experiment="finance") == "experiment-finance"
    assert run_group(None, "n", Path("r")) == "single-runs"
    assert run_group(None, "n", Path("r"), experiment="") == "single-runs"


def test_changed_keys_leave_out_hydra_deletions_and_the_sweepers_own() -> None:
    overrides = [
        "dpo.beta=0.2",
        "hydra.run.dir=x",
        "~model.revision",
        "prune.trial=3",
        "model=tiny",
        "+a.b=1",
    ]
    assert changed_keys(overrides) == ["dpo.beta", "model", "a.b"]
    assert changed_keys(["dpo.beta=[0.1"]) == []  # does not parse: no name from it
