"""``dpo-lab generate run=<run folder> prompt="..." | prompts_file=<file> | chat=true``

Loads the run's base model (in the run's quantization, or ``quantization=...``) with its adapter and
answers prompts from the command line, a .txt / .jsonl file, standard input (``echo "question" |``, one
prompt per line), or a multi-turn chat on stdin (``chat=true``, a terminal or a pipe), streaming the
answer to stdout as it is generated. Logs go to stderr.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TextIO

import hydra
from omegaconf import DictConfig
from transformers import PreTrainedModel, set_seed
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from dpo_lab.cli.common import exit_with_config_error, run_entry_point, setup_logging
from dpo_lab.config.commands import GenerateConfig
from dpo_lab.config.resolvers import CONF_PATH
from dpo_lab.config.validation import typed_config
from dpo_lab.errors import ConfigError
from dpo_lab.evaluation.generation import Messages, as_messages, generate_answers, stream_answer
from dpo_lab.model.loading import adapter_disabled, load_adapter_model, load_tokenizer
from dpo_lab.runs.folder import RunFolder, read_run

log = logging.getLogger("dpo_lab.cli.generate")

CHAT_COMMANDS = {"/exit": "end the chat", "/quit": "end the chat", "/reset": "forget the conversation"}


def read_prompts(path: str, field: str = "prompt") -> list[str | Messages]:
    """Prompts from a .txt file (one per line, blank lines skipped) or a .jsonl file (``field`` of each
    line: a string or a list of {role, content} messages). ConfigError names the file and line."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError("prompts_file", f"no such file: {path}")
    lines = file.read_text().splitlines()
    if file.suffix == ".jsonl":
        prompts = [_jsonl_prompt(line, n, file, field) for n, line in enumerate(lines, 1) if line.strip()]
    else:
        prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise ConfigError("prompts_file", f"{path} holds no prompt")
    return prompts


def read_stdin_prompts(stdin: TextIO) -> list[str | Messages]:
    """The prompts piped on standard input, one per line (blank lines skipped), when no prompt, prompts_file
    or chat is given; ConfigError when stdin is a terminal (nothing was piped) or the pipe held no prompt."""
    if stdin.isatty():
        raise ConfigError(
            "prompt", "give prompt=..., prompts_file=... or chat=true, or pipe prompts on standard input"
        )
    prompts: list[str | Messages] = [line.strip() for line in stdin if line.strip()]
    if not prompts:
        raise ConfigError("prompt", "standard input held no prompt (give prompt=..., prompts_file=...)")
    return prompts


def _jsonl_prompt(line: str, n: int, file: Path, field: str) -> str | Messages:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise ConfigError("prompts_file", f"{file}:{n}: not valid JSON ({err.msg})") from None
    value = row.get(field) if isinstance(row, dict) else None
    if isinstance(value, str) and value.strip():
        return value
    if (
        isinstance(value, list)
        and value
        and all(isinstance(m, dict) and {"role", "content"} <= m.keys() for m in value)
    ):
        return value
    raise ConfigError(
        "prompt_field",
        f"{file}:{n}: needs a {field!r} field holding a non-empty string or a list of messages",
    )


def answer_prompts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str | Messages],
    cfg: GenerateConfig,
    system_prompt: str | None,
    out: TextIO,
) -> list[dict[str, Any]]:
    """Answer each prompt, writing ``>>> prompt`` and the answer to ``out`` (streamed if cfg.stream)."""
    conversations = [as_messages(p, system_prompt) for p in prompts]
    records = []
    if cfg.stream:
        for prompt, conversation in zip(prompts, conversations, strict=True):
            out.write(f">>> {_show(prompt)}\n")
            answer = stream_answer(model, tokenizer, conversation, cfg.generation, out)
            out.write("\n")
            records.append({"prompt": prompt, "response": answer})
    else:
        answers = generate_answers(model, tokenizer, conversations, cfg.generation)
        for prompt, answer in zip(prompts, answers, strict=True):
            out.write(f">>> {_show(prompt)}\n{answer}\n\n")
            records.append({"prompt": prompt, "response": answer})
    return records


def _show(prompt: str | Messages) -> str:
    return prompt if isinstance(prompt, str) else prompt[-1]["content"]


