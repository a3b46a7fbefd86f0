"""Reward functions: plain functions ``reward(prompt, completion, row=None) -> float`` found by name.

They score sampled completions (``dpo-lab pairs`` ranks them into preference pairs; the reward / KL
evaluation averages them). Registered here: ``sentiment`` (VADER's compound score of the completion, in
[-1, 1]) and ``finance`` (1.0 when the finance checker finds the completion's number right, else 0.0);
any ``package.module:function`` works too. ``row`` is the source row of the prompt (a .jsonl prompts line),
for rewards that need its ground truth.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Mapping
from typing import Any

from dpo_lab.config.schemas import CheckerSettings
from dpo_lab.errors import ConfigError
from dpo_lab.evaluation.finance import finance_number

Reward = Callable[..., float]  # (prompt: str, completion: str, row: Mapping | None = None) -> float

REWARDS: dict[str, Reward] = {}


def register_reward(name: str) -> Callable[[Reward], Reward]:
    """Decorator: make a reward function selectable by ``name`` (``reward=<name>``)."""

    def add(fn: Reward) -> Reward:
        REWARDS[name] = fn
        return fn

    return add


def get_reward(name: str, key: str = "reward") -> Reward:
    """A registered reward, or ``package.module:function``; ConfigError naming ``key`` otherwise."""
    if name in REWARDS:
        return REWARDS[name]
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            fn = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError, ValueError) as err:
            raise ConfigError(key, f"cannot import reward {name!r}: {err}") from None
        if not callable(fn):
            raise ConfigError(key, f"{name!r} is not a function")
        return fn
    allowed = ", ".join(sorted(REWARDS))
    raise ConfigError(key, f"unknown reward {name!r}; registered: {allowed}, or give package.module:function")


@functools.cache
def _vader() -> Any:
    """VADER's analyzer, made once on first use (it reads its lexicon, shipped inside the package)."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


@register_reward("sentiment")
def sentiment(prompt: str, completion: str, row: Mapping[str, Any] | None = None) -> float:
    """VADER's compound sentiment of the completion: the sum of its words' valences (with VADER's rules for
    negation, intensifiers, "but", capitals and "!"), normalised to [-1, 1] by ``s / sqrt(s^2 + 15)``.
    The prompt is not scored (the DPO paper's sentiment task rewards the continuation)."""
    return float(_vader().polarity_scores(completion)["compound"])


@register_reward("finance")
def finance(prompt: str, completion: str, row: Mapping[str, Any] | None = None) -> float:
    """1.0 when the number the completion commits to matches ``row["answer"]`` (the finance checker,
    default tolerances; ``row["unit"] == "percent"`` accepts a fraction too), else 0.0."""
    if row is None or row.get("answer") is None:
        raise ConfigError(
            "reward", "finance needs each prompt's ground truth: a .jsonl prompts file with an answer field"
        )
    return float(finance_number(completion, row, CheckerSettings()).correct)
