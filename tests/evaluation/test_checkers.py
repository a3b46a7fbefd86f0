"""The checkers on near misses: a substring or a neighbouring word of the truth, a number at the edge of its
tolerance and just past it, a sign, a percentage against a fraction, a number inside a word. The easy cases
are in test_task.py."""

from __future__ import annotations

import math

import pytest

from dpo_lab.config.schemas import CheckerSettings
from dpo_lab.errors import ConfigError
from dpo_lab.evaluation.checkers import CHECKERS, exact_match, get_checker, register_checker
from dpo_lab.evaluation.finance import (
    check_number,
    final_number,
    finance_number,
    find_numbers,
    numbers_match,
    parse_truth,
)

LABEL = CheckerSettings(name="exact_match", answer_column="label")


@pytest.mark.parametrize(
    ("answer", "truth", "correct"),
    [
        ("Paris", "Paris", True),
        ("  PARIS.  ", "paris", True),  # case, spaces and punctuation do not count
        ("The capital is Paris!", "Paris", True),  # the answer ends with the truth, as a word
        ("U.S.A.", "u s a", True),
        ("Parisian", "Paris", False),  # a longer word that starts with the truth
        ("Paris, France", "Paris", False),  # the truth, then more
        ("ParisParis", "Paris", False),
        ("Saint-Paris", "Paris", True),  # the hyphen is punctuation: "saint paris" ends with the word
        ("comparis", "Paris", False),  # the truth at the end of a longer word: no word boundary
        ("Pari", "Paris", False),  # a prefix of the truth
        ("", "Paris", False),
        ("anything", "", False),  # an empty truth matches nothing, an empty answer included
        ("", "", False),
        ("...", "?", False),  # punctuation only normalises to empty
    ],
)
def test_exact_match_near_misses(answer: str, truth: str, correct: bool) -> None:
    result = exact_match(answer, {"label": truth}, LABEL)
    assert result.correct is correct
    assert result.reason == ("match" if correct else "wrong") and result.extracted == answer


@pytest.mark.parametrize(
    ("value", "truth", "rel_tol", "abs_tol", "match"),
    [
        # rel_tol * |truth| = 1.0 is the larger tolerance: exactly at it passes, past it fails, both sides
        (1001.0, 1000.0, 0.001, 0.01, True),
        (999.0, 1000.0, 0.001, 0.01, True),
        (1001.0009765625, 1000.0, 0.001, 0.01, False),
        (998.9990234375, 1000.0, 0.001, 0.01, False),
        # a negative truth: the tolerance is relative to its size
        (-1001.0, -1000.0, 0.001, 0.01, True),
        (-1001.0009765625, -1000.0, 0.001, 0.01, False),
        # abs_tol = 0.5 is the larger one for a small truth
        (1.5, 1.0, 0.001, 0.5, True),
        (0.5, 1.0, 0.001, 0.5, True),
        (1.5000001, 1.0, 0.001, 0.5, False),
        # zero tolerances: only the exact value
        (2.0, 2.0, 0.0, 0.0, True),
        (2.0000001, 2.0, 0.0, 0.0, False),
        # a truth of zero leaves only abs_tol
        (0.01, 0.0, 0.5, 0.01, True),
        (0.0101, 0.0, 0.5, 0.01, False),
        # the sign counts
        (-5.0, 5.0, 0.001, 0.01, False),
        # a non-finite answer never matches
        (math.inf, 1e308, 1.0, 1.0, False),
        (math.nan, 1.0, 1.0, 1.0, False),
        (-math.inf, -1.0, 1.0, 1e300, False),
    ],
)
def test_numbers_match_at_and_past_the_tolerance(value, truth, rel_tol, abs_tol, match) -> None:
    assert numbers_match(value, truth, rel_tol, abs_tol) is match


@pytest.mark.parametrize(
    ("text", "values", "percents"),
    [
        ("COVID-19 cost $5", [19.0, 5.0], [False, False]),  # a hyphen after a word is no minus sign
        ("a 3-5 year loan", [3.0, 5.0], [False, False]),
        ("-5 and \u22125 and $-5 and -$5", [-5.0, -5.0, -5.0, -5.0], [False] * 4),
        ("A1 v2.0 x3 B52s", [], []),  # digits inside a word are not a number
        ("5 months, 10 km, 3 kg", [5.0, 10.0, 3.0], [False] * 3),  # no scale word inside a longer word
        ("5m, 2 bn, 1.5 Billion, 4k, 7 thousand", [5e6, 2e9, 1.5e9, 4e3, 7e3], [False] * 5),
        ("9.34 percent, 9.34 per cent, 9.34%, 9.34 percentage", [9.34] * 4, [True, True, True, False]),
        ("1,330,528.57 and 1,33", [1330528.57, 1.0], [False, False]),  # a comma needs three digits after it
        ("1,234,5", [1234.0], [False]),
        (".5 and 0.5", [0.5, 0.5], [False, False]),
        ("\u00a3100 \u20ac200 \u00a5300 USD 400 EUR 500 GBP 600 US$700 CA$800",
         [100.0 * i for i in range(1, 9)], [False] * 8),
    ],
)  # fmt: skip
def test_find_numbers_near_misses(text: str, values: list[float], percents: list[bool]) -> None:
    numbers = find_numbers(text)
    assert [n.value for n in numbers] == pytest.approx(values)
    assert [n.percent for n in numbers] == percents


