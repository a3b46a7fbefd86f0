"""Tier 3: data-parallel training in 2 CPU processes (gloo), launched the way the README says.

The launch is checked, not trusted: the test asserts the world size the processes really formed, that each
rank trained on half of the batches, that they agreed on one run folder without being told where, and that
every rank ended with exactly the adapter the main process saved.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dpo_lab.runs.checkpoints import latest_complete
from dpo_lab.runtime.collectives import state_digest
from tests.helpers import ROOT, cli_env, run_cli
from tests.helpers.long_runs import adapter, wandb_run_dirs

pytestmark = pytest.mark.slow

# 24 pairs, 4 per process and step: one process would take 6 steps; two take 3, on 3 batches each
ARGS = [
    "train.max_steps=-1",
    "train.num_train_epochs=1",
    "train.per_device_train_batch_size=4",
    "train.save_steps=2",
    "train.logging_steps=1",
    "train.precision=fp32",
    "data.max_train_samples=24",
    "data.max_eval_samples=8",
    "logger=wandb",
    "logger.wandb.mode=offline",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_accelerate_launch_two_cpu_processes(tmp_path: Path) -> None:
    launcher = str(Path(sys.executable).with_name("accelerate"))
    config = ROOT / "accelerate_configs" / "ddp_cpu.yaml"
    cmd = [launcher, "launch", "--config_file", str(config), "--main_process_port", str(_free_port()),
           "-m", "dpo_lab.run", *ARGS]  # fmt: skip
    # run from an empty folder with no hydra.run.dir: the ranks must agree on runs/<date>/<time> themselves
    env = {**cli_env(tmp_path), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]

    [run_dir] = (tmp_path / "runs").glob("*/*")  # one folder, not one per rank
    metrics = json.loads((run_dir / "metrics.json").read_text())
    ranks = metrics["distributed"]
    assert ranks["world_size"] == 2 and ranks["backend"] == "gloo"
    assert ranks["micro_batches_per_rank"] == [3, 3]
    assert ranks["pairs_per_rank"] == [12, 12]  # all 24 pairs, half on each rank
    assert metrics["global_step"] == 3
    saved = state_digest(adapter(run_dir / "adapter"))
    assert ranks["adapter_sha256_per_rank"] == [saved, saved]
    # each rank's RNG state is in the checkpoint, which is marked complete only after both wrote theirs
    checkpoint = latest_complete(run_dir / "checkpoints")
    assert checkpoint.step == 3
    assert {p.name for p in checkpoint.path.glob("rng_state*")} == {"rng_state_0.pth", "rng_state_1.pth"}
    # only the main process wrote the log file, W&B and the task samples (whole JSON lines, not interleaved)
    assert (run_dir / "run.log").read_text().count("data: 24 train / 8 held-out pairs") == 1
    assert len(wandb_run_dirs(run_dir)) == 1
    samples = (run_dir / "samples_after.jsonl").read_text().splitlines()
    assert len(samples) == metrics["task"]["num_prompts"] > 0
    assert all(json.loads(line)["prompt"] for line in samples)


def test_submitit_job_with_two_tasks_trains_data_parallel(tmp_path: Path) -> None:
    # hydra/launcher=local with tasks_per_node=2: submitit starts 2 processes for the job; dpo_lab derives
    # RANK / WORLD_SIZE / MASTER_* from submitit's environment (the path SLURM jobs with several GPUs take)
    sweep = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=local", "hydra.launcher.tasks_per_node=2", f"hydra.sweep.dir={sweep}",
            *ARGS[:-2], "logger=none", "eval=none"]  # fmt: skip
    proc = run_cli(args, tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = json.loads((sweep / "0" / "metrics.json").read_text())
    ranks = metrics["distributed"]
    assert ranks["world_size"] == 2 and ranks["micro_batches_per_rank"] == [3, 3]
    saved = state_digest(adapter(sweep / "0" / "adapter"))
    assert ranks["adapter_sha256_per_rank"] == [saved, saved]
    assert (sweep / "0" / "run.log").read_text().count("data: 24 train / 8 held-out pairs") == 1
