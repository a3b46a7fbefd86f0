"""Answers generated ahead of a job's task evaluation: a packed sweep (dpo_lab.packed.plan) generates the
answers of all its jobs together and hands each job its own here, right before the job runs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_answers: dict[str, Any] | None = None  # set for the one job about to run, taken (once) by its evaluation


def lend_answers(answers: dict[str, Any] | None) -> None:
    """``{"conversations", "before", "after", "generation_s"}`` for the next task evaluation, or None."""
    global _answers
    _answers = answers


def take_answers(conversations: Sequence[Any]) -> tuple[list[str], list[str], float] | None:
    """(before, after, seconds) generated ahead for exactly these conversations, or None (then the job
    generates its own). The answers are taken: a second evaluation generates again."""
    global _answers
    answers, _answers = _answers, None
    if answers is None or list(answers["conversations"]) != list(conversations):
        return None
    return answers["before"], answers["after"], answers["generation_s"]
