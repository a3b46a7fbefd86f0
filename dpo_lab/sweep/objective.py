"""The number a sweep ranks jobs by: one held-out metric and whether higher or lower is better; and the
verdict: whether the top job is told apart from the others at 95% (dpo_lab.stats), or which it ties with."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dpo_lab.config.choices import Direction
from dpo_lab.config.schemas import ObjectiveSettings
from dpo_lab.stats import (
    LEVEL,
    RESAMPLES,
    Interval,
    discordant_rate,
    paired_difference,
    pairs_needed,
    pairs_needed_for_mean,
    seed_difference,
    seeds_needed,
    separated,
    shared_ids,
)


class NonFiniteMetricError(RuntimeError):
    """Training diverged: a loss or a held-out metric is NaN or infinite (the job is recorded as failed)."""


def objective_value(eval_metrics: Mapping[str, Any], objective: ObjectiveSettings) -> float:
    """``eval_<metric>`` of Trainer.evaluate()'s output; KeyError naming what exists if it is absent."""
    key = f"eval_{objective.metric}"
    if key not in eval_metrics:
        available = sorted(k[5:] for k in eval_metrics if k.startswith("eval_"))
        raise KeyError(f"objective.metric {objective.metric!r} was not reported; held-out: {available}")
    return float(eval_metrics[key])


def check_finite(train_metrics: Mapping[str, Any], eval_metrics: Mapping[str, Any]) -> None:
    """Raise NonFiniteMetricError when the training loss or a held-out metric is NaN / infinite."""
    named = {"train_loss": train_metrics.get("train_loss"), **eval_metrics}
    bad = [k for k, v in named.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise NonFiniteMetricError(f"training diverged: non-finite {', '.join(sorted(bad))}")


def better(a: float, b: float, direction: Direction) -> bool:
    """True when ``a`` is strictly better than ``b`` in ``direction``."""
    return a > b if direction is Direction.maximize else a < b


# ---------------------------------------------------------------------------------------------------------
# How sure the ranking is: intervals over the held-out pairs (and over seeds), and the verdict.

# the per-pair field (heldout_pairs_<phase>.jsonl) whose mean over the held-out pairs is the metric; other
# metrics have no per-pair values, so no interval
PER_PAIR_FIELDS = {"rewards/accuracies": "correct", "rewards/margins": "margin", "loss": "loss"}


def per_pair_field(metric: str) -> str | None:
    """``rewards/accuracies`` -> ``correct`` (ties count half), ``rewards/margins`` -> ``margin``, ``loss``
    -> ``loss``; None for a metric the per-pair records do not hold."""
    return PER_PAIR_FIELDS.get(metric)


@dataclass(frozen=True)
class Contender:
    """What the verdict ranks: one job, or one setting (the jobs of a sweep that differ only in seed).

    ``value`` is what it is ranked by: the mean of ``pairs`` when there are per-pair values, else the
    held-out metric (for a setting: the mean over its seeds). ``pairs`` maps a pair id to the per-pair value
    (a setting's: the mean over its seeds, pair by pair); ``interval`` is the bootstrap interval of ``value``
    over those pairs; ``seed_values`` and ``seeds`` (a setting) are its per-seed values and their mean with a
    t interval. ``note`` says why there are no per-pair values."""

    name: str
    label: str
    jobs: tuple[str, ...]
    value: float
    pairs: Mapping[str, float] | None = None
    interval: Interval | None = None
    seed_values: tuple[float, ...] = ()
    seeds: Interval | None = None
    note: str | None = None


@dataclass(frozen=True)
class Comparison:
    """A contender against the top one, as ``contender - top``: ``difference`` over the held-out pairs both
    share (paired bootstrap), ``seed_difference`` over seeds (settings only). ``separated``: every interval
    there is excludes 0 on the top's side. ``pairs_needed`` / ``seeds_needed``: what a difference of the
    observed size would need to be separated (None where that part is separated or cannot say).
    ``reasons``: the same in words."""

    name: str
    difference: Interval | None
    seed_difference: Interval | None
    separated: bool
    pairs_needed: int | None
    seeds_needed: int | None
    reasons: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "difference_to_top": self.difference.to_dict() if self.difference else None,
            "seed_difference_to_top": self.seed_difference.to_dict() if self.seed_difference else None,
            "separated_from_top": self.separated,
            "pairs_needed": self.pairs_needed,
            "seeds_needed": self.seeds_needed,
            "why": "; ".join(self.reasons),
        }


