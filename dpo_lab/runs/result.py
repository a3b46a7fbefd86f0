"""A run's final numbers, from one place: ``metrics.json``, the W&B summary, the model card's results table
and the closing table printed by the CLI are all views of the one ``metrics`` record built here."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpo_lab.config.schemas import SUMMARY_METRICS
from dpo_lab.runs.atomic import atomic_write_json
from dpo_lab.runs.layout import RunLayout
from dpo_lab.runtime.processes import is_main_process
from dpo_lab.stats import Interval

log = logging.getLogger("dpo_lab")

# Held-out metrics a reader compares adapters by (the card's results table): the summary ones and the
# policy's log-probs; not runtimes or samples per second.
CARD_METRICS = (*SUMMARY_METRICS, "logps/chosen", "logps/rejected")
# the per-pair held-out numbers (metrics.json "heldout") and the TRL metric each stands for in the table
INTERVAL_ROWS = {"reward_accuracy": "rewards/accuracies", "margin": "rewards/margins", "loss": "loss"}
# the mean training loss over the run (Trainer's train_loss), under one name everywhere
MEAN_TRAIN_LOSS = "train/mean_loss"
# the phases of a run (dpo_lab.experiment.phase_seconds) in the order they run: the closing table's order
PHASE_ORDER = ("set-up", "held-out before", "training", "held-out after", "task answers", "reward / KL")
# the intervals of metrics.json's "reward_kl" (eval.reward_kl): the policy's mean reward and KL(policy || ref)
# on held-out prompts, the base's reward (adapter off, same draws) and the paired gain policy - base
REWARD_KL_PARTS = ("reward", "kl", "base_reward", "reward_gain")


def held_out(metrics: dict[str, Any], prefix: str, names: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The ``eval_*`` entries of Trainer.evaluate()'s output, renamed ``<prefix><name>`` (only ``names``)."""
    renamed = {k[5:]: v for k, v in metrics.items() if k.startswith("eval_")}
    return {prefix + k: v for k, v in renamed.items() if names is None or k in names}


def task_metrics(task: dict[str, Any]) -> dict[str, float]:
    """The task accuracies as ``task/accuracy_before`` / ``task/accuracy_after``."""
    return {f"task/{k}": v for k, v in task.items() if k.startswith("accuracy_")}


