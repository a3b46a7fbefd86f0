"""Task evaluation: answer held-out prompts before (adapter disabled) and after training, and score the
answers with the task checker (dpo_lab.evaluation.checkers). Returns records; the run writes them into its
folder and logs them to its tracker."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from dpo_lab.config.schemas import CheckerSettings, TaskEvalSettings
from dpo_lab.evaluation.checkers import get_checker
from dpo_lab.evaluation.generation import generate_answers
from dpo_lab.evaluation.prompts import TaskPrompt
from dpo_lab.model.loading import adapter_disabled

log = logging.getLogger(__name__)

# a sample's fields: the whole conversation answered, its last user turn (what a table shows), the model's
# response, the pair's chosen and rejected responses, and with a checker the ground truth, the value read
# from the response and whether it is correct. "answer" is not a field: in the data it names the truth.
SAMPLE_COLUMNS = [
    "prompt",
    "response",
    "ground_truth",
    "extracted",
    "correct",
    "chosen",
    "rejected",
    "conversation",
]


def score(
    prompts: Sequence[TaskPrompt], answers: Sequence[str], checker: CheckerSettings
) -> list[dict[str, Any]]:
    """One record per prompt (:data:`SAMPLE_COLUMNS`): the conversation and its last user turn, the model's
    response, the pair's chosen and rejected responses, and with a checker the ground truth, the value read
    from the response, whether it is correct and why."""
    check = get_checker(checker.name) if checker.name is not None else None
    records = []
    for prompt, answer in zip(prompts, answers, strict=True):
        record: dict[str, Any] = {
            "conversation": list(prompt.messages),
            "prompt": prompt.text,
            "response": answer,
            "chosen": prompt.chosen,
            "rejected": prompt.rejected,
        }
        if check is not None:
            result = check(answer, prompt.row, checker)
            record.update(
                ground_truth=prompt.row.get(checker.answer_column),
                extracted=result.extracted,
                correct=result.correct,
                reason=result.reason,
            )
        records.append(record)
    return records


def accuracy(records: Sequence[Mapping[str, Any]]) -> float:
    """Fraction of records marked correct."""
    return sum(bool(r["correct"]) for r in records) / len(records) if records else 0.0


@dataclass
class TaskEvaluation:
    """What the task evaluation found: per phase (``before``: the base, ``after``: the trained adapter) the
    records of :func:`score` and the training step they belong to, and the summary for metrics.json. The run
    writes the records into its folder and logs them to its tracker (dpo_lab.experiment)."""

    records: dict[str, list[dict[str, Any]]]
    steps: dict[str, int]
    summary: dict[str, Any]

    def table(self, phase: str) -> tuple[list[str], list[list[Any]]]:
        """(columns, rows) of one phase's records, for a tracker's table."""
        records = self.records[phase]
        columns = [c for c in SAMPLE_COLUMNS if c in records[0]]
        return columns, [[_cell(r[c]) for c in columns] for r in records]


def evaluate_task(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[TaskPrompt],
    cfg: TaskEvalSettings,
    *,
    step: int,
    seed: int,
    ahead: dict[str, Any] | None = None,
) -> TaskEvaluation | None:
    """Answer ``prompts`` with the trained adapter (after) and with it disabled (before, the base model),
    score the answers; None when the evaluation is off. ``ahead``: answers a pack generated for this job."""
    if not cfg.enabled or not prompts:
        return None
    started = time.perf_counter()
    conversations = [p.messages for p in prompts]
    packed = answers_for(ahead, conversations)  # generated in the pack of a packed sweep
    if packed is not None:
        before, after, seconds = packed
    else:
        after = generate_answers(model, tokenizer, conversations, cfg.generation, seed=seed,
                                 desc="task answers (trained)")  # fmt: skip
        with adapter_disabled(model):
            before = generate_answers(model, tokenizer, conversations, cfg.generation, seed=seed,
                                      desc="task answers (base)")  # fmt: skip
        seconds = time.perf_counter() - started
    summary: dict[str, Any] = {
        "num_prompts": len(prompts),
        "checker": cfg.checker.name,
        "generation_s": seconds,
    }
    records = {"before": score(prompts, before, cfg.checker), "after": score(prompts, after, cfg.checker)}
    if cfg.checker.name is not None:
        summary.update({f"accuracy_{phase}": accuracy(found) for phase, found in records.items()})
    log.info(
        "task eval on %d held-out prompts in %.1f s: accuracy before %s, after %s",
        len(prompts), seconds, summary.get("accuracy_before", "-"), summary.get("accuracy_after", "-"),
    )  # fmt: skip
    return TaskEvaluation(records, {"before": 0, "after": step}, summary)


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
