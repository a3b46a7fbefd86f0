"""A finished sweep read back from its run folders: the jobs, their swept values, status, metrics and
curves, and the objective that ranks them (no network, no W&B API)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from dpo_lab.config.choices import Direction
from dpo_lab.config.schemas import OBJECTIVE_METRICS, ObjectiveSettings
from dpo_lab.runs.history import read_history
from dpo_lab.runs.layout import RunLayout
from dpo_lab.runs.naming import format_value
from dpo_lab.sweep.objective import better


class ReportError(ValueError):
    """A folder that is not a sweep, or a metric the jobs did not report."""


@dataclass
class Job:
    """One run folder of a sweep."""

    name: str
    path: Path
    status: str  # completed | failed | interrupted | missing (no metrics.json: killed, or still running)
    overrides: dict[str, Any]
    config: DictConfig | None
    metrics: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def error(self) -> str | None:
        return self.metrics.get("error")

    def eval_metric(self, metric: str) -> float | None:
        """A final held-out metric (``loss``, ``rewards/accuracies``...), None when there is none."""
        value = self.metrics.get("eval", {}).get(f"eval_{metric}")
        return float(value) if isinstance(value, (int, float)) else None

    def value(self, key: str) -> Any:
        """The job's value of a swept key: from its resolved config, else from its command-line override."""
        if self.config is not None:  # a group choice (dpo=ipo) selects a node: its override names it
            found = OmegaConf.select(self.config, key, default=None, throw_on_resolution_failure=False)
            if found is not None and not OmegaConf.is_config(found):
                return found
        return self.overrides.get(key)


@dataclass
class Sweep:
    path: Path
    jobs: list[Job]
    swept: list[str]
    objective: ObjectiveSettings

    @property
    def metric_column(self) -> str:
        return f"eval/{self.objective.metric}"

    def best(self) -> Job | None:
        """The completed job with the best finite objective metric (the first one on ties)."""
        best: Job | None = None
        for job in self.jobs:
            value = job.eval_metric(self.objective.metric)
            if job.status != "completed" or value is None or not math.isfinite(value):
                continue
            incumbent = best.eval_metric(self.objective.metric) if best is not None else None
            if incumbent is None or better(value, incumbent, self.objective.direction):
                best = job  # strictly better only: the first job wins a tie
        return best

    def label(self, job: Job) -> str:
        """``beta=0.05,r=8`` from a job's swept values (the job number alone when nothing varies)."""
        parts = [f"{key.rsplit('.', 1)[-1]}={short_value(job.value(key))}" for key in self.swept]
        return ",".join(parts) or f"job {job.name}"


def short_value(value: Any) -> str:
    """A value for labels and axis ticks: floats to 3 significant digits (2.94e-06), else format_value."""
    if isinstance(value, float):
        return f"{value:.3g}"
    return format_value(value)


def parse_overrides(lines: Sequence[str]) -> dict[str, Any]:
    """``{key: value}`` of a job's command-line overrides (hydra.* left out)."""
    try:
        parsed = OverridesParser.create().parse_overrides(list(lines))
    except HydraException as err:
        raise ReportError(f"unreadable overrides {list(lines)}: {err}") from None
    return {o.key_or_group: o.value() for o in parsed if not o.key_or_group.startswith("hydra")}


def job_folders(sweep_dir: Path) -> list[Path]:
    """The run folders of a sweep: its sub-folders that Hydra or dpo_lab wrote a job into."""
    found = [
        p
        for p in sweep_dir.iterdir()
        if p.is_dir() and ((p / ".hydra").is_dir() or RunLayout(p).metrics.is_file())
    ]
    return sorted(found, key=lambda p: (0, int(p.name), "") if p.name.isdigit() else (1, 0, p.name))


def load_job(path: Path) -> Job:
    overrides_file = path / ".hydra" / "overrides.yaml"
    overrides = parse_overrides(OmegaConf.load(overrides_file)) if overrides_file.is_file() else {}
    config = None
    for candidate in (RunLayout(path).config, path / ".hydra" / "config.yaml"):  # resolved one first
        if candidate.is_file():
            config = OmegaConf.load(candidate)
            break
    metrics_file = RunLayout(path).metrics
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    status = metrics.get("status", "missing")
    return Job(path.name, path, status, overrides, config, metrics, read_history(path))


def swept_keys(jobs: Sequence[Job]) -> list[str]:
    """Override keys whose value differs between jobs, in command-line order (all of them for one job)."""
    keys: list[str] = []
    for job in jobs:
        keys += [k for k in job.overrides if k not in keys]
    if len(jobs) < 2:
        return keys
    return [k for k in keys if len({repr(job.overrides.get(k)) for job in jobs}) > 1]


def load_sweep(sweep_dir: Path | str, metric: str | None = None, direction: str | None = None) -> Sweep:
    """Every job of a sweep folder; the objective from the arguments, else from the jobs' configs."""
    path = Path(sweep_dir)
    if not path.is_dir():
        raise ReportError(f"{path}: no such sweep folder")
    jobs = [load_job(p) for p in job_folders(path)]
    if not jobs:
        raise ReportError(f"{path}: no run folders in it (expected <sweep>/<job number>/ with metrics.json)")
    objective = _objective(jobs, metric, direction)
    return Sweep(path, jobs, swept_keys(jobs), objective)


def _objective(jobs: Sequence[Job], metric: str | None, direction: str | None) -> ObjectiveSettings:
    configured = [OmegaConf.select(j.config, "objective", default=None) for j in jobs if j.config is not None]
    first = configured[0] if configured else None
    metric = metric or (first.metric if first is not None else ObjectiveSettings.metric)
    if direction is None:
        direction = enum_text(first.direction) if first is not None and first.metric == metric else None
        direction = direction or (Direction.minimize.value if metric == "loss" else Direction.maximize.value)
    if metric not in OBJECTIVE_METRICS:
        raise ReportError(
            f"--metric: unknown held-out metric {metric!r}; allowed: {', '.join(OBJECTIVE_METRICS)}"
        )
    if direction not in Direction.__members__:
        raise ReportError(f"--direction: must be maximize or minimize, got {direction!r}")
    return ObjectiveSettings(metric=metric, direction=Direction(direction))


def enum_text(value: Any) -> str:
    """An enum's value, or the text itself (configs hold Direction members or plain strings)."""
    return str(getattr(value, "value", value))