@pytest.mark.parametrize(
    ("answer", "value"),
    [
        ("Step 1 gives 3. The answer is: 42, after 7 steps", 42.0),
        ("answer = 12", 12.0),
        ("Final answer: -3.5", -3.5),
        ("The answer is 4. Wait, no: the answer is 5 (not 6)", 5.0),  # the last "answer is" counts
        ("The answers: 1 and 2, so 3", 3.0),  # "answers" is not "answer": the last number
        ("The answer is unknown; maybe 8 or 9", 8.0),  # the first number after it
        ("The answer is unknown", None),
        ("3 then the answer is nothing", 3.0),  # nothing after the marker: the last number before it
    ],
)
def test_final_number_near_misses(answer: str, value: float | None) -> None:
    number = final_number(answer)
    assert (number.value if number else None) == value


def test_the_numbers_keep_their_text() -> None:
    numbers = find_numbers("Pay -$1,330,528.57 or 9.34 percent, about 1.2 million")
    assert [n.text for n in numbers] == ["-$1,330,528.57", "9.34 percent", "1.2 million"]


def test_a_truth_is_not_a_percentage_unless_said() -> None:
    assert not check_number("The answer is 0.0934.", 9.34).correct
    assert check_number("The answer is 0.0934.", 9.34, percent=True).correct


@pytest.mark.parametrize(
    ("answer", "truth", "percent", "correct"),
    [
        ("The answer is 9.34%.", 9.34, True, True),
        ("The answer is 0.0934.", 9.34, True, True),  # a fraction for a percentage truth
        ("The answer is 0.0934%.", 9.34, True, False),  # written as a percentage, it means 0.0934%
        ("The answer is 934.", 9.34, True, False),  # the fraction is scaled up, never down
        ("The answer is 9.34%.", 0.0934, False, False),  # a percentage is not read as a fraction
        ("The answer is 0.0934.", 9.34, False, False),
        ("The answer is -9.34%.", 9.34, True, False),
        ("The answer is -0.0934.", -9.34, True, True),
    ],
)
def test_percent_against_fraction(answer: str, truth: float, percent: bool, correct: bool) -> None:
    assert check_number(answer, truth, percent=percent).correct is correct


def test_the_finance_checker_reads_its_tolerances_and_the_unit_from_config_and_row() -> None:
    answer, truth = "The answer is $1,400.", {"answer": 1399.19}
    # rel_tol alone: 1% of 1399.19 covers 0.81 off; abs_tol alone: 1.0 covers it; neither when 0.5 / 0.0001
    assert finance_number(answer, truth, CheckerSettings(rel_tol=0.01, abs_tol=0.0)).correct
    assert finance_number(answer, truth, CheckerSettings(rel_tol=0.0, abs_tol=1.0)).correct
    assert not finance_number(
        answer, {"answer": 1399.19}, CheckerSettings(rel_tol=0.0001, abs_tol=0.5)
    ).correct
    assert not finance_number(answer, truth, CheckerSettings(rel_tol=0.0, abs_tol=0.5)).correct
    cfg = CheckerSettings(answer_column="truth")
    assert finance_number("It is 0.05", {"truth": 5.0, "unit": "percent"}, cfg).correct
    assert not finance_number("It is 0.05", {"truth": 5.0, "unit": "dollars"}, cfg).correct
    assert not finance_number("It is 0.05", {"truth": 5.0}, cfg).correct
    with pytest.raises(ConfigError) as info:
        finance_number("It is 5", {"truth": None}, cfg)
    assert info.value.key == "eval.checker.answer_column (truth)"


@pytest.mark.parametrize(
    ("value", "number"),
    [(5, 5.0), (2.5, 2.5), ("$1,234.50", 1234.5), ("-7%", -7.0), ("  12 ", 12.0), ("1.2 million", 1.2e6)],
)
def test_parse_truth(value, number: float) -> None:
    parsed = parse_truth(value, "k")
    assert parsed == number and isinstance(parsed, float)


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (True, "must be a number"),
        (None, "must be a number"),
        ("", "exactly one number"),
        ("one", "exactly one number"),
        ("1 or 2", "exactly one number"),
    ],
)
def test_parse_truth_refuses(value, says: str) -> None:
    with pytest.raises(ConfigError, match=says) as info:
        parse_truth(value, "the.key")
    assert info.value.key == "the.key"


def not_a_checker() -> None:
    pass


NOT_CALLABLE = 3


def test_get_checker_near_misses() -> None:
    assert get_checker("exact_match") is exact_match
    with pytest.raises(ConfigError, match="unknown checker 'exact'") as info:
        get_checker("exact", key="checker.name")
    assert info.value.key == "checker.name" and "exact_match, finance_number" in str(info.value)
    with pytest.raises(ConfigError, match="is not a function") as info:
        get_checker(f"{__name__}:NOT_CALLABLE")
    assert info.value.key == "eval.checker.name"
    with pytest.raises(ConfigError, match="cannot import checker 'no_such_module_x:f'") as info:
        get_checker("no_such_module_x:f", key="compare.checker.name")
    assert info.value.key == "compare.checker.name"
    assert get_checker(f"{__name__}:not_a_checker") is not_a_checker


def test_register_checker_adds_the_function_unchanged(monkeypatch) -> None:
    monkeypatch.setattr("dpo_lab.evaluation.checkers.CHECKERS", dict(CHECKERS))

    def mine(answer, row, cfg):
        return None

    assert register_checker("mine")(mine) is mine
    assert get_checker("mine") is mine
