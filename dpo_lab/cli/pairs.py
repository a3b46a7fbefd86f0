"""``dpo-lab pairs prompts=<file> reward=<name> out=<pairs.jsonl> model=<option> | run=<run folder>``

On-policy preference pairs: sample ``num_samples`` completions of each prompt from a base model (or from a
finished run's adapter: a second round of iterative DPO is one command), score each with a reward
function, and append ``{prompt, chosen, rejected}`` (the best and the worst sample) with their scores and
how they were made to ``out``; a prompt whose samples all score alike is skipped and counted. The rows load
as training data (``data.path=<out> data.test_size=...``).

Resumable: the rows of each batch are appended and synced to disk when the batch is done; the same command
run again continues after the last prompt in the file (a half-written last line is dropped; the batch it
belonged to is sampled again with its own seed, so the rows equal an uninterrupted run's). A rerun with
other settings into the same file is refused. A summary goes beside ``out`` (``<name>.summary.json``).

The command line is checked before torch loads: a bad one is refused in one line (exit code 2).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from omegaconf import DictConfig

from dpo_lab.cli.common import exit_with_config_error, setup_logging
from dpo_lab.config.commands import PairsConfig
from dpo_lab.config.overrides import check_overrides
from dpo_lab.config.resolvers import CONF_PATH, register_resolvers
from dpo_lab.config.schemas import ModelSettings
from dpo_lab.config.store import register_configs
from dpo_lab.config.user_configs import check_user_config_dirs, group_options, make_config_dirs_importable
from dpo_lab.config.validation import typed_config
from dpo_lab.errors import ConfigError
from dpo_lab.evaluation.rewards import Reward, get_reward

if TYPE_CHECKING:
    from transformers import PreTrainedModel
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    from dpo_lab.evaluation.policy_eval import SampleBatch
    from dpo_lab.runs.folder import RunFolder
    from dpo_lab.runtime.precision import Precision

log = logging.getLogger("dpo_lab.cli.pairs")

Messages = list[dict[str, str]]


# ----------------------------------------------------------------------------------------------------------
# prompts


@dataclass(frozen=True)
class PromptRow:
    """One prompt of the prompts file: as written (a string or chat messages) and its whole .jsonl line
    (None for a .txt file), which the reward receives as ``row``."""

    prompt: str | Messages
    row: dict[str, Any] | None


def read_prompt_rows(path: str, field: str = "prompt") -> list[PromptRow]:
    """The prompts of a .txt file (one per line, blank lines skipped) or a .jsonl file (``field`` of each
    line: a non-empty string or a list of {role, content} messages); ConfigError naming ``prompts``."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError("prompts", f"no such file: {path}")
    lines = file.read_text().splitlines()
    if file.suffix == ".jsonl":
        prompts = [_jsonl_prompt(line, n, file, field) for n, line in enumerate(lines, 1) if line.strip()]
    else:
        prompts = [PromptRow(line.strip(), None) for line in lines if line.strip()]
    if not prompts:
        raise ConfigError("prompts", f"{path} holds no prompt")
    return prompts


def _jsonl_prompt(line: str, n: int, file: Path, field: str) -> PromptRow:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise ConfigError("prompts", f"{file}:{n}: not valid JSON ({err.msg})") from None
    value = row.get(field) if isinstance(row, dict) else None
    if isinstance(value, str) and value.strip():
        return PromptRow(value, row)
    if isinstance(value, list) and value and all(_is_message(m) for m in value):
        return PromptRow(value, row)
    raise ConfigError(
        "prompt_field",
        f"{file}:{n}: needs a {field!r} field holding a non-empty string or a list of messages",
    )


def _is_message(value: Any) -> bool:
    return (
        isinstance(value, dict) and {"role", "content"} <= value.keys() and isinstance(value["content"], str)
    )


