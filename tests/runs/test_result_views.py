"""The views of a run's metrics.json (runs/result.RunResult) on a hand-built record with a reward / KL
evaluation (eval.reward_kl): the closing table's reward and KL rows, the model card's results rows and the
W&B summary; a record without one shows none of them."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from dpo_lab.runs.card import CardBase, CardData, render_model_card
from dpo_lab.runs.result import RunResult

REWARD_KL = {
    "reward_name": "sentiment",
    "samples_per_prompt": 4,
    "reward": {"value": 0.51, "low": 0.4, "high": 0.61, "n": 48, "method": "percentile bootstrap"},
    "kl": {"value": 3.25, "low": 2.5, "high": 4.0, "n": 48, "method": "percentile bootstrap"},
    "base_reward": {"value": 0.25, "low": 0.125, "high": 0.375, "n": 48, "method": "percentile bootstrap"},
    "reward_gain": {"value": 0.26, "low": 0.15, "high": 0.375, "n": 48, "method": "percentile bootstrap"},
}

BASE = CardBase("org/m", "org/m", "apache-2.0")

RECORD = {
    "status": "completed",
    "train": {"train_loss": 0.65},
    "eval_before": {"eval_loss": 0.6931, "eval_rewards/accuracies": 0.5, "eval_rewards/margins": 0.0},
    "eval": {"eval_loss": 0.61, "eval_rewards/accuracies": 0.7, "eval_rewards/margins": 0.3},
    "task": {},
    "train_runtime_s": 300.0,
    "total_runtime_s": 480.0,
    "peak_memory_mb": 2048.0,
    "global_step": 36,
    "precision": "bf16",
    "tokens_per_second": 150.0,
    "heldout": {},
    "reward_kl": REWARD_KL,
}


def result(with_reward_kl: bool = True) -> RunResult:
    record = copy.deepcopy(RECORD)
    if not with_reward_kl:
        del record["reward_kl"]
    return RunResult(record)


def row(table: str, label: str) -> list[str]:
    """The cells of the closing table's row ``label`` (columns are 28 / 32 / 32 characters wide)."""
    line = next(line for line in table.splitlines() if line.startswith(label))
    return [line[:28].strip(), line[28:60].strip(), line[60:].strip()]


def test_the_closing_table_shows_reward_base_to_policy_and_kl_from_zero() -> None:
    table = result().closing_table(Path("/runs/x"))
    assert row(table, "reward (sentiment)") == [
        "reward (sentiment)", "0.250 [0.125, 0.375], n=48", "0.510 [0.400, 0.610], n=48"
    ]  # fmt: skip
    assert row(table, "KL(policy||ref)") == ["KL(policy||ref)", "0", "3.250 [2.500, 4.000], n=48"]
    assert row(table, "reward gain (paired)") == ["reward gain (paired)", "-", "0.260 [0.150, 0.375], n=48"]
    lines = table.splitlines()  # below the held-out metrics, above the run's totals
    assert lines.index(next(x for x in lines if x.startswith("reward (sentiment)"))) > 1
    assert lines[-2].startswith("steps 36") and lines[-1] == "run folder: /runs/x"


def test_the_card_rows_and_the_note() -> None:
    metrics = result().card_metrics()
    assert metrics["reward_kl/reward"] == "0.510 [0.400, 0.610], n=48"
    assert metrics["reward_kl/kl"] == "3.250 [2.500, 4.000], n=48"
    assert metrics["reward_kl/base_reward"] == "0.250 [0.125, 0.375], n=48"
    assert metrics["reward_kl/reward_gain"] == "0.260 [0.150, 0.375], n=48"
    card = render_model_card(base=BASE, data=CardData("d"), hyperparameters={}, metrics=metrics,
                             quantization="none")  # fmt: skip
    assert "| reward_kl/kl | 3.250 [2.500, 4.000], n=48 |" in card
    assert "`reward_kl/*`: plain samples" in card


def test_the_wandb_summary_has_value_low_high_n_of_each() -> None:
    summary = result().summary()
    for name, found in REWARD_KL.items():
        if not isinstance(found, dict):
            continue
        assert summary[f"reward_kl/{name}"] == found["value"]
        assert summary[f"reward_kl/{name}_low"] == found["low"]
        assert summary[f"reward_kl/{name}_high"] == found["high"]
        assert summary[f"reward_kl/{name}_n"] == 48
    assert summary["reward_kl/kl"] == pytest.approx(3.25)


def test_an_unbounded_interval_reads_as_no_interval() -> None:
    """One prompt: no interval (None bounds in metrics.json), never a zero-width one."""
    record = copy.deepcopy(RECORD)
    record["reward_kl"]["kl"] = {"value": 1.5, "low": None, "high": None, "n": 1, "method": "one value"}
    shown = RunResult(record)
    assert row(shown.closing_table(Path("r")), "KL(policy||ref)")[2] == "1.500 (no interval), n=1"
    assert shown.summary()["reward_kl/kl_low"] is None


def test_a_run_without_reward_kl_shows_none_of_it() -> None:
    plain = result(with_reward_kl=False)
    table = plain.closing_table(Path("r"))
    assert "reward (" not in table and "KL(" not in table
    assert not any(k.startswith("reward_kl/") for k in plain.card_metrics())
    assert not any(k.startswith("reward_kl/") for k in plain.summary())
    card = render_model_card(base=BASE, data=CardData("d"), hyperparameters={},
                             metrics=plain.card_metrics(), quantization="none")  # fmt: skip
    assert "reward_kl" not in card


def test_the_closing_table_gives_the_time_of_each_phase_in_the_order_they_ran() -> None:
    record = copy.deepcopy(RECORD)
    # as experiment.phase_seconds records them: the evaluations inside training come last
    record["phases_s"] = {"set-up": 3.1, "training": 10.24, "task answers": 137.0, "reward / KL": 59.96,
                          "held-out before": 2.0, "held-out after": 0.6, "a later phase": 1.0}  # fmt: skip
    lines = RunResult(record).closing_table(Path("/runs/x")).splitlines()
    assert lines[-3].startswith("steps 36") and lines[-1] == "run folder: /runs/x"
    assert lines[-2] == (
        "phases: set-up 3.1 s, held-out before 2.0 s, training 10.2 s, held-out after 0.6 s, "
        "task answers 2 min 17 s, reward / KL 1 min 0 s, a later phase 1.0 s"
    )
    del record["phases_s"]  # a record from before phases were timed: no line
    assert not any(x.startswith("phases:") for x in RunResult(record).closing_table(Path("r")).splitlines())


def test_the_pair_counts_come_from_the_data_splits() -> None:
    record = copy.deepcopy(RECORD)
    assert RunResult(record).pair_counts() == (None, None)
    record["data"] = {"splits": {"train": {"rows": 360}, "eval": {"rows": 40}}}
    assert RunResult(record).pair_counts() == (360, 40)
