"""Task evaluation: answer held-out prompts, score the answers against the ground truth, and record
accuracy and sample generations before (adapter disabled) and after training.

Checkers are plain functions ``check(answer, row, cfg) -> CheckResult`` found by name: the ones
registered here (``finance_number``, ``exact_match``) or any ``package.module:function`` given as
``eval.checker.name``, so another dataset plugs in its own without touching dpo_lab.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

import dpo_lab.evaluation.finance  # noqa: F401  (registers the finance_number checker)
from dpo_lab.config.schemas import CheckerSettings, TaskEvalSettings
from dpo_lab.evaluation.checkers import get_checker
from dpo_lab.evaluation.generation import generate_answers
from dpo_lab.evaluation.prompts import TaskPrompt
from dpo_lab.model.loading import adapter_disabled
from dpo_lab.runs.layout import RunLayout
from dpo_lab.track.wandb_tracker import Tracker

log = logging.getLogger(__name__)

SAMPLE_COLUMNS = ["prompt", "chosen", "rejected", "answer", "truth", "extracted", "correct"]


# ---------------------------------------------------------------------------------------------------------
# The finance number checker (pure functions)


# ---------------------------------------------------------------------------------------------------------
# Held-out prompts with their ground truth


# ---------------------------------------------------------------------------------------------------------
# Before / after training


def score(
    prompts: Sequence[TaskPrompt], answers: Sequence[str], checker: CheckerSettings
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
    cfg: TaskEvalSettings,
    *,
    run_dir: Path,
    tracker: Tracker,
    step: int,
    seed: int,
    ahead: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Answer ``prompts`` with the trained adapter (after) and with it disabled (before, the base model);
    write samples_before.jsonl / samples_after.jsonl, log both as W&B tables, return the accuracies."""
    if not cfg.enabled or not prompts:
        return {}
    started = time.perf_counter()
    conversations = [p.messages for p in prompts]
    packed = answers_for(ahead, conversations)  # generated in the pack of a packed sweep
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


def answers_for(
    ahead: dict[str, Any] | None, conversations: Sequence[Any]
) -> tuple[list, list, float] | None:
    """(before, after, seconds) generated ahead (by a pack: ``{"conversations", "before", "after",
    "generation_s"}``) for exactly these conversations, or None (then the job generates its own)."""
    if ahead is None or list(ahead["conversations"]) != list(conversations):
        return None
    return ahead["before"], ahead["after"], ahead["generation_s"]