def as_conversation(prompt: str | Messages, system_prompt: str | None) -> Messages:
    """The prompt as chat messages: a string is one user turn; ``system_prompt`` opens a conversation that
    has no system message."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system_prompt and not (messages and messages[0]["role"] == "system"):
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def row_prompt(prompt: str | Messages, system_prompt: str | None) -> str | Messages:
    """The ``prompt`` field of a pairs row: the prompt string as it was (a standard row), or the chat
    messages when the prompt was messages or a system prompt applies (a conversational row)."""
    if isinstance(prompt, str) and not system_prompt:
        return prompt
    return as_conversation(prompt, system_prompt)


def prompt_text(prompt: str | Messages) -> str:
    """What the reward reads as the prompt: the string, or the last user turn of the messages."""
    if isinstance(prompt, str):
        return prompt
    return next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")


# ----------------------------------------------------------------------------------------------------------
# rows


def preference_row(
    prompt: str | Messages, completions: Sequence[str], scores: Sequence[float], meta: Mapping[str, Any]
) -> dict[str, Any] | None:
    """The pair of one prompt: chosen = the best-scored completion, rejected = the worst (the first of
    equals), beside them both scores, all scores and ``meta``. None when the best and the worst score alike.
    Empty completions (an immediate end of sequence) keep their score in ``scores`` but are neither chosen
    nor rejected: a pair with an empty response is invalid training data."""
    candidates = [i for i, text in enumerate(completions) if text.strip()]
    if not candidates:
        return None
    best = max(candidates, key=lambda i: scores[i])
    worst = min(candidates, key=lambda i: scores[i])
    if scores[best] == scores[worst]:
        return None
    return {
        "prompt": prompt,
        "chosen": completions[best],
        "rejected": completions[worst],
        "chosen_score": scores[best],
        "rejected_score": scores[worst],
        "scores": list(scores),
        "meta": dict(meta),
    }


def settings_meta(
    cfg: PairsConfig, model: str, run: str | None, precision: str, system_prompt: str | None
) -> dict[str, Any]:
    """How the rows of ``cfg`` are made: every setting that changes the samples or their scores. A rerun
    into the same file must match it (the rows add ``prompt_index``)."""
    return {
        "model": model,
        "adapter_run": run,
        "reward": cfg.reward,
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "top_k": cfg.top_k,
        "max_new_tokens": cfg.max_new_tokens,
        "num_samples": cfg.num_samples,
        "seed": cfg.seed,
        "batch_size": cfg.batch_size,
        "precision": precision,
        "system_prompt": system_prompt,
        # the prompts by name and content, not by absolute path: committed rows stay the same on every machine
        "prompts": Path(cfg.prompts).name,
        "prompts_sha256": file_sha256(Path(cfg.prompts).expanduser()),
    }


def file_sha256(path: Path) -> str:
    """The sha256 of the file at ``path`` (hex)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Existing:
    """What ``out`` holds already: its complete rows; ``next_prompt`` is the first prompt to sample."""

    rows: list[dict[str, Any]]
    dropped_partial_line: bool

    @property
    def next_prompt(self) -> int:
        return self.rows[-1]["meta"]["prompt_index"] + 1 if self.rows else 0


