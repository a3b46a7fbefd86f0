"""Trainer callbacks that feed the tracker and the run folder's log history."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from transformers import TrainerCallback

from dpo_lab.runs.history import append_record
from dpo_lab.runs.result import MEAN_TRAIN_LOSS
from dpo_lab.track.wandb_tracker import Tracker


def prefixed(metrics: dict[str, float]) -> dict[str, float]:
    """``eval_loss`` -> ``eval/loss``; anything else -> ``train/<key>``."""
    out = {}
    for key, value in metrics.items():
        if not isinstance(value, (int, float)):
            continue
        if key.startswith("eval_"):
            out[f"eval/{key[5:]}"] = value
        elif key.startswith("train_"):
            out[f"train/{key[6:]}"] = value
        else:
            out[f"train/{key}"] = value
    return out


# Trainer's end-of-training log -> summary keys (its train_loss is the mean over the run, not a step's loss)
END_OF_TRAINING = {
    "train_runtime": "train/runtime",
    "train_samples_per_second": "train/samples_per_second",
    "train_steps_per_second": "train/steps_per_second",
    "train_loss": MEAN_TRAIN_LOSS,
    "total_flos": "train/total_flos",
}


class MetricsCallback(TrainerCallback):
    """Forward every Trainer log to the tracker under train/ and eval/, with the peak memory.

    Trainer's step logs already carry ``train_tokens_per_second`` (we set include_num_input_tokens_seen).
    """

    def __init__(self, tracker: Tracker, peak_memory_mb: Callable[[], float]):
        self.tracker = tracker
        self.peak_memory_mb = peak_memory_mb

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not state.is_world_process_zero:
            return
        if "train_loss" in logs:  # the end-of-training aggregate: summary values, not a history point
            self.tracker.summarize({END_OF_TRAINING[k]: v for k, v in logs.items() if k in END_OF_TRAINING})
            return
        metrics = prefixed(logs)
        if not any(key.startswith("eval_") for key in logs):
            metrics["train/peak_memory_mb"] = self.peak_memory_mb()
        self.tracker.log(metrics, step=state.global_step)


class LogHistoryCallback(TrainerCallback):
    """Append every Trainer log (step logs, evaluations) to the run folder's ``log_history.jsonl``, which
    the sweep report reads for its curves (works with any logger, W&B or none)."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and state.is_world_process_zero:
            append_record(self.path, state.global_step, logs)