@dataclass(frozen=True)
class Verdict:
    """Whether a sweep has a best job (or setting).

    ``mode``: ``intervals`` (per-pair records, or seeds: the top one is named best only if it is separated
    from every other contender at ``level``), ``value`` (no per-pair records and no seeds: the top one by
    value alone, as before intervals), ``none`` (no contender: no completed job with a finite objective).
    ``top``: the contender with the best value (the first one on ties); ``best``: the top one where the
    verdict names it, else None; ``comparisons``: every other contender against the top."""

    unit: str  # job | setting
    mode: str  # intervals | value | none
    contenders: tuple[Contender, ...]
    top: Contender | None
    best: Contender | None
    comparisons: dict[str, Comparison]
    level: float

    @property
    def tied_with_best(self) -> list[str]:
        """The contenders that cannot be told apart from the top one at ``level``."""
        return [name for name, c in self.comparisons.items() if not c.separated]

    @property
    def held_out_pairs(self) -> int | None:
        return self.top.interval.n if self.top is not None and self.top.interval is not None else None

    def contender(self, name: str) -> Contender | None:
        return next((c for c in self.contenders if c.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        tied = self.tied_with_best
        return {
            "unit": self.unit,
            "mode": self.mode,
            "level": self.level,
            "best": None if self.best is None else self.best.name,
            "best_jobs": [] if self.best is None else list(self.best.jobs),
            "top": None if self.top is None else self.top.name,
            "tied_with_best": tied,
            "held_out_pairs": self.held_out_pairs,
            "pairs_needed": {name: self.comparisons[name].pairs_needed for name in tied},
            "seeds_needed": {name: self.comparisons[name].seeds_needed for name in tied},
        }


def decide(
    contenders: Sequence[Contender],
    direction: Direction,
    *,
    unit: str = "job",
    level: float = LEVEL,
    seed: int = 0,
    resamples: int = RESAMPLES,
) -> Verdict:
    """The verdict over ``contenders`` (each with a finite ``value``).

    The top one is the best by value (the first one on ties). In ``intervals`` mode (any contender has
    per-pair values, or ``unit == "setting"``) it is named best only when it is separated from every other
    contender: the paired difference over shared pairs excludes 0 (and, for settings, the difference over
    seeds too). A contender without per-pair values, or without shared pairs, or a setting with one seed,
    cannot be separated: the verdict stays open rather than guess."""
    contenders = tuple(contenders)
    if not contenders:
        return Verdict(unit, "none", (), None, None, {}, level)
    top = contenders[0]
    for c in contenders[1:]:
        if better(c.value, top.value, direction):
            top = c
    use_pairs = any(c.pairs is not None for c in contenders)
    use_seeds = unit == "setting"
    if not use_pairs and not use_seeds:
        return Verdict(unit, "value", contenders, top, top, {}, level)
    comparisons = {
        c.name: _compare(c, top, direction, use_pairs, use_seeds, level=level, seed=seed, resamples=resamples)
        for c in contenders
        if c is not top
    }
    best = top if all(c.separated for c in comparisons.values()) else None
    return Verdict(unit, "intervals", contenders, top, best, comparisons, level)


def _on_top_side(interval: Interval, direction: Direction) -> bool:
    """``contender - top`` separated from 0 in the top's favour."""
    if not separated(interval):
        return False
    return interval.high < 0 if direction is Direction.maximize else interval.low > 0


def _compare(
    c: Contender,
    top: Contender,
    direction: Direction,
    use_pairs: bool,
    use_seeds: bool,
    *,
    level: float,
    seed: int,
    resamples: int,
) -> Comparison:
    """``c`` against the top one: the paired difference over shared pairs (``use_pairs``) and the
    difference over seeds (``use_seeds``), each separated or with what would separate it."""
    reasons: list[str] = []
    ok = True
    difference = seed_diff = None
    n_pairs = n_seeds = None
    pct = f"{level:.0%}"
    if use_pairs:
        if top.pairs is None or c.pairs is None:
            ok = False
            reasons.append("no per-pair records" + (" for the top one" if top.pairs is None else ""))
        elif not shared_ids(c.pairs, top.pairs):
            ok = False
            reasons.append("no held-out pairs in common")
        else:
            difference = paired_difference(c.pairs, top.pairs, seed=seed, resamples=resamples, level=level)
            if _on_top_side(difference, direction):
                reasons.append(f"separated at {pct} over {difference.n} shared pairs")
            else:
                ok = False
                n_pairs = _pairs_needed(c.pairs, top.pairs, level=level)
                if difference.value == 0:
                    reasons.append("no difference on the shared pairs: more pairs would not separate them")
                elif n_pairs is None:
                    reasons.append(f"the difference includes 0 at {pct}")
                else:
                    reasons.append(f"the difference includes 0 at {pct}: one of this size needs about "
                                   f"{n_pairs} held-out pairs (have {difference.n})")  # fmt: skip
    if use_seeds:
        seed_diff = seed_difference(c.seed_values, top.seed_values, level=level)
        if _on_top_side(seed_diff, direction):
            reasons.append(f"separated at {pct} over seeds")
        else:
            ok = False
            n_seeds = _seeds_needed(c.seed_values, top.seed_values, seed_diff.value, level=level)
            if not seed_diff.bounded:
                reasons.append("one seed: more seeds needed to see the spread between seeds")
            elif n_seeds is None:
                reasons.append(f"the difference over seeds includes 0 at {pct}")
            else:
                reasons.append(f"the difference over seeds includes 0 at {pct}: about {n_seeds} seeds per "
                               "setting would separate a difference of this size")  # fmt: skip
    return Comparison(c.name, difference, seed_diff, ok, n_pairs, n_seeds, tuple(reasons))


def _pairs_needed(a: Mapping[str, float], b: Mapping[str, float], *, level: float) -> int | None:
    """Pairs a difference of the observed size needs: McNemar (Connor) for 0/1 values, else the paired-mean
    formula with the observed spread of per-pair differences. None when there is no difference."""
    ids = shared_ids(a, b)
    diffs = [a[i] - b[i] for i in ids]
    delta = sum(diffs) / len(diffs)
    if delta == 0:
        return None
    if all(a[i] in (0.0, 1.0) and b[i] in (0.0, 1.0) for i in ids):
        return pairs_needed(delta, discordant_rate(a, b), level=level)
    if len(diffs) < 2:
        return None
    mean = delta
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1))
    return pairs_needed_for_mean(delta, sd, level=level)


def _seeds_needed(a: Sequence[float], b: Sequence[float], delta: float, *, level: float) -> int | None:
    """Seeds per setting a difference of the observed size needs, from the pooled seed-to-seed spread."""
    if delta == 0 or len(a) < 2 or len(b) < 2:
        return None
    var = [sum((x - sum(v) / len(v)) ** 2 for x in v) / (len(v) - 1) for v in (a, b)]
    return seeds_needed(delta, math.sqrt(sum(var) / 2), level=level)
