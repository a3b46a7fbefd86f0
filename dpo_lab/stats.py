"""How sure a held-out number is: intervals over held-out pairs and over seeds, paired differences between
runs, and how many pairs (or seeds) a difference would need. Pure functions over numbers; the standard
library and numpy only.

Why one bootstrap for everything. The three held-out numbers a run is judged by are means over pairs of
per-pair values: ``rewards/accuracies`` of the tie-aware correctness (1 / 0.5 / 0: a tie counts half, so the
count of correct pairs is not binomial and a Wilson or Clopper-Pearson interval does not apply),
``rewards/margins`` of the reward margins and ``loss`` of the per-pair losses (both skewed, with long tails,
on small held-out sets). A percentile bootstrap over pairs makes no assumption about the shape of any of
them, so one method serves all three and two runs are compared the same way (a paired bootstrap: resample
the pair ids both runs share, take the difference of the means). It is seeded, so a report is the same
every time it is written.

Every interval is an :class:`Interval`; ``level`` is its coverage (0.95: 95%).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

LEVEL = 0.95
RESAMPLES = 10_000
POWER = 0.8
_CHUNK = 2_000_000  # bootstrap draws held in memory at once (resamples x pairs)


@dataclass(frozen=True)
class Interval:
    """A statistic and its interval: ``value`` is the statistic of the observed values, ``[low, high]`` its
    ``level`` interval, ``n`` how many values it came from, ``method`` how it was computed (in words).

    With one value there is no spread to go on: ``low = -inf`` and ``high = +inf`` (no interval), never a
    zero-width one that would look certain. A zero-width interval means every resample gave the same value
    (every pair alike, e.g. all ties).
    """

    value: float
    low: float
    high: float
    n: int
    method: str
    level: float = LEVEL

    @property
    def bounded(self) -> bool:
        """False when there is no interval (one value, or one seed)."""
        return math.isfinite(self.low) and math.isfinite(self.high)

    @property
    def width(self) -> float:
        return self.high - self.low

    def text(self, digits: int = 3) -> str:
        """``0.611 [0.470, 0.750], n=43`` (``0.611 (no interval), n=1`` without one)."""
        value = _number(self.value, digits)
        if not self.bounded:
            return f"{value} (no interval), n={self.n}"
        return f"{value} [{_number(self.low, digits)}, {_number(self.high, digits)}], n={self.n}"

    def to_dict(self) -> dict[str, Any]:
        """``{"value", "low", "high", "n", "method"}`` for JSON: a bound that does not exist is None."""
        return {
            "value": _json_float(self.value),
            "low": _json_float(self.low),
            "high": _json_float(self.high),
            "n": self.n,
            "method": self.method,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], level: float = LEVEL) -> Interval:
        """The inverse of :meth:`to_dict` (a None bound reads back as -inf / +inf)."""
        low, high = data.get("low"), data.get("high")
        return cls(
            value=float(data["value"]) if data.get("value") is not None else math.nan,
            low=float(low) if low is not None else -math.inf,
            high=float(high) if high is not None else math.inf,
            n=int(data["n"]),
            method=str(data.get("method", "")),
            level=level,
        )


def _number(value: float, digits: int) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else str(value)


def _json_float(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def finite_array(
    values: Iterable[float], what: str = "values", names: Sequence[str] | None = None
) -> np.ndarray:
    """``values`` as a float array; ValueError naming every non-finite one (by position, or by ``names``)."""
    array = np.asarray(list(values), dtype=float)
    if array.ndim != 1:
        raise ValueError(f"{what}: expected a flat sequence of numbers, got shape {array.shape}")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        labels = [repr(names[i]) if names is not None else f"[{i}]" for i in bad[:10]]
        shown = ", ".join(f"{label}={array[i]}" for label, i in zip(labels, bad[:10], strict=True))
        more = f" and {bad.size - 10} more" if bad.size > 10 else ""
        raise ValueError(f"{what}: {bad.size} non-finite value(s) of {array.size}: {shown}{more}")
    return array


def tie_aware_accuracy(margins: Iterable[float]) -> list[float]:
    """Per-pair correctness from reward margins: 1.0 for margin > 0, 0.5 for a tie (margin == 0), 0.0 for
    margin < 0. Their mean is the tie-aware accuracy (an untrained adapter, all margins 0, scores 0.5, not
    0). Non-finite margins are refused (ValueError naming them)."""
    array = finite_array(margins, "margins")
    return [1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in array.tolist()]


def bootstrap_interval(
    values: Iterable[float],
    *,
    seed: int = 0,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    statistic: Callable[..., Any] = np.mean,
    unit: str = "pairs",
) -> Interval:
    """The seeded percentile bootstrap of ``statistic`` over ``values`` (one value per pair, shape ``[n]``;
    ``unit`` names what one value is, for the method text: pairs, prompts, seeds).

    ``resamples`` times, draw n values with replacement (numpy's PCG64 seeded with ``seed``) and take the
    statistic; the interval is the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of those.
    ``statistic`` is a numpy reduction called as ``statistic(array, axis=-1)`` (np.mean, np.median).

    n = 0: ValueError (no value, no statistic). n = 1: the value with no interval (``-inf, +inf``).
    Non-finite values: ValueError naming them. Same values, seed, resamples and level: same interval.
    """
    _check_level(level)
    array = finite_array(values)
    n = array.size
    if n == 0:
        raise ValueError("bootstrap_interval: no values (n=0): an interval needs at least one pair")
    value = float(statistic(array, axis=-1))
    if n == 1:
        return Interval(value, -math.inf, math.inf, 1, "none: one value has no spread", level)
    if resamples < 1:
        raise ValueError(f"bootstrap_interval: resamples must be >= 1, got {resamples}")
    stats = _resampled(array, statistic, seed=seed, resamples=resamples)
    low, high = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    method = f"percentile bootstrap over {unit}, {resamples} resamples, seed {seed}"
    return Interval(value, float(low), float(high), n, method, level)


def _resampled(array: np.ndarray, statistic: Callable[..., Any], *, seed: int, resamples: int) -> np.ndarray:
    """``resamples`` values of the statistic, each over n draws with replacement (drawn in fixed chunks)."""
    n = array.size
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK // n)
    out = np.empty(resamples)
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = statistic(array[idx], axis=-1)
    return out


def shared_ids(a: Mapping[str, float], b: Mapping[str, float]) -> list[str]:
    """The pair ids both mappings hold, sorted (so a paired bootstrap does not depend on file order)."""
    return sorted(set(a) & set(b))


def paired_difference(
    a: Mapping[str, float],
    b: Mapping[str, float],
    *,
    seed: int = 0,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
) -> Interval:
    """``mean(a) - mean(b)`` over the pair ids both share (``{pair_id: per-pair value}`` each; ids only one
    of them has are left out), with its paired percentile bootstrap interval: resample the shared ids with
    replacement, take the difference of the two means on the same draw (= the mean of per-pair differences).

    Pairing removes what the pairs have in common (an easy pair is easy for both runs), so it is narrower
    than comparing two separate intervals. ValueError when they share no pair id, or a shared value is
    non-finite (named by pair id). ``n`` of the result is the number of shared pairs.
    """
    ids = shared_ids(a, b)
    if not ids:
        raise ValueError(
            f"paired_difference: the two share no pair id ({len(a)} and {len(b)} pairs): "
            "they were not evaluated on the same held-out pairs"
        )
    left = finite_array([a[i] for i in ids], "first run's values", ids)
    right = finite_array([b[i] for i in ids], "second run's values", ids)
    interval = bootstrap_interval(left - right, seed=seed, resamples=resamples, level=level)
    method = interval.method.replace(
        "percentile bootstrap over pairs", "paired percentile bootstrap over shared pairs"
    )
    return Interval(interval.value, interval.low, interval.high, interval.n, method, level)


def separated(interval: Interval) -> bool:
    """True when the interval excludes 0 (strictly: a bound at exactly 0 does not separate; no interval,
    as from one value, never does)."""
    return interval.bounded and (interval.low > 0 or interval.high < 0)


def discordant_rate(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    """The share of the shared pair ids on which the two values differ (for 0/1 correctness: the pairs one
    run gets right and the other wrong). ValueError when they share no pair id."""
    ids = shared_ids(a, b)
    if not ids:
        raise ValueError("discordant_rate: the two share no pair id")
    return sum(1 for i in ids if a[i] != b[i]) / len(ids)


def _z(level: float, power: float) -> tuple[float, float]:
    _check_level(level)
    if not 0 < power < 1:
        raise ValueError(f"power must be in (0, 1), got {power}")
    normal = NormalDist()
    return normal.inv_cdf((1 + level) / 2), normal.inv_cdf(power)


def _connor(delta: float, discordant: float, z_a: float, z_b: float) -> float:
    return (z_a * math.sqrt(discordant) + z_b * math.sqrt(discordant - delta**2)) ** 2 / delta**2


def pairs_needed(delta: float, discordant_rate: float, *, level: float = LEVEL, power: float = POWER) -> int:
    """Held-out pairs needed to tell two runs apart on paired 0/1 correctness (McNemar's test), by Connor's
    formula (Connor 1987, Biometrics 43:207; the usual one for paired proportions)::

        n = (z_a * sqrt(psi) + z_b * sqrt(psi - delta**2))**2 / delta**2

    with ``delta`` the difference of the two accuracies (= p10 - p01, the share of pairs only the first run
    gets right minus the share only the second gets right), ``psi`` the discordant rate (p10 + p01),
    ``z_a`` the normal quantile of ``(1 + level) / 2`` (two-sided) and ``z_b`` that of ``power``. Rounded
    up. ValueError unless ``0 < |delta| <= psi <= 1`` (the difference can be no larger than the share of
    pairs on which the runs disagree)."""
    delta = abs(delta)
    if not 0 < discordant_rate <= 1:
        raise ValueError(f"pairs_needed: discordant_rate must be in (0, 1], got {discordant_rate}")
    if not 0 < delta <= discordant_rate:
        raise ValueError(
            f"pairs_needed: |delta| must be in (0, discordant_rate={discordant_rate}], got {delta}: "
            "two runs cannot differ by more than the share of pairs they disagree on"
        )
    z_a, z_b = _z(level, power)
    return math.ceil(_connor(delta, discordant_rate, z_a, z_b) - 1e-9)


def detectable_difference(
    n: int, discordant_rate: float, *, level: float = LEVEL, power: float = POWER
) -> float | None:
    """The smallest accuracy difference ``n`` pairs detect (at ``level`` and ``power``) when the runs
    disagree on a share ``discordant_rate`` of them: :func:`pairs_needed` solved for delta. None when even
    ``delta = discordant_rate`` (every disagreement in one run's favour) needs more than ``n`` pairs."""
    if n < 1 or not 0 < discordant_rate <= 1:
        raise ValueError(
            f"detectable_difference: need n >= 1 and discordant_rate in (0, 1], got {n}, {discordant_rate}"
        )
    z_a, z_b = _z(level, power)
    if _connor(discordant_rate, discordant_rate, z_a, z_b) > n:
        return None
    low, high = 0.0, discordant_rate  # the formula falls as delta grows
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if _connor(mid, discordant_rate, z_a, z_b) > n else (low, mid)
    return high


def pairs_needed_for_mean(delta: float, sd: float, *, level: float = LEVEL, power: float = POWER) -> int:
    """Pairs needed to tell two runs apart on a paired mean (margins, losses, or correctness with ties):
    the normal approximation of the paired t-test, ``n = ((z_a + z_b) * sd / delta)**2`` rounded up (at
    least 2), with ``sd`` the standard deviation of the per-pair differences and ``delta`` the difference of
    the means. ValueError for ``delta == 0`` or a negative / non-finite ``sd``."""
    if delta == 0 or not math.isfinite(delta):
        raise ValueError(f"pairs_needed_for_mean: delta must be finite and non-zero, got {delta}")
    if not (math.isfinite(sd) and sd >= 0):
        raise ValueError(f"pairs_needed_for_mean: sd must be finite and >= 0, got {sd}")
    z_a, z_b = _z(level, power)
    return max(2, math.ceil(((z_a + z_b) * sd / abs(delta)) ** 2 - 1e-9))


def seeds_needed(delta: float, sd: float, *, level: float = LEVEL, power: float = POWER) -> int:
    """Seeds per setting needed to tell two settings apart whose means across seeds differ by ``delta``,
    with ``sd`` the seed-to-seed standard deviation: the two-sample normal approximation
    ``k = 2 * ((z_a + z_b) * sd / delta)**2`` rounded up (at least 2)."""
    if delta == 0 or not math.isfinite(delta):
        raise ValueError(f"seeds_needed: delta must be finite and non-zero, got {delta}")
    if not (math.isfinite(sd) and sd >= 0):
        raise ValueError(f"seeds_needed: sd must be finite and >= 0, got {sd}")
    z_a, z_b = _z(level, power)
    return max(2, math.ceil(2 * ((z_a + z_b) * sd / abs(delta)) ** 2 - 1e-9))


def t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t with an integer number of degrees of freedom ``df >= 1`` (exact: the
    finite series of Abramowitz & Stegun 26.7.3 / 26.7.4)."""
    if df < 1 or int(df) != df:
        raise ValueError(f"t_cdf: df must be a positive integer, got {df}")
    df = int(df)
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    total, term = 1.0, 1.0
    if df % 2 == 1:
        if df == 1:
            return 0.5 + theta / math.pi
        for k in range(1, (df - 3) // 2 + 1):
            term *= 2 * k / (2 * k + 1) * c2
            total += term
        a = 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * total)
    else:
        for k in range(1, (df - 2) // 2 + 1):
            term *= (2 * k - 1) / (2 * k) * c2
            total += term
        a = math.sin(theta) * total
    return min(1.0, max(0.0, 0.5 + a / 2))


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (bisection on :func:`t_cdf`)."""
    if not 0 < p < 1:
        raise ValueError(f"t_quantile: p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        low, high = high, high * 2
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if t_cdf(mid, df) < p else (low, mid)
    return (low + high) / 2


def t_interval(values: Iterable[float], *, level: float = LEVEL, what: str = "values") -> Interval:
    """The mean of ``values`` and its Student t interval, ``mean +- t(df=n-1) * sd / sqrt(n)``. For a
    handful of independent repeats (seeds), where a bootstrap of 2 or 3 values cannot reach the tails.
    n = 0: ValueError; n = 1: no interval; non-finite values: ValueError naming them."""
    _check_level(level)
    array = finite_array(values, what)
    n = array.size
    if n == 0:
        raise ValueError(f"t_interval: no {what} (n=0)")
    mean = float(array.mean())
    if n == 1:
        return Interval(mean, -math.inf, math.inf, 1, f"none: one of {what}", level)
    half = t_quantile((1 + level) / 2, n - 1) * float(array.std(ddof=1)) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, f"t interval over {n} {what}, df={n - 1}", level)


def across_seeds(values: Sequence[float], *, level: float = LEVEL) -> Interval:
    """The mean of one setting's results over its seeds (one value per seed) with a t interval: how much
    training randomness moves the result. The pairs are the same for every seed, so this does not hold the
    held-out sampling; the per-pair interval does."""
    return t_interval(values, level=level, what="seeds")


def seed_difference(a: Sequence[float], b: Sequence[float], *, level: float = LEVEL) -> Interval:
    """``mean(a) - mean(b)`` of two settings' per-seed results, with a Welch t interval on the conservative
    ``min(len(a), len(b)) - 1`` degrees of freedom. No interval unless both have at least 2 seeds."""
    _check_level(level)
    x, y = finite_array(a, "seeds"), finite_array(b, "seeds")
    if x.size == 0 or y.size == 0:
        raise ValueError("seed_difference: each setting needs at least one seed")
    value = float(x.mean() - y.mean())
    n = min(x.size, y.size)
    if n < 2:
        return Interval(value, -math.inf, math.inf, n, "none: a setting with one seed", level)
    se = math.sqrt(x.var(ddof=1) / x.size + y.var(ddof=1) / y.size)
    half = t_quantile((1 + level) / 2, n - 1) * se
    method = f"Welch t interval over seeds ({x.size} and {y.size}), df={n - 1}"
    return Interval(value, value - half, value + half, n, method, level)


@dataclass(frozen=True)
class SeedGroup:
    """Jobs whose settings are equal but for the seed: ``settings`` are the shared values (seed left out),
    ``members`` the job names in input order, ``seeds`` their seeds."""

    settings: tuple[tuple[str, Any], ...]
    members: tuple[str, ...]
    seeds: tuple[Any, ...]

    @property
    def label(self) -> str:
        return ",".join(f"{key}={value}" for key, value in self.settings) or "all"


def seed_groups(jobs: Mapping[str, Mapping[str, Any]], *, seed_key: str = "seed") -> list[SeedGroup]:
    """Group jobs ``{job name: {key: value}}`` that differ only in ``seed_key``, in order of first
    appearance; a group's ``settings`` keep its first job's key order. Values compare by ``repr`` (so a
    list and a tuple differ, as do 1 and 1.0)."""
    groups: dict[tuple, list[str]] = {}
    shared: dict[tuple, tuple[tuple[str, Any], ...]] = {}
    for name, settings in jobs.items():
        others = tuple((k, v) for k, v in settings.items() if k != seed_key)
        key = tuple(sorted((k, repr(v)) for k, v in others))
        groups.setdefault(key, []).append(name)
        shared.setdefault(key, others)
    return [
        SeedGroup(shared[key], tuple(names), tuple(jobs[n].get(seed_key) for n in names))
        for key, names in groups.items()
    ]


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
