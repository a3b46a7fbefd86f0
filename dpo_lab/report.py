"""The answer at the end of a sweep: ``python -m dpo_lab.report <sweep folder>``.

Reads the run folders alone (no network, no W&B API): each job's ``.hydra/overrides.yaml`` and
``config.yaml`` for its swept values, ``metrics.json`` for its status and final held-out metrics, and
``log_history.jsonl`` for its curves. Writes into the sweep folder:

- ``results.csv`` and ``results.md``: one row per job (swept values, final eval metrics, runtime, status,
  the error of a failed job), and the best job by the objective metric;
- ``report.json``: the best job and the objective, for scripts;
- ``plots/<metric>_vs_<param>.png`` for each swept parameter, and ``plots/curves.png`` (train loss and the
  held-out metric against the step, every job).

It also runs by itself at the end of every multirun (:class:`SweepReportCallback`, in conf/config.yaml).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from dpo_lab.config import OBJECTIVE_METRICS, Direction, ObjectiveConfig
from dpo_lab.history import read_history
from dpo_lab.naming import format_value
from dpo_lab.objective import better

log = logging.getLogger(__name__)

# Final held-out metrics shown for every job (the objective metric is added when it is another one).
EVAL_COLUMNS = ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected")
PLOTS_DIR = "plots"


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
    objective: ObjectiveConfig

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
        if p.is_dir() and ((p / ".hydra").is_dir() or (p / "metrics.json").is_file())
    ]
    return sorted(found, key=lambda p: (0, int(p.name), "") if p.name.isdigit() else (1, 0, p.name))


def load_job(path: Path) -> Job:
    overrides_file = path / ".hydra" / "overrides.yaml"
    overrides = parse_overrides(OmegaConf.load(overrides_file)) if overrides_file.is_file() else {}
    config = None
    for candidate in (path / "config.yaml", path / ".hydra" / "config.yaml"):  # resolved one first
        if candidate.is_file():
            config = OmegaConf.load(candidate)
            break
    metrics_file = path / "metrics.json"
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


def _objective(jobs: Sequence[Job], metric: str | None, direction: str | None) -> ObjectiveConfig:
    configured = [OmegaConf.select(j.config, "objective", default=None) for j in jobs if j.config is not None]
    first = configured[0] if configured else None
    metric = metric or (first.metric if first is not None else ObjectiveConfig.metric)
    if direction is None:
        direction = _text(first.direction) if first is not None and first.metric == metric else None
        direction = direction or (Direction.minimize.value if metric == "loss" else Direction.maximize.value)
    if metric not in OBJECTIVE_METRICS:
        raise ReportError(
            f"--metric: unknown held-out metric {metric!r}; allowed: {', '.join(OBJECTIVE_METRICS)}"
        )
    if direction not in Direction.__members__:
        raise ReportError(f"--direction: must be maximize or minimize, got {direction!r}")
    return ObjectiveConfig(metric=metric, direction=Direction(direction))


def _text(value: Any) -> str:
    """An enum's value, or the text itself (configs hold Direction members or plain strings)."""
    return str(getattr(value, "value", value))


def rows(sweep: Sweep) -> list[dict[str, Any]]:
    """One flat row per job: swept values, final held-out metrics, train loss, runtime, status, error."""
    metrics = [sweep.objective.metric, *[m for m in EVAL_COLUMNS if m != sweep.objective.metric]]
    best = sweep.best()
    table = []
    for job in sweep.jobs:
        row: dict[str, Any] = {"job": job.name, "status": job.status}
        row.update({key: job.value(key) for key in sweep.swept})
        row.update({f"eval/{m}": job.eval_metric(m) for m in metrics})
        row["train/mean_loss"] = job.metrics.get("train", {}).get("train_loss")
        row["steps"] = job.metrics.get("global_step")
        row["runtime_s"] = job.metrics.get("total_runtime_s")
        row["train_runtime_s"] = job.metrics.get("train_runtime_s")
        row["best"] = best is not None and job.name == best.name
        row["wandb_run"] = _wandb_id(job.path)
        row["error"] = job.error
        row["path"] = str(job.path)
        table.append(row)
    return table


def _wandb_id(path: Path) -> str | None:
    file = path / "wandb_run.json"
    return json.loads(file.read_text()).get("id") if file.is_file() else None


