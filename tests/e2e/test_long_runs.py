"""Tier 3: runs that are killed, preempted, requeued or diverge end as an uninterrupted run, or fail clearly.

Every interrupted run here is compared with one uninterrupted run of the same config and seed (the module's
baseline): on CPU in fp32 a resumed run must end with bit-identical adapter weights and the same logged
losses and rewards.
"""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path

import psutil
import pytest

from dpo_lab.runs.checkpoints import MARKER, latest_complete
from tests.helpers import cli_env, run_cli
from tests.helpers.long_runs import (
    TRAIN,
    assert_same_adapter,
    attempt_records,
    attempt_summary,
    log_history,
    output_of,
    start_cli,
    train_losses,
    wait_for_checkpoint,
    wandb_losses,
    wandb_run_dirs,
)

pytestmark = pytest.mark.slow


def read(path: Path) -> str:
    return path.read_text()


OFFLINE = ["logger=wandb", "logger.wandb.mode=offline"]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Path:
    """One uninterrupted run of TRAIN."""
    tmp = tmp_path_factory.mktemp("baseline")
    proc = run_cli([*TRAIN, "logger=none", f"hydra.run.dir={tmp / 'run'}"], tmp, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp / "run" / "metrics.json").read_text())
    assert metrics["global_step"] == 8 and metrics["resumed_from_step"] is None
    return tmp / "run"


def plant_half_written_checkpoint(checkpoints: Path, step: int) -> Path:
    """What a kill during a save leaves: a checkpoint folder with a later step, truncated, no marker."""
    source = latest_complete(checkpoints)
    assert source is not None
    fake = checkpoints / f"checkpoint-{step}"
    shutil.copytree(source.path, fake)
    (fake / MARKER).unlink()
    state = json.loads((fake / "trainer_state.json").read_text())
    (fake / "trainer_state.json").write_text(json.dumps({**state, "global_step": step}))
    weights = fake / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return fake


def test_sigkill_after_a_checkpoint_then_resume_equals_uninterrupted(baseline: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = [*TRAIN, *OFFLINE, f"hydra.run.dir={run_dir}"]
    proc = start_cli(args, tmp_path)
    wait_for_checkpoint(run_dir, 4, proc)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "adapter").exists(), "not interrupted"
    resume_step = latest_complete(run_dir / "checkpoints").step
    assert 4 <= resume_step < 8
    fake = plant_half_written_checkpoint(run_dir / "checkpoints", 7)
    run_id = json.loads((run_dir / "wandb_run.json").read_text())["id"]

    resumed = run_cli(args, tmp_path, timeout=300)  # the same command again

    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run_log = (run_dir / "run.log").read_text()
    assert f"skipping checkpoint {fake}" in run_log
    assert f"resuming from {run_dir}/checkpoints/checkpoint-{resume_step}" in run_log
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["global_step"] == 8
    assert metrics["resumed_from_step"] == resume_step
    # throughput is this attempt's: its own tokens over its own seconds, not the restored total over them
    assert metrics["train_tokens"] == json.loads((baseline / "metrics.json").read_text())["train_tokens"]
    assert 0 < metrics["attempt_tokens"] < metrics["train_tokens"]
    attempt_rate = metrics["attempt_tokens"] / metrics["training_seconds"]
    assert metrics["tokens_per_second"] == pytest.approx(attempt_rate)
    assert_same_adapter(run_dir / "adapter", baseline / "adapter")
    resumed_history, baseline_history = log_history(run_dir), log_history(baseline)
    assert resumed_history == baseline_history  # losses, rewards (so the reference), lr, grad norms, tokens
    assert len(train_losses(resumed_history)) == 8
    # W&B: the same run id, continued by a second attempt that logged the remaining steps
    assert json.loads((run_dir / "wandb_run.json").read_text())["id"] == run_id
    first, second = wandb_run_dirs(run_dir)
    assert first.name.endswith(run_id) and second.name.endswith(run_id)
    run_record = next(r["run"] for r in attempt_records(second) if r["type"] == "run")
    assert run_record["run_id"] == run_id and run_record["resume"] is True
    logged = wandb_losses(second)
    assert sorted(logged) == list(range(resume_step + 1, 9))
    assert logged == {s: loss for s, loss in train_losses(baseline_history).items() if s > resume_step}
    assert attempt_summary(second)["state"] == "finished"


