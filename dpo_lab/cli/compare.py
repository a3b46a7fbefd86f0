"""``dpo-lab compare a=<run folder> b=<run folder|base> [judge=checker|reward_model ...]``

Pairwise comparison: models A and B answer the same held-out prompts (the first ``num_prompts`` of A's
held-out split) and a judge picks the better answer of each pair: the task checker against the stored
ground truth (``judge=checker``, right beats wrong) or a reward model's score (``judge=reward_model``).
``b=base`` is A's base model with the adapter disabled. Per-prompt results go to a jsonl file and the
win rate to a json summary next to it.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from dpo_lab.cli.common import exit_with_config_error, run_entry_point, setup_logging
from dpo_lab.config.choices import Judge
from dpo_lab.config.commands import CompareConfig
from dpo_lab.config.resolvers import CONF_PATH
from dpo_lab.config.schemas import CheckerSettings
from dpo_lab.config.validation import typed_config
from dpo_lab.data.loading import load_held_out_rows, load_preference_data
from dpo_lab.errors import ConfigError
from dpo_lab.evaluation.checkers import get_checker
from dpo_lab.evaluation.generation import Messages, generate_answers
from dpo_lab.evaluation.prompts import AUTO, AUTO_CHECKER, TaskPrompt, task_prompts
from dpo_lab.model.loading import adapter_disabled, load_adapter_model, load_tokenizer
from dpo_lab.runs.atomic import atomic_write_jsonl
from dpo_lab.runs.folder import RunFolder, read_run
from dpo_lab.runs.layout import RunLayout

log = logging.getLogger("dpo_lab.cli.compare")


def compare_prompts(run: RunFolder, cfg: CompareConfig) -> list[TaskPrompt]:
    """The first ``cfg.num_prompts`` held-out prompts of ``run`` (with ground truth for the checker)."""
    data_cfg = dataclasses.replace(run.data, max_eval_samples=cfg.num_prompts, max_train_samples=1)
    held_out = load_preference_data(data_cfg, run.seed).eval
    if cfg.judge is Judge.checker:
        rows = load_held_out_rows(data_cfg)
        checker = _concrete_checker(cfg.checker, rows)
        get_checker(checker.name, "checker.name")
        return task_prompts(held_out, rows, data_cfg, cfg.num_prompts, checker)
    no_truth = dataclasses.replace(cfg.checker, name=None)
    return task_prompts(held_out, None, data_cfg, cfg.num_prompts, no_truth)


def _concrete_checker(checker: CheckerSettings, rows: list) -> CheckerSettings:
    """``checker.name=auto``: the finance checker where the held-out rows carry the ground truth; judging by
    a checker needs one, so data without it is refused (judge=reward_model judges without ground truth)."""
    if checker.name != AUTO:
        return checker
    if not any(row.get(checker.answer_column) is not None for row in rows):
        raise ConfigError(
            "checker.name",
            f"the held-out rows carry no {checker.answer_column!r} ground truth to check answers against; "
            "name the column (checker.answer_column=...) or judge with judge=reward_model",
        )
    return dataclasses.replace(checker, name=AUTO_CHECKER)


def load_run_model(run: RunFolder) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    saved = dataclasses.replace(
        run.model, name_or_path=str(run.adapter_dir), gguf_file=None, revision=None, chat_template=None
    )
    return load_adapter_model(run.model, run.adapter_dir, run.precision), load_tokenizer(saved)


def answers_of_both(
    run_a: RunFolder, run_b: RunFolder | None, conversations: list[Messages], cfg: CompareConfig
) -> tuple[list[str], list[str]]:
    """A's and B's answers; B = A's base (adapter disabled) when ``run_b`` is None. One model in memory
    at a time."""
    model, tokenizer = load_run_model(run_a)
    answers_a = generate_answers(model, tokenizer, conversations, cfg.generation, seed=cfg.seed)
    if run_b is None:
        with adapter_disabled(model):
            answers_b = generate_answers(model, tokenizer, conversations, cfg.generation, seed=cfg.seed)
        return answers_a, answers_b
    del model
    gc.collect()
    model, tokenizer = load_run_model(run_b)
    return answers_a, generate_answers(model, tokenizer, conversations, cfg.generation, seed=cfg.seed)


def checker_scores(prompts: Sequence[TaskPrompt], answers: Sequence[str], cfg: CompareConfig) -> list[dict]:
    """Per answer: score 1.0 if the checker finds it correct, else 0.0, with what it read."""
    name = (
        AUTO_CHECKER if cfg.checker.name == AUTO else cfg.checker.name
    )  # auto: the prompts' rows have truth
    check = get_checker(name, "checker.name")
    results = [check(answer, p.row, cfg.checker) for p, answer in zip(prompts, answers, strict=True)]
    return [{"score": float(r.correct), "extracted": r.extracted, "correct": r.correct} for r in results]


def reward_scores(
    path: str, conversations: Sequence[Messages], answers: Sequence[str], batch_size: int
) -> list[float]:
    """The reward model's score of each (conversation, answer): its single output logit."""
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise ConfigError("reward_model", f"no model folder (config.json) at {path}")
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    if model.config.num_labels != 1:
        raise ConfigError(
            "reward_model", f"must output one score (num_labels=1), {path} has {model.config.num_labels}"
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    texts = [
        _render(tokenizer, [*conversation, {"role": "assistant", "content": answer}])
        for conversation, answer in zip(conversations, answers, strict=True)
    ]
    scores: list[float] = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[start : start + batch_size],
                padding=True,
                truncation=True,
                add_special_tokens=not tokenizer.chat_template,
                return_tensors="pt",
            ).to(model.device)
            scores += model(**batch).logits[:, 0].float().tolist()
    return scores


