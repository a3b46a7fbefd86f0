"""The answer at the end of a sweep: ``dpo-lab report <sweep folder>``.

Reads the run folders alone (no network, no W&B API): each job's ``.hydra/overrides.yaml`` and
``config.yaml`` for its swept values, ``metrics.json`` for its status and final held-out metrics, and
``log_history.jsonl`` for its curves, ``heldout_pairs_after.jsonl`` for its per-pair held-out results (the
intervals: dpo_lab.stats, docs/sweeps.md "Reading a sweep"). Writes into the sweep folder:

- ``results.csv`` and ``results.md``: one row per job (swept values, final eval metrics, runtime, status,
  the error of a failed job, the objective's 95% interval over the held-out pairs and the paired difference
  to the top job), and the verdict: the best job where it is told apart from every other at 95%, else the
  jobs it ties with and how many held-out pairs (or seeds) would separate them;
- ``report.json``: the same for scripts: the objective, the verdict, every job's interval and difference,
  the seed groups;
- ``plots/<metric>_vs_<param>.png`` for each swept parameter (error bars: the 95% intervals), and
  ``plots/curves.png`` (train loss and the held-out metric against the step, every job);
- where the jobs measured reward and KL (eval.reward_kl): ``plots/reward_kl_frontier.png``, a "Reward–KL
  frontier" section of results.md and ``frontier`` in report.json (dpo_lab.sweep.frontier).

With a pruner (``prune=...``), results.md gets a "Pruning" section and report.json ``pruning``: the jobs
pruned and where, the training steps and time the sweep spent and saved, a pruned job whose last value lay
inside the best job's interval (it may have been misjudged), and, with ``--compare <the same sweep
unpruned>``, both sweeps' cost and whether the answer is the same (dpo_lab.sweep.results.pruning_summary).

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
from dpo_lab.stats import Interval
from dpo_lab.sweep.frontier import frontier_lines, reward_kl_frontier
from dpo_lab.sweep.objective import Comparison, Contender, Verdict
from dpo_lab.sweep.results import (
    Assessment,
    BestComparison,
    Job,
    PruningSummary,
    ReportError,
    SeedGroup,
    Sweep,
    enum_text,
    load_sweep,
    short_value,
)

log = logging.getLogger(__name__)

PLOTS_DIR = "plots"


def rows(sweep: Sweep) -> list[dict[str, Any]]:
    """One flat row per job: swept values, final held-out metrics, train loss, runtime, status, whether the
    verdict names it (or its setting) best, its objective's interval over the held-out pairs, its paired
    difference to the top job, the error."""
    metrics = [sweep.objective.metric, *[m for m in SUMMARY_METRICS if m != sweep.objective.metric]]
    assessment = sweep.assessment
    best_jobs = set(assessment.verdict.best.jobs) if assessment.verdict.best is not None else set()
    table = []
    for job in sweep.jobs:
        row: dict[str, Any] = {"job": job.name, "status": job.status}
        row.update({key: job.value(key) for key in sweep.swept})
        row.update({f"eval/{m}": job.eval_metric(m) for m in metrics})
        row["train/mean_loss"] = job.metrics.get("train", {}).get("train_loss")
        row["steps"] = job.metrics.get("global_step")
        row["pruned_at_step"] = job.pruned_at_step
        row["runtime_s"] = job.metrics.get("total_runtime_s")
        row["train_runtime_s"] = job.metrics.get("train_runtime_s")
        row["best"] = job.name in best_jobs
        interval = assessment.interval(job)
        row.update(_interval_cells("per_pair", interval))
        comparison = assessment.jobs.comparisons.get(job.name)
        difference = comparison.difference if comparison is not None else None
        row.update(_interval_cells("vs_top", difference))
        row["separated_from_top"] = comparison.separated if comparison is not None else None
        row["pairs_needed"] = comparison.pairs_needed if comparison is not None else None
        row["setting"] = assessment.setting_of.get(job.name)
        row["note"] = assessment.non_finite.get(job.name) or assessment.notes.get(job.name)
        row["wandb_run"] = _wandb_id(job.path)
        row["error"] = job.error
        row["path"] = str(job.path)
        table.append(row)
    return table


def _interval_cells(prefix: str, interval: Interval | None) -> dict[str, Any]:
    if interval is None:
        return {f"{prefix}/{k}": None for k in ("value", "low", "high", "n")}
    low = interval.low if interval.bounded else None
    high = interval.high if interval.bounded else None
    return {f"{prefix}/value": interval.value, f"{prefix}/low": low, f"{prefix}/high": high,
            f"{prefix}/n": interval.n}  # fmt: skip


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
    """results.md: the verdict first, then the table, the intervals, the seed groups, failures and plots."""
    metric, column = sweep.objective.metric, sweep.metric_column
    assessment = sweep.assessment
    failed = [j for j in sweep.jobs if j.status != "completed"]
    lines = [f"# Sweep {sweep.path.name}", ""]
    lines.append(f"{len(sweep.jobs)} jobs ({len(sweep.jobs) - len(failed)} completed, {len(failed)} not), "
                 f"swept: {', '.join(sweep.swept) or 'nothing'}. Objective: held-out `{metric}`, "
                 f"{sweep.objective.direction.value}d.")  # fmt: skip
    lines += ["", *verdict_lines(sweep, assessment)]
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
    lines += interval_lines(sweep, assessment)
    lines += seed_lines(sweep, assessment)
    lines += frontier_lines(sweep)
    lines += pruning_lines(sweep)
    if failed or assessment.non_finite:
        lines += ["", "## Jobs that did not complete", ""]
        lines += [f"- `{j.name}` ({sweep.label(j)}): {j.status}: {_cell(j.error)}" if j.pruned_at_step is None
                  else f"- `{j.name}` ({sweep.label(j)}): pruned at step {j.pruned_at_step} of "
                  f"{_cell(j.max_steps)}" for j in failed]  # fmt: skip
        for name, why in assessment.non_finite.items():
            label = sweep.label(sweep.job(name))
            lines.append(
                f"- `{name}` ({label}): completed, non-finite objective, treated as failed: {_cell(why)}"
            )
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{p.stem}]({p.relative_to(sweep.path).as_posix()})" for p in plots]
    return "\n".join(lines) + "\n"


def _pct(level: float) -> str:
    return f"{level:.0%}"


def _name(sweep: Sweep, contender: Contender, unit: str) -> str:
    """```1` (beta=0.1,r=16)`` for a job, ``beta=0.1 (jobs `0`, `2`)`` for a setting."""
    if unit == "setting":
        jobs = ", ".join(f"`{j}`" for j in contender.jobs)
        return f"{contender.name} (job{'s' if len(contender.jobs) > 1 else ''} {jobs})"
    return f"`{contender.name}` ({sweep.label(sweep.job(contender.name))})"


def _ranked(contender: Contender, unit: str) -> str:
    """The contender's value with its interval: over seeds for a setting, over pairs for a job."""
    if unit == "setting" and contender.seeds is not None:
        text = f"mean over seeds {contender.seeds.text()}"
        if contender.interval is not None:
            text += f"; per pair (seed-averaged) {contender.interval.text()}"
        return text
    if contender.interval is not None:
        return f"per pair {contender.interval.text()}"
    return f"{_cell(contender.value)} ({contender.note or 'no interval'})"


