"""Token lengths of preference pairs as TRL counts them, and the short data report logged before training.

Lengths follow TRL's DPO tokenisation: the prompt is rendered by the chat template with the generation
prompt; each response is what ``prompt + [response]`` adds after the tokens the two renderings share.
A pair is truncated when ``prompt + longer response`` exceeds ``dpo.max_length``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

Message = dict[str, str]


def _chat_ids(tokenizer: PreTrainedTokenizerBase, messages: list[Message], **kwargs: Any) -> list[int]:
    return list(
        tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)["input_ids"]
    )


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Number of leading tokens ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def pair_token_ids(
    tokenizer: PreTrainedTokenizerBase, prompt: list[Message], chosen: Message, rejected: Message
) -> tuple[list[int], list[int], list[int]]:
    """(prompt, chosen, rejected) token ids of one conversational pair, split as TRL's DPOTrainer splits
    them: its ``prompt_ids`` / ``chosen_ids`` / ``rejected_ids``, so that TRL need not tokenise again."""
    prompt_ids = _chat_ids(tokenizer, prompt, add_generation_prompt=True)
    with_chosen = _chat_ids(tokenizer, [*prompt, chosen])
    with_rejected = _chat_ids(tokenizer, [*prompt, rejected])
    n = min(common_prefix_length(prompt_ids, with_chosen), common_prefix_length(prompt_ids, with_rejected))
    return prompt_ids[:n], with_chosen[n:], with_rejected[n:]


def token_lengths(
    tokenizer: PreTrainedTokenizerBase, prompt: list[Message], chosen: Message, rejected: Message
) -> tuple[int, int, int]:
    """(prompt, chosen, rejected) token counts of one conversational pair, as TRL's DPOTrainer splits them."""
    p, c, r = pair_token_ids(tokenizer, prompt, chosen, rejected)
    return len(p), len(c), len(r)


def length_stats(values: Sequence[int]) -> dict[str, float] | None:
    """Median, 95th percentile (linear interpolation, numpy's default) and maximum; None when empty."""
    if len(values) == 0:
        return None
    arr = np.asarray(values, dtype=float)
    return {
        "median": float(np.percentile(arr, 50)),
        "p95": float(np.percentile(arr, 95)),
        "max": float(arr.max()),
    }


def split_report(
    prompt: Sequence[int], chosen: Sequence[int], rejected: Sequence[int], max_length: int | None
) -> dict[str, Any]:
    """Rows, prompt and response token stats, and pairs that ``max_length`` truncates, for one split.

    Response stats pool the chosen and rejected lengths (2 values per pair). Without a ``max_length``
    nothing is truncated and ``truncated_pairs`` is left out.
    """
    report: dict[str, Any] = {
        "rows": len(prompt),
        "prompt_tokens": length_stats(prompt),
        "response_tokens": length_stats([*chosen, *rejected]),
    }
    if max_length is not None:
        pairs = zip(prompt, chosen, rejected, strict=True)
        report["truncated_pairs"] = sum(p + max(c, r) > max_length for p, c, r in pairs)
    return report


def _stats_text(stats: Mapping[str, float] | None) -> str:
    if stats is None:
        return "-"
    return f"median {stats['median']:.0f} / p95 {stats['p95']:.0f} / max {stats['max']:.0f}"


def format_report(summary: Mapping[str, Any]) -> str:
    """The data report (``PreferenceData.summary()``) as a few log lines."""
    splits, dropped = summary["splits"], summary["dropped"]
    formats = ", ".join(sorted(set(summary["format"].values())))
    invalid = (
        f"dropped {sum(dropped.values())} invalid: " + ", ".join(f"{k}={v}" for k, v in dropped.items())
        if dropped
        else "no invalid rows"
    )
    lines = [
        f"data: {splits['train']['rows']} train / {splits['eval']['rows']} held-out pairs from "
        f"{summary['source']} (format {formats}; {invalid})"
    ]
    for name, split in splits.items():
        if "prompt_tokens" not in split:
            continue
        line = (
            f"  {name}: prompt tokens {_stats_text(split['prompt_tokens'])}; "
            f"response tokens {_stats_text(split['response_tokens'])}"
        )
        if "truncated_pairs" in split:
            line += (
                f"; {split['truncated_pairs']} pair(s) truncated by dpo.max_length={summary['max_length']}"
            )
        lines.append(line)
    return "\n".join(lines)
