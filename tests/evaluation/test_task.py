"""Task evaluation, pure parts: the finance number checker on hand-written answers, the checker registry,
and the held-out prompts joined to their ground truth."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest

from dpo_lab.config.resolvers import asset_path
from dpo_lab.config.schemas import CheckerSettings, DataSettings, TaskEvalSettings
from dpo_lab.data.loading import load_preference_data
from dpo_lab.errors import ConfigError
from dpo_lab.evaluation.checkers import CheckResult, get_checker
from dpo_lab.evaluation.finance import check_number, final_number, finance_number, find_numbers
from dpo_lab.evaluation.prompts import load_task_prompts
from dpo_lab.evaluation.task import accuracy, score

# (answer, truth, percent, correct, value read from the answer)
HAND_WRITTEN = [
    # right number, with currency and thousands separators
    ("The answer is $1,330,528.57.", 1330528.57, False, True, 1330528.57),
    # right number written without separators or currency
    ("FV = 1330528.57", 1330528.57, False, True, 1330528.57),
    # wrong number
    ("The answer is $5,216,527,944,030,048.00.", 1330528.57, False, False, 5216527944030048.0),
    # no number at all
    ("I cannot compute that without more information.", 1330528.57, False, False, None),
    # the committed answer wins over intermediate numbers, and over a trailing unrelated number
    (
        "Here i = 0.08/12 = 0.006667 and n = 348. The answer is $975.00, over 29 years.",
        975.0,
        False,
        True,
        975.0,
    ),
    # an earlier correct intermediate does not rescue a wrong final answer
    ("Real return = 11.25% - 1.75% = 9.34%... The answer is 9.50%.", 9.34, True, False, 9.50),
    # no "answer is": the last number counts
    ("So the monthly payment comes to $1,399.19", 1399.19, False, True, 1399.19),
    # rounding to the cent is forgiven (abs_tol 0.01), and so is 0.07% off (rel_tol 0.1%); 0.7% off is not
    ("The answer is $1,399.19.", 1399.186, False, True, 1399.19),
    ("The answer is $1,398.19.", 1399.19, False, True, 1398.19),
    ("The answer is $1,389.19.", 1399.19, False, False, 1389.19),
    # percentages: with a % sign, as "percent", and as a bare fraction for a percentage truth
    ("The answer is 9.34%.", 9.34, True, True, 9.34),
    ("The answer is 9.34 percent.", 9.34, True, True, 9.34),
    ("The answer is 0.0934.", 9.34, True, True, 0.0934),
    ("The answer is 9.3%.", 9.34, True, False, 9.3),
    # a bare fraction is not a percentage when the truth is not one
    ("The answer is 0.0934.", 9.34, False, False, 0.0934),
    # other currencies, negative amounts, scale words
    ("The answer is €2,500.", 2500.0, False, True, 2500.0),
    ("The answer is USD 12,000.50", 12000.5, False, True, 12000.5),
    ("The NPV is -$1,234.56.", -1234.56, False, True, -1234.56),
    ("The answer is $-1,234.56.", -1234.56, False, True, -1234.56),
    ("The answer is $1.2 million.", 1_200_000.0, False, True, 1_200_000.0),
    ("The answer is $45k.", 45_000.0, False, True, 45_000.0),
    # a hyphen inside a range or a compound word is not a minus sign
    ("A 3-year loan at 5-10 percent costs about 250 units", 250.0, False, True, 250.0),
    ("The answer is 291 units.", 291.0, False, True, 291.0),
    ("The answer is 16.65 years.", 16.65, False, True, 16.65),
]


@pytest.mark.parametrize(("answer", "truth", "percent", "correct", "read"), HAND_WRITTEN)
def test_finance_checker_hand_written(answer: str, truth: float, percent: bool, correct: bool, read) -> None:
    result = check_number(answer, truth, percent=percent)
    assert result.correct is correct, result
    assert result.extracted == (pytest.approx(read) if read is not None else None)
    assert result.reason == ("match" if correct else "no number" if read is None else "wrong number")


def test_tolerance_is_configurable() -> None:
    answer = "The answer is 9.3%."
    assert not check_number(answer, 9.34, percent=True).correct  # 0.4% off, default 0.1%
    assert check_number(answer, 9.34, percent=True, rel_tol=0.01).correct
    assert not check_number("The answer is $1,400.", 1399.19, abs_tol=0.01, rel_tol=0).correct
    assert check_number("The answer is $1,400.", 1399.19, abs_tol=1.0, rel_tol=0).correct
    cfg = CheckerSettings(rel_tol=0.01)
    assert finance_number(answer, {"answer": 9.34, "unit": "percent"}, cfg).correct


def test_find_numbers_reads_each_number_once() -> None:
    numbers = find_numbers("Put $1,000 at 5% for 3 years: (1.05)^3 = 1.157625, so $1,157.63.")
    assert [n.value for n in numbers] == [1000.0, 5.0, 3.0, 1.05, 3.0, 1.157625, 1157.63]
    assert [n.percent for n in numbers] == [False, True, False, False, False, False, False]
    assert final_number("no digits here") is None


def test_checker_on_the_embedded_data() -> None:
    """Every chosen (correct) answer of the held-out split passes, every rejected (mistaken) one fails."""
    rows = [json.loads(line) for line in (open(asset_path("finance") + "/test.jsonl"))]
    cfg = CheckerSettings()
    assert len(rows) == 200
    assert all(finance_number(r["chosen"], r, cfg).correct for r in rows)
    assert not any(finance_number(r["rejected"], r, cfg).correct for r in rows)


def test_ground_truth_given_as_text() -> None:
    cfg = CheckerSettings()
    assert finance_number("The answer is $1,234.50", {"answer": "$1,234.50"}, cfg).correct
    with pytest.raises(ConfigError, match="exactly one number"):
        finance_number("The answer is 3", {"answer": "three"}, cfg)


def always_right(answer: str, row: Mapping[str, Any], cfg: CheckerSettings) -> CheckResult:
    """A checker plugged in by import path (used below)."""
    return CheckResult(correct=True, extracted=len(answer), reason="match")


def test_checker_registry() -> None:
    assert get_checker("finance_number") is finance_number
    assert get_checker("tests.evaluation.test_task:always_right") is always_right
    with pytest.raises(ConfigError) as info:
        get_checker("financ_number")
    assert info.value.key == "eval.checker.name" and "finance_number" in str(info.value)
    with pytest.raises(ConfigError, match="cannot import"):
        get_checker("tests.evaluation.test_task:no_such_function")
    exact = get_checker("exact_match")
    cfg = CheckerSettings(name="exact_match", answer_column="label")
    assert exact("The answer is Paris.", {"label": "paris"}, cfg).correct
    assert not exact("London", {"label": "Paris"}, cfg).correct


def _held_out(n: int) -> tuple[DataSettings, Any]:
    data_cfg = DataSettings(path=asset_path("finance"), max_train_samples=1, max_eval_samples=n)
    return data_cfg, load_preference_data(data_cfg, seed=0).eval


def test_task_prompts_carry_their_ground_truth() -> None:
    data_cfg, held_out = _held_out(5)
    prompts = load_task_prompts(TaskEvalSettings(num_prompts=3), data_cfg, held_out)
    rows = [json.loads(line) for line in open(asset_path("finance") + "/test.jsonl")][:3]
    assert len(prompts) == 3
    for prompt, row in zip(prompts, rows, strict=True):
        assert prompt.text == row["prompt"] and prompt.messages[-1]["role"] == "user"
        assert prompt.row["answer"] == row["answer"] and prompt.chosen == row["chosen"]
    records = score(prompts, [p.chosen for p in prompts], CheckerSettings(name="finance_number"))
    assert [r["correct"] for r in records] == [True, True, True] and accuracy(records) == 1.0
    plugged = score(prompts, ["x", "y", "z"], CheckerSettings(name="tests.evaluation.test_task:always_right"))
    assert accuracy(plugged) == 1.0 and plugged[0]["extracted"] == 1


def test_missing_ground_truth_is_a_config_error() -> None:
    data_cfg, held_out = _held_out(2)
    cfg = TaskEvalSettings(checker=CheckerSettings(name="finance_number", answer_column="solution"))
    with pytest.raises(ConfigError) as info:
        load_task_prompts(cfg, data_cfg, held_out)
    assert info.value.key == "eval.checker.answer_column" and "'solution'" in str(info.value)
    # eval.checker.name=auto (the default): no such column means sample generations only
    auto = load_task_prompts(TaskEvalSettings(checker=CheckerSettings(answer_column="solution")), data_cfg,
                             held_out)  # fmt: skip
    assert len(auto) == 2 and auto[0].row == {}
    samples_only = TaskEvalSettings(checker=CheckerSettings(name=None))
    prompts = load_task_prompts(samples_only, data_cfg, held_out)
    assert len(prompts) == 2 and prompts[0].row == {}
    assert load_task_prompts(TaskEvalSettings(enabled=False), data_cfg, held_out) == []