def _reported(job: Job, contender: Contender, metric: str) -> float:
    """The job's held-out metric as TRL reported it (the per-pair mean where it reported none)."""
    value = job.eval_metric(metric)
    return value if value is not None else contender.value


def _best_job_line(sweep: Sweep, job: Job, contender: Contender) -> str:
    value = _cell(_reported(job, contender, sweep.objective.metric))
    head = f"**Best job: `{job.name}` ({sweep.label(job)}), {sweep.metric_column} = {value}**"
    return f"{head}, run folder `{job.path}`"


def verdict_lines(sweep: Sweep, assessment: Assessment) -> list[str]:
    """The verdict in words: the best job (or setting), or which ones the top one ties with and what would
    separate them."""
    verdict, metric = assessment.verdict, sweep.objective.metric
    top, unit, pct = verdict.top, verdict.unit, _pct(verdict.level)
    if top is None:
        return ["**No completed job has a finite objective value: no best job.**"]
    ties = " (ties count half)" if metric == "rewards/accuracies" else ""
    if verdict.mode == "value":
        why = (top.note or "no per-pair records").capitalize()
        why += ": ranked by the held-out value alone, with no interval; the first job wins a tie."
        return [_best_job_line(sweep, sweep.job(top.name), top), "", why]
    if verdict.best is not None:
        if unit == "job":
            headline = _best_job_line(sweep, sweep.job(top.name), top)
        else:
            seeds = f"mean over {len(top.seed_values)} seed{'s' if len(top.seed_values) > 1 else ''}"
            headline = (
                f"**Best setting: {_name(sweep, top, unit)}, {sweep.metric_column} = {_cell(top.value)}"
            )
            headline += f" ({seeds})**"
        text = f"Held-out `{metric}`{ties}: {_ranked(top, unit)}."
        if verdict.comparisons:
            closest = min(verdict.comparisons.values(), key=lambda c: abs(_difference_value(c)))
            other = _name(sweep, verdict.contender(closest.name), unit)
            text += f" Separated at {pct} from every other {unit}; the closest, {other}: "
            text += f"{_difference_text(closest)}."
        else:
            text += " It is the only contender."
        return [headline, "", text]
    tied = verdict.tied_with_best
    others = f"{len(tied)} other {unit}{'s' if len(tied) > 1 else ''}"
    headline = f"**No best {unit} at {pct}: {_name(sweep, top, unit)} is top by held-out `{metric}`"
    headline += f" but cannot be told apart from {others}.**"
    lines = [headline, "", f"Top: {_ranked(top, unit)}{ties}. Cannot be told apart from it at {pct}:", ""]
    for name in tied:
        comparison = verdict.comparisons[name]
        reasons = "; ".join(comparison.reasons)
        lines.append(
            f"- {_name(sweep, verdict.contender(name), unit)}: {_difference_text(comparison)}: {reasons}"
        )
    return [*lines, "", _advice(verdict)]


