"""Task checkers: plain functions ``check(answer, row, cfg) -> CheckResult`` found by name.

The generic ones are registered here (``exact_match``); domain checkers register themselves from their own
module (``finance_number`` in :mod:`dpo_lab.evaluation.finance`); any ``package.module:function`` given as
``eval.checker.name`` works too, so another dataset plugs in its own without touching dpo_lab.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dpo_lab.config.schemas import CheckerSettings
from dpo_lab.errors import ConfigError


@dataclass(frozen=True)
class CheckResult:
    """The verdict on one answer: correct or not, what was read from it, and why."""

    correct: bool
    extracted: Any  # the value read from the answer (a number for numeric checkers); None if nothing
    reason: str  # "match", "wrong", "no number", ...


Checker = Callable[[str, Mapping[str, Any], CheckerSettings], CheckResult]


CHECKERS: dict[str, Checker] = {}


# modules of the domain checkers dpo_lab ships, each registering its checkers when imported
DOMAIN_CHECKERS = ("dpo_lab.evaluation.finance",)


def register_checker(name: str) -> Callable[[Checker], Checker]:
    """Decorator: make a checker selectable as ``eval.checker.name=<name>``."""

    def add(fn: Checker) -> Checker:
        CHECKERS[name] = fn
        return fn

    return add


def get_checker(name: str, key: str = "eval.checker.name") -> Checker:
    """A registered checker, or ``package.module:function``; ConfigError naming ``key`` otherwise."""
    for module in DOMAIN_CHECKERS:  # they register themselves when imported
        importlib.import_module(module)
    if name in CHECKERS:
        return CHECKERS[name]
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            fn = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise ConfigError(key, f"cannot import checker {name!r}: {err}") from None
        if not callable(fn):
            raise ConfigError(key, f"{name!r} is not a function")
        return fn
    allowed = ", ".join(sorted(CHECKERS))
    raise ConfigError(
        key, f"unknown checker {name!r}; registered: {allowed}, or give package.module:function"
    )


@register_checker("exact_match")
def exact_match(answer: str, row: Mapping[str, Any], cfg: CheckerSettings) -> CheckResult:
    """Short-answer tasks: the answer, case- and space-normalised, equals or ends with the truth."""
    truth = _normalise_text(str(row[cfg.answer_column]))
    said = _normalise_text(answer)
    correct = bool(truth) and (said == truth or said.endswith(" " + truth))
    return CheckResult(correct=correct, extracted=answer, reason="match" if correct else "wrong")


def _normalise_text(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())
