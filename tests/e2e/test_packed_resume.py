"""A packed sweep killed at any point and run again with the same command ends as if never killed.

The pack trains its K adapters before any of its jobs runs, so its state lives in the sweep folder
(dpo_lab.packed.store): a checkpoint every ``train.save_steps`` optimizer steps, and the jobs' outcome
once trained. Killed inside a packed step, the same command resumes the pack from its last checkpoint;
killed while the jobs write their folders, the jobs that had not finished take their adapters from the
saved outcome instead of training again. Either way every job's adapter is bit-identical to the
uninterrupted packed sweep's and its ``log_history.jsonl`` holds the same records. The kills come from
``tests/helpers/inject_kill.py`` at exact points.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from dpo_lab.runs.history import read_history
from tests.helpers import cli_env, run_cli
from tests.helpers.long_runs import TIME_KEYS, assert_same_adapter

pytestmark = pytest.mark.slow

# 3 jobs (beta 0.1, 0.5, 1.0), 5 fp32 steps of 2 pairs (4 steps an epoch: the resume from step 2 replays the
# data order inside the first epoch and crosses into the second), a pack checkpoint every 2 steps
SWEEP = [
    "-m", "hydra/launcher=packed", "dpo.beta=0.1,0.5,1.0",
    "train.max_steps=5", "train.save_steps=2", "train.logging_steps=1", "train.precision=fp32",
    "train.lr_scheduler_type=constant", "train.per_device_train_batch_size=2",
    "train.per_device_eval_batch_size=2", "data.max_train_samples=8", "data.max_eval_samples=2",
    "dpo.max_length=128", "lora.dropout=0.2", "train.extra={disable_dropout: false}", "seed=7",
    "eval=none", "logger=none",
]  # fmt: skip
TRAINED_TOGETHER = "training jobs [0, 1, 2] together in one pack"
JOBS = ("0", "1", "2")


def sweep(folder: Path, tmp_path: Path, kill: str | None = None):
    env = cli_env(tmp_path)
    if kill:
        env.update(DPO_LAB_TEST_KILL=kill)
    module = "tests.helpers.inject_kill" if kill else "dpo_lab.run"
    return run_cli([*SWEEP, f"hydra.sweep.dir={folder}"], tmp_path, module=module, env=env, timeout=600)


def history(job: Path) -> list[dict]:
    """log_history.jsonl without wall-clock values (run times, rates, the model preparation time)."""
    clock = (*TIME_KEYS, "preparation_time")
    return [{k: v for k, v in r.items() if not any(t in k for t in clock)} for r in read_history(job)]


def status(job: Path) -> str | None:
    path = job / "metrics.json"
    return json.loads(path.read_text())["status"] if path.is_file() else None


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("packed-baseline")
    proc = sweep(tmp / "sweep", tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert TRAINED_TOGETHER in proc.stderr + proc.stdout
    for job in JOBS:
        metrics = json.loads((tmp / "sweep" / job / "metrics.json").read_text())
        assert metrics["status"] == "completed" and metrics["train"]["pack_size"] == 3
        assert metrics["global_step"] == 5
    return tmp / "sweep"


def assert_same_jobs(folder: Path, baseline: Path) -> None:
    for job in JOBS:
        assert status(folder / job) == "completed"
        assert_same_adapter(folder / job / "adapter", baseline / job / "adapter")
        assert history(folder / job) == history(baseline / job)


def test_killed_inside_a_packed_step_resumes_from_the_pack_checkpoint(baseline, tmp_path) -> None:
    folder = tmp_path / "sweep"
    proc = sweep(folder, tmp_path, kill="pack-step:4")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    checkpoints = sorted(p.name for p in folder.glob(".packs/*/checkpoint-*.pt"))
    assert checkpoints == ["checkpoint-2.pt"]  # step 4 never finished
    assert not any(status(folder / job) for job in JOBS)  # no job ran yet

    proc = sweep(folder, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stderr + proc.stdout
    assert "packed training resumes from" in output and "checkpoint-2.pt" in output
    assert_same_jobs(folder, baseline)
    assert not list(folder.glob(".packs/*/checkpoint-*.pt"))  # the outcome replaces the checkpoints
    assert list(folder.glob(".packs/*/result.pt"))


def test_killed_while_the_jobs_finish_takes_the_saved_pack_outcome(baseline, tmp_path) -> None:
    folder = tmp_path / "sweep"
    proc = sweep(folder, tmp_path, kill="pack-finish:2")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert status(folder / "0") == "completed" and status(folder / "1") != "completed"
    assert (folder / "1" / "config.yaml").is_file()  # started, not finished
    assert not (folder / "2" / "config.yaml").exists()  # not started

    proc = sweep(folder, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stderr + proc.stdout
    for job in ("1", "2"):
        assert f"job {job} takes its adapter from the pack that trained it before" in output
    assert "together in one pack" not in output and "packed 3 jobs" not in output  # nothing trained again
    assert_same_jobs(folder, baseline)
