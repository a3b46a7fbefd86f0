"""The reward–KL frontier of a sweep (the DPO paper's Figure 2): each trained policy's mean reward against
its KL(policy || reference) on held-out prompts, from the ``reward_kl`` record of each job's metrics.json
(``eval.reward_kl``, dpo_lab.evaluation.policy_eval), with the base model at KL 0, and the Spearman rank
correlations that say whether the swept value orders the KL, and the KL the reward.

Pure: reads the jobs' records, no plotting (``plots.plot_reward_kl_frontier`` draws it); ``report.py``
writes :func:`frontier_lines` into results.md and :meth:`Frontier.to_dict` into report.json.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dpo_lab.stats import Interval
from dpo_lab.sweep.results import SEED_KEY, Job, Sweep, short_value

PARTS = ("reward", "kl", "base_reward", "reward_gain")  # the intervals of a job's reward_kl record
EXACT_UP_TO = 8  # exact permutation p-value up to this many points (8! = 40,320 orderings), sampled above
PERMUTATIONS = 20_000


# ----------------------------------------------------------------------------------------------------------
# Spearman's rank correlation


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks; tied values share the mean of the ranks they span: ``[10, 20, 20, 30] -> [1, 2.5, 2.5,
    4]``."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    result = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in range(start, end + 1):
            result[order[k]] = (start + end) / 2 + 1
        start = end + 1
    return result


def _pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    if sxx == 0 or syy == 0:
        return None
    return max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))


def _check(x: Sequence[float], y: Sequence[float]) -> None:
    if len(x) != len(y):
        raise ValueError(f"spearman: {len(x)} x values but {len(y)} y values")
    if not all(math.isfinite(v) for v in (*x, *y)):
        raise ValueError("spearman: the values must be finite")


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation: the Pearson correlation of the ranks of ``x`` and of ``y`` (ties get
    their mean rank). None when it is undefined: fewer than 2 points, or every x (or every y) alike."""
    _check(x, y)
    if len(x) < 2:
        return None
    return _pearson(ranks(x), ranks(y))


def spearman_p(x: Sequence[float], y: Sequence[float], *, seed: int = 0) -> float | None:
    """Two-sided permutation p-value of :func:`spearman`: the share of orderings of y's ranks whose |rho| is
    at least the observed one; exact (every ordering) up to ``EXACT_UP_TO`` points, else ``PERMUTATIONS``
    seeded random orderings (the observed one counted in). None where rho is. With 4 points even rho = +-1
    gives p = 2/24 = 0.083: a small sweep shows a direction, not a proof."""
    observed = spearman(x, y)
    if observed is None:
        return None
    rx, ry = ranks(x), ranks(y)
    bar = abs(observed) - 1e-12
    if len(x) <= EXACT_UP_TO:
        found = [_pearson(rx, list(p)) for p in itertools.permutations(ry)]
        return sum(1 for r in found if r is not None and abs(r) >= bar) / len(found)
    rng = np.random.default_rng(seed)
    hits = sum(1 for _ in range(PERMUTATIONS) if abs(_pearson(rx, list(rng.permutation(ry))) or 0) >= bar)
    return (hits + 1) / (PERMUTATIONS + 1)


# ----------------------------------------------------------------------------------------------------------
# the frontier of a sweep


@dataclass(frozen=True)
class FrontierPoint:
    """One trained policy: its job, swept values and the four intervals of its reward_kl record."""

    job: str
    label: str
    params: dict[str, Any]
    reward: Interval
    kl: Interval
    base_reward: Interval
    reward_gain: Interval

    def to_dict(self) -> dict[str, Any]:
        return {"job": self.job, "params": self.params,
                **{part: getattr(self, part).to_dict() for part in PARTS}}  # fmt: skip


@dataclass(frozen=True)
class Correlation:
    """Spearman's rho between two quantities over the points (``x`` a swept key, or ``kl``), with n and
    its two-sided permutation p-value."""

    x: str
    y: str
    rho: float | None
    n: int
    p: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"x": self.x, "y": self.y, "rho": self.rho, "n": self.n, "p": self.p,
                "method": "Spearman rank correlation (ties averaged), two-sided permutation p"}  # fmt: skip


@dataclass(frozen=True)
class Frontier:
    """The points of a sweep, the base (taken from ``base_job``: every job samples the same base with the
    same seeds, so they share it; ``base_spread``: the lowest and highest base reward over the jobs, which
    differ only if the jobs' evaluation settings or held-out prompts did) and the correlations."""

    reward_name: str
    points: list[FrontierPoint]
    base: Interval
    base_job: str
    base_spread: tuple[float, float]
    correlations: list[Correlation]

    @property
    def base_shared(self) -> bool:
        low, high = self.base_spread
        return math.isclose(low, high, rel_tol=1e-9, abs_tol=1e-12)

    def to_dict(self) -> dict[str, Any]:
        """report.json's ``frontier``."""
        return {
            "reward_name": self.reward_name,
            "base": {"job": self.base_job, "shared": self.base_shared, "spread": list(self.base_spread),
                     **self.base.to_dict()},
            "points": [p.to_dict() for p in self.points],
            "correlations": [c.to_dict() for c in self.correlations],
        }  # fmt: skip


