"""The sweep report on hand-made run folders: rows, swept keys, best job, failures, plots, CLI, callback."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from dpo_lab.runs.history import HISTORY_FILE, append_record, read_history, series
from dpo_lab.sweep import report, results


def make_job(sweep: Path, num: int, beta: float, r: int, status: str | None, accuracy: float | None = None,
             loss: float | None = None, error: str | None = None) -> Path:  # fmt: skip
    """A run folder as run.py leaves it (status None: killed before metrics.json was written)."""
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    overrides = [f"dpo.beta={beta}", f"lora.r={r}", "train.max_steps=2", f"hydra.sweep.dir={sweep}"]
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    config = {"dpo": {"beta": beta}, "lora": {"r": r}, "train": {"max_steps": 2},
              "objective": {"metric": "rewards/accuracies", "direction": "maximize"}}  # fmt: skip
    (job / "config.yaml").write_text(yaml.safe_dump(config))
    if status == "completed":
        metrics = {"status": status, "eval": {"eval_rewards/accuracies": accuracy, "eval_loss": loss,
                                              "eval_rewards/margins": 0.1 * num},  # fmt: skip
                   "train": {"train_loss": 0.6}, "total_runtime_s": 10.0 + num, "train_runtime_s": 5.0,
                   "global_step": 2}  # fmt: skip
        for step, value in ((1, 0.69), (2, 0.6 - 0.01 * num)):
            append_record(job / HISTORY_FILE, step, {"loss": value, "learning_rate": 1e-3})
        append_record(job / HISTORY_FILE, 0, {"eval_rewards/accuracies": 0.0, "eval_loss": 0.69})
        append_record(job / HISTORY_FILE, 2, {"eval_rewards/accuracies": accuracy, "eval_loss": loss})
    elif status is not None:
        metrics = {"status": status, "error": error}
    if status is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    return job


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    folder = tmp_path / "multirun" / "2026-11-26" / "10-00-00-000001"
    make_job(folder, 0, 0.1, 4, "completed", accuracy=0.5, loss=0.65)
    make_job(folder, 1, 0.1, 16, "completed", accuracy=0.75, loss=0.60)
    make_job(folder, 2, 0.5, 4, "failed", error="ValueError: Target modules {'x'} not found")
    make_job(folder, 3, 0.5, 16, None)
    make_job(folder, 10, 0.5, 8, "completed", accuracy=0.75, loss=0.55)  # ties job 1 on accuracy
    (folder / "multirun.yaml").write_text("{}")
    return folder


def test_rows_swept_keys_best_and_failures(sweep: Path) -> None:
    result = report.write_report(sweep)
    assert result.sweep.swept == ["dpo.beta", "lora.r"]  # train.max_steps is the same for every job
    with (sweep / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["job"] for r in rows] == ["0", "1", "2", "3", "10"]  # numeric order, not text order
    assert [r["status"] for r in rows] == ["completed", "completed", "failed", "missing", "completed"]
    assert rows[1]["eval/rewards/accuracies"] == "0.75" and rows[1]["dpo.beta"] == "0.1"
    assert rows[1]["lora.r"] == "16" and rows[1]["runtime_s"] == "11.0"
    assert rows[2]["error"].startswith("ValueError: Target modules") and rows[2]["eval/loss"] == ""
    assert [r["best"] for r in rows] == ["False", "True", "False", "False", "False"]  # first of the tie
    md = (sweep / "results.md").read_text()
    assert "**Best job: `1` (beta=0.1,r=16), eval/rewards/accuracies = 0.75**" in md
    assert "`2` (beta=0.5,r=4): failed: ValueError" in md and "`3` (beta=0.5,r=16): missing" in md
    assert "5 jobs (3 completed, 2 not)" in md
    # no heldout_pairs_after.jsonl (older runs): ranked by value as before, and the report says so
    assert "No per-pair records: ranked by the held-out value alone, with no interval" in md
    assert "## How sure" not in md
    summary = json.loads((sweep / "report.json").read_text())
    assert summary["best"]["job"] == "1" and summary["best"]["params"] == {"dpo.beta": 0.1, "lora.r": 16}
    assert summary["verdict"]["mode"] == "value" and summary["verdict"]["best"] == "1"
    assert (
        summary["per_job"]["1"]["interval"] is None
        and summary["per_job"]["1"]["note"] == "no per-pair records"
    )
    names = sorted(p.name for p in (sweep / "plots").iterdir())
    assert names == ["curves.png", "rewards_accuracies_vs_dpo.beta.png", "rewards_accuracies_vs_lora.r.png"]
    for name in names:
        assert (sweep / "plots" / name).read_bytes()[:4] == b"\x89PNG"


def test_another_metric_and_direction(sweep: Path) -> None:
    best = report.write_report(sweep, metric="loss").best  # a loss is minimised unless told otherwise
    assert best is not None and best.name == "10"
    best = report.write_report(sweep, metric="rewards/margins", direction="minimize").best
    assert best is not None and best.name == "0"
    with pytest.raises(results.ReportError, match="unknown held-out metric 'acc'"):
        results.load_sweep(sweep, metric="acc")
    with pytest.raises(results.ReportError, match="maximize or minimize"):
        results.load_sweep(sweep, direction="up")


def test_no_completed_job_means_no_best(tmp_path: Path) -> None:
    make_job(tmp_path, 0, 0.1, 4, "failed", error="RuntimeError: out of memory")
    result = report.write_report(tmp_path)
    assert result.best is None and result.sweep.swept == ["dpo.beta", "lora.r", "train.max_steps"]  # all
    assert "No completed job" in (tmp_path / "results.md").read_text()


def test_cli_errors_are_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    assert report.main([str(tmp_path / "nope")]) == 2
    assert report.main([str(tmp_path)]) == 2  # a folder without run folders
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("dpo_lab: ") for line in err)


def test_hydra_callback_reports_with_the_sweep_objective(sweep: Path, capsys) -> None:
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}},
                               "objective": {"metric": "loss", "direction": "minimize"}})  # fmt: skip
    report.SweepReportCallback().on_multirun_end(config=config)
    assert "best job 10 (beta=0.5,r=8): eval/loss = 0.5500" in capsys.readouterr().out
    assert (sweep / "plots" / "loss_vs_lora.r.png").is_file()


def test_history_round_trip_skips_non_numbers_and_non_finite(tmp_path: Path) -> None:
    append_record(tmp_path / HISTORY_FILE, 1, {"loss": 0.5, "note": "x", "flag": True})
    append_record(tmp_path / HISTORY_FILE, 2, {"loss": float("nan")})
    append_record(tmp_path / HISTORY_FILE, 3, {"loss": 0.25})
    records = read_history(tmp_path)
    assert records[0] == {"step": 1, "loss": 0.5}
    assert series(records, "loss") == ([1, 3], [0.5, 0.25])
    (tmp_path / HISTORY_FILE).write_text("{broken\n")
    with pytest.raises(ValueError, match="log_history.jsonl:1"):
        read_history(tmp_path)
