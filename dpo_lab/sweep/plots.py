"""PNG plots of a sweep: the objective metric against each swept parameter, and every job's curves.

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
from dpo_lab.sweep.results import short_value

if TYPE_CHECKING:
    from dpo_lab.sweep.results import Job, Sweep

FAILED_STYLE = {"marker": "x", "color": "tab:red", "s": 60, "linewidths": 2}
BEST_STYLE = {"marker": "*", "s": 260, "facecolor": "gold", "edgecolor": "black", "zorder": 5}
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
    """One PNG per swept parameter: the held-out objective of each completed job against its value,
    one line per combination of the other swept values, the best job starred, failed jobs as red crosses."""
    return [_plot_one_param(sweep, key, out_dir) for key in sweep.swept]


def _plot_one_param(sweep: Sweep, key: str, out_dir: Path) -> Path:
    metric = sweep.objective.metric
    scored = [j for j in sweep.jobs if j.status == "completed" and _finite(j.eval_metric(metric))]
    failed = [j for j in sweep.jobs if j not in scored]
    categorical = _positions([j.value(key) for j in sweep.jobs])

    def x_of(job: Job) -> float:
        value = job.value(key)
        return categorical[0][short_value(value)] if categorical else float(value)

    fig = Figure(figsize=(6.4, 4.2), dpi=120)
    ax = fig.add_subplot()
    others = [k for k in sweep.swept if k != key]
    groups: dict[str, list[Job]] = {}
    for job in scored:
        label = ",".join(f"{k.rsplit('.', 1)[-1]}={short_value(job.value(k))}" for k in others)
        groups.setdefault(label, []).append(job)
    as_lines = len(groups) <= MAX_LINES and any(len(g) > 1 for g in groups.values())
    for label, jobs in groups.items():
        jobs = sorted(jobs, key=x_of)
        xs, ys = [x_of(j) for j in jobs], [j.eval_metric(metric) for j in jobs]
        if as_lines:
            ax.plot(xs, ys, marker="o", label=label or None)
        else:
            ax.scatter(xs, ys, color="tab:blue")
    best = sweep.best()
    if best is not None:
        ax.scatter([x_of(best)], [best.eval_metric(metric)], label=f"best (job {best.name})", **BEST_STYLE)
    if failed:
        xs = [x_of(j) for j in failed if j.value(key) is not None]
        ax.scatter(xs, [0.03] * len(xs), transform=ax.get_xaxis_transform(), label=f"failed ({len(failed)})",
                   **FAILED_STYLE)  # fmt: skip
    _x_axis(ax, key, [j.value(key) for j in sweep.jobs], categorical)
    direction = "higher" if sweep.objective.direction.value == "maximize" else "lower"
    ax.set_ylabel(f"held-out {metric} ({direction} is better)")
    ax.set_title(f"held-out {metric} vs {key}")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        title = ",".join(k.rsplit(".", 1)[-1] for k in others) if as_lines and others else None
        ax.legend(fontsize="small", title=title, title_fontsize="small")
    fig.tight_layout()
    path = out_dir / f"{slug(metric)}_vs_{slug(key)}.png"
    fig.savefig(path)
    return path


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
    best = sweep.best()
    handles = []
    for job, color in zip(sweep.jobs, colors, strict=True):
        label = f"{job.name}: {sweep.label(job)}" + ("" if job.status == "completed" else f" ({job.status})")
        width = 2.8 if best is not None and job.name == best.name else 1.4
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