def write_csv(table: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(table[0]))
        writer.writeheader()
        for row in table:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown(sweep: Sweep, table: list[dict[str, Any]], plots: list[Path]) -> str:
    """results.md: the best job first, then the table, failures and plots."""
    best = sweep.best()
    metric, column = sweep.objective.metric, sweep.metric_column
    failed = [j for j in sweep.jobs if j.status != "completed"]
    lines = [f"# Sweep {sweep.path.name}", ""]
    lines.append(f"{len(sweep.jobs)} jobs ({len(sweep.jobs) - len(failed)} completed, {len(failed)} not), "
                 f"swept: {', '.join(sweep.swept) or 'nothing'}. Objective: held-out `{metric}`, "
                 f"{sweep.objective.direction.value}d.")  # fmt: skip
    lines.append("")
    if best is None:
        lines.append("**No completed job has a finite objective value: no best job.**")
    else:
        lines.append(f"**Best job: `{best.name}` ({sweep.label(best)}), {column} = "
                     f"{_cell(best.eval_metric(metric))}**, run folder `{best.path}`")  # fmt: skip
    optuna = sweep.path / "optimization_results.yaml"
    if optuna.is_file():
        result = OmegaConf.to_container(OmegaConf.load(optuna))
        lines += [
            "",
            f"Optuna's best trial: value {result.get('best_value')}, params {result.get('best_params')}",
        ]
    shown = ["job", "status", *sweep.swept, column, *[f"eval/{m}" for m in EVAL_COLUMNS if m != metric],
             "train/mean_loss", "runtime_s"]  # fmt: skip
    lines += ["", "| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    for row in table:
        cells = [_cell(row[c]) for c in shown]
        if row["best"]:
            cells[0] = f"**{cells[0]}** (best)"
        lines.append("| " + " | ".join(cells) + " |")
    if failed:
        lines += ["", "## Jobs that did not complete", ""]
        lines += [f"- `{j.name}` ({sweep.label(j)}): {j.status}: {_cell(j.error)}" for j in failed]
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{p.stem}]({p.relative_to(sweep.path).as_posix()})" for p in plots]
    return "\n".join(lines) + "\n"


@dataclass
class Report:
    sweep: Sweep
    table: list[dict[str, Any]]
    files: list[Path]
    best: Job | None

    def summary(self) -> str:
        """The CLI's closing lines."""
        column = self.sweep.metric_column
        completed = sum(1 for j in self.sweep.jobs if j.status == "completed")
        lines = [f"sweep {self.sweep.path}: {len(self.sweep.jobs)} jobs, {completed} completed"]
        if self.best is None:
            lines.append(f"no completed job with a finite {column}")
        else:
            value = self.best.eval_metric(self.sweep.objective.metric)
            lines.append(f"best job {self.best.name} ({self.sweep.label(self.best)}): {column} = {value:.4f}")
        lines.append(f"report: {self.sweep.path / 'results.md'}")
        return "\n".join(lines)


def write_report(sweep_dir: Path | str, metric: str | None = None, direction: str | None = None) -> Report:
    """Tables, plots and report.json for a sweep folder; returns what it wrote."""
    try:
        from dpo_lab.sweep_plots import plot_curves, plot_metric_vs_params
    except ImportError as err:  # matplotlib is in the `report` extra
        raise ReportError(f"the sweep plots need matplotlib ({err}): pip install 'dpo_lab[report]'") from None

    sweep = load_sweep(sweep_dir, metric, direction)
    table = rows(sweep)
    plots_dir = sweep.path / PLOTS_DIR
    plots_dir.mkdir(exist_ok=True)
    plots = [*plot_metric_vs_params(sweep, plots_dir), plot_curves(sweep, plots_dir)]
    csv_path, md_path, json_path = (sweep.path / n for n in ("results.csv", "results.md", "report.json"))
    write_csv(table, csv_path)
    md_path.write_text(markdown(sweep, table, plots))
    best = sweep.best()
    json_path.write_text(json.dumps({
        "objective": {"metric": sweep.objective.metric, "direction": sweep.objective.direction.value},
        "swept": sweep.swept,
        "jobs": len(sweep.jobs),
        "completed": sum(1 for j in sweep.jobs if j.status == "completed"),
        "best": None if best is None else {"job": best.name, "path": str(best.path),
                                           "value": best.eval_metric(sweep.objective.metric),
                                           "params": {k: best.value(k) for k in sweep.swept}},
    }, indent=2, default=str))  # fmt: skip
    return Report(sweep, table, [csv_path, md_path, json_path, *plots], best)


class SweepReportCallback(Callback):
    """Hydra callback: write the sweep report when a multirun ends (any sweeper, any launcher)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        objective = OmegaConf.select(config, "objective", default=None)
        try:
            report = write_report(
                sweep_dir,
                metric=objective.metric if objective is not None else None,
                direction=_text(objective.direction) if objective is not None else None,
            )
        except Exception:
            log.exception("the sweep report failed; the run folders are intact: python -m dpo_lab.report %s",
                          sweep_dir)  # fmt: skip
            raise
        print(report.summary())
        failure = no_job_completed(report)
        if failure is not None:
            print(f"dpo_lab: {failure}", file=sys.stderr)
            sys.exit(1)  # a script or CI must see that the sweep produced nothing


def no_job_completed(report: Report) -> str | None:
    """The one line for a sweep in which no job completed (None when one did); names the failed jobs."""
    jobs = report.sweep.jobs
    if any(j.status == "completed" for j in jobs):
        return None
    named = ", ".join(f"{j.name} ({j.status})" for j in jobs) or "none"
    return f"no job of the sweep completed (jobs: {named}); see {report.sweep.path / 'results.md'}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dpo_lab.report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="a multirun folder: <sweep>/<job number>/metrics.json")
    parser.add_argument("--metric", help=f"held-out metric to rank by; default: the jobs' objective.metric "
                                         f"(one of {', '.join(OBJECTIVE_METRICS)})")  # fmt: skip
    parser.add_argument(
        "--direction", choices=[d.value for d in Direction], help="default: the jobs' objective"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        report = write_report(args.sweep_dir, args.metric, args.direction)
    except ReportError as err:
        print(f"dpo_lab.report: {err}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
