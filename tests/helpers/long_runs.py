"""Helpers for the tests that interrupt, resume and scale out real (tiny) training runs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from dpo_lab.runs.checkpoints import MARKER
from tests.helpers import ROOT, cli_env

# 8 fp32 steps on 24 pairs (6 batches an epoch), a checkpoint every 4 steps, every loss logged.
TRAIN = [
    "train.max_steps=8",
    "train.save_steps=4",
    "train.logging_steps=1",
    "train.precision=fp32",
    "train.per_device_train_batch_size=4",
    "data.max_train_samples=24",
    "data.max_eval_samples=8",
    "seed=7",
    "eval=none",  # no generation after training: not what these tests are about
]
# logged values that depend on the wall clock, not on the training
TIME_KEYS = ("runtime", "per_second")
WANDB = str(Path(sys.executable).with_name("wandb"))


def start_cli(args: list[str], tmp_path: Path, module: str = "dpo_lab.run", env=None) -> subprocess.Popen:
    """``python -m <module> args`` from the repo root, running in the background (output to a file)."""
    log = open(tmp_path / f"cli-{time.monotonic_ns()}.log", "w")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=env or cli_env(tmp_path),
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )


def output_of(proc: subprocess.Popen) -> str:
    return Path(proc.stdout.name).read_text() if proc.stdout else ""


def wait_for_checkpoint(run_dir: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Poll until checkpoint-<step> is complete (its marker exists); fail if the process ends first."""
    marker = run_dir / "checkpoints" / f"checkpoint-{step}" / MARKER
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            ended = f"run ended (rc {proc.returncode}) before checkpoint-{step}"
            raise AssertionError(f"{ended}:\n{output_of(proc)}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no checkpoint-{step} after {timeout} s")
        time.sleep(0.05)


def adapter(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


def assert_same_adapter(a: Path, b: Path) -> None:
    ta, tb = adapter(a), adapter(b)
    assert sorted(ta) == sorted(tb)
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not different, f"{len(different)} of {len(ta)} adapter tensors differ, e.g. {different[0]}"


def log_history(run_dir: Path, step: int = 8) -> list[dict[str, Any]]:
    """The Trainer's log history as saved with the final checkpoint, minus wall-clock values."""
    state = json.loads((run_dir / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json").read_text())
    return [{k: v for k, v in e.items() if not any(t in k for t in TIME_KEYS)} for e in state["log_history"]]


def train_losses(history: list[dict[str, Any]]) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in history if "loss" in e}


def wandb_run_dirs(run_dir: Path) -> list[Path]:
    """The W&B run folders under a run folder, oldest first."""
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def attempt_records(wandb_run: Path) -> list[dict[str, Any]]:
    out = subprocess.run([WANDB, "leet", "inspect", "--json", str(wandb_run)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def attempt_summary(wandb_run: Path) -> dict[str, Any]:
    out = subprocess.run(
        [WANDB, "leet", "inspect", "--summary", "--json", str(wandb_run)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def wandb_losses(wandb_run: Path) -> dict[int, float]:
    """train/loss by train/global_step as logged into one W&B run folder."""
    losses = {}
    for record in attempt_records(wandb_run):
        item = record.get("history", {}).get("item", {}) if record["type"] == "history" else {}
        if "train/loss" in item:
            losses[int(item["train/global_step"])] = item["train/loss"]
    return losses
