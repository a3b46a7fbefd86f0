"""Schemas of the commands that work on a finished run folder: ``dpo-lab generate``, ``merge`` and
``compare`` (``conf/<command>.yaml`` each)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from omegaconf import MISSING

from dpo_lab.config.choices import Judge, Quantization
from dpo_lab.config.fields import setting
from dpo_lab.config.schemas import CheckerSettings, GenerationSettings, nested
from dpo_lab.runtime.precision import DType


@dataclass
class GenerateConfig:
    run: str = setting(
        MISSING, help="run folder written by python -m dpo_lab.run (holds config.yaml and adapter/)"
    )
    prompt: str | None = setting(
        None,
        help=(
            "one prompt to answer; with no prompt, prompts_file or chat, the prompts piped on standard "
            "input (one per line) are answered"
        ),
    )
    prompts_file: str | None = setting(
        None,
        help=(
            "prompts to answer: .txt (one per line, blank lines skipped) or .jsonl (a prompt field per line)"
        ),
    )
    prompt_field: str = setting(
        "prompt",
        help="field of each .jsonl line holding the prompt (a string, or a list of {role, content} messages)",
    )
    chat: bool = setting(
        False,
        help="interactive multi-turn chat reading stdin (piped input works too); /reset clears, /exit ends",
    )
    system_prompt: str | None = setting(
        None, help="system message of every conversation; null = the run's data.system_prompt"
    )
    base_only: bool = setting(
        False,
        help="answer with the adapter disabled (the untrained base model), to see what training changed",
    )
    output: str | None = setting(None, help="also write {prompt, answer} lines to this jsonl file")
    stream: bool = setting(
        True,
        help="print tokens as they are generated (one prompt at a time); false = batched, printed per answer",
    )
    quantization: Quantization | None = setting(
        None, help="null = the run's model.quantization; e.g. nf4 to chat with a big base on a small GPU"
    )
    seed: int = setting(42, help="seeds sampling (do_sample=true); greedy decoding is deterministic anyway")
    generation: GenerationSettings = setting(factory=GenerationSettings, help="decoding settings")

    def problems(self) -> Iterator[tuple[str, str]]:
        sources = [k for k in ("prompt", "prompts_file") if getattr(self, k) is not None]
        sources += ["chat"] if self.chat else []
        if len(sources) > 1:
            found = ", ".join(sources)
            yield "prompt", f"give one of prompt=..., prompts_file=... or chat=true (got {found})"
        if self.prompt is not None and not self.prompt.strip():
            yield "prompt", "must not be empty"
        yield from nested("generation", self.generation.problems())


@dataclass
class MergeConfig:
    run: str = setting(
        MISSING, help="run folder written by python -m dpo_lab.run (holds config.yaml and adapter/)"
    )
    out: str | None = setting(None, help="folder for the standalone merged model; null = <run>/merged")
    dtype: DType = setting(
        DType.auto,
        help="auto | float32 | bfloat16 | float16: dtype of the merged weights; auto = the run's base dtype",
    )
    overwrite: bool = setting(False, help="replace the out folder if it already holds files")


@dataclass
class CompareConfig:
    a: str = setting(MISSING, help="run folder of model A (its held-out split supplies the prompts)")
    b: str = setting(
        "base", help='run folder of model B, or "base" for A\'s base model with the adapter disabled'
    )
    judge: Judge = setting(
        Judge.checker,
        help="checker | reward_model: score against the ground truth, or by a reward model's score",
    )
    reward_model: str | None = setting(
        None, help="folder of a sequence-classification model with one output (judge=reward_model)"
    )
    num_prompts: int = setting(32, help="held-out prompts compared (the first N of A's held-out split)")
    checker: CheckerSettings = setting(
        factory=CheckerSettings, help="answers scored against the ground truth (judge=checker)"
    )
    generation: GenerationSettings = setting(
        factory=GenerationSettings, help="decoding settings of both models' answers"
    )
    out: str | None = setting(
        None,
        help="per-prompt results (jsonl) and a summary next to it (.json); null = <a>/compare/vs-<b>.jsonl",
    )
    seed: int = setting(42, help="seeds sampling (do_sample=true); greedy decoding is deterministic anyway")

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.num_prompts < 1:
            yield "num_prompts", f"must be an integer >= 1, got {self.num_prompts}"
        if self.judge is Judge.reward_model and not self.reward_model:
            yield "reward_model", "judge=reward_model needs reward_model=<folder of the reward model>"
        if self.judge is Judge.checker and self.checker.name is None:
            yield "checker.name", "judge=checker needs a checker name (finance_number, exact_match, ...)"
        yield from nested("checker", self.checker.problems())
        yield from nested("generation", self.generation.problems())


ENTRY_POINTS = {"generate": GenerateConfig, "merge": MergeConfig, "compare": CompareConfig}
