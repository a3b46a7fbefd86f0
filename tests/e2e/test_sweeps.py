"""Sweeps end to end on the tiny model: a 4-job grid, an Optuna search, a sweep with a failing job, the
report written at the end of each, and the analysis notebook executed on the grid."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import pytest
import yaml

from dpo_lab.sweep import report
from tests.helpers import ROOT, run_cli, wandb_records, wandb_summary

# few steps, few pairs, short sequences: each job takes seconds of compute
SMALL = [
    "train.max_steps=2", "train.logging_steps=1", "train.per_device_train_batch_size=2",
    "train.per_device_eval_batch_size=4", "data.max_train_samples=8", "data.max_eval_samples=4",
    "dpo.max_length=128",
]  # fmt: skip
EVAL_KEYS = ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected")


def _sweep(tmp_path_factory, name: str, args: list[str]) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp(name)
    sweep = tmp / "sweep"
    proc = run_cli(["-m", *args, *SMALL, f"hydra.sweep.dir={sweep}"], tmp)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return sweep, proc.stdout + proc.stderr


def _metrics(job: Path) -> dict:
    return json.loads((job / "metrics.json").read_text())


def _csv(sweep: Path) -> list[dict[str, str]]:
    with (sweep / "results.csv").open() as f:
        return list(csv.DictReader(f))


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> tuple[Path, str]:
    """The committed 4-job preset (2 betas x 2 ranks), W&B offline, shrunk by SMALL."""
    return _sweep(tmp_path_factory, "grid", ["sweep=tiny_beta_rank"])


@pytest.mark.slow
def test_grid_gives_four_run_folders_and_four_wandb_runs_in_one_group(grid) -> None:
    sweep, _ = grid
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [j.name for j in jobs] == ["0", "1", "2", "3"]
    combos = set()
    for job in jobs:
        assert _metrics(job)["status"] == "completed"
        config = yaml.safe_load((job / "config.yaml").read_text())
        combos.add((config["dpo"]["beta"], config["lora"]["r"]))
        assert (job / "adapter" / "adapter_model.safetensors").is_file()
        assert (job / "log_history.jsonl").is_file()
    assert combos == {(0.1, 4), (0.1, 16), (0.5, 4), (0.5, 16)}
    runs = [next(r["run"] for r in wandb_records(job) if r["type"] == "run") for job in jobs]
    assert len({r["run_id"] for r in runs}) == 4
    assert {r["run_group"] for r in runs} == {f"sweep-{sweep.parent.name}_{sweep.name}"}
    for job, run in zip(jobs, runs, strict=True):  # every swept key in every name, defaults included
        config = yaml.safe_load((job / "config.yaml").read_text())
        beta, r = config["dpo"]["beta"], config["lora"]["r"]
        parts = run["display_name"].split(",")
        assert f"beta={beta:g}" in parts and f"r={r}" in parts, run["display_name"]
        assert {"swept:dpo.beta", "swept:lora.r"} <= set(wandb_summary(job)["tags"])


@pytest.mark.slow
def test_grid_report_has_one_row_per_job_matching_metrics_json(grid) -> None:
    sweep, output = grid
    rows = _csv(sweep)
    assert [r["job"] for r in rows] == ["0", "1", "2", "3"]
    for row in rows:
        metrics = _metrics(sweep / row["job"])
        config = yaml.safe_load((sweep / row["job"] / "config.yaml").read_text())
        assert row["status"] == "completed"
        assert float(row["dpo.beta"]) == config["dpo"]["beta"] and int(row["lora.r"]) == config["lora"]["r"]
        for key in EVAL_KEYS:
            assert float(row[f"eval/{key}"]) == metrics["eval"][f"eval_{key}"], (row["job"], key)
        assert float(row["runtime_s"]) == metrics["total_runtime_s"]
        assert float(row["train/mean_loss"]) == metrics["train"]["train_loss"]
    assert set(rows[0]) >= {"dpo.beta", "lora.r"} and "train.max_steps" not in rows[0]  # swept keys only
    # the top job, found here independently: highest held-out accuracy over its pairs (ties count half), the
    # first one on ties; it is named best only where it is told apart from every other job at 95%
    top = _top(sweep, "correct", max)
    report_json = json.loads((sweep / "report.json").read_text())
    assert report_json["top"]["job"] == top
    _check_verdict(sweep, report_json, top, rows, output)
    plots = sweep / "plots"
    for name in ("rewards_accuracies_vs_dpo.beta.png", "rewards_accuracies_vs_lora.r.png", "curves.png"):
        assert _is_png(plots / name), name


@pytest.mark.slow
def test_report_cli_ranks_by_another_metric(grid, capsys) -> None:
    sweep, _ = grid
    assert report.main([str(sweep), "--metric", "loss"]) == 0  # direction follows: a loss is minimised
    top = _top(sweep, "loss", min)
    report_json = json.loads((sweep / "report.json").read_text())
    assert report_json["top"]["job"] == top
    _check_verdict(sweep, report_json, top, _csv(sweep), capsys.readouterr().out)
    assert _is_png(sweep / "plots" / "loss_vs_dpo.beta.png")
    assert report.main([str(sweep), "--metric", "accuracy"]) == 2
    assert "unknown held-out metric 'accuracy'" in capsys.readouterr().err
    assert report.main([str(sweep)]) == 0  # back to the sweep's own objective for the other tests


@pytest.mark.slow
def test_grid_jobs_reuse_the_base_model_and_each_starts_from_it_clean(grid) -> None:
    sweep, _ = grid
    metrics = [_metrics(sweep / str(i)) for i in range(4)]
    assert metrics[0]["reused"] == {"model": False, "data": False, "tokenized": False, "ref_log_probs": False}
    for m in metrics[1:]:  # the preset precomputes reference log-probs: all of it is reused
        assert m["reused"] == {"model": True, "data": True, "tokenized": True, "ref_log_probs": True}
    # step-0 evaluation = the base model (a fresh adapter is a no-op): identical in every job, zero margins;
    # a leftover adapter from the previous job would move it
    before = [m["eval_before"] for m in metrics]
    for key in ("eval_loss", "eval_logps/chosen", "eval_logps/rejected"):
        assert len({b[key] for b in before}) == 1, key
    assert all(b["eval_rewards/margins"] == pytest.approx(0.0, abs=1e-6) for b in before)


@pytest.mark.slow
def test_notebook_executes_on_the_sweep(grid, tmp_path) -> None:
    import nbclient
    import nbformat

    sweep, _ = grid
    notebook = nbformat.read(ROOT / "notebooks" / "sweep_analysis.ipynb", as_version=4)
    env = {"DPO_LAB_SWEEP_DIR": str(sweep)}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                         resources={"metadata": {"path": str(ROOT)}})  # fmt: skip
        client.execute()
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    nbformat.write(notebook, tmp_path / "executed.ipynb")
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = json.dumps([o.get("text", "") or o.get("data", {}).get("text/markdown", "") for o in outputs])
    report_json = json.loads((sweep / "report.json").read_text())
    assert f"sweep {sweep}: 4 jobs" in text
    if report_json["best"] is not None:  # a named best is shown as such; a tie as a tie
        assert f"**Best: job {report_json['best']['job']} (" in text
    else:
        assert "**Best:" not in text and "cannot be told apart" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 3  # metric vs beta, vs rank, and the curves


@pytest.fixture(scope="module")
def optuna(tmp_path_factory) -> tuple[Path, str]:
    args = ["hydra/sweeper=dpo_optuna", "hydra.sweeper.n_trials=3", "logger=none"]
    return _sweep(tmp_path_factory, "optuna", args)


@pytest.mark.slow
def test_optuna_runs_three_trials_and_reports_its_best(optuna) -> None:
    sweep, output = optuna
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    jobs = [sweep / str(i) for i in range(3)]
    assert all(_metrics(j)["status"] == "completed" for j in jobs) and not (sweep / "3").exists()
    # each trial returned its objective (held-out accuracy) to Optuna
    values = [_metrics(j)["objective"]["value"] for j in jobs]
    assert all(_metrics(j)["objective"]["metric"] == "rewards/accuracies" for j in jobs)
    assert results["best_value"] == max(values)
    best = json.loads((sweep / "report.json").read_text())["top"]  # the top trial, named best or tied
    assert best["value"] == results["best_value"]
    assert best["job"] == str(values.index(max(values)))
    params = best["params"]
    assert params.keys() == results["best_params"].keys() == {"dpo.beta", "lora.r", "train.learning_rate"}
    for key, value in results["best_params"].items():
        assert params[key] == pytest.approx(value), key
    assert "Optuna's best trial" in (sweep / "results.md").read_text()
    assert f"best job {best['job']} " in output or f"top job {best['job']} " in output


@pytest.fixture(scope="module")
def failing(tmp_path_factory) -> tuple[Path, str]:
    """Job 1 names LoRA target modules the model does not have: it fails after its model was loaded."""
    args = ["lora.target_modules=[all-linear],[no_such_proj],[all-linear]", "logger=none"]
    return _sweep(tmp_path_factory, "failing", args)


@pytest.mark.slow
def test_a_failing_job_is_recorded_and_the_others_complete(failing) -> None:
    sweep, _ = failing
    ok_0, failed, ok_2 = (_metrics(sweep / str(i)) for i in range(3))
    assert ok_0["status"] == ok_2["status"] == "completed"
    assert failed["status"] == "failed" and "no_such_proj" in failed["error"]
    # job 2 (same settings as job 0) ran on the base model job 1 was lent: same results as job 0
    assert ok_2["reused"]["model"] is True
    for key in EVAL_KEYS:
        assert ok_2["eval"][f"eval_{key}"] == pytest.approx(ok_0["eval"][f"eval_{key}"], rel=1e-5), key
    rows = {r["job"]: r for r in _csv(sweep)}
    assert rows["1"]["status"] == "failed" and "no_such_proj" in rows["1"]["error"]
    assert rows["1"]["lora.target_modules"] == "['no_such_proj']" and rows["1"]["eval/loss"] == ""
    assert rows["0"]["status"] == rows["2"]["status"] == "completed"
    md = (sweep / "results.md").read_text()
    assert "## Jobs that did not complete" in md and "`1` (target_modules=no_such_proj): failed" in md


@pytest.mark.slow
def test_objective_metric_names_match_what_trl_reports(grid) -> None:
    """Every objective.metric allowed by the schema is a held-out metric TRL reported in a real job."""
    from dpo_lab.config.schemas import OBJECTIVE_METRICS

    sweep, _ = grid
    reported = {k[5:] for k in _metrics(sweep / "0")["eval"] if k.startswith("eval_")}
    assert set(OBJECTIVE_METRICS) <= reported
    assert math.isfinite(_metrics(sweep / "0")["objective"]["value"])


@pytest.mark.slow
def test_submitit_jobs_run_in_their_own_processes_and_share_nothing(tmp_path_factory) -> None:
    """submitit_local (the SLURM code path, locally): one process per job, so nothing is reused, and the
    report is still written at the end by the launching process."""
    args = ["hydra/launcher=submitit_local", "dpo.beta=0.1,0.5", "logger=none"]
    sweep, output = _sweep(tmp_path_factory, "submitit", args)
    for job in ("0", "1"):
        metrics = _metrics(sweep / job)
        assert metrics["status"] == "completed"
        assert not any(metrics["reused"].values()), metrics["reused"]
    assert [r["status"] for r in _csv(sweep)] == ["completed", "completed"]
    assert "2 jobs, 2 completed" in output


def _top(sweep: Path, key: str, pick) -> str:
    """The job with the best mean per-pair ``key`` (the first one on ties), from the run folders alone."""
    means = {}
    for job in sorted((p for p in sweep.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)):
        pairs = [json.loads(line) for line in (job / "heldout_pairs_after.jsonl").read_text().splitlines()]
        means[job.name] = sum(p[key] for p in pairs) / len(pairs)
    target = pick(means.values())
    return next(name for name, value in means.items() if value == target)


def _check_verdict(sweep: Path, report_json: dict, top: str, rows: list[dict], output: str) -> None:
    """The report names ``top`` best only when the verdict separates it; else it says it ties, and with
    whom."""
    verdict, text = report_json["verdict"], (sweep / "results.md").read_text()
    if report_json["best"] is not None:
        assert report_json["best"]["job"] == top and verdict["tied_with_best"] == []
        assert f"Best job: `{top}`" in text and f"best job {top} " in output
        assert [r["job"] for r in rows if r["best"] == "True"] == [top]
    else:
        assert verdict["tied_with_best"] and "No best job at 95%" in text and "Best job:" not in text
        assert f"no best job at 95%: top job {top} " in output
        assert [r["job"] for r in rows if r["best"] == "True"] == []
