"""Task evaluation: answer held-out prompts, score the answers against the ground truth, and record
accuracy and sample generations before (adapter disabled) and after training.

Checkers are plain functions ``check(answer, row, cfg) -> CheckResult`` found by name: the ones
registered here (``finance_number``, ``exact_match``) or any ``package.module:function`` given as
``eval.checker.name``, so another dataset plugs in its own without touching dpo_lab.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from dpo_lab.config.schemas import CheckerConfig, ConfigError, DataConfig, TaskEvalConfig
from dpo_lab.data.loading import load_held_out_rows
from dpo_lab.evaluation.ahead import take_answers
from dpo_lab.evaluation.generation import Messages, generate_answers
from dpo_lab.model.loading import adapter_disabled
from dpo_lab.runs.layout import RunLayout
from dpo_lab.track.tracker import Tracker

log = logging.getLogger(__name__)

SAMPLE_COLUMNS = ["prompt", "chosen", "rejected", "answer", "truth", "extracted", "correct"]


@dataclass(frozen=True)
class CheckResult:
    """The verdict on one answer: correct or not, what was read from it, and why."""

    correct: bool
    extracted: Any  # the value read from the answer (a number for numeric checkers); None if nothing
    reason: str  # "match", "wrong", "no number", ...


Checker = Callable[[str, Mapping[str, Any], CheckerConfig], CheckResult]
CHECKERS: dict[str, Checker] = {}


def register_checker(name: str) -> Callable[[Checker], Checker]:
    """Decorator: make a checker selectable as ``eval.checker.name=<name>``."""

    def add(fn: Checker) -> Checker:
        CHECKERS[name] = fn
        return fn

    return add


def get_checker(name: str, key: str = "eval.checker.name") -> Checker:
    """A registered checker, or ``package.module:function``; ConfigError naming ``key`` otherwise."""
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


# ---------------------------------------------------------------------------------------------------------
# The finance number checker (pure functions)

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
def finance_number(answer: str, row: Mapping[str, Any], cfg: CheckerConfig) -> CheckResult:
    """The finance pairs' checker: the answer's final number against ``row[answer_column]``; rows whose
    ``unit`` is ``percent`` store the percentage (9.34 for 9.34%)."""
    truth = parse_truth(row[cfg.answer_column], f"eval.checker.answer_column ({cfg.answer_column})")
    return check_number(
        answer, truth, percent=row.get("unit") == "percent", rel_tol=cfg.rel_tol, abs_tol=cfg.abs_tol
    )


@register_checker("exact_match")
def exact_match(answer: str, row: Mapping[str, Any], cfg: CheckerConfig) -> CheckResult:
    """Short-answer tasks: the answer, case- and space-normalised, equals or ends with the truth."""
    truth = _normalise_text(str(row[cfg.answer_column]))
    said = _normalise_text(answer)
    correct = bool(truth) and (said == truth or said.endswith(" " + truth))
    return CheckResult(correct=correct, extracted=answer, reason="match" if correct else "wrong")


def _normalise_text(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


# ---------------------------------------------------------------------------------------------------------
# Held-out prompts with their ground truth


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
    cfg: TaskEvalConfig,
    data_cfg: DataConfig,
    held_out: Dataset,
    stored_rows: Callable[[], Sequence[Mapping[str, Any]]] | None = None,
) -> list[TaskPrompt]:
    """The prompts of the task evaluation (none when it is off); called before training, so that an
    unknown checker or missing ground truth stops the run before any step is paid for. ``stored_rows``
    gives the held-out rows as stored (``PreferenceData.held_out_rows``, kept when the data was loaded);
    without it they are read from the source again."""
    if not cfg.enabled:
        return []
    raw = None
    if cfg.checker.name is not None:
        get_checker(cfg.checker.name)
        raw = stored_rows() if stored_rows is not None else load_held_out_rows(data_cfg)
    return task_prompts(held_out, raw, data_cfg, cfg.num_prompts, cfg.checker)


def task_prompts(
    held_out: Dataset,
    raw_rows: Sequence[Mapping[str, Any]] | None,
    data_cfg: DataConfig,
    num_prompts: int,
    checker: CheckerConfig,
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
    raw: Sequence[Mapping[str, Any]] | None, data_cfg: DataConfig, checker: CheckerConfig
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


# ---------------------------------------------------------------------------------------------------------
# Before / after training


def score(
    prompts: Sequence[TaskPrompt], answers: Sequence[str], checker: CheckerConfig
) -> list[dict[str, Any]]:
    """One record per prompt: prompt, chosen, rejected, the model's answer and, with a checker, the
    ground truth, the value read from the answer and whether it is correct."""
    check = get_checker(checker.name) if checker.name is not None else None
    records = []
    for prompt, answer in zip(prompts, answers, strict=True):
        record: dict[str, Any] = {
            "prompt": prompt.text,
            "chosen": prompt.chosen,
            "rejected": prompt.rejected,
            "answer": answer,
        }
        if check is not None:
            result = check(answer, prompt.row, checker)
            record.update(
                truth=prompt.row.get(checker.answer_column),
                extracted=result.extracted,
                correct=result.correct,
                reason=result.reason,
            )
        records.append(record)
    return records


def accuracy(records: Sequence[Mapping[str, Any]]) -> float:
    """Fraction of records marked correct."""
    return sum(bool(r["correct"]) for r in records) / len(records) if records else 0.0


def evaluate_task(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[TaskPrompt],
    cfg: TaskEvalConfig,
    *,
    run_dir: Path,
    tracker: Tracker,
    step: int,
    seed: int,
) -> dict[str, Any]:
    """Answer ``prompts`` with the trained adapter (after) and with it disabled (before, the base model);
    write samples_before.jsonl / samples_after.jsonl, log both as W&B tables, return the accuracies."""
    if not cfg.enabled or not prompts:
        return {}
    started = time.perf_counter()
    conversations = [p.messages for p in prompts]
    packed = take_answers(conversations)  # generated together with the other jobs of a packed sweep
    if packed is not None:
        before, after, seconds = packed
    else:
        after = generate_answers(model, tokenizer, conversations, cfg.generation, seed=seed)
        with adapter_disabled(model):
            before = generate_answers(model, tokenizer, conversations, cfg.generation, seed=seed)
        seconds = time.perf_counter() - started
    result: dict[str, Any] = {
        "num_prompts": len(prompts),
        "checker": cfg.checker.name,
        "generation_s": seconds,
    }
    for name, answers, at_step in (("before", before, 0), ("after", after, step)):
        records = score(prompts, answers, cfg.checker)
        write_jsonl(RunLayout(run_dir).samples(name), records)
        columns = [c for c in SAMPLE_COLUMNS if c in records[0]]
        rows = [[_cell(r[c]) for c in columns] for r in records]
        tracker.log_table(f"samples/{name}", columns, rows, step=at_step)
        if cfg.checker.name is not None:
            result[f"accuracy_{name}"] = accuracy(records)
    log.info(
        "task eval on %d held-out prompts in %.1f s: accuracy before %s, after %s",
        len(prompts),
        seconds,
        result.get("accuracy_before", "-"),
        result.get("accuracy_after", "-"),
    )
    return result


def write_jsonl(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    with path.open("w") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def _cell(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool)) or value is None else json.dumps(value)
