"""dpo_lab.stats against values worked out by hand: the bootstrap's exact distribution on small sets, a paired
difference that ignores pairs only one run has, ties, seed groups and their t interval, the power formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dpo_lab import stats
from dpo_lab.stats import Interval

# the normal quantiles the power formulas use, from a table: z(0.975) and z(0.8)
Z_975, Z_80 = 1.959964, 0.841621


def test_bootstrap_interval_of_three_right_one_wrong_is_the_exact_bootstrap_distribution() -> None:
    """Values 1,1,1,0: a resample's mean is k/4 with k ~ Binomial(4, 3/4): P(0) = 1/256, P(1/4) = 12/256,
    P(1/2) = 54/256, P(3/4) = 108/256, P(1) = 81/256. The 2.5% quantile falls in k=1 (cumulative 0.4% ->
    5.1%), the 97.5% one in k=4 (cumulative 68.4% -> 100%): [0.25, 1.0] around 0.75."""
    interval = stats.bootstrap_interval([1.0, 1.0, 1.0, 0.0], seed=0)
    assert (interval.value, interval.low, interval.high, interval.n) == (0.75, 0.25, 1.0, 4)
    assert interval.text() == "0.750 [0.250, 1.000], n=4"
    assert "percentile bootstrap" in interval.method and "seed 0" in interval.method


def test_bootstrap_interval_of_one_right_one_wrong_spans_both() -> None:
    """Values 0,1: a resample's mean is 0 (1/4), 0.5 (1/2) or 1 (1/4): both tails hold more than 2.5%."""
    interval = stats.bootstrap_interval([0.0, 1.0])
    assert (interval.value, interval.low, interval.high) == (0.5, 0.0, 1.0)


def test_bootstrap_is_seeded_and_deterministic() -> None:
    values = np.linspace(-1.0, 3.0, 25) ** 2  # skewed
    first = stats.bootstrap_interval(values, seed=7)
    assert stats.bootstrap_interval(values, seed=7) == first
    assert stats.bootstrap_interval(list(values), seed=7) == first  # a list or an array alike
    other = stats.bootstrap_interval(values, seed=8)
    assert (other.low, other.high) != (first.low, first.high)
    assert first.low < first.value < first.high and first.value == pytest.approx(float(np.mean(values)))
    wider = stats.bootstrap_interval(values, seed=7, level=0.99)
    assert wider.low < first.low and wider.high > first.high


def test_a_large_held_out_set_is_resampled_in_chunks_the_same_way_each_time() -> None:
    values = np.random.default_rng(1).normal(size=5000)
    a = stats.bootstrap_interval(values, resamples=2000)
    assert a == stats.bootstrap_interval(values, resamples=2000)
    half = 1.96 * values.std(ddof=1) / math.sqrt(values.size)  # the normal interval, for scale
    assert a.low == pytest.approx(values.mean() - half, abs=0.01)
    assert a.high == pytest.approx(values.mean() + half, abs=0.01)


def test_all_ties_give_exactly_half_with_a_zero_width_interval() -> None:
    correct = stats.tie_aware_accuracy([0.0] * 43)
    assert correct == [0.5] * 43
    interval = stats.bootstrap_interval(correct)
    assert (interval.value, interval.low, interval.high, interval.n) == (0.5, 0.5, 0.5, 43)
    assert interval.width == 0 and interval.text() == "0.500 [0.500, 0.500], n=43"


def test_tie_aware_accuracy_counts_a_tie_half() -> None:
    assert stats.tie_aware_accuracy([2.0, 0.0, -1e-9, 0.3]) == [1.0, 0.5, 0.0, 1.0]
    assert np.mean(stats.tie_aware_accuracy([1.0, 0.0, -1.0])) == 0.5


def test_no_values_and_one_value() -> None:
    with pytest.raises(ValueError, match=r"no values \(n=0\)"):
        stats.bootstrap_interval([])
    one = stats.bootstrap_interval([0.7])
    assert one.value == 0.7 and one.n == 1 and not one.bounded
    assert one.low == -math.inf and one.high == math.inf and not stats.separated(one)
    assert one.text() == "0.700 (no interval), n=1"
    assert one.to_dict() == {"value": 0.7, "low": None, "high": None, "n": 1, "method": one.method}
    assert Interval.from_dict(one.to_dict()) == one


def test_non_finite_values_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"2 non-finite value\(s\) of 4: \[1\]=nan, \[3\]=inf"):
        stats.bootstrap_interval([0.1, math.nan, 0.2, math.inf])
    with pytest.raises(ValueError, match=r"margins: 1 non-finite value\(s\) of 2: \[0\]=-inf"):
        stats.tie_aware_accuracy([-math.inf, 1.0])
    with pytest.raises(ValueError, match=r"'p2'=nan"):
        stats.paired_difference({"p1": 1.0, "p2": math.nan}, {"p1": 0.0, "p2": 1.0})
    with pytest.raises(ValueError, match="non-finite"):
        stats.across_seeds([0.5, math.nan])


