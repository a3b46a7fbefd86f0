"""Answer chat prompts with a causal LM: chat template, left-padded batches, optional token streaming.

Used by the generate CLI, the task evaluation after training and the pairwise comparison, so that all
three decode the same way.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, TextIO

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, TextStreamer, set_seed
from transformers.tokenization_utils_base import BatchEncoding, PreTrainedTokenizerBase

from dpo_lab.config.schemas import GenerationSettings
from dpo_lab.runtime.processes import is_main_process

Messages = list[dict[str, str]]


def as_messages(prompt: str | Messages, system_prompt: str | None = None) -> Messages:
    """A prompt as chat messages: a string becomes one user turn; the system prompt is prepended to a
    conversation that has none."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system_prompt and not (messages and messages[0]["role"] == "system"):
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def chat_inputs(
    tokenizer: PreTrainedTokenizerBase, conversations: Sequence[Messages], device: torch.device | str
) -> BatchEncoding:
    """Token ids of each conversation rendered by the chat template with the assistant turn opened,
    left-padded to one batch (the template already holds any BOS token)."""
    texts = [
        tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations
    ]
    batch = tokenizer(texts, padding=True, padding_side="left", add_special_tokens=False, return_tensors="pt")
    return batch.to(device)


def generate_kwargs(cfg: GenerationSettings, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """``model.generate`` arguments; sampling knobs only when sampling (greedy ignores them)."""
    kwargs: dict[str, Any] = {
        "max_new_tokens": cfg.max_new_tokens,
        "do_sample": cfg.do_sample,
        "repetition_penalty": cfg.repetition_penalty,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if cfg.do_sample:
        kwargs.update(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    return kwargs


def generate_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Messages],
    cfg: GenerationSettings,
    seed: int | None = None,
    desc: str | None = None,
) -> list[str]:
    """The assistant's reply to each conversation, generated ``cfg.batch_size`` at a time; with ``desc``, a
    progress bar over the batches on stderr (the main process only)."""
    if seed is not None:
        set_seed(seed)
    answers: list[str] = []
    starts = range(0, len(conversations), cfg.batch_size)
    bar = tqdm(total=len(starts), desc=desc, unit="batch", leave=False, file=sys.stderr, dynamic_ncols=True,
               disable=desc is None or not is_main_process())  # fmt: skip
    with bar, _eval_mode(model), torch.inference_mode():
        for start in starts:
            batch = chat_inputs(tokenizer, conversations[start : start + cfg.batch_size], model.device)
            out = model.generate(**batch, **generate_kwargs(cfg, tokenizer))
            new_tokens = out[:, batch["input_ids"].shape[1] :]
            answers += [a.strip() for a in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
            bar.update(1)
    return answers


def stream_answer(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversation: Messages,
    cfg: GenerationSettings,
    out: TextIO | None = None,
) -> str:
    """Generate one reply while writing its text to ``out`` (stdout) as tokens arrive; returns the reply."""
    streamer = TerminalStreamer(tokenizer, out or sys.stdout)
    with _eval_mode(model), torch.inference_mode():
        batch = chat_inputs(tokenizer, [conversation], model.device)
        output = model.generate(**batch, **generate_kwargs(cfg, tokenizer), streamer=streamer)
    new_tokens = output[0, batch["input_ids"].shape[1] :]
    return tokenizer.decode(new_tokens, skip_special_tokens=True).strip()


class TerminalStreamer(TextStreamer):
    """transformers' TextStreamer (prompt skipped, special tokens dropped) writing to any text stream."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, out: TextIO):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.out = out

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.out.write(text + ("\n" if stream_end else ""))
        self.out.flush()


class _eval_mode:
    """Put a model in eval mode for the block and restore its previous mode (the trainer's model trains
    again afterwards)."""

    def __init__(self, model: PreTrainedModel):
        self.model, self.was_training = model, model.training

    def __enter__(self) -> None:
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was_training)
