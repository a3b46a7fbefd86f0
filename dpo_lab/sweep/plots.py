"""PNG plots of a sweep: the objective metric against each swept parameter (error bars: each job's 95%
interval over the held-out pairs, or a setting's over its seeds), every job's curves, and the reward–KL
frontier where the jobs measured one (eval.reward_kl).

matplotlib's object API (Figure + savefig), never pyplot: no global figure state, no GUI backend.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from dpo_lab.runs.history import series
from dpo_lab.sweep.frontier import reward_kl_frontier
from dpo_lab.sweep.results import SEED_KEY, short_value

if TYPE_CHECKING:
    from dpo_lab.stats import Interval
    from dpo_lab.sweep.results import Job, Sweep

FAILED_STYLE = {"marker": "x", "color": "tab:red", "s": 60, "linewidths": 2}
BEST_STYLE = {"marker": "*", "s": 260, "facecolor": "gold", "edgecolor": "black", "zorder": 5}
# the top one where the verdict names no best (it ties with others at 95%): a hollow star
TOP_STYLE = {"marker": "*", "s": 260, "facecolor": "none", "edgecolor": "black", "zorder": 5}
SEED_STYLE = {"color": "grey", "alpha": 0.5, "s": 14, "zorder": 2}
MAX_LINES = 8  # more groups than this: plain scatter instead of one line per group


def slug(text: str) -> str:
    """A file-name-safe form of a metric or key: rewards/accuracies -> rewards_accuracies."""
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", text).strip("_")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positions(values: list[Any]) -> tuple[dict[str, float], list[str]] | None:
    """Categorical axis positions for non-numeric values (None when every value is a number)."""
    if all(_is_number(v) for v in values):
        return None
    labels = []
    for v in values:
        if short_value(v) not in labels:
            labels.append(short_value(v))
    return {label: float(i) for i, label in enumerate(labels)}, labels


def plot_metric_vs_params(sweep: Sweep, out_dir: Path) -> list[Path]:
    """One PNG per swept parameter: the held-out objective of each completed job against its value with its
    95% interval as an error bar, one line per combination of the other swept values, the best job starred
    (a hollow star: the top one, tied with others at 95%), failed jobs as red crosses. With the seed swept,
    each setting is one point (the mean over its seeds, its interval over seeds), its seeds grey dots."""
    return [_plot_one_param(sweep, key, out_dir) for key in sweep.swept]


def _points(sweep: Sweep, key: str) -> list[tuple[list[Job], float, Interval | None]]:
    """(jobs, value, interval) to plot against ``key``: one per contending job, or per setting when seeds
    are swept (and ``key`` is not the seed)."""
    assessment = sweep.assessment
    if assessment.by_setting and key != SEED_KEY:
        return [([sweep.job(j) for j in c.jobs], c.value, c.seeds) for c in assessment.verdict.contenders]
    return [([sweep.job(c.name)], c.value, c.interval) for c in assessment.jobs.contenders]


def _plot_one_param(sweep: Sweep, key: str, out_dir: Path) -> Path:
    metric = sweep.objective.metric
    assessment = sweep.assessment
    points = _points(sweep, key)
    scored = {job.name for jobs, _, _ in points for job in jobs}
    failed = [j for j in sweep.jobs if j.name not in scored]
    categorical = _positions([j.value(key) for j in sweep.jobs])
    by_setting = assessment.by_setting and key != SEED_KEY

    def x_of(job: Job) -> float:
        value = job.value(key)
        return categorical[0][short_value(value)] if categorical else float(value)

    fig = Figure(figsize=(6.4, 4.2), dpi=120)
    ax = fig.add_subplot()
    others = [k for k in sweep.swept if k != key and not (by_setting and k == SEED_KEY)]
    groups: dict[str, list[tuple[float, float, Interval | None]]] = {}
    for jobs, value, interval in points:
        label = ",".join(f"{k.rsplit('.', 1)[-1]}={short_value(jobs[0].value(k))}" for k in others)
        groups.setdefault(label, []).append((x_of(jobs[0]), value, interval))
        if by_setting and len(jobs) > 1:
            contender = assessment.jobs
            seeds = [
                (x_of(j), contender.contender(j.name).value) for j in jobs if contender.contender(j.name)
            ]
            ax.scatter([x for x, _ in seeds], [y for _, y in seeds], **SEED_STYLE)
    as_lines = len(groups) <= MAX_LINES and any(len(g) > 1 for g in groups.values())
    bars = False
    for label, group in groups.items():
        group = sorted(group, key=lambda p: p[0])
        xs, ys = [p[0] for p in group], [p[1] for p in group]
        yerr = _error_bars(group)
        bars = bars or yerr is not None
        style = {"marker": "o", "capsize": 3, "label": label or None} if as_lines else {
            "marker": "o", "linestyle": "none", "color": "tab:blue", "capsize": 3}  # fmt: skip
        ax.errorbar(xs, ys, yerr=yerr, **style)
    _mark_top(ax, sweep, points, x_of)
    if failed:
        xs = [x_of(j) for j in failed if j.value(key) is not None]
        ax.scatter(xs, [0.03] * len(xs), transform=ax.get_xaxis_transform(), label=f"failed ({len(failed)})",
                   **FAILED_STYLE)  # fmt: skip
    _x_axis(ax, key, [j.value(key) for j in sweep.jobs], categorical)
    direction = "higher" if sweep.objective.direction.value == "maximize" else "lower"
    ax.set_ylabel(f"held-out {metric} ({direction} is better)")
    level = f"{assessment.verdict.level:.0%}"
    what = "over seeds" if by_setting else "over held-out pairs"
    ax.set_title(f"held-out {metric} vs {key}" + (f"\nerror bars: {level} interval {what}" if bars else ""))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        title = ",".join(k.rsplit(".", 1)[-1] for k in others) if as_lines and others else None
        ax.legend(fontsize="small", title=title, title_fontsize="small")
    fig.tight_layout()
    path = out_dir / f"{slug(metric)}_vs_{slug(key)}.png"
    fig.savefig(path)
    return path


def _error_bars(group: list[tuple[float, float, Interval | None]]) -> list[list[float]] | None:
    """matplotlib's asymmetric yerr (distances below and above) from the intervals; a point without a
    bounded interval gets none (0, 0). None when no point has one."""
    if not any(i is not None and i.bounded for _, _, i in group):
        return None
    below = [max(0.0, y - i.low) if i is not None and i.bounded else 0.0 for _, y, i in group]
    above = [max(0.0, i.high - y) if i is not None and i.bounded else 0.0 for _, y, i in group]
    return [below, above]


def _mark_top(ax, sweep: Sweep, points: list[tuple[list[Job], float, Interval | None]], x_of) -> None:
    """A gold star on the best job (or setting); a hollow one on the top one when the verdict names none.
    A setting plotted seed by seed (against the seed itself) has each of its seeds starred."""
    verdict = sweep.assessment.verdict
    if verdict.top is None:
        return
    top_jobs = set(verdict.top.jobs)
    marked = [(jobs[0], value) for jobs, value, _ in points if {j.name for j in jobs} == top_jobs]
    marked = marked or [(jobs[0], value) for jobs, value, _ in points if jobs[0].name in top_jobs]
    if not marked:
        return
    xs, ys = [x_of(job) for job, _ in marked], [value for _, value in marked]
    name = f"job {verdict.top.name}" if verdict.unit == "job" else f"setting {verdict.top.name}"
    if verdict.best is not None:
        ax.scatter(xs, ys, label=f"best ({name})", **BEST_STYLE)
    else:
        tied = len(verdict.tied_with_best)
        ax.scatter(xs, ys, label=f"top ({name}), tied with {tied} at {verdict.level:.0%}", **TOP_STYLE)


def _x_axis(ax, key: str, values: list[Any], categorical) -> None:
    if categorical:
        positions, labels = categorical
        ax.set_xticks(list(positions.values()), labels)
        ax.set_xlim(-0.5, len(labels) - 0.5)
    else:
        numbers = sorted({float(v) for v in values if _is_number(v)})
        if numbers and numbers[0] > 0 and numbers[-1] / numbers[0] >= 10:
            ax.set_xscale("log")
        if 0 < len(numbers) <= 8:
            ax.set_xticks(numbers, [short_value(v) for v in sorted({v for v in values if _is_number(v)})])
            ax.minorticks_off()
        if len(numbers) == 1:
            ax.set_xlim(numbers[0] * 0.5, numbers[0] * 1.5)
    ax.set_xlabel(key)


def plot_curves(sweep: Sweep, out_dir: Path) -> Path:
    """Train loss (left) and the held-out objective (right) against the step, one line per job."""
    metric = sweep.objective.metric
    fig = Figure(figsize=(12, 4.6), dpi=110)
    train_ax, eval_ax = fig.subplots(1, 2)
    colors = _colors(len(sweep.jobs))
    top = sweep.assessment.verdict.top
    highlighted = set(top.jobs) if top is not None else set()
    handles = []
    for job, color in zip(sweep.jobs, colors, strict=True):
        label = f"{job.name}: {sweep.label(job)}" + ("" if job.status == "completed" else f" ({job.status})")
        width = 2.8 if job.name in highlighted else 1.4
        style = "-" if job.status == "completed" else ":"
        steps, losses = series(job.history, "loss")
        line = None
        if steps:
            (line,) = train_ax.plot(steps, losses, style, color=color, linewidth=width, label=label)
        steps, values = series(job.history, f"eval_{metric}")
        if steps:
            (line,) = eval_ax.plot(
                steps, values, style, marker="o", color=color, linewidth=width, label=label
            )
        if line is not None:
            handles.append(line)
    train_ax.set_title("training loss (per logged step)")
    train_ax.set_ylabel("train loss")
    eval_ax.set_title(f"held-out {metric} (evaluations)")
    eval_ax.set_ylabel(f"eval {metric}")
    for ax in (train_ax, eval_ax):
        ax.set_xlabel("optimizer step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if not ax.get_lines():
            ax.text(0.5, 0.5, "no per-step logs", ha="center", va="center", transform=ax.transAxes)
    if handles:
        ncol = min(4, len(handles))
        fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize="small", frameon=False)
        rows = math.ceil(len(handles) / ncol)
        fig.tight_layout(rect=(0, min(0.5, 0.06 * rows + 0.02), 1, 1))
    else:
        fig.tight_layout()
    path = out_dir / "curves.png"
    fig.savefig(path)
    return path


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def plot_reward_kl_frontier(sweep: Sweep, out_dir: Path) -> Path | None:
    """``reward_kl_frontier.png``: each job's mean reward against its KL(policy || reference) on held-out
    prompts (metrics.json ``reward_kl``), 95% intervals over prompts as horizontal and vertical error bars,
    each point labelled by its swept values and joined in order of KL, the base model at KL 0 (its reward
    interval from the first job: the jobs share the base). None when no job recorded a reward / KL point."""
    frontier = reward_kl_frontier(sweep)
    if frontier is None:
        return None
    points = sorted(frontier.points, key=lambda p: p.kl.value)
    xs, ys = [p.kl.value for p in points], [p.reward.value for p in points]
    fig = Figure(figsize=(6.4, 4.8), dpi=120)
    ax = fig.add_subplot()
    if len(points) > 1:
        ax.plot(xs, ys, "-", color="tab:blue", alpha=0.5, zorder=1)
    ax.errorbar(xs, ys, xerr=_error_bars([(y, x, p.kl) for x, y, p in zip(xs, ys, points, strict=True)]),
                yerr=_error_bars([(x, y, p.reward) for x, y, p in zip(xs, ys, points, strict=True)]),
                fmt="o", color="tab:blue", capsize=3, zorder=3, label="trained policies")  # fmt: skip
    for x, y, point in zip(xs, ys, points, strict=True):
        ax.annotate(point.label, (x, y), textcoords="offset points", xytext=(6, 6), fontsize="small")
    base = frontier.base
    shared = "the jobs share it" if frontier.base_shared else "the jobs' base rewards differ"
    label = f"base, KL 0 (from job {frontier.base_job}; {shared})"
    ax.errorbar([0.0], [base.value], yerr=_error_bars([(0.0, base.value, base)]), fmt="s", color="black",
                capsize=3, zorder=4, label=label)  # fmt: skip
    ax.axvline(0.0, color="grey", linewidth=0.8, alpha=0.5, zorder=0)
    ax.set_xlabel("KL(policy || reference), nats per completion (held-out prompts)")
    ax.set_ylabel(f"mean reward ({frontier.reward_name})")
    ax.set_title(f"reward–KL frontier\nerror bars: {base.level:.0%} intervals over held-out prompts")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    path = out_dir / "reward_kl_frontier.png"
    fig.savefig(path)
    return path
