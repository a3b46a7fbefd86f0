"""The objective's small rules at their edges: ties, a difference on the top's side of 0 or the other, the
spread a paired mean needs, and the divergence message (the report's verdicts are in test_report_*.py)."""

from __future__ import annotations

import math
import statistics

import pytest

from dpo_lab.config.choices import Direction
from dpo_lab.stats import Interval, pairs_needed, pairs_needed_for_mean
from dpo_lab.sweep.objective import NonFiniteMetricError, _on_top_side, _pairs_needed, better, check_finite


@pytest.mark.parametrize(
    ("a", "b", "direction", "result"),
    [
        (0.6, 0.5, Direction.maximize, True),
        (0.5, 0.6, Direction.maximize, False),
        (0.5, 0.5, Direction.maximize, False),  # a tie is not better
        (0.4, 0.5, Direction.minimize, True),
        (0.6, 0.5, Direction.minimize, False),
        (0.5, 0.5, Direction.minimize, False),
    ],
)
def test_better_is_strict(a: float, b: float, direction: Direction, result: bool) -> None:
    assert better(a, b, direction) is result


def _interval(low: float, high: float) -> Interval:
    return Interval(value=(low + high) / 2, low=low, high=high, n=10, method="test")


@pytest.mark.parametrize(
    ("low", "high", "direction", "top_wins"),
    [
        # contender - top below 0: the top is better when larger is better
        (-0.5, -0.2, Direction.maximize, True),
        (0.2, 0.5, Direction.maximize, False),
        (0.2, 0.5, Direction.minimize, True),
        (-0.5, -0.2, Direction.minimize, False),
        (-0.5, 0.2, Direction.maximize, False),  # includes 0: not separated
        (-0.5, 0.0, Direction.maximize, False),  # a bound at 0 does not separate
        (0.0, 0.5, Direction.minimize, False),
        (0.5, 0.9, Direction.maximize, False),  # far on the contender's side
        (-0.9, -0.5, Direction.minimize, False),
    ],
)
def test_a_difference_is_on_the_tops_side_only_when_separated_from_0(low, high, direction, top_wins) -> None:
    assert _on_top_side(_interval(low, high), direction) is top_wins
    assert not _on_top_side(_interval(-math.inf, math.inf), direction)


def test_pairs_needed_for_a_mean_uses_the_sample_spread_of_the_differences() -> None:
    a = {"1": 0.5, "2": 0.9, "3": 0.2, "4": 0.7}
    b = {"1": 0.1, "2": 0.1, "3": 0.1, "4": 0.1}
    diffs = [a[k] - b[k] for k in a]
    expected = pairs_needed_for_mean(statistics.mean(diffs), statistics.stdev(diffs), level=0.95)
    assert _pairs_needed(a, b, level=0.95) == expected
    assert _pairs_needed(a, b, level=0.8) == pairs_needed_for_mean(
        statistics.mean(diffs), statistics.stdev(diffs), level=0.8
    )
    # two pairs are enough for a spread; one is not
    two = _pairs_needed({"1": 0.5, "2": 0.9}, {"1": 0.1, "2": 0.1}, level=0.95)
    assert two == pairs_needed_for_mean(0.6, statistics.stdev([0.4, 0.8]), level=0.95)
    assert _pairs_needed({"1": 0.5}, {"1": 0.1}, level=0.95) is None
    assert _pairs_needed(b, b, level=0.95) is None  # no difference


def test_pairs_needed_for_0_1_values_is_mcnemars_only_when_both_are_0_1() -> None:
    a = {"1": 1.0, "2": 1.0, "3": 0.0, "4": 1.0}
    b = {"1": 0.0, "2": 1.0, "3": 0.0, "4": 0.0}
    assert _pairs_needed(a, b, level=0.9) == pairs_needed(0.5, 0.5, level=0.9)
    margins = {"1": 0.3, "2": 1.0, "3": 0.0, "4": 0.2}  # a mean, not 0/1 correctness
    diffs = [a[k] - margins[k] for k in a]
    assert _pairs_needed(a, margins, level=0.9) == pairs_needed_for_mean(
        statistics.mean(diffs), statistics.stdev(diffs), level=0.9
    )


def test_the_divergence_message_names_every_non_finite_metric() -> None:
    with pytest.raises(NonFiniteMetricError) as info:
        check_finite({"train_loss": math.inf}, {"eval_loss": math.nan, "eval_rewards/accuracies": 0.5})
    assert str(info.value) == "training diverged: non-finite eval_loss, train_loss"
    check_finite({"train_loss": 0.5}, {"eval_loss": 0.4})
    check_finite({}, {"eval_loss": 0.4})
