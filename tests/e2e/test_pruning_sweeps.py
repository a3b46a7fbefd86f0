"""Pruned sweeps end to end on the tiny model (docs/pruning.md): a grid whose pruner stops the job that
cannot learn, an Optuna search with a pruner, a packed sweep that drops jobs at a rung, a pruned sweep killed
mid-way and run again, and submitit jobs in their own processes sharing the sweep's journal. Each checks the
run folders against the study: one trial per job, PRUNED exactly where metrics.json says ``pruned``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from dpo_lab.runs.checkpoints import MARKER
from dpo_lab.sweep.halving import RUNG_KEY
from dpo_lab.sweep.optuna_sweeper import (
    JOURNAL_FILE,
    PRUNED_AT_STEP,
    RUN_DIR,
    default_study_name,
    open_storage,
)
from tests.helpers import ROOT, cli_env, run_cli

# 4 steps, evaluated at 2 and 4 (the rung and the end); 16 held-out pairs: a job that learned anything has
# some positive margin, one whose learning rate (1e-12) cannot move its adapter has none (accuracy 0)
SMALL = [
    "train.max_steps=4", "train.eval_steps=2", "train.logging_steps=1", "train.per_device_train_batch_size=2",
    "train.per_device_eval_batch_size=8", "data.max_train_samples=8", "data.max_eval_samples=16",
    "dpo.max_length=128", "dpo.precompute_ref_log_probs=true", "eval=none", "logger=none",
]  # fmt: skip
# successive halving with its first rung at step 2 and a factor of 2: half the jobs at the rung go on
HALVING = ["prune=successive_halving", "prune.min_resource=2", "prune.reduction_factor=2"]
STATES = {"completed": TrialState.COMPLETE, "pruned": TrialState.PRUNED}


def _args(sweep: Path, *args: str) -> list[str]:
    return ["-m", *HALVING, *SMALL, *args, f"hydra.sweep.dir={sweep}"]


def _sweep(tmp_path: Path, *args: str) -> Path:
    sweep = tmp_path / "sweep"
    proc = run_cli(_args(sweep, *args), tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return sweep


def _jobs(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def _metrics(job: Path) -> dict:
    return json.loads((job / "metrics.json").read_text())


def _study(sweep: Path, name: str | None = None) -> optuna.Study:
    storage = open_storage(str(sweep / JOURNAL_FILE))
    return optuna.load_study(study_name=name or default_study_name(sweep), storage=storage)


def _learning_rate(job: Path) -> float:
    return float(yaml.safe_load((job / "config.yaml").read_text())["train"]["learning_rate"])


def _check_jobs_against_the_study(sweep: Path, study: optuna.Study) -> dict[str, dict]:
    """One trial per job, and each job's metrics.json and its trial tell the same story; returns the jobs'
    metrics by folder name."""
    trials = {t.number: t for t in study.trials}
    found = {}
    for job in _jobs(sweep):
        metrics = _metrics(job)
        record = metrics["pruning"]
        trial = trials[record["trial"]]
        assert trial.user_attrs[RUN_DIR] == str(job.absolute()), job.name
        assert trial.state is STATES[metrics["status"]], (job.name, metrics["status"], trial.state)
        if metrics["status"] == "pruned":
            step = record["pruned_at_step"]
            assert trial.user_attrs[PRUNED_AT_STEP] == step == metrics["global_step"] < 4
            assert record["reported_steps"][-1] == step and trial.last_step == step
            assert (job / "adapter" / "adapter_model.safetensors").is_file()
            history = [json.loads(line) for line in (job / "log_history.jsonl").read_text().splitlines()]
            assert max(h["step"] for h in history) == step  # it stopped there
        else:
            assert record["pruned_at_step"] is None and metrics["global_step"] == 4
        found[job.name] = metrics
    assert sorted(r["pruning"]["trial"] for r in found.values()) == sorted(trials)  # no trial left over
    return found


@pytest.mark.slow
def test_a_grid_prunes_the_job_that_cannot_learn(tmp_path: Path) -> None:
    """The basic launcher, jobs one after another, each asking the sweep's study for its own trial: the job
    whose learning rate cannot move its adapter reaches the rung behind the first one and stops there."""
    sweep = _sweep(tmp_path, "train.learning_rate=1e-3,1e-12")
    jobs = _check_jobs_against_the_study(sweep, _study(sweep))
    assert [jobs[n]["status"] for n in ("0", "1")] == ["completed", "pruned"]
    assert (
        jobs["1"]["pruning"]["pruned_at_step"] == 2 and jobs["1"]["pruning"]["last_reported"]["value"] == 0.0
    )
    summary = json.loads((sweep / "report.json").read_text())
    assert summary["pruning"]["pruned"][0]["job"] == "1" and summary["per_job"]["1"]["pruned_at_step"] == 2
    assert summary["pruning"]["compute"]["steps"] == 6 and summary["pruning"]["compute"]["full_steps"] == 8
    assert "## Pruning" in (sweep / "results.md").read_text()


@pytest.mark.slow
def test_an_optuna_search_with_a_pruner(tmp_path: Path) -> None:
    """hydra/sweeper=dpo_optuna hands each job its trial; the jobs report to it, a pruned job marks it, the
    sweeper tells Optuna PRUNED, and the best trial is a completed one. The seeded sampler proposes the
    learning rates 1e-12, 1e-3, 1e-12: the third job reaches the rung behind the second and stops."""
    sweep = _sweep(
        tmp_path, "hydra/sweeper=dpo_optuna", "hydra.sweeper.n_trials=3", "hydra.sweeper.sampler.seed=0",
        "train.learning_rate=choice(1e-3,1e-12)", "dpo.beta=0.1", "lora.r=4",
    )  # fmt: skip
    study = _study(sweep, "dpo_lab")
    jobs = _check_jobs_against_the_study(sweep, study)
    assert len(jobs) == 3 and any(m["status"] == "pruned" for m in jobs.values())
    assert all(_learning_rate(sweep / n) == 1e-12 for n, m in jobs.items() if m["status"] == "pruned")
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["trials"]["pruned"] == sum(m["status"] == "pruned" for m in jobs.values())
    assert jobs[str(results["best_trial"])]["status"] == "completed"


@pytest.mark.slow
def test_a_packed_sweep_drops_the_losing_jobs_at_the_rung(tmp_path: Path) -> None:
    """hydra/launcher=packed: the 4 jobs step together; at the rung (step 2) each reports, successive halving
    ranks the 4 together and keeps 2; the two that cannot learn leave the pack there and finish as pruned
    runs with the trial the pack opened for them (no second one), the two others train on to step 4."""
    sweep = _sweep(tmp_path, "hydra/launcher=packed", "train.learning_rate=1e-3,1e-12", "dpo.beta=0.1,0.5")
    study = _study(sweep)
    jobs = _check_jobs_against_the_study(sweep, study)
    assert len(study.trials) == 4
    for name, metrics in jobs.items():
        lr = _learning_rate(sweep / name)
        assert metrics["status"] == ("pruned" if lr == 1e-12 else "completed"), (name, lr)
        assert metrics["train"]["pack_size"] == 4
    assert len({m["train"]["pack_id"] for m in jobs.values()}) == 1
    # every job's value at the rung was recorded before any was judged, as Optuna's own pruner records them
    assert all(RUNG_KEY.format(0) in t.system_attrs for t in study.trials)
    summary = json.loads((sweep / "report.json").read_text())["pruning"]
    assert summary["compute"]["packs"] == 1 and summary["compute"]["steps"] == 12
    assert sorted(p["job"] for p in summary["pruned"]) == sorted(
        n for n, m in jobs.items() if m["status"] == "pruned"
    )


@pytest.mark.slow
def test_a_killed_pruned_sweep_runs_again_without_training_anything_twice(tmp_path: Path) -> None:
    """Killed (SIGKILL) while job 2 trains (at its checkpoint of step 1, before the rung), after jobs 0
    (completed) and 1 (pruned) finished, and run again with the same command: jobs 0 and 1 are left as they
    were (not trained again, no new trial), job 2 resumes from its checkpoint with the trial it had, and the
    study holds one trial per job."""
    sweep = tmp_path / "sweep"
    args = [sys.executable, "-m", "dpo_lab.run",
            *_args(sweep, "train.learning_rate=1e-3,1e-12,2e-3", "train.save_steps=1")]  # fmt: skip
    proc = subprocess.Popen(args, cwd=ROOT, env=cli_env(tmp_path), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    checkpoint = (
        sweep / "2" / "checkpoints" / "checkpoint-1" / MARKER
    )  # written last: the checkpoint is whole
    try:
        deadline = time.monotonic() + 600
        while not checkpoint.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert checkpoint.is_file() and proc.poll() is None, "job 2 never reached its checkpoint"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert not (sweep / "2" / "metrics.json").is_file()
    before = {n: (sweep / n / "metrics.json").read_bytes() for n in ("0", "1")}
    adapters = {
        n: (sweep / n / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns for n in ("0", "1")
    }
    assert [json.loads(before[n])["status"] for n in ("0", "1")] == ["completed", "pruned"]
    trials_before = {t.number: t.state for t in _study(sweep).trials}
    assert trials_before == {0: TrialState.COMPLETE, 1: TrialState.PRUNED, 2: TrialState.RUNNING}

    again = run_cli(args[3:], tmp_path)
    assert again.returncode == 0, again.stderr[-4000:]
    for name in ("0", "1"):  # nothing trained twice, nothing rewritten
        assert (sweep / name / "metrics.json").read_bytes() == before[name], name
        assert (sweep / name / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == adapters[name]
    study = _study(sweep)
    jobs = _check_jobs_against_the_study(sweep, study)
    assert len(study.trials) == 3 and jobs["2"]["pruning"]["trial"] == 2
    assert jobs["2"]["resumed_from_step"] == 1


@pytest.mark.slow
def test_submitit_jobs_in_their_own_processes_share_the_journal(tmp_path: Path) -> None:
    """hydra/launcher=local (submitit's local executor): the jobs run at once in processes of their own and
    each asks the sweep's journal for a trial: distinct trials, each with its job's folder."""
    sweep = _sweep(tmp_path, "hydra/launcher=local", "train.learning_rate=1e-3,1e-12,2e-3")
    assert (sweep / ".submitit").is_dir()
    study = _study(sweep)
    jobs = _check_jobs_against_the_study(sweep, study)
    assert len(jobs) == 3 and len(study.trials) == 3
    assert {m["pruning"]["storage"] for m in jobs.values()} == {str((sweep / JOURNAL_FILE).absolute())}
    assert not any(any(m["reused"].values()) for m in jobs.values())  # processes of their own


def _eval_history(job: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (job / "log_history.jsonl").read_text().splitlines()]
    return [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]


@pytest.mark.slow
def test_a_grid_halved_in_rounds_on_the_basic_launcher(tmp_path: Path) -> None:
    """hydra/sweeper=dpo_lab_halving, jobs one after another: all four train to the rung (step 2), the two
    whose learning rate (1e-12) cannot move their adapters stop there, and the other two go on from their
    checkpoints to step 4, each ending exactly as the same job trained in one go. Run again, the sweep trains
    nothing and asks no new trial."""
    args = ["hydra/sweeper=dpo_lab_halving", "train.learning_rate=1e-3,1e-12", "dpo.beta=0.1,0.5"]
    sweep = _sweep(tmp_path, *args)
    study = _study(sweep)
    jobs = _check_jobs_against_the_study(sweep, study)
    by_rate = {n: _learning_rate(sweep / n) for n in jobs}
    for name, metrics in jobs.items():
        if by_rate[name] == 1e-12:
            assert metrics["status"] == "pruned" and metrics["pruning"]["pruned_at_step"] == 2, name
            assert metrics["pruning"]["stop_at"] == 2
            assert (sweep / name / "checkpoints" / "checkpoint-2").is_dir()  # where it would have gone on
        else:
            assert metrics["status"] == "completed" and metrics["resumed_from_step"] == 2, name
            assert metrics["pruning"]["reported_steps"] == [2, 4]
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "COMPLETE", "PRUNED", "PRUNED"]
    summary = json.loads((sweep / "report.json").read_text())
    assert summary["pruning"]["compute"]["steps"] == 2 * 2 + 2 * 4
    assert summary["pruning"]["compute"]["full_steps"] == 16

    # a promoted job ends as the same job trained in one go (the checkpoint holds optimizer, schedule, RNG)
    winner = next(n for n in jobs if by_rate[n] == 1e-3)
    beta = yaml.safe_load((sweep / winner / "config.yaml").read_text())["dpo"]["beta"]
    plain = tmp_path / "plain"
    one_go = [*SMALL, "train.learning_rate=1e-3", f"dpo.beta={beta}", f"hydra.run.dir={plain}"]
    proc = run_cli(one_go, tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert _eval_history(sweep / winner) == _eval_history(plain)

    before = {n: (sweep / n / "metrics.json").read_bytes() for n in jobs}
    again = run_cli(_args(sweep, *args), tmp_path)
    assert again.returncode == 0, again.stderr[-4000:]
    assert {n: (sweep / n / "metrics.json").read_bytes() for n in jobs} == before
    assert len(_study(sweep).trials) == 4