def _record(job: Job) -> dict[str, Any] | None:
    """The job's metrics.json ``reward_kl`` when it is complete (every interval with a value), else None."""
    record = job.metrics.get("reward_kl")
    if job.status != "completed" or not isinstance(record, dict):
        return None
    if not all(isinstance(record.get(p), dict) and record[p].get("value") is not None for p in PARTS):
        return None
    return record


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def reward_kl_frontier(sweep: Sweep) -> Frontier | None:
    """The frontier of the completed jobs that recorded a reward / KL point; None when none did."""
    found = [(job, record) for job in sweep.jobs if (record := _record(job)) is not None]
    if not found:
        return None
    points = [
        FrontierPoint(job.name, sweep.label(job), {k: job.value(k) for k in sweep.swept},
                      *(Interval.from_dict(record[p]) for p in PARTS))
        for job, record in found
    ]  # fmt: skip
    names = sorted({str(record.get("reward_name")) for _, record in found})
    bases = [p.base_reward.value for p in points]
    correlations = []
    for key in sweep.swept:
        values = [p.params[key] for p in points]
        if key != SEED_KEY and all(_is_number(v) for v in values):
            correlations.append(_correlation(key, "kl", values, [p.kl.value for p in points]))
    correlations.append(
        _correlation("kl", "reward", [p.kl.value for p in points], [p.reward.value for p in points])
    )
    return Frontier(", ".join(names), points, points[0].base_reward, points[0].job, (min(bases), max(bases)),
                    correlations)  # fmt: skip


def _correlation(x: str, y: str, xs: Sequence[float], ys: Sequence[float]) -> Correlation:
    xs, ys = [float(v) for v in xs], [float(v) for v in ys]
    return Correlation(x, y, spearman(xs, ys), len(xs), spearman_p(xs, ys))


# ----------------------------------------------------------------------------------------------------------
# results.md


def _interval(interval: Interval) -> str:
    """``0.611 [0.470, 0.750]`` (Interval.text without the n)."""
    return interval.text().rsplit(", n=", 1)[0]


def _rho(correlation: Correlation) -> str:
    name = {"kl": "KL"}.get(correlation.x, correlation.x.rsplit(".", 1)[-1])
    other = {"kl": "KL"}.get(correlation.y, correlation.y)
    if correlation.rho is None:
        return f"{name} vs {other}: undefined (n={correlation.n}: fewer than 2 points, or no spread)"
    p = f", permutation p = {correlation.p:.3g}" if correlation.p is not None else ""
    return f"{name} vs {other}: rho = {correlation.rho:.3f} (n={correlation.n}{p})"


def frontier_lines(sweep: Sweep) -> list[str]:
    """## Reward–KL frontier: a table of the points and the base, and the rank correlations; nothing when
    no job recorded a reward / KL point."""
    frontier = reward_kl_frontier(sweep)
    if frontier is None:
        return []
    swept = list(sweep.swept)
    base = frontier.base
    shared = (
        "the jobs share the base (same prompts, same seeds), so its reward is taken from the first job"
        if frontier.base_shared
        else f"the jobs' base rewards differ ({frontier.base_spread[0]:.3f} to {frontier.base_spread[1]:.3f}:"
        " other evaluation settings or held-out prompts); the one shown is the first job's"
    )
    lines = ["", "## Reward–KL frontier", "",
             f"Each trained policy's mean reward (`{frontier.reward_name}`) and KL(policy ‖ reference) on "
             "held-out prompts (metrics.json `reward_kl`, per prompt in `reward_kl.jsonl`), with 95% "
             "bootstrap intervals over the prompts (n); the reward gain is the paired difference "
             f"policy − base per prompt. The base (adapter off, KL 0) is `{frontier.base_job}`'s: "
             f"{shared}.", "",
             "| job | " + " | ".join(k.rsplit(".", 1)[-1] for k in swept)
             + " | reward | KL(policy ‖ ref) | reward gain over base | n |",
             "|---|" + "---|" * len(swept) + "---|---|---|---|"]  # fmt: skip
    cells = ["base (adapter off)", *["-" for _ in swept], _interval(base), "0", "-", str(base.n)]
    lines.append("| " + " | ".join(cells) + " |")
    for point in frontier.points:
        values = [short_value(point.params[k]) for k in swept]
        cells = [f"`{point.job}`", *values, _interval(point.reward), _interval(point.kl),
                 _interval(point.reward_gain), str(point.reward.n)]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Spearman rank correlation (ties averaged) over the jobs: "
              + "; ".join(_rho(c) for c in frontier.correlations) + "."]  # fmt: skip
    return lines
