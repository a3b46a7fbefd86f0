"""Tier 3, bounded: a run folder killed at every kind of moment, rerun after each, ends as if never killed.

A short fp32 run with a constant learning rate (an extra or a missing step changes the weights, which a
decaying schedule's last step of rate 0 would hide) is killed with SIGKILL inside a step, inside a
checkpoint write, right after its last checkpoint and inside the final save, and rerun with the same command
after each; on the way it also meets a folder that failed before training, a corrupt newest checkpoint and a
SIGTERM outside training. Its final adapter must be bit-identical to the uninterrupted run's and its
``log_history.jsonl`` must hold the same records (wall-clock values aside). The kills come from
``tests/inject_kill.py`` at exact points, so the test takes the same path on a fast or a loaded machine.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest

from dpo_lab.runs.checkpoints import MARKER, latest_complete, list_checkpoints
from dpo_lab.runs.history import read_history
from tests.helpers import cli_env, run_cli
from tests.helpers.long_runs import TIME_KEYS, assert_same_adapter
from tests.train.test_checkpoints import overwrite_with_garbage

pytestmark = pytest.mark.slow

# 10 pairs, 2 a step: 5 steps an epoch, so the final step (6) is not at an epoch's end and a resume from
# checkpoint-6 lands inside an epoch (where the Trainer used to train one more step)
TRAIN = [
    "train.max_steps=6",
    "train.save_steps=3",
    "train.logging_steps=1",
    "train.precision=fp32",
    "train.lr_scheduler_type=constant",
    "train.per_device_train_batch_size=2",
    "train.per_device_eval_batch_size=2",
    "data.max_train_samples=10",
    "data.max_eval_samples=2",
    "dpo.max_length=128",
    "seed=7",
    "eval=none",
    "logger=none",
]


def history(run_dir: Path) -> list[dict[str, Any]]:
    """log_history.jsonl without wall-clock values."""
    return [{k: v for k, v in r.items() if not any(t in k for t in TIME_KEYS)} for r in read_history(run_dir)]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Path:
    """The uninterrupted run."""
    tmp = tmp_path_factory.mktemp("baseline")
    proc = run_cli([*TRAIN, f"hydra.run.dir={tmp / 'run'}"], tmp, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp / "run" / "metrics.json").read_text())
    assert metrics["global_step"] == 6 and metrics["resumed_from_step"] is None
    return tmp / "run"


def attempt(run_dir: Path, tmp_path: Path, kill: str | None, sig: str = "SIGKILL", args: list[str] = TRAIN):
    """The same command, killed at ``kill`` (see tests/inject_kill.py) or left to finish."""
    env = cli_env(tmp_path)
    if kill:
        env.update(DPO_LAB_TEST_KILL=kill, DPO_LAB_TEST_SIGNAL=sig)
    module = "tests.helpers.inject_kill" if kill else "dpo_lab.run"
    return run_cli([*args, f"hydra.run.dir={run_dir}"], tmp_path, module=module, env=env, timeout=300)


def killed(proc, sig: int = signal.SIGKILL) -> None:
    assert proc.returncode == -sig, f"rc {proc.returncode}, not killed:\n{proc.stderr[-3000:]}"


def test_resume_from_the_final_checkpoint_trains_no_extra_step(baseline: Path, tmp_path: Path) -> None:
    # what a kill after checkpoint-6 is complete, before the run finished, leaves
    run_dir = tmp_path / "run"
    shutil.copytree(baseline, run_dir)
    for name in ("metrics.json", "README.md", "adapter"):
        shutil.rmtree(run_dir / name) if (run_dir / name).is_dir() else (run_dir / name).unlink()

    proc = attempt(run_dir, tmp_path, None)

    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["global_step"] == 6 and metrics["resumed_from_step"] == 6
    assert [c.step for c in list_checkpoints(run_dir / "checkpoints")] == [3, 6]
    assert_same_adapter(run_dir / "adapter", baseline / "adapter")
    assert history(run_dir) == history(baseline)
    # the whole run's mean training loss, not the mean over this attempt's (no) steps
    baseline_train = json.loads((baseline / "metrics.json").read_text())["train"]
    assert metrics["train"]["train_loss"] == baseline_train["train_loss"] > 0


def test_killed_everywhere_then_rerun_equals_uninterrupted(baseline: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    checkpoints = run_dir / "checkpoints"

    # 0. a run that fails on its data before training: the folder can be started again with the data fixed
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    failed = attempt(run_dir, tmp_path, None, args=[*TRAIN, f"data.path={empty}", "data.test_split=null",
                                                    "data.test_size=2"])  # fmt: skip
    assert failed.returncode != 0 and not checkpoints.exists()

    # 1. SIGKILL inside the write of the first checkpoint: nothing complete to resume from
    killed(attempt(run_dir, tmp_path, "checkpoint-write:3"))
    [half] = list_checkpoints(checkpoints)
    assert half.step == 3 and not (half.path / MARKER).exists()

    # 2. fresh start (the half-written checkpoint removed), SIGKILL inside step 5
    killed(attempt(run_dir, tmp_path, "step:5"))
    assert latest_complete(checkpoints).step == 3
    assert max(r["step"] for r in read_history(run_dir)) == 4  # steps 4 and 5 were not checkpointed

    # 3. resumed from checkpoint-3, SIGKILL right after the last checkpoint is complete
    killed(attempt(run_dir, tmp_path, "after-last-checkpoint"))
    assert latest_complete(checkpoints).step == 6 and not (run_dir / "metrics.json").exists()

    # 4. the newest checkpoint's adapter overwritten with garbage of the same size: resumed from checkpoint-3
    #    instead, then SIGKILL inside the final save
    overwrite_with_garbage(checkpoints / "checkpoint-6" / "adapter_model.safetensors")
    logged_before = len((run_dir / "run.log").read_text())
    killed(attempt(run_dir, tmp_path, "final-save"))
    run_log = (run_dir / "run.log").read_text()[logged_before:]  # this attempt's lines
    assert (
        f"skipping checkpoint {checkpoints / 'checkpoint-6'}: adapter_model.safetensors does not hold"
        in run_log
    )
    assert f"resuming from {checkpoints / 'checkpoint-3'}" in run_log
    assert (run_dir / ".adapter.partial").is_dir() and not (run_dir / "adapter").exists()

    # 5. resumed from the final checkpoint (no step left), SIGTERM as the final save starts: recorded
    term = attempt(run_dir, tmp_path, "before-final-save", sig="SIGTERM")
    assert term.returncode == 128 + signal.SIGTERM, term.stderr[-3000:]
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "interrupted"

    # 6. the same command again finishes the run
    done = attempt(run_dir, tmp_path, None)

    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (
        metrics["status"] == "completed" and metrics["global_step"] == 6 and metrics["resumed_from_step"] == 6
    )
    assert_same_adapter(run_dir / "adapter", baseline / "adapter")
    assert history(run_dir) == history(baseline)
    assert [c.step for c in list_checkpoints(checkpoints)] == [3, 6]