def read_existing(out: Path) -> Existing:
    """The complete rows of ``out`` (none if it does not exist). A last line without its newline was cut
    by a kill mid-write: it is truncated away. ConfigError naming ``out`` for a line that is no pairs row."""
    if not out.exists():
        return Existing([], False)
    data = out.read_bytes()
    end = data.rfind(b"\n") + 1  # after the last complete line
    if end < len(data):
        with open(out, "r+b") as f:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
        log.info("dropped a half-written last line of %s (%d bytes)", out, len(data) - end)
    rows = []
    for n, line in enumerate(data[:end].decode().splitlines(), 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not (
            isinstance(row, dict) and isinstance(row.get("meta"), dict) and "prompt_index" in row["meta"]
        ):
            raise ConfigError("out", f"{out}:{n} is not a row written by dpo-lab pairs; give another out=")
        rows.append(row)
    return Existing(rows, end < len(data))


def check_resumable(existing: Existing, meta: Mapping[str, Any], prompts: Sequence[PromptRow], out: Path):
    """Refuse (ConfigError naming ``out``) to append to rows made with other settings or other prompts."""
    if not existing.rows:
        return
    stored = {k: v for k, v in existing.rows[0]["meta"].items() if k != "prompt_index"}
    for key in sorted(set(stored) | set(meta)):
        if stored.get(key) != meta.get(key):
            raise ConfigError(
                "out",
                f"{out} holds pairs made with other settings ({key}: {stored.get(key)!r} there, "
                f"{meta.get(key)!r} now); rerun with those to resume, or give another out=",
            )
    last = existing.rows[-1]
    index = last["meta"]["prompt_index"]
    if index < len(prompts) and last["prompt"] != row_prompt(prompts[index].prompt, meta["system_prompt"]):
        raise ConfigError("out", f"{out}: its last row's prompt is not prompt {index} of {meta['prompts']}")


def append_rows(out: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Append ``rows`` as JSON lines and sync them to disk before returning."""
    with open(out, "a") as f:
        f.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        f.flush()
        os.fsync(f.fileno())


def summary_path(out: Path) -> Path:
    """``pairs.jsonl`` -> ``pairs.summary.json``."""
    return out.with_suffix(".summary.json")


def summarize(
    rows: Sequence[dict[str, Any]], num_prompts: int, timing: Mapping[str, Any], resumed_at: int = 0
) -> dict[str, Any]:
    """The summary of the file: rows, prompts skipped as ties (every prompt below ``num_prompts`` without a
    row), mean / SD of every score of the rows (tied prompts are not stored, so not counted), and this
    invocation's time and generation speed (``resumed_at``: the prompt it started at)."""
    scores = [s for row in rows for s in row["scores"]]
    written = {row["meta"]["prompt_index"] for row in rows}
    return {
        "rows": len(rows),
        "prompts": num_prompts,
        "ties_skipped": sum(1 for i in range(num_prompts) if i not in written),
        "resumed_at_prompt": resumed_at,
        "scores": {
            "mean": statistics.fmean(scores) if scores else None,
            "sd": statistics.stdev(scores) if len(scores) > 1 else None,
            "n": len(scores),
        },
        "chosen_score_mean": statistics.fmean(r["chosen_score"] for r in rows) if rows else None,
        "rejected_score_mean": statistics.fmean(r["rejected_score"] for r in rows) if rows else None,
        **timing,
        "meta": {k: v for k, v in rows[0]["meta"].items() if k != "prompt_index"} if rows else None,
    }


def summary_line(summary: Mapping[str, Any], out: Path) -> str:
    """The one line the command prints at the end."""
    mean, sd = summary["scores"]["mean"], summary["scores"]["sd"]
    scored = f"score mean {mean:.4g} (sd {sd:.4g})" if mean is not None and sd is not None else "no scores"
    speed = summary["tokens_per_second"]
    return (
        f"pairs: {summary['rows']} rows in {out} ({summary['ties_skipped']} of {summary['prompts']} prompts "
        f"skipped as ties), {scored}, {summary['seconds']:.1f} s"
        + (f", {speed:.0f} tokens/s" if speed else "")
    )


# ----------------------------------------------------------------------------------------------------------
# the model


def sampling_precision(cfg: PairsConfig, run: RunFolder | None) -> Precision:
    """The precision the model samples in: ``precision``, else the run's, else auto; resolved for this
    machine (auto -> bf16 where the hardware computes it natively)."""
    from dpo_lab.runtime.hardware import device_type, resolve_precision
    from dpo_lab.runtime.precision import Precision

    requested = cfg.precision or (run.train_precision if run is not None else Precision.auto)
    return resolve_precision(requested, device_type())


def _weights_in(model_cfg: ModelSettings, precision: Precision) -> ModelSettings:
    """Sampling only, so ``model.dtype=auto`` loads the weights in the sampling precision itself (bf16
    weights sampled faster on CPU than fp32 weights under bf16 autocast; docs/sentiment.md)."""
    from dpo_lab.runtime.precision import DType, Precision

    if model_cfg.dtype is not DType.auto:
        return model_cfg
    dtypes = {Precision.bf16: DType.bfloat16, Precision.fp16: DType.float16}
    return replace(model_cfg, dtype=dtypes.get(precision, DType.float32))


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """No library progress bar or FutureWarning while the model loads (ours is the only bar)."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def load_sampler(
    cfg: PairsConfig, run: RunFolder | None, precision: Precision
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The run's base + adapter with the tokenizer saved beside the adapter, or the base model=... with its
    tokenizer, in the sampling precision, in eval mode."""
    with _quiet_loading():
        if run is not None:
            return _run_model(run, precision)
        assert cfg.model is not None
        return _base_model(cfg.model, precision)


def _run_model(run: RunFolder, precision: Precision) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    from dpo_lab.model.loading import load_adapter_model, load_tokenizer

    saved = replace(run.model, name_or_path=str(run.adapter_dir), gguf_file=None, revision=None,
                    chat_template=None)  # fmt: skip
    model = load_adapter_model(_weights_in(run.model, precision), run.adapter_dir, precision)
    return model, load_tokenizer(saved)


def _base_model(cfg: ModelSettings, precision: Precision) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    import torch
    from transformers import AutoModelForCausalLM

    from dpo_lab.model.loading import base_model_kwargs, load_tokenizer
    from dpo_lab.model.source import loadable, model_name

    tokenizer = load_tokenizer(cfg)
    source = loadable(_weights_in(cfg, precision))
    kwargs = base_model_kwargs(source, precision)
    log.info("loading %s (%s, quantization=%s)", model_name(cfg), kwargs["dtype"], cfg.quantization.value)
    model = AutoModelForCausalLM.from_pretrained(source.name_or_path, **kwargs)
    if "device_map" not in kwargs and torch.cuda.is_available():
        model = model.to("cuda")
    return model.eval(), tokenizer


# ----------------------------------------------------------------------------------------------------------
# the command


def probe_reward(reward: Reward, first: PromptRow) -> None:
    """Call the reward once (the first prompt, an empty completion) before the model loads, so that a reward
    that cannot read the prompts' rows (finance without an answer field) fails at once."""
    value = reward(prompt_text(first.prompt), "", first.row)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(
            "reward", f"must return a finite number, returned {value!r} for an empty completion"
        )


def make_pairs(cfg: PairsConfig) -> dict[str, Any]:
    """Everything after the command line is checked: read the prompts, resume or start ``out``, load the
    model, sample, score and append batch by batch, write the summary. Returns the summary."""
    started = time.perf_counter()
    prompts = read_prompt_rows(cfg.prompts, cfg.prompt_field)[: cfg.max_prompts]
    reward = get_reward(cfg.reward)
    probe_reward(reward, prompts[0])

    from dpo_lab.model.source import model_name
    from dpo_lab.runs.atomic import atomic_write_json
    from dpo_lab.runs.folder import read_run

    run = read_run(cfg.run) if cfg.run is not None else None
    model_cfg = run.model if run is not None else cfg.model
    assert model_cfg is not None
    system_prompt = cfg.system_prompt
    if system_prompt is None and run is not None:
        system_prompt = run.data.system_prompt
    precision = sampling_precision(cfg, run)
    meta = settings_meta(cfg, model_name(model_cfg), str(run.path) if run else None, precision.value,
                         system_prompt)  # fmt: skip
    out = Path(cfg.out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    existing = read_existing(out)
    check_resumable(existing, meta, prompts, out)
    timing = {"seconds": 0.0, "generation_seconds": 0.0, "new_tokens": 0, "tokens_per_second": None}
    if existing.next_prompt < len(prompts):
        if existing.next_prompt:
            log.info("resuming %s at prompt %d of %d", out, existing.next_prompt, len(prompts))
        timing = sample_and_append(cfg, run, precision, prompts, reward, meta, out, existing.next_prompt)
    timing["seconds"] = time.perf_counter() - started
    summary = summarize(read_existing(out).rows, len(prompts), timing, existing.next_prompt)
    atomic_write_json(summary_path(out), summary)
    return summary


def sample_and_append(
    cfg: PairsConfig,
    run: RunFolder | None,
    precision: Precision,
    prompts: Sequence[PromptRow],
    reward: Reward,
    meta: Mapping[str, Any],
    out: Path,
    next_prompt: int,
) -> dict[str, Any]:
    """Sample every prompt from ``next_prompt`` on (from the start of its batch, whose seed fixes its draws)
    and append each batch's rows to ``out`` as the batch finishes; returns the generation timing."""
    from tqdm.auto import tqdm

    from dpo_lab.evaluation.policy_eval import Sampling, encode_prompts, sample_batches

    model, tokenizer = load_sampler(cfg, run, precision)
    conversations = [as_conversation(p.prompt, meta["system_prompt"]) for p in prompts]
    sampling = Sampling(cfg.num_samples, cfg.max_new_tokens, cfg.batch_size, cfg.temperature, cfg.top_p,
                        cfg.top_k, cfg.seed)  # fmt: skip
    start_batch = next_prompt // cfg.batch_size
    ids = encode_prompts(tokenizer, conversations)
    seconds, tokens = 0.0, 0
    with tqdm(total=len(prompts), initial=next_prompt, desc="sampling", unit="prompt", file=sys.stderr,
              dynamic_ncols=True, mininterval=1.0) as bar:  # fmt: skip
        for batch in sample_batches(model, tokenizer, ids, sampling, start_batch=start_batch):
            rows = batch_rows(batch, prompts, reward, meta, next_prompt)
            append_rows(out, rows)
            seconds, tokens = seconds + batch.seconds, tokens + batch.new_tokens
            bar.update(batch.first_prompt + len(batch.completions) - bar.n)
            bar.set_postfix({"tokens/s": f"{tokens / seconds:.0f}"}, refresh=False)
    return {"generation_seconds": seconds, "new_tokens": tokens,
            "tokens_per_second": tokens / seconds if seconds else None}  # fmt: skip


def batch_rows(
    batch: SampleBatch,
    prompts: Sequence[PromptRow],
    reward: Reward,
    meta: Mapping[str, Any],
    next_prompt: int,
) -> list[dict[str, Any]]:
    """The rows of one sampled batch: every prompt from ``next_prompt`` on, scored, ties left out."""
    from dpo_lab.evaluation.policy_eval import score

    rows = []
    for offset, completions in enumerate(batch.completions):
        index = batch.first_prompt + offset
        if index < next_prompt:
            continue  # written before the run was stopped
        prompt = prompts[index]
        scores = score(reward, prompt_text(prompt.prompt), completions, prompt.row)
        row = preference_row(row_prompt(prompt.prompt, meta["system_prompt"]), [c.text for c in completions],
                             scores, {**meta, "prompt_index": index})  # fmt: skip
        if row is not None:
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------------------
# the command line


def _key(arg: str) -> str:
    return arg.lstrip("+~").split("=", 1)[0]


def check_command_line(args: list[str]) -> None:
    """ConfigError for the first bad override: PairsConfig's own keys against it, ``model=<option>``
    against the model group's options, and ``model.*`` keys against the model schema (they need an option
    to go into: ``model=tiny model.dtype=bfloat16``)."""
    overrides = [a for a in args if "=" in a and not a.startswith("-")]
    model_args = [a for a in overrides if _key(a) == "model" or _key(a).startswith("model.")]
    check_overrides([a for a in args if a not in model_args], root=PairsConfig)
    choices = [a.split("=", 1)[1] for a in model_args if _key(a) == "model"]
    options = group_options("model", args)
    for choice in choices:
        if choice not in (*options, "null"):
            raise ConfigError("model", f"no option {choice!r}; the model options are: {', '.join(options)}")
    keys = [a for a in model_args if _key(a) != "model"]
    if keys and not [c for c in choices if c != "null"]:
        raise ConfigError(_key(keys[0]), "model.* keys go into a model option: give model=<option> too "
                          f"({', '.join(options)})")  # fmt: skip
    try:
        check_overrides([a.split("model.", 1)[1] for a in keys], root=ModelSettings)
    except ConfigError as err:
        raise ConfigError(f"model.{err.key}", str(err).split(": ", 1)[1]) from None


@hydra.main(version_base="1.3", config_path=CONF_PATH, config_name="pairs")
def _hydra_main(cfg: DictConfig) -> None:
    setup_logging()
    try:
        summary = make_pairs(typed_config(cfg, PairsConfig))
    except ConfigError as err:
        exit_with_config_error(err)
    print(summary_line(summary, Path(cfg.out).expanduser()))


def main() -> None:
    register_configs()
    register_resolvers()
    try:
        check_command_line(sys.argv[1:])
        check_user_config_dirs(sys.argv[1:])
    except ConfigError as err:
        exit_with_config_error(err)
    make_config_dirs_importable(sys.argv[1:])  # a reward function in a Python file beside your configs
    _hydra_main()


if __name__ == "__main__":
    main()
