"""Schemas of the commands that work on a finished run folder: ``dpo-lab generate``, ``merge`` and
``compare`` (``conf/<command>.yaml`` each)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from omegaconf import MISSING

from dpo_lab.config.choices import Judge, Quantization
from dpo_lab.config.fields import setting
from dpo_lab.config.schemas import CheckerSettings, GenerationSettings, ModelSettings, nested
from dpo_lab.runtime.precision import DType, Precision


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


@dataclass
class PairsConfig:
    """``dpo-lab pairs`` (``conf/pairs.yaml``): preference pairs sampled from a base model or a finished
    run's adapter, ranked by a reward; not a command on a run folder alone, but one that may start from it."""

    prompts: str = setting(
        MISSING,
        help=(
            ".txt (one prompt per line) or .jsonl (a prompt field per line: a string or {role, content} "
            "messages; the line's other fields reach the reward as its row)"
        ),
    )
    prompt_field: str = setting("prompt", help="field of each .jsonl line holding the prompt")
    out: str = setting(
        MISSING,
        help=(
            "the .jsonl file the pairs are appended to (rerun the same command to resume); a summary is "
            "written beside it (<name>.summary.json)"
        ),
    )
    reward: str = setting(
        MISSING, help="a registered reward (sentiment, finance) or package.module:function scoring samples"
    )
    run: str | None = setting(
        None,
        help="a finished run folder: sample from its adapter (iterative DPO); null = the base model=...",
    )
    model: ModelSettings | None = setting(
        None,
        help=(
            "the base model that samples when no run is given: an option of the model group (model=tiny, "
            "model=smollm2_135m_instruct) and its model.* keys"
        ),
    )
    system_prompt: str | None = setting(
        None,
        help=(
            "system message of every prompt that has none; null = none (with run=...: the run's "
            "data.system_prompt)"
        ),
    )
    num_samples: int = setting(4, help="completions sampled per prompt; the best and the worst make the pair")
    temperature: float = setting(1.0, help="sampling temperature; 1.0 samples the model's own distribution")
    top_p: float = setting(1.0, help="nucleus sampling mass; 1.0 disables it")
    top_k: int = setting(0, help="sample among the k most likely tokens; 0 disables it")
    max_new_tokens: int = setting(64, help="new tokens per completion")
    batch_size: int = setting(
        16, help="prompts per generate call (x num_samples sequences); larger is faster until memory runs out"
    )
    seed: int = setting(
        42, help="seeds the sampling, each batch from (seed, batch index): a resumed run draws the same"
    )
    max_prompts: int | None = setting(None, help="use only the first N prompts; null = all")
    precision: Precision | None = setting(
        None,
        help=(
            "auto | fp32 | bf16 | fp16: the dtype the model samples in; null = the run's train.precision "
            "(run=...) or auto (bf16 where the hardware computes it natively)"
        ),
    )

    def problems(self) -> Iterator[tuple[str, str]]:
        if (self.run is None) == (self.model is None):
            given = "both" if self.run is not None else "neither"
            yield "run", f"give run=<run folder> or model=<model option>, not {given}"
        if not self.out.endswith(".jsonl"):
            yield "out", f"must name a .jsonl file, got {self.out!r}"
        if not self.reward.strip():
            yield "reward", "must name a reward (sentiment, finance) or package.module:function"
        if self.num_samples < 2:
            yield "num_samples", f"must be an integer >= 2 (a pair needs two samples), got {self.num_samples}"
        if self.temperature <= 0:
            yield "temperature", f"must be > 0, got {self.temperature}"
        if not 0.0 < self.top_p <= 1.0:
            yield "top_p", f"must be in (0, 1], got {self.top_p}"
        if self.top_k < 0:
            yield "top_k", f"must be >= 0, got {self.top_k}"
        for key in ("max_new_tokens", "batch_size"):
            if getattr(self, key) < 1:
                yield key, f"must be an integer >= 1, got {getattr(self, key)}"
        if self.max_prompts is not None and self.max_prompts < 1:
            yield "max_prompts", f"must be >= 1 or null, got {self.max_prompts}"
        if self.model is not None:
            yield from nested("model", self.model.problems())


ENTRY_POINTS = {
    "generate": GenerateConfig,
    "merge": MergeConfig,
    "compare": CompareConfig,
    "pairs": PairsConfig,
}