def test_paired_difference_uses_only_the_pairs_both_share() -> None:
    """Shared p1, p2, p3 with differences 1, 0, 0: value 1/3. A resample's mean is k/3, k ~ Binomial(3, 1/3):
    P(0) = 8/27 (> 2.5%, so low = 0), P(1) = 1/27 (< 2.5%, but P(k <= 2) = 26/27 < 97.5%, so high = 1)."""
    a = {"p1": 1.0, "p2": 1.0, "p3": 0.0, "only_a": 0.0}
    b = {"p3": 0.0, "p2": 1.0, "p1": 0.0, "only_b": 1.0}  # order does not matter
    difference = stats.paired_difference(a, b)
    assert difference.value == pytest.approx(1 / 3) and difference.n == 3
    assert (difference.low, difference.high) == (0.0, 1.0)
    assert "paired" in difference.method
    # what only one of them has changes nothing
    assert stats.paired_difference({**a, "only_a": 1e6}, {**b, "only_b": -5.0}) == difference
    reverse = stats.paired_difference(b, a)
    assert reverse.value == pytest.approx(-1 / 3) and (reverse.low, reverse.high) == (-1.0, 0.0)
    assert stats.discordant_rate(a, b) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="share no pair id"):
        stats.paired_difference({"x": 1.0}, {"y": 1.0})


def test_a_paired_difference_is_narrower_than_the_two_intervals_apart() -> None:
    """Run b is run a plus 0.1 on every pair, over pairs that vary a lot: the intervals overlap, the paired
    difference is exactly 0.1 with no spread, and is separated."""
    spread = np.linspace(-2.0, 2.0, 30)
    a = {f"p{i}": float(v) for i, v in enumerate(spread)}
    b = {k: v + 0.1 for k, v in a.items()}
    ia, ib = stats.bootstrap_interval(a.values()), stats.bootstrap_interval(b.values())
    assert ia.high > ib.low  # overlapping
    difference = stats.paired_difference(b, a)
    assert difference.value == pytest.approx(0.1) and difference.width == pytest.approx(0, abs=1e-12)
    assert stats.separated(difference)


def test_separated_means_the_interval_excludes_zero() -> None:
    def iv(low: float, high: float) -> Interval:
        return Interval((low + high) / 2, low, high, 10, "test")

    assert stats.separated(iv(0.1, 0.2)) and stats.separated(iv(-0.3, -0.1))
    assert not stats.separated(iv(-0.1, 0.2)) and not stats.separated(iv(0.0, 0.2))  # a bound at 0: not
    assert not stats.separated(Interval(0.5, -math.inf, math.inf, 1, "one value"))


def test_pairs_needed_is_connors_formula() -> None:
    """n = (z_a sqrt(psi) + z_b sqrt(psi - delta^2))^2 / delta^2, by hand:
    delta 0.1, psi 0.2: (1.959964 * 0.447214 + 0.841621 * 0.435890)^2 / 0.01 = 1.243395^2 / 0.01 = 154.6;
    delta 0.05, psi 0.1: (1.959964 * 0.316228 + 0.841621 * 0.312250)^2 / 0.0025 = 0.882592^2 / 0.0025
    = 311.6."""
    by_hand = (Z_975 * math.sqrt(0.2) + Z_80 * math.sqrt(0.2 - 0.01)) ** 2 / 0.01
    assert by_hand == pytest.approx(154.6, abs=0.05)
    assert stats.pairs_needed(0.1, 0.2) == 155
    assert stats.pairs_needed(-0.1, 0.2) == 155  # the sign of the difference does not matter
    assert stats.pairs_needed(0.05, 0.1) == 312
    assert stats.pairs_needed(0.1, 0.2, power=0.9) > 155 and stats.pairs_needed(0.1, 0.2, level=0.9) < 155
    with pytest.raises(ValueError, match="cannot differ by more than"):
        stats.pairs_needed(0.2, 0.1)
    with pytest.raises(ValueError, match=r"\|delta\| must be in"):
        stats.pairs_needed(0.0, 0.1)
    with pytest.raises(ValueError, match="discordant_rate must be in"):
        stats.pairs_needed(0.1, 0.0)


def test_detectable_difference_inverts_pairs_needed() -> None:
    """43 pairs and a 10% discordance: even all disagreements going one way (delta = 0.1) needs
    (1.959964 * 0.316228 + 0.841621 * 0.3)^2 / 0.01 = 76.1 -> 77 pairs, so nothing is detectable."""
    assert stats.pairs_needed(0.1, 0.1) == 77
    assert stats.detectable_difference(43, 0.1) is None
    assert stats.detectable_difference(77, 0.1) == pytest.approx(0.1, abs=1e-3)
    delta = stats.detectable_difference(43, 0.3)
    assert delta == pytest.approx(0.2276, abs=1e-4)
    assert stats.pairs_needed(delta, 0.3) == 43 and stats.pairs_needed(delta - 1e-3, 0.3) > 43


