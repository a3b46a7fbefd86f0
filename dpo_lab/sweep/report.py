"""The answer at the end of a sweep: ``dpo-lab report <sweep folder>``.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from dpo_lab.config.choices import Direction
from dpo_lab.config.schemas import OBJECTIVE_METRICS, SUMMARY_METRICS
from dpo_lab.runs.layout import RunLayout
from dpo_lab.sweep.results import Job, ReportError, Sweep, enum_text, load_sweep

log = logging.getLogger(__name__)

PLOTS_DIR = "plots"


def rows(sweep: Sweep) -> list[dict[str, Any]]:
    """One flat row per job: swept values, final held-out metrics, train loss, runtime, status, error."""
    metrics = [sweep.objective.metric, *[m for m in SUMMARY_METRICS if m != sweep.objective.metric]]
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
    file = RunLayout(path).wandb_run
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
    shown = ["job", "status", *sweep.swept, column, *[f"eval/{m}" for m in SUMMARY_METRICS if m != metric],
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
        from dpo_lab.sweep.plots import plot_curves, plot_metric_vs_params
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
                direction=enum_text(objective.direction) if objective is not None else None,
            )
        except Exception:
            log.exception("the sweep report failed; the run folders are intact: dpo-lab report %s", sweep_dir)
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
    parser = argparse.ArgumentParser(prog="dpo-lab report", description=__doc__.splitlines()[0])
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
        print(f"dpo_lab.sweep.report: {err}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
