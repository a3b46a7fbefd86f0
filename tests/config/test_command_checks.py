"""The commands' own rules (generate, compare, pairs), each with the key and the words of its one line, and
the value next to it that passes. The numeric ranges of these configs are in test_bounds.py."""

from __future__ import annotations

from typing import Any

import pytest

from dpo_lab.config.choices import Judge
from dpo_lab.config.commands import CompareConfig, GenerateConfig, PairsConfig
from dpo_lab.config.schemas import CheckerSettings, GenerationSettings, ModelSettings
from dpo_lab.config.validation import problems

SOURCES = "give one of prompt=..., prompts_file=... or chat=true (got {})"
PAIRS = dict(prompts="p.txt", out="pairs.jsonl", reward="sentiment")


@pytest.mark.parametrize(
    ("config", "found"),
    [
        # one source of prompts at most; none means the prompts piped on standard input
        (GenerateConfig(run="r"), {}),
        (GenerateConfig(run="r", prompt="hi"), {}),
        (GenerateConfig(run="r", prompts_file="p.txt"), {}),
        (GenerateConfig(run="r", chat=True), {}),
        (
            GenerateConfig(run="r", prompt="hi", prompts_file="p.txt"),
            {"prompt": SOURCES.format("prompt, prompts_file")},
        ),
        (GenerateConfig(run="r", prompt="hi", chat=True), {"prompt": SOURCES.format("prompt, chat")}),
        (
            GenerateConfig(run="r", prompts_file="p.txt", chat=True),
            {"prompt": SOURCES.format("prompts_file, chat")},
        ),
        (GenerateConfig(run="r", prompt="  ", chat=True), {"prompt": "must not be empty"}),
        (GenerateConfig(run="r", prompt=" \n"), {"prompt": "must not be empty"}),
        (
            GenerateConfig(run="r", generation=GenerationSettings(top_k=-1)),
            {"generation.top_k": "must be >= 0, got -1"},
        ),
        # compare: each judge needs its own input
        (CompareConfig(a="a"), {}),
        (
            CompareConfig(a="a", judge=Judge.reward_model),
            {"reward_model": "judge=reward_model needs reward_model=<folder of the reward model>"},
        ),
        (CompareConfig(a="a", judge=Judge.reward_model, reward_model="rm"), {}),
        (
            CompareConfig(a="a", judge=Judge.checker, checker=CheckerSettings(name=None)),
            {"checker.name": "judge=checker needs a checker name (finance_number, exact_match, ...)"},
        ),
        (
            CompareConfig(
                a="a", judge=Judge.reward_model, reward_model="rm", checker=CheckerSettings(name=None)
            ),
            {},
        ),
        (
            CompareConfig(a="a", checker=CheckerSettings(abs_tol=-1.0)),
            {"checker.abs_tol": "must be >= 0, got -1.0"},
        ),
        (
            CompareConfig(a="a", generation=GenerationSettings(temperature=0.0)),
            {"generation.temperature": "must be > 0, got 0.0"},
        ),
        # pairs: a run or a base model, not both and not neither; a .jsonl out; a reward
        (PairsConfig(**PAIRS, run="r"), {}),
        (PairsConfig(**PAIRS, model=ModelSettings(name_or_path="org/model")), {}),
        (
            PairsConfig(**PAIRS, run="r", model=ModelSettings(name_or_path="org/model")),
            {"run": "give run=<run folder> or model=<model option>, not both"},
        ),
        (PairsConfig(**PAIRS), {"run": "give run=<run folder> or model=<model option>, not neither"}),
        (
            PairsConfig(**{**PAIRS, "out": "pairs.json"}, run="r"),
            {"out": "must name a .jsonl file, got 'pairs.json'"},
        ),
        (
            PairsConfig(**{**PAIRS, "reward": " "}, run="r"),
            {"reward": "must name a reward (sentiment, finance) or package.module:function"},
        ),
        (
            PairsConfig(**PAIRS, model=ModelSettings(name_or_path=" ")),
            {"model.name_or_path": "must name a hub id or a local model folder"},
        ),
    ],
)
def test_command_rules(config: Any, found: dict[str, str]) -> None:
    assert dict(problems(config)) == found