def test_sigterm_saves_at_the_next_step_then_resume_option_finishes(baseline: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = start_cli([*TRAIN, *OFFLINE, f"hydra.run.dir={run_dir}"], tmp_path)
    wait_for_checkpoint(run_dir, 4, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM, output_of(proc)[-3000:]
    stopped = latest_complete(run_dir / "checkpoints")
    assert 4 < stopped.step < 8, "the preemption checkpoint is the step after the signal"
    assert f"SIGTERM received: saving a checkpoint at step {stopped.step}" in read(run_dir / "run.log")
    record = json.loads((run_dir / "metrics.json").read_text())  # no launcher to requeue it: say so
    assert record["status"] == "preempted" and record["global_step"] == stopped.step
    assert record["checkpoint"] == str(stopped.path) and record["requeued"] is False
    [preempted] = wandb_run_dirs(run_dir)
    summary = attempt_summary(preempted)
    assert summary["exit_code"] == 143
    assert summary["summary"]["status"] == "preempted"
    assert summary["summary"]["preempted_at_step"] == stopped.step
    assert any(r["type"] == "preempting" for r in attempt_records(preempted))

    resumed = run_cli([f"resume={run_dir}"], tmp_path, timeout=300)  # no other override: the stored ones

    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["global_step"] == 8 and metrics["resumed_from_step"] == stopped.step
    assert_same_adapter(run_dir / "adapter", baseline / "adapter")
    assert log_history(run_dir) == log_history(baseline)

    # the finished folder: a different config is refused before any model loads; the same one is a no-op
    changed = run_cli([f"resume={run_dir}", "train.max_steps=20"], tmp_path, timeout=120)
    assert changed.returncode == 2
    assert "dpo_lab: invalid config: train.max_steps: differs from the config" in changed.stderr
    again = run_cli([f"resume={run_dir}"], tmp_path, timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "already holds a completed run" in (run_dir / "run.log").read_text()
    assert json.loads((run_dir / "metrics.json").read_text()) == metrics


def _submitit_task(parent: psutil.Process, timeout: float = 60) -> psutil.Process:
    """The process submitit runs the job in (python -m submitit.core._submit), under the Hydra process."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in parent.children(recursive=True):
            if "submitit.core._submit" in " ".join(child.cmdline()):
                return child
        time.sleep(0.2)
    raise AssertionError("no submitit task process")


def test_submitit_job_preempted_is_requeued_and_resumes(baseline: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=local", f"hydra.sweep.dir={sweep}", *TRAIN, *OFFLINE]
    proc = start_cli(args, tmp_path)
    job_dir = sweep / "0"
    wait_for_checkpoint(job_dir, 4, proc, timeout=180)
    task = _submitit_task(psutil.Process(proc.pid))
    task.send_signal(signal.SIGUSR2)  # what SLURM / submitit send before a time limit or preemption

    assert proc.wait(timeout=300) == 0, output_of(proc)[-4000:]
    submitit_log = "".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.*"))
    assert "Requeued job" in submitit_log
    run_log = (job_dir / "run.log").read_text()
    assert "SIGUSR2 received: saving a checkpoint at step" in run_log
    metrics = json.loads((job_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["global_step"] == 8
    stopped = metrics["resumed_from_step"]
    assert 4 < stopped < 8 and f"resuming from {job_dir}/checkpoints/checkpoint-{stopped}" in run_log
    assert_same_adapter(job_dir / "adapter", baseline / "adapter")
    # one W&B run id, two attempts: preempted then resumed and finished
    run_id = json.loads((job_dir / "wandb_run.json").read_text())["id"]
    first, second = wandb_run_dirs(job_dir)
    assert first.name.endswith(run_id) and second.name.endswith(run_id)
    assert attempt_summary(first)["summary"]["status"] == "preempted"
    assert any(r["type"] == "preempting" for r in attempt_records(first))
    assert attempt_summary(second)["state"] == "finished"
    assert attempt_summary(second)["summary"]["status"] == "completed"


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = [*TRAIN, "train.max_steps=6", "train.save_steps=2", *OFFLINE, f"hydra.run.dir={run_dir}"]
    env = {**cli_env(tmp_path), "DPO_LAB_TEST_NAN_STEP": "5"}
    proc = run_cli(args, tmp_path, module="tests.helpers.inject_nan", env=env, timeout=300)

    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("dpo_lab:")]
    assert errors == [
        "dpo_lab: training stopped: non-finite loss (nan) at step 5; stopped before the optimizer step, "
        f"so no weights took it. Last good checkpoint: {run_dir}/checkpoints/checkpoint-4"
    ]
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-2", "checkpoint-4"]
    assert latest_complete(run_dir / "checkpoints").step == 4
    state = json.loads((run_dir / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())
    assert all(e["loss"] == e["loss"] for e in state["log_history"] if "loss" in e)  # no NaN got logged
    assert not (run_dir / "adapter").exists()
    failure = json.loads((run_dir / "metrics.json").read_text())
    assert failure["status"] == "failed" and "non-finite loss (nan) at step 5" in failure["error"]
    [wandb_run] = wandb_run_dirs(run_dir)
    summary = attempt_summary(wandb_run)
    assert summary["state"] == "failed" and summary["exit_code"] == 1
    assert summary["summary"]["status"] == "failed"
    assert "non-finite loss (nan) at step 5" in summary["summary"]["error"]
