"""A real run records its speed: step timing, the FLOP model's inputs and MFU, in metrics.json and W&B."""

from __future__ import annotations

import json
import time

import pytest

from dpo_lab.train.flops import ModelShapes, counts_from_ratios, dpo_step_flops
from tests.helpers import run_cli, wandb_summary

SMALL = ["train.max_steps=4", "train.logging_steps=1", "data.max_train_samples=32", "data.max_eval_samples=8",
         "train.precision=fp32", "eval=none"]  # fmt: skip


@pytest.mark.slow
def test_metrics_json_and_wandb_hold_mfu_and_step_timing(tmp_path) -> None:
    run = tmp_path / "run"
    started = time.time()
    proc = run_cli([*SMALL, "logger.wandb.mode=offline", f"hydra.run.dir={run}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = json.loads((run / "metrics.json").read_text())
    flops = metrics["flops"]
    assert flops["reference_forward"] is True and flops["shapes"]["lora_params"] > 0
    # the MFU in metrics.json is the FLOP model over the recorded tokens, runtime and measured peak
    counts = counts_from_ratios(metrics["train_tokens"], flops["token_ratios"])
    total = dpo_step_flops(ModelShapes(**flops["shapes"]), counts, reference_forward=True)["total"]
    assert flops["train_flops"]["total"] == pytest.approx(total)
    # the held-out "before" evaluation runs inside train() (eval_on_start): it is not training time
    assert 0 < metrics["eval_seconds_in_train"] < metrics["train_runtime_s"]
    seconds = metrics["train_runtime_s"] - metrics["eval_seconds_in_train"]
    assert metrics["training_seconds"] == pytest.approx(seconds)
    assert metrics["tokens_per_second"] == pytest.approx(metrics["train_tokens"] / seconds)
    assert metrics["mfu"] == pytest.approx(total / seconds / flops["peak_flops_per_s"])
    assert 0 < metrics["mfu"] < 1
    # from the process's start to the end of step 1: inside the time this test waited for the CLI
    assert started < metrics["first_step_at"] < time.time()
    assert 0 < metrics["time_to_first_step_s"] < metrics["first_step_at"] - started + 0.5
    assert metrics["time_to_first_step_s"] < metrics["total_runtime_s"]  # one origin for both
    assert metrics["seconds_per_step"] > 0 and metrics["cpu_seconds_per_step"] > 0
    summary = wandb_summary(run)["summary"]
    assert summary["mfu"] == pytest.approx(metrics["mfu"])
    assert summary["seconds_per_step"] == pytest.approx(metrics["seconds_per_step"])