def chat(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    cfg: GenerateConfig,
    system_prompt: str | None,
    lines: Iterator[str],
    out: TextIO,
    interactive: bool,
) -> list[dict[str, Any]]:
    """Multi-turn chat: each input line is a user turn, answered (streamed) with the whole conversation
    as context; the oldest turns are dropped when the context would overflow. /reset, /exit."""
    history: Messages = []
    records: list[dict[str, Any]] = []
    if interactive:
        out.write("chat with the model; " + ", ".join(f"{c} to {d}" for c, d in CHAT_COMMANDS.items()) + "\n")
    for line in _user_lines(lines, out, interactive):
        if line in ("/exit", "/quit"):
            break
        if line == "/reset":
            history = []
            continue
        history.append({"role": "user", "content": line})
        history = _fit_context(tokenizer, history, system_prompt, cfg.generation.max_new_tokens, model)
        conversation = as_messages(history, system_prompt)
        if cfg.stream:
            answer = stream_answer(model, tokenizer, conversation, cfg.generation, out)
        else:
            answer = generate_answers(model, tokenizer, [conversation], cfg.generation)[0]
            out.write(answer + "\n")
        history.append({"role": "assistant", "content": answer})
        records.append({"turn": len(records), "user": line, "assistant": answer})
    return records


def _user_lines(lines: Iterator[str], out: TextIO, interactive: bool) -> Iterator[str]:
    while True:
        if interactive:
            out.write("you> ")
            out.flush()
        line = next(lines, None)
        if line is None:
            return
        if line.strip():
            yield line.strip()


def _fit_context(
    tokenizer: PreTrainedTokenizerBase,
    history: Messages,
    system_prompt: str | None,
    max_new_tokens: int,
    model: PreTrainedModel,
) -> Messages:
    """Drop the oldest user/assistant exchanges until prompt + answer fit the model's context."""
    limit = getattr(model.config, "max_position_embeddings", None)
    while limit and len(history) > 1:
        ids = tokenizer.apply_chat_template(as_messages(history, system_prompt), add_generation_prompt=True)
        length = len(ids["input_ids"] if isinstance(ids, dict) else ids)
        if length + max_new_tokens <= limit:
            break
        log.info("conversation too long for the context (%d tokens): dropping the oldest exchange", length)
        history = history[2:]
    return history


def load_model(cfg: GenerateConfig, run: RunFolder) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The run's base model + adapter and the tokenizer saved with the adapter."""
    model_cfg = run.model
    if cfg.quantization is not None:
        model_cfg = dataclasses.replace(model_cfg, quantization=cfg.quantization)
    saved = dataclasses.replace(
        model_cfg, name_or_path=str(run.adapter_dir), gguf_file=None, revision=None, chat_template=None
    )
    tokenizer = load_tokenizer(saved)
    return load_adapter_model(model_cfg, run.adapter_dir, run.precision), tokenizer


def generate(cfg: GenerateConfig, stdin: TextIO, stdout: TextIO) -> list[dict[str, Any]]:
    """Everything after the config is checked: read the run and prompts, load, answer, save."""
    run = read_run(cfg.run)
    prompts = read_prompts(cfg.prompts_file, cfg.prompt_field) if cfg.prompts_file else None
    if prompts is None and cfg.prompt is None and not cfg.chat:
        prompts = read_stdin_prompts(stdin)  # before the model loads: a terminal with no prompt fails fast
    model, tokenizer = load_model(cfg, run)
    system_prompt = cfg.system_prompt if cfg.system_prompt is not None else run.data.system_prompt
    set_seed(cfg.seed)
    with ExitStack() as stack:
        if cfg.base_only:
            stack.enter_context(adapter_disabled(model))
        if cfg.chat:
            records = chat(model, tokenizer, cfg, system_prompt, iter(stdin), stdout, stdin.isatty())
        else:
            prompts = prompts if prompts is not None else [cfg.prompt]
            records = answer_prompts(model, tokenizer, prompts, cfg, system_prompt, stdout)
    if cfg.output:
        path = Path(cfg.output).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        log.info("wrote %d answers to %s", len(records), path)
    return records


@hydra.main(version_base="1.3", config_path=CONF_PATH, config_name="generate")
def _hydra_main(cfg: DictConfig) -> None:
    setup_logging()
    try:
        generate(typed_config(cfg, GenerateConfig), sys.stdin, sys.stdout)
    except ConfigError as err:
        exit_with_config_error(err)


def main() -> None:
    run_entry_point(_hydra_main, GenerateConfig)


if __name__ == "__main__":
    main()