def _difference_value(comparison: Comparison) -> float:
    difference = comparison.difference or comparison.seed_difference
    return difference.value if difference is not None else math.inf


def _difference_text(comparison: Comparison) -> str:
    """``difference -0.050 [-0.200, 0.100] over 40 shared pairs; over seeds ...``."""
    parts = []
    if comparison.difference is not None:
        parts.append(f"difference {_interval_only(comparison.difference)} over {comparison.difference.n} "
                     "shared pairs")  # fmt: skip
    if comparison.seed_difference is not None:
        parts.append(f"over seeds {_interval_only(comparison.seed_difference)}")
    return "; ".join(parts) or "no paired difference"


def _interval_only(interval: Interval) -> str:
    """``0.611 [0.470, 0.750]`` (Interval.text without the n)."""
    return interval.text().rsplit(", n=", 1)[0]


def _advice(verdict: Verdict) -> str:
    """What would separate the tied ones: held-out pairs (for the closest and the farthest), or seeds."""
    open_ = [c for c in verdict.comparisons.values() if not c.separated]
    needed = {c.name: c.pairs_needed for c in open_ if c.pairs_needed}
    seeds = [c.seeds_needed for c in open_ if c.seeds_needed]
    parts = []
    if needed:
        fewest, most = min(needed, key=needed.__getitem__), max(needed, key=needed.__getitem__)
        text = (
            f"about {needed[fewest]} held-out pairs (the sweep has {verdict.held_out_pairs}) for a difference"
        )
        text += f" the size of `{fewest}`'s" + (f", {needed[most]} for `{most}`'s" if most != fewest else "")
        parts.append(text)
    if seeds:
        parts.append(f"about {max(seeds)} seeds per setting to separate them over seeds")
    elif verdict.unit == "job":
        parts.append("more seeds (`seed=0,1,2`), to see whether a difference outlasts training randomness")
    if not parts:
        return "Nothing observed separates them: their results are the same on every shared pair."
    return f"What would separate them: {'; or '.join(parts)}."


