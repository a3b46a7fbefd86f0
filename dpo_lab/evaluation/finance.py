"""The finance checker: read the number an answer commits to (``$1,330,528.57``, ``-$12.50``, ``9.34%``,
``1.2 million``) and compare it with the ground truth within a tolerance. Pure functions."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dpo_lab.config.schemas import CheckerSettings
from dpo_lab.errors import ConfigError
from dpo_lab.evaluation.checkers import CheckResult, register_checker

_SCALES = {"thousand": 1e3, "k": 1e3, "million": 1e6, "m": 1e6, "mn": 1e6, "billion": 1e9, "bn": 1e9}


_NUMBER = re.compile(
    r"""
    (?<![\w.,])                                   # not inside a word or another number
    (?P<sign1>[-\u2212])?\s?
    (?P<currency>[$\u20ac\u00a3\u00a5]|(?:US|CA|AU)?\$|USD|EUR|GBP)?\s?
    (?P<sign2>[-\u2212])?
    (?P<number>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)
    (?:\s?(?P<scale>thousand|million|billion|mn|bn|k|m)\b)?
    (?P<percent>\s?(?:%|percent\b|per\ cent\b))?
    """,
    re.VERBOSE | re.IGNORECASE,
)


_FINAL = re.compile(r"\b(?:the\s+)?(?:final\s+)?answer\s*(?:is|:|=)", re.IGNORECASE)


@dataclass(frozen=True)
class Number:
    """A number as written in text: its value (thousands separators and currency removed, scale words
    applied) and whether it was a percentage (``9.34%`` has value 9.34)."""

    value: float
    percent: bool
    text: str


def find_numbers(text: str) -> list[Number]:
    """Every number in ``text``, in order: ``$1,330,528.57``, ``-$12.50``, ``9.34%``, ``1.2 million``."""
    numbers = []
    for m in _NUMBER.finditer(text):
        value = float(m.group("number").replace(",", ""))
        scale = (m.group("scale") or "").lower()
        if scale:
            value *= _SCALES[scale]
        if m.group("sign1") or m.group("sign2"):
            value = -value
        numbers.append(Number(value=value, percent=bool(m.group("percent")), text=m.group(0).strip()))
    return numbers


def final_number(answer: str) -> Number | None:
    """The number the answer commits to: the first one after the last "the answer is" (or "answer:"),
    else the last number in the text; None when there is no number."""
    finals = list(_FINAL.finditer(answer))
    if finals:
        after = find_numbers(answer[finals[-1].end() :])
        if after:
            return after[0]
    numbers = find_numbers(answer)
    return numbers[-1] if numbers else None


def numbers_match(value: float, truth: float, rel_tol: float, abs_tol: float) -> bool:
    """|value - truth| <= max(abs_tol, rel_tol * |truth|)."""
    return math.isfinite(value) and abs(value - truth) <= max(abs_tol, rel_tol * abs(truth))


def check_number(
    answer: str, truth: float, *, percent: bool = False, rel_tol: float = 0.001, abs_tol: float = 0.01
) -> CheckResult:
    """Is the number the answer commits to equal to ``truth`` within tolerance? For a percentage truth
    (``percent=True``, truth 9.34 meaning 9.34%) a bare fraction is accepted too: ``0.0934``."""
    number = final_number(answer)
    if number is None:
        return CheckResult(correct=False, extracted=None, reason="no number")
    candidates = [number.value]
    if percent and not number.percent:
        candidates.append(number.value * 100)
    correct = any(numbers_match(v, truth, rel_tol, abs_tol) for v in candidates)
    return CheckResult(correct=correct, extracted=number.value, reason="match" if correct else "wrong number")


def parse_truth(value: Any, key: str) -> float:
    """The stored ground truth as a number (a float, or text such as ``"$1,234.50"``)."""
    if isinstance(value, bool) or value is None:
        raise ConfigError(key, f"ground truth must be a number, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    numbers = find_numbers(str(value))
    if len(numbers) != 1:
        raise ConfigError(key, f"ground truth must hold exactly one number, got {value!r}")
    return numbers[0].value


@register_checker("finance_number")
def finance_number(answer: str, row: Mapping[str, Any], cfg: CheckerSettings) -> CheckResult:
    """The finance pairs' checker: the answer's final number against ``row[answer_column]``; rows whose
    ``unit`` is ``percent`` store the percentage (9.34 for 9.34%)."""
    truth = parse_truth(row[cfg.answer_column], f"eval.checker.answer_column ({cfg.answer_column})")
    return check_number(
        answer, truth, percent=row.get("unit") == "percent", rel_tol=cfg.rel_tol, abs_tol=cfg.abs_tol
    )
