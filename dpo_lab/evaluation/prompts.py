"""The held-out prompts of the task evaluation, each with the stored row that holds its ground truth."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from datasets import Dataset

from dpo_lab.config.schemas import CheckerSettings, DataSettings, TaskEvalSettings
from dpo_lab.data.loading import load_held_out_rows
from dpo_lab.errors import ConfigError
from dpo_lab.evaluation.checkers import get_checker
from dpo_lab.evaluation.generation import Messages

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskPrompt:
    """One held-out prompt: the chat messages the model answers, the pair's answers, the source row."""

    messages: Messages
    chosen: str
    rejected: str
    row: dict[str, Any]  # the held-out row as stored (ground truth and any other columns); {} if unknown

    @property
    def text(self) -> str:
        """The last user turn (what a table shows as the prompt)."""
        return next((m["content"] for m in reversed(self.messages) if m["role"] == "user"), "")


def load_task_prompts(
    cfg: TaskEvalSettings,
    data_cfg: DataSettings,
    held_out: Dataset,
    stored_rows: Callable[[], Sequence[Mapping[str, Any]]] | None = None,
) -> list[TaskPrompt]:
    """The prompts of the task evaluation (none when it is off); called before training, so that an
    unknown checker or missing ground truth stops the run before any step is paid for. ``stored_rows``
    gives the held-out rows as stored (``PreferenceData.held_out_rows``, kept when the data was loaded);
    without it they are read from the source again."""
    if not cfg.enabled:
        return []
    cfg = resolve_checker(cfg, stored_rows, data_cfg)
    raw = None
    if cfg.checker.name is not None:
        get_checker(cfg.checker.name)
        raw = stored_rows() if stored_rows is not None else load_held_out_rows(data_cfg)
    return task_prompts(held_out, raw, data_cfg, cfg.num_prompts, cfg.checker)


AUTO = "auto"  # eval.checker.name: the finance checker where the held-out rows carry a ground truth
AUTO_CHECKER = "finance_number"


def resolve_checker(
    cfg: TaskEvalSettings,
    stored_rows: Callable[[], Sequence[Mapping[str, Any]]] | None,
    data_cfg: DataSettings,
) -> TaskEvalSettings:
    """``eval.checker.name=auto`` (the default) made concrete from the data: the finance checker where the
    held-out rows carry the ground-truth column (``eval.checker.answer_column``), else no checker (sample
    generations only), said in the log. A checker named explicitly is kept: missing ground truth then stops
    the run, as it should."""
    if not cfg.enabled or cfg.checker.name != AUTO:
        return cfg
    rows = stored_rows() if stored_rows is not None else load_held_out_rows(data_cfg)
    column = cfg.checker.answer_column
    has_truth = any(row.get(column) is not None for row in rows)
    name = AUTO_CHECKER if has_truth else None
    log.info(
        "task evaluation (eval.checker.name=auto): %s",
        f"the held-out rows carry {column!r}: checker {name}" if has_truth
        else f"the held-out rows carry no {column!r} column: sample generations only, no accuracy",
    )  # fmt: skip
    return dataclasses.replace(cfg, checker=dataclasses.replace(cfg.checker, name=name))


def task_prompts(
    held_out: Dataset,
    raw_rows: Sequence[Mapping[str, Any]] | None,
    data_cfg: DataSettings,
    num_prompts: int,
    checker: CheckerSettings,
) -> list[TaskPrompt]:
    """The first ``num_prompts`` normalised held-out pairs, each joined by its prompt text to the stored
    row that holds its ground truth (``raw_rows``; needed only when a checker is set)."""
    rows = held_out.select(range(min(num_prompts, len(held_out))))
    by_prompt = _rows_by_prompt(raw_rows, data_cfg, checker) if checker.name is not None else {}
    prompts = []
    for i, pair in enumerate(rows):
        prompt = TaskPrompt(
            messages=list(pair["prompt"]),
            chosen=_content(pair["chosen"]),
            rejected=_content(pair["rejected"]),
            row={},
        )
        if checker.name is not None:
            row = by_prompt.get(prompt.text.strip())
            if row is None:
                raise ConfigError(
                    "eval.checker.answer_column",
                    f"held-out pair {i}: no stored row with its prompt and a {checker.answer_column!r} "
                    "value, so no ground truth to check it against",
                )
            prompt = TaskPrompt(prompt.messages, prompt.chosen, prompt.rejected, row)
        prompts.append(prompt)
    return prompts


def _rows_by_prompt(
    raw: Sequence[Mapping[str, Any]] | None, data_cfg: DataSettings, checker: CheckerSettings
) -> dict[str, dict]:
    """Stored rows that hold a prompt and a ground truth, by prompt text (the last user turn of a
    conversational prompt); the first row wins when a prompt repeats."""
    column, truth = data_cfg.columns.prompt, checker.answer_column
    by_prompt: dict[str, dict] = {}
    for row in raw or []:
        key = _prompt_key(row.get(column))
        if key is not None and row.get(truth) is not None:
            by_prompt.setdefault(key, dict(row))
    if not by_prompt:
        have = ", ".join(sorted(raw[0])) if raw else "no rows"
        raise ConfigError(
            "eval.checker.answer_column",
            f"checker {checker.name} needs held-out columns {column!r} (the prompt, data.columns.prompt) and "
            f"{truth!r} (the ground truth); the data has: {have}. Use eval=samples for data without ground "
            "truth",
        )
    return by_prompt


def _prompt_key(value: Any) -> str | None:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list):
        users = [m.get("content") for m in value if isinstance(m, dict) and m.get("role") == "user"]
        if users and isinstance(users[-1], str):
            return users[-1].strip()
    return None


def _content(value: Any) -> str:
    """A response as text: a string, or the content of the last message of a message list."""
    if isinstance(value, str):
        return value
    return value[-1]["content"] if value else ""
