"""Speed of a run: step timestamps, time to first step, tokens/s and MFU for metrics.json and W&B.

Definitions (the benchmark in ``benchmarks/`` measures the plain TRL script the same way):

* ``first_step_at``: wall-clock (Unix) time at the end of optimizer step 1 (``on_step_end``).
* ``job_started_at``: when the job began. For a process's first job that is the process's start (Linux
  ``/proc``), so imports and Hydra count; a later job of a same-process sweep starts when its
  ``run_experiment`` does. ``total_runtime_s`` in metrics.json is measured from the same origin.
* ``time_to_first_step_s``: ``first_step_at`` minus ``job_started_at``; it holds imports (first job),
  config, data, model load, tokenisation, any precompute and the evaluation before training.
* ``seconds_per_step``: steady state, ``(last step end - first step end) / (steps - 1)``;
  ``cpu_seconds_per_step`` the same in this process's CPU time, which other processes on a shared machine
  barely change (with one thread per process it measures the work done, not the waiting).
* ``training_seconds``: Trainer's ``train_runtime`` minus the evaluations that ran inside ``train()``
  (the held-out "before" evaluation at step 0, ``train.eval_steps``), by their ``eval_runtime``;
* ``tokens_per_second``: non-padding tokens trained on in this attempt (Trainer's ``num_input_tokens_seen``
  less its value when ``train()`` began, which a resumed run restores from the checkpoint) over
  ``training_seconds``; MFU and ``flops.train_flops`` are over this attempt's tokens and seconds too.
  ``train_tokens`` is the whole run's count, ``attempt_tokens`` this attempt's (equal unless resumed).
"""

from __future__ import annotations

import logging
import os
import resource
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from dpo_lab.runtime.hardware import compute_dtype
from dpo_lab.runtime.precision import Precision
from dpo_lab.train.batching import pair_token_lengths
from dpo_lab.train.flops import (
    flop_report,
    machine_peak,
    model_shapes,
    packed_flop_report,
    token_ratios,
)

log = logging.getLogger(__name__)


def process_started_at() -> float | None:
    """Unix time at which this process started (Linux, to the clock tick), else None.

    ``/proc/self/stat`` gives the start in clock ticks since boot and ``/proc/uptime`` the seconds since
    boot now, so the process's age needs neither the (whole-second) boot time nor an unchanged clock.
    """
    try:
        stat = Path("/proc/self/stat").read_text()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, counted after the ")" ending the name
    return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))


_first_job_started = False


def job_started_at() -> float:
    """Unix time at which this job began: the process's start for the process's first job, now otherwise.

    Call once per job, at its start. Without ``/proc`` (not Linux) it is the time of the call.
    """
    global _first_job_started
    now = time.time()
    if not _first_job_started:
        _first_job_started = True
        started = process_started_at()
        if started is not None and started <= now:
            return started
    return now


class StepClock(TrainerCallback):
    """Wall-clock and process CPU time at the end of the first and of the latest optimizer step, and the
    time spent in evaluations during ``train()``."""

    def __init__(self) -> None:
        self.first_step_at: float | None = None
        self.last_step_at: float | None = None
        self.first_step_cpu = self.last_step_cpu = 0.0
        self.steps = 0
        self.training = False
        self.eval_seconds_in_train = 0.0
        self.tokens_at_start = 0  # num_input_tokens_seen when train() began: > 0 after a resume

    def on_train_begin(self, args, state, control, **kwargs):
        self.training = True
        self.tokens_at_start = state.num_input_tokens_seen

    def on_train_end(self, args, state, control, **kwargs):
        self.training = False

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self.training:
            self.eval_seconds_in_train += sum(v for k, v in (metrics or {}).items() if k.endswith("_runtime"))

    def replay(self, step_times: Sequence[tuple[float, float]]) -> None:
        """Take the (wall, CPU) end times of steps that ran elsewhere: a job whose adapter a pack trained."""
        if step_times:
            (self.first_step_at, self.first_step_cpu), (self.last_step_at, self.last_step_cpu) = (
                step_times[0],
                step_times[-1],
            )
            self.steps = len(step_times)

    def on_step_end(self, args, state, control, **kwargs):
        now, cpu = time.time(), time.process_time()
        if self.first_step_at is None:
            self.first_step_at, self.first_step_cpu = now, cpu
        self.last_step_at, self.last_step_cpu = now, cpu
        self.steps += 1


def step_timing(clock: StepClock, started_at: float | None) -> dict[str, float | None]:
    """``first_step_at``, ``time_to_first_step_s`` and steady-state (cpu_)``seconds_per_step``."""
    first, last, n = clock.first_step_at, clock.last_step_at, clock.steps - 1
    timed = first is not None and last is not None and n > 0
    return {
        "first_step_at": first,
        "time_to_first_step_s": first - started_at if first is not None and started_at else None,
        "seconds_per_step": (last - first) / n if timed else None,
        "cpu_seconds_per_step": (clock.last_step_cpu - clock.first_step_cpu) / n if timed else None,
    }


def peak_memory_mb() -> float:
    """Peak CUDA allocation on GPU, else the process's peak resident set size."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def speed_metrics(
    trainer: Any,
    clock: StepClock,
    runtime: float,
    precision: Precision,
    device: str,
    started_at: float,
    pack_lora_params: Sequence[int] | None = None,
) -> dict[str, Any]:
    """tokens/s, step timing and the FLOP model's MFU of a trained TRL DPOTrainer (see flops.py).

    ``runtime`` is Trainer's ``train_runtime`` (seconds), evaluations inside it are taken out (see the
    module docstring); ``started_at`` is the job's start (:func:`job_started_at`); the device's peak is
    this machine's peak, measured once and kept (flops.machine_peak), in the training matmuls' dtype.
    """
    tokens = trainer.state.num_input_tokens_seen - clock.tokens_at_start  # this attempt's
    seconds = max(runtime - clock.eval_seconds_in_train, 0.0)
    metrics: dict[str, Any] = {
        "train_tokens": trainer.state.num_input_tokens_seen,
        "attempt_tokens": tokens,
        "training_seconds": seconds,
        "eval_seconds_in_train": clock.eval_seconds_in_train,
        "tokens_per_second": tokens / seconds if seconds else 0.0,
        **step_timing(clock, started_at),
    }
    peak, peak_source = machine_peak(device, compute_dtype(precision))
    ratios = token_ratios(pair_token_lengths(trainer.train_dataset), trainer.args.max_length)
    report = dict(tokens=tokens, seconds=seconds, peak_flops_per_s=peak,
                  reference_forward=not trainer.args.precompute_ref_log_probs)  # fmt: skip
    shapes = model_shapes(trainer.model)
    if pack_lora_params:  # trained in a pack: the LoRA size of every job of it
        flops = packed_flop_report(shapes, list(pack_lora_params), ratios, **report)
    else:
        flops = flop_report(shapes, ratios, **report)
    metrics["mfu"] = flops["mfu"]
    metrics["flops"] = {**flops, "peak_source": peak_source}
    log.info(
        "%.0f tokens/s, %.3g model FLOP/s, peak %.3g FLOP/s (%s matmul), MFU %.2f%%",
        metrics["tokens_per_second"], flops["achieved_flops_per_s"], peak, precision.value,
        100 * flops["mfu"],
    )  # fmt: skip
    return metrics