def test_pairs_needed_for_a_paired_mean() -> None:
    """((z_a + z_b) * sd / delta)^2 = (2.801585 * 0.5 / 0.1)^2 = 14.007925^2 = 196.2 -> 197."""
    assert stats.pairs_needed_for_mean(0.1, 0.5) == 197
    assert stats.pairs_needed_for_mean(-0.1, 0.5) == 197
    assert stats.pairs_needed_for_mean(1.0, 0.0) == 2
    with pytest.raises(ValueError, match="non-zero"):
        stats.pairs_needed_for_mean(0.0, 0.5)
    assert stats.seeds_needed(0.1, 0.1) == 16  # 2 * 2.801585^2 = 15.7


def test_t_quantiles_match_the_table() -> None:
    assert stats.t_quantile(0.975, 1) == pytest.approx(12.706205, abs=1e-5)
    assert stats.t_quantile(0.975, 2) == pytest.approx(4.302653, abs=1e-5)
    assert stats.t_quantile(0.975, 10) == pytest.approx(2.228139, abs=1e-5)
    assert stats.t_quantile(0.025, 4) == pytest.approx(-2.776445, abs=1e-5)
    assert stats.t_cdf(0.0, 5) == 0.5


def test_t_distribution_against_scipy() -> None:
    import scipy.stats as scipy_stats
    for df in (1, 2, 3, 6, 9, 30, 101):
        for p in (0.6, 0.9, 0.975, 0.995):
            assert stats.t_quantile(p, df) == pytest.approx(scipy_stats.t.ppf(p, df), rel=1e-8)
        for t in (-3.0, -0.4, 1.1, 2.6):
            assert stats.t_cdf(t, df) == pytest.approx(scipy_stats.t.cdf(t, df), abs=1e-12)


def test_a_setting_over_three_seeds() -> None:
    """0.6, 0.7, 0.8: mean 0.7, sd 0.1, t(0.975, 2) = 4.302653:
    0.7 +- 4.302653 * 0.1 / sqrt(3) = 0.7 +- 0.248414."""
    interval = stats.across_seeds([0.6, 0.7, 0.8])
    assert interval.value == pytest.approx(0.7) and interval.n == 3
    assert interval.low == pytest.approx(0.451586, abs=1e-6) and interval.high == pytest.approx(
        0.948414, abs=1e-6
    )
    assert "t interval over 3 seeds" in interval.method
    assert not stats.across_seeds([0.6]).bounded
    with pytest.raises(ValueError, match="n=0"):
        stats.across_seeds([])


def test_seed_difference_is_a_welch_t_interval() -> None:
    """0.6, 0.7, 0.8 against 0.4, 0.5, 0.6: 0.2 +- 4.302653 * sqrt(0.01 / 3 + 0.01 / 3) = +- 0.351310."""
    difference = stats.seed_difference([0.6, 0.7, 0.8], [0.4, 0.5, 0.6])
    assert difference.value == pytest.approx(0.2)
    assert difference.low == pytest.approx(-0.151310, abs=1e-6) and difference.high == pytest.approx(
        0.551310, abs=1e-6
    )
    assert not stats.separated(difference)
    assert not stats.seed_difference([0.6], [0.4, 0.5]).bounded


def test_seed_groups_gather_jobs_that_differ_only_in_seed() -> None:
    jobs = {
        "0": {"dpo.beta": 0.1, "seed": 0},
        "1": {"dpo.beta": 0.5, "seed": 0},
        "2": {"dpo.beta": 0.1, "seed": 1},
        "3": {"dpo.beta": 0.5, "seed": 1},
        "4": {"dpo.beta": 0.1, "seed": 2},
        "5": {"dpo.beta": [1], "seed": 0},
    }
    groups = stats.seed_groups(jobs)
    assert [g.members for g in groups] == [("0", "2", "4"), ("1", "3"), ("5",)]
    assert groups[0].settings == (("dpo.beta", 0.1),) and groups[0].seeds == (0, 1, 2)
    assert groups[0].label == "dpo.beta=0.1"
    values = {"0": 0.6, "2": 0.7, "4": 0.8}
    assert stats.across_seeds([values[m] for m in groups[0].members]).value == pytest.approx(0.7)


def test_interval_round_trips_through_json() -> None:
    interval = stats.bootstrap_interval([0.0, 0.5, 1.0, 1.0])
    data = interval.to_dict()
    assert set(data) == {"value", "low", "high", "n", "method"}
    assert Interval.from_dict(data) == interval


def test_levels_and_powers_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError, match="level must be in"):
        stats.bootstrap_interval([1.0, 2.0], level=95)
    with pytest.raises(ValueError, match="power must be in"):
        stats.pairs_needed(0.1, 0.2, power=80)