@dataclass
class RunResult:
    """The ``metrics.json`` record of a completed run and the views of it."""

    metrics: dict[str, Any]

    def _final(self, names: tuple[str, ...] | None) -> dict[str, Any]:
        m = self.metrics
        return {
            **held_out(m["eval_before"], "eval_before/", names),
            **held_out(m["eval"], "eval/", names),
            MEAN_TRAIN_LOSS: m["train"].get("train_loss"),
            **task_metrics(m.get("task", {})),
        }

    def card_metrics(self) -> dict[str, Any]:
        """The model card's results table: the held-out numbers with their intervals first, then TRL's."""
        intervals = {
            f"heldout/{phase}/{metric}": Interval.from_dict(found).text()
            for phase, metrics in self.heldout.items()
            for metric, found in metrics.items()
        }
        reward_kl = {f"reward_kl/{part}": found.text() for part, found in self._reward_kl_intervals().items()}
        return {**intervals, **self._final(CARD_METRICS), **reward_kl}

    @property
    def heldout(self) -> dict[str, dict[str, Any]]:
        """``{phase: {metric: interval dict}}``: the per-pair held-out numbers (empty for older records)."""
        return self.metrics.get("heldout", {})

    def pair_counts(self) -> tuple[int | None, int | None]:
        """(training pairs, held-out pairs) the run used (metrics.json's data splits; None where unknown)."""
        splits = self.metrics.get("data", {}).get("splits", {})
        train, held_out = (splits.get(name, {}).get("rows") for name in ("train", "eval"))
        return train, held_out

    @property
    def reward_kl(self) -> dict[str, Any]:
        """metrics.json's ``reward_kl``: ``{reward_name, samples_per_prompt, reward, kl, base_reward,
        reward_gain}`` (each an interval dict), empty when the run measured none."""
        return self.metrics.get("reward_kl") or {}

    def _reward_kl_intervals(self) -> dict[str, Interval]:
        """The reward / KL intervals the record holds, by part (none without a reward / KL evaluation)."""
        found = self.reward_kl
        return {p: Interval.from_dict(found[p]) for p in REWARD_KL_PARTS if isinstance(found.get(p), dict)}

    def summary(self) -> dict[str, Any]:
        """The flat final metrics for the W&B summary (the same numbers as metrics.json)."""
        m = self.metrics
        speed = ("tokens_per_second", "mfu", "seconds_per_step", "time_to_first_step_s")
        intervals = {}
        for phase, metrics in self.heldout.items():
            for metric, found in metrics.items():
                for part in ("value", "low", "high", "n"):
                    suffix = "" if part == "value" else f"_{part}"
                    intervals[f"heldout/{phase}/{metric}{suffix}"] = found.get(part)
        for name in REWARD_KL_PARTS:
            found = self.reward_kl.get(name)
            for part in ("value", "low", "high", "n") if isinstance(found, dict) else ():
                intervals[f"reward_kl/{name}{'' if part == 'value' else f'_{part}'}"] = found.get(part)
        return {
            **self._final(None),
            **intervals,
            **{key: m.get(key) for key in speed},
            **{key: m[key] for key in ("peak_memory_mb", "train_runtime_s", "global_step", "status")},
        }

    def closing_table(self, run_dir: Path) -> str:
        """The CLI's closing table: held-out metrics before and after training, the per-pair ones with their
        95% interval and n (ties count half, so an untrained adapter shows chance, 0.5)."""
        m = self.metrics
        before, after = m["eval_before"], m["eval"]
        rows = [f"{'held-out metric':<28}{'before':<32}{'after':<32}"]
        shown = set()
        for metric, trl_name in INTERVAL_ROWS.items():
            cells = [self._interval_cell(phase, metric) for phase in ("before", "after")]
            if any(cells):
                label = f"{trl_name} (tie=½)" if metric == "reward_accuracy" else trl_name
                rows.append(f"{label:<28}{cells[0] or '-':<32}{cells[1] or '-':<32}")
                shown.add(trl_name)
        for key in SUMMARY_METRICS:
            if key not in shown:
                rows.append(
                    f"{key:<28}{_num(before.get(f'eval_{key}')):<32}{_num(after.get(f'eval_{key}')):<32}"
                )
        task = m.get("task", {})
        if "accuracy_after" in task:
            rows.append(
                f"{'task accuracy':<28}{_num(task['accuracy_before']):<32}{_num(task['accuracy_after']):<32}"
            )
        rows += self._reward_kl_rows()
        rows.append(
            f"steps {m['global_step']}, {m['train_runtime_s']:.1f} s training, "
            f"{m['tokens_per_second']:.0f} tokens/s, precision {m['precision']}"
        )
        if m.get("phases_s"):
            rows.append(phases_line(m["phases_s"]))
        rows.append(f"run folder: {run_dir}")
        return "\n".join(rows)

    def _reward_kl_rows(self) -> list[str]:
        """The reward / KL evaluation on held-out prompts: the reward of the base (before) and of the policy
        (after), the KL from 0 (the base is the reference) to the policy's, the paired gain."""
        found = self._reward_kl_intervals()
        if not {"reward", "kl"} <= found.keys():
            return []
        reward = f"reward ({self.reward_kl.get('reward_name') or '?'})"
        base = found["base_reward"].text() if "base_reward" in found else "-"
        rows = [f"{reward:<28}{base:<32}{found['reward'].text():<32}",
                f"{'KL(policy||ref)':<28}{'0':<32}{found['kl'].text():<32}"]  # fmt: skip
        if "reward_gain" in found:
            rows.append(f"{'reward gain (paired)':<28}{'-':<32}{found['reward_gain'].text():<32}")
        return rows

    def _interval_cell(self, phase: str, metric: str) -> str | None:
        found = self.heldout.get(phase, {}).get(metric)
        return Interval.from_dict(found).text() if found else None


def phases_line(phases: dict[str, float]) -> str:
    """``phases: set-up 3.1 s, held-out before 2.0 s, training 10.2 s, ...``: the seconds of each phase
    (metrics.json's ``phases_s``) in the order they ran; a phase this list does not know comes last."""
    order = {name: i for i, name in enumerate(PHASE_ORDER)}
    ranked = sorted(phases, key=lambda name: order.get(name, len(order)))  # stable: unknown keep their order
    return "phases: " + ", ".join(f"{name} {_duration(phases[name])}" for name in ranked)


def _duration(seconds: float) -> str:
    """``3.1 s`` under a minute, ``2 min 17 s`` from one minute up."""
    if seconds < 59.95:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def failure_record(err: BaseException) -> dict[str, str]:
    """``metrics.json`` of a run that did not complete: ``interrupted`` (Ctrl-C) or ``failed``, and why."""
    status = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
    return {"status": status, "error": f"{type(err).__name__}: {err}".strip()}


def record_failure(run_dir: Path, err: BaseException, tracker: Any) -> None:
    """Mark the run failed in metrics.json and W&B, keeping the error, and finish the W&B run."""
    record = failure_record(err)
    log.error("run %s: %s", record["status"], record["error"])
    try:
        if is_main_process():
            atomic_write_json(RunLayout(run_dir).metrics, record)
        tracker.summarize({"status": record["status"], "error": record["error"][:2000]})
        tracker.finish(exit_code=1)
    except OSError as write_err:  # a full disk or a read-only folder: the error above is the one to show
        log.error("could not record the failure in %s: %s", run_dir, write_err)


def record_failed_job(run_dir: Path, err: BaseException) -> None:
    """A sweep job that failed before training started: nothing recorded yet, so record it now."""
    path = RunLayout(run_dir).metrics
    if not path.exists() and is_main_process():
        try:
            atomic_write_json(path, failure_record(err))
        except OSError as write_err:
            log.error("could not record the failure in %s: %s", path, write_err)