def _render(tokenizer: PreTrainedTokenizerBase, messages: Messages) -> str:
    """The conversation as the reward model reads it: its chat template, or plain "role: text" turns."""
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(messages, tokenize=False)
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)


def winner(score_a: float, score_b: float) -> str:
    """ "a", "b" or "tie" (equal scores: both right or both wrong for the checker)."""
    if score_a > score_b:
        return "a"
    if score_b > score_a:
        return "b"
    return "tie"


def summarize(records: Sequence[dict[str, Any]], cfg: CompareConfig, label_b: str) -> dict[str, Any]:
    """Win rate of A over B: (wins + ties / 2) / prompts, and over decided pairs only."""
    n = len(records)
    wins_a = sum(r["winner"] == "a" for r in records)
    wins_b = sum(r["winner"] == "b" for r in records)
    ties = n - wins_a - wins_b
    summary: dict[str, Any] = {
        "a": cfg.a,
        "b": label_b,
        "judge": cfg.judge.value if cfg.judge is Judge.checker else f"reward_model:{cfg.reward_model}",
        "num_prompts": n,
        "wins_a": wins_a,
        "wins_b": wins_b,
        "ties": ties,
        "win_rate_a": (wins_a + ties / 2) / n if n else 0.0,
        "win_rate_a_decided": wins_a / (wins_a + wins_b) if wins_a + wins_b else None,
    }
    if cfg.judge is Judge.checker:
        summary["accuracy_a"] = sum(r["score_a"] for r in records) / n if n else 0.0
        summary["accuracy_b"] = sum(r["score_b"] for r in records) / n if n else 0.0
    return summary


def output_path(cfg: CompareConfig, run_a: RunFolder) -> Path:
    if cfg.out:
        return Path(cfg.out).expanduser().resolve()
    name = "base" if cfg.b == "base" else Path(cfg.b).expanduser().resolve().name
    return RunLayout(run_a.path).comparison(name)


def compare(cfg: CompareConfig) -> dict[str, Any]:
    """Generate, judge, save per-prompt records (jsonl) and the summary (json); returns the summary."""
    run_a = read_run(cfg.a, "a")
    run_b = None if cfg.b == "base" else read_run(cfg.b, "b")
    label_b = f"base of {cfg.a}" if run_b is None else cfg.b
    prompts = compare_prompts(run_a, cfg)
    conversations = [p.messages for p in prompts]
    answers_a, answers_b = answers_of_both(run_a, run_b, conversations, cfg)
    records = []
    if cfg.judge is Judge.checker:
        judged_a, judged_b = checker_scores(prompts, answers_a, cfg), checker_scores(prompts, answers_b, cfg)
    else:
        assert cfg.reward_model is not None
        rm_a = reward_scores(cfg.reward_model, conversations, answers_a, cfg.generation.batch_size)
        rm_b = reward_scores(cfg.reward_model, conversations, answers_b, cfg.generation.batch_size)
        judged_a, judged_b = [{"score": s} for s in rm_a], [{"score": s} for s in rm_b]
    for i, (prompt, ja, jb) in enumerate(zip(prompts, judged_a, judged_b, strict=True)):
        record: dict[str, Any] = {
            "index": i,
            "prompt": prompt.text,
            "response_a": answers_a[i],
            "response_b": answers_b[i],
        }
        if cfg.judge is Judge.checker:
            record["ground_truth"] = prompt.row.get(cfg.checker.answer_column)
            record.update(extracted_a=ja["extracted"], extracted_b=jb["extracted"])
        record.update(score_a=ja["score"], score_b=jb["score"], winner=winner(ja["score"], jb["score"]))
        records.append(record)
    summary = summarize(records, cfg, label_b)
    out = output_path(cfg, run_a)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_jsonl(out, records)
    summary["records"] = str(out)
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    return summary


@hydra.main(version_base="1.3", config_path=CONF_PATH, config_name="compare")
def _hydra_main(cfg: DictConfig) -> None:
    setup_logging()
    try:
        summary = compare(typed_config(cfg, CompareConfig))
    except ConfigError as err:
        exit_with_config_error(err)
    print(
        f"A wins {summary['wins_a']}, B wins {summary['wins_b']}, ties {summary['ties']} of "
        f"{summary['num_prompts']} ({summary['judge']}): win rate of A {summary['win_rate_a']:.3f}\n"
        f"per-prompt results: {summary['records']}",
        file=sys.stdout,
    )


def main() -> None:
    run_entry_point(_hydra_main, CompareConfig)


if __name__ == "__main__":
    main()