def interval_lines(sweep: Sweep, assessment: Assessment) -> list[str]:
    """## How sure: each job's objective over the held-out pairs and its paired difference to the top."""
    verdict = assessment.jobs
    if verdict.mode != "intervals":
        return []
    pct, top = _pct(verdict.level), verdict.top
    lines = ["", f"## How sure: {pct} intervals over the held-out pairs", "",
             f"Each job's held-out `{sweep.objective.metric}` as the mean of its per-pair records "
             f"(`heldout_pairs_after.jsonl`) with a {pct} percentile bootstrap interval over the pairs, and "
             f"its paired difference to the top job `{top.name if top else '-'}` over the pairs both share "
             "(job minus top; separated: the interval excludes 0).", "",
             "| job | params | per pair | difference to top | separated | pairs needed |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for contender in sorted(verdict.contenders, key=lambda c: c is not top):
        comparison = verdict.comparisons.get(contender.name)
        per_pair = contender.interval.text() if contender.interval else contender.note or "no interval"
        difference, sep, needed = "(top)", "", ""
        if comparison is not None:
            difference = (
                comparison.difference.text() if comparison.difference else "; ".join(comparison.reasons)
            )
            sep = "yes" if comparison.separated else "no"
            needed = _cell(comparison.pairs_needed)
        cells = [f"`{contender.name}`", _cell(contender.label), per_pair, difference, sep, needed]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def seed_lines(sweep: Sweep, assessment: Assessment) -> list[str]:
    """## Seeds: each setting's mean over its seeds (t interval) beside its per-pair interval."""
    if not assessment.by_setting:
        return []
    verdict = assessment.verdict
    pct = _pct(verdict.level)
    lines = ["", "## Seeds: replication", "",
             f"`seed` is swept: jobs that differ only in it are one setting. Mean over the seeds with a "
             f"{pct} t interval (training randomness), beside the per-pair interval of the seed-averaged "
             "pairs (held-out sampling); the top setting is named best only if both differences to every "
             "other setting exclude 0.", "",
             "| setting | jobs | seeds | mean over seeds | per pair (seed-averaged) | vs top over seeds | "
             "vs top per pair |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for group in assessment.groups:
        name = assessment.setting_of[group.members[0]]
        contender = verdict.contender(name)
        seeds = ", ".join(_cell(s) for s in group.seeds)
        jobs = ", ".join(f"`{m}`" for m in group.members)
        if contender is None:
            lines.append(f"| {name} | {jobs} | {seeds} | no completed seed | | | |")
            continue
        comparison = verdict.comparisons.get(name)
        over_seeds = contender.seeds.text() if contender.seeds else "-"
        per_pair = contender.interval.text() if contender.interval else contender.note or "-"
        if comparison is None:
            vs_seeds = vs_pairs = "(top)"
        else:
            vs_seeds = comparison.seed_difference.text() if comparison.seed_difference else "-"
            vs_pairs = comparison.difference.text() if comparison.difference else "-"
        lines.append(f"| {name} | {jobs} | {seeds} | {over_seeds} | {per_pair} | {vs_seeds} | {vs_pairs} |")
    return lines


def _times(ratio: float | None, what: str) -> str:
    """`` (3.20x fewer)`` for a saving ``ratio`` (theirs over ours); `` (0.80x: 1.25x more)`` for a loss."""
    if ratio is None:
        return ""
    if ratio >= 1:
        return f" ({ratio:.2f}x {what})"
    more = "more" if what.startswith("fewer") else "longer"
    return f" ({ratio:.2f}x: {1 / ratio:.2f}x {more}{what.removeprefix('fewer').removeprefix('less')})"


def pruning_summary_line(pruning: PruningSummary) -> str:
    """The CLI's line: jobs pruned, steps spent (and saved), flagged jobs, the comparison's answer."""
    savings, compute = pruning.savings(), pruning.compute
    line = f"pruning: {len(pruning.pruned)} of {compute.jobs} jobs pruned, {compute.steps} training steps"
    if compute.full_steps is not None:
        line += f" of {compute.full_steps} at full length{_times(savings['steps_vs_full_length'], 'fewer')}"
    if pruning.reference is not None:
        line += f"; unpruned: {pruning.reference.steps} steps"
        line += _times(savings["steps_vs_unpruned"], "fewer here")
        line += f", {pruning.reference.train_s:.0f} s of training"
        line += _times(savings["train_time_vs_unpruned"], "less here")
        if pruning.same_answer is not None:
            line += f"; best: {pruning.same_answer.verdict}"
    if pruning.flagged:
        line += f"; may have misjudged: jobs {', '.join(j.name for j in pruning.flagged)}"
    return line


def pruning_lines(sweep: Sweep) -> list[str]:
    """## Pruning: what the pruner stopped and where, the compute spent and saved, the jobs it may have
    misjudged, and (``--compare``) the same sweep unpruned."""
    pruning = sweep.pruning
    if pruning is None:
        return []
    compute, savings = pruning.compute, pruning.savings()
    pct = _pct(pruning.best_interval.level) if pruning.best_interval is not None else _pct(0.95)
    lines = ["", "## Pruning", ""]
    names = ", ".join(f"`{p}`" for p in pruning.pruners) or "none"
    done = sum(1 for j in sweep.jobs if j.status == "completed")
    lines.append(f"Pruner: {names}. {len(pruning.pruned)} of {len(sweep.jobs)} jobs pruned, {done} trained "
                 "to their last step.")  # fmt: skip
    spent = f"Compute: {compute.steps} training steps over {compute.jobs} jobs"
    if compute.full_steps is not None:
        spent += f", of {compute.full_steps} had every job trained to its last step"
        spent += _times(savings["steps_vs_full_length"], "fewer")
    spent += f"; {compute.train_s:.1f} s of training"
    packs = f"{compute.packs} pack{'s' if compute.packs != 1 else ''}"
    spent += f" ({packs} counted once each)." if compute.packs else "."
    lines += ["", spent]
    if pruning.reference is not None:
        ref = pruning.reference
        text = (f"Against the same sweep unpruned (`{pruning.reference_path}`): {ref.steps} training steps"
                f"{_times(savings['steps_vs_unpruned'], 'fewer here')}, {ref.train_s:.1f} s of training"
                f"{_times(savings['train_time_vs_unpruned'], 'less here')}.")  # fmt: skip
        lines += ["", text]
        if pruning.same_answer is not None:
            lines += ["", _same_answer_text(sweep, pruning.same_answer)]
    if pruning.pruned:
        best = f"`{pruning.best}`" if pruning.best else "-"
        interval = pruning.best_interval.text() if pruning.best_interval is not None else "no interval"
        lines += ["", f"Each pruned job's last held-out `{sweep.objective.metric}` against the {pct} "
                  f"interval of the eventual best job {best}, {interval} (the per-pair mean at the step it "
                  "stopped, on the interval's scale; the value it was judged by in brackets):", "",
                  "| job | params | pruned at step | of | last value (judged by) | inside the best's "
                  "interval |", "|---|---|---|---|---|---|"]  # fmt: skip
        for job in pruning.pruned:
            inside = {True: "**yes**", False: "no", None: "-"}[job.within_best]
            cells = [f"`{job.name}`", job.label, str(job.step), _cell(job.max_steps),
                     f"{_cell(job.value)} ({_cell(job.reported)})", inside]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    if pruning.flagged:
        named = ", ".join(f"`{j.name}`" for j in pruning.flagged)
        lines += ["", f"**Pruning may have misjudged {named}**: the last value lies inside the best job's "
                  f"{pct} interval, so when it stopped it could not be told apart from the job that won. "
                  "Early held-out values are noisy (docs/pruning.md, \"When pruning misleads\"): rerun it "
                  "unpruned, or raise `prune.min_steps` / `prune.min_resource`, before trusting the "
                  "ranking."]  # fmt: skip
    return lines


def _same_answer_text(sweep: Sweep, same: BestComparison) -> str:
    top = f"`{same.job}`" if same.job is not None else "none"
    theirs = f"`{same.reference_job}`" if same.reference_job is not None else "none"
    params = ",".join(f"{k.rsplit('.', 1)[-1]}={short_value(v)}" for k, v in same.reference_params.items())
    if same.verdict == "same job":
        return f"Same answer: the top job here, {top}, has the unpruned sweep's top job's values ({params})."
    difference = f" (difference {same.difference.text()}, here minus unpruned)" if same.difference else ""
    if same.verdict == "cannot be told apart":
        return (f"Same answer at {_pct(same.difference.level)}: the top job here, {top}, cannot be told "
                f"apart from the unpruned sweep's top job {theirs} ({params}) on their shared held-out pairs"
                f"{difference}.")  # fmt: skip
    if same.verdict in ("worse", "better"):
        return (f"**Another answer**: the top job here, {top}, is {same.verdict} than the unpruned sweep's "
                f"top job {theirs} ({params}) on their shared held-out pairs{difference}.")  # fmt: skip
    return f"The answers cannot be compared: {same.verdict}."


@dataclass
class Report:
    """What write_report wrote. ``best``: the job the verdict names best (None when the top job ties with
    others at 95%, when seeds are swept and a setting is judged instead, or when nothing completed);
    ``top``: the top-ranked job, tie or not; ``verdict``: the whole verdict (sweep.assessment.verdict)."""

    sweep: Sweep
    table: list[dict[str, Any]]
    files: list[Path]
    best: Job | None
    top: Job | None = None
    verdict: Verdict | None = None

    def summary(self) -> str:
        """The CLI's closing lines."""
        sweep, column, metric = self.sweep, self.sweep.metric_column, self.sweep.objective.metric
        verdict = sweep.assessment.verdict
        completed = sum(1 for j in sweep.jobs if j.status == "completed")
        lines = [f"sweep {sweep.path}: {len(sweep.jobs)} jobs, {completed} completed"]
        top = verdict.top
        if top is None:
            lines.append(f"no completed job with a finite {column}")
        elif verdict.unit == "setting":
            named = (
                "best setting"
                if verdict.best is not None
                else f"no best setting at {_pct(verdict.level)}: top"
            )
            line = f"{named} {top.name} (jobs {', '.join(top.jobs)}): {column} {_ranked(top, 'setting')}"
            if verdict.best is None:
                line += f"; cannot be told apart from {', '.join(verdict.tied_with_best)}"
            lines.append(line)
        else:
            job = sweep.job(top.name)
            value = f"{column} = {_reported(job, top, metric):.4f}"
            if top.interval is not None:
                value += f" (per pair {top.interval.text()})"
            if verdict.best is not None:
                lines.append(f"best job {job.name} ({sweep.label(job)}): {value}")
            else:
                tied = ", ".join(verdict.tied_with_best)
                head = f"no best job at {_pct(verdict.level)}: top job {job.name} ({sweep.label(job)})"
                lines.append(f"{head}: {value}; cannot be told apart from jobs {tied}")
        if sweep.pruning is not None:
            lines.append(pruning_summary_line(sweep.pruning))
        lines.append(f"report: {sweep.path / 'results.md'}")
        return "\n".join(lines)


def summary_json(sweep: Sweep) -> dict[str, Any]:
    """report.json: the objective, the verdict, every job's interval and difference, the seed groups."""
    assessment = sweep.assessment
    verdict, jobs = assessment.verdict, assessment.jobs
    best = sweep.job(verdict.best.name) if verdict.best is not None and verdict.unit == "job" else None
    top = sweep.job(jobs.top.name) if jobs.top is not None else None
    return {
        "objective": {"metric": sweep.objective.metric, "direction": sweep.objective.direction.value},
        "swept": sweep.swept,
        "jobs": len(sweep.jobs),
        "completed": sum(1 for j in sweep.jobs if j.status == "completed"),
        "best": _job_headline(sweep, best),
        "top": _job_headline(sweep, top),
        "verdict": {**verdict.to_dict(), "text": " ".join(verdict_lines(sweep, assessment)[:1]).strip("*")},
        "per_job": {job.name: _job_json(sweep, job) for job in sweep.jobs},
        "seed_groups": [_seed_group_json(sweep, group) for group in assessment.groups],
        **({"pruning": sweep.pruning.to_dict()} if sweep.pruning is not None else {}),
        **({"frontier": frontier.to_dict()} if (frontier := reward_kl_frontier(sweep)) is not None else {}),
    }


def _job_headline(sweep: Sweep, job: Job | None) -> dict[str, Any] | None:
    """report.json's ``best`` / ``top``: the job, its reported value, swept values and interval."""
    if job is None:
        return None
    contender = sweep.assessment.jobs.contender(job.name)
    interval = contender.interval.to_dict() if contender and contender.interval else None
    return {"job": job.name, "path": str(job.path), "value": job.eval_metric(sweep.objective.metric),
            "params": {k: job.value(k) for k in sweep.swept}, "interval": interval}  # fmt: skip


def _job_json(sweep: Sweep, job: Job) -> dict[str, Any]:
    """report.json's ``per_job`` entry of one job: its value, interval and difference to the top job."""
    assessment = sweep.assessment
    jobs = assessment.jobs
    contender = jobs.contender(job.name)
    comparison = jobs.comparisons.get(job.name)
    entry: dict[str, Any] = {
        "status": job.status,
        "params": {k: job.value(k) for k in sweep.swept},
        "reported": job.eval_metric(sweep.objective.metric),
        "value": contender.value if contender is not None else None,
        "interval": contender.interval.to_dict() if contender and contender.interval else None,
        "top": contender is not None and contender is jobs.top,
        "setting": assessment.setting_of.get(job.name),
        "non_finite": assessment.non_finite.get(job.name),
        "note": assessment.notes.get(job.name),
        "pruned_at_step": job.pruned_at_step,
    }
    entry.update(comparison.to_dict() if comparison is not None else {
        "difference_to_top": None, "seed_difference_to_top": None, "separated_from_top": None,
        "pairs_needed": None, "seeds_needed": None, "why": None})  # fmt: skip
    return entry


def _seed_group_json(sweep: Sweep, group: SeedGroup) -> dict[str, Any]:
    """report.json's ``seed_groups`` entry: the jobs of one setting over seeds, and how it compares."""
    assessment = sweep.assessment
    verdict = assessment.verdict
    name = assessment.setting_of[group.members[0]]
    contender = verdict.contender(name)
    comparison = verdict.comparisons.get(name)
    return {
        "setting": name, "params": dict(group.settings), "jobs": list(group.members),
        "seeds": list(group.seeds),
        "contending_jobs": list(contender.jobs) if contender else [],
        "mean_over_seeds": contender.seeds.to_dict() if contender and contender.seeds else None,
        "per_pair": contender.interval.to_dict() if contender and contender.interval else None,
        **(comparison.to_dict() if comparison is not None else {"top": contender is verdict.top}),
    }  # fmt: skip


def write_report(
    sweep_dir: Path | str,
    metric: str | None = None,
    direction: str | None = None,
    compare: Path | str | None = None,
) -> Report:
    """Tables, plots and report.json for a sweep folder; returns what it wrote. ``compare``: the same sweep
    run unpruned, for the pruning section (its cost, and whether its best is this sweep's)."""
    try:
        from dpo_lab.sweep.plots import plot_curves, plot_metric_vs_params, plot_reward_kl_frontier
    except ImportError as err:  # matplotlib is in the `report` extra
        raise ReportError(f"the sweep plots need matplotlib ({err}): pip install 'dpo_lab[report]'") from None

    sweep = load_sweep(sweep_dir, metric, direction)
    if compare is not None:
        sweep.reference = load_sweep(compare, sweep.objective.metric, sweep.objective.direction.value)
    table = rows(sweep)
    plots_dir = sweep.path / PLOTS_DIR
    plots_dir.mkdir(exist_ok=True)
    plots = [*plot_metric_vs_params(sweep, plots_dir), plot_curves(sweep, plots_dir)]
    frontier_plot = plot_reward_kl_frontier(sweep, plots_dir)
    if frontier_plot is not None:
        plots.append(frontier_plot)
    csv_path, md_path, json_path = (sweep.path / n for n in ("results.csv", "results.md", "report.json"))
    write_csv(table, csv_path)
    md_path.write_text(markdown(sweep, table, plots))
    json_path.write_text(json.dumps(summary_json(sweep), indent=2, default=str))
    verdict = sweep.assessment.verdict
    best = sweep.job(verdict.best.name) if verdict.best is not None and verdict.unit == "job" else None
    top_job = sweep.assessment.jobs.top
    top = sweep.job(top_job.name) if top_job is not None else None
    return Report(sweep, table, [csv_path, md_path, json_path, *plots], best, top, verdict)


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
    parser.add_argument("--compare", type=Path, metavar="UNPRUNED_SWEEP",
                        help="the same sweep run without a pruner: the pruning section compares the training "
                             "steps and time, and whether its best job is this sweep's")  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        report = write_report(args.sweep_dir, args.metric, args.direction, args.compare)
    except ReportError as err:
        print(f"dpo_lab: {err}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
