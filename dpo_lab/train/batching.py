"""Length-grouped training batches for tokenised preference pairs: less padding per batch.

transformers' ``LengthGroupedSampler`` looks for an ``input_ids`` column, which TRL's DPO datasets do not
have (they hold ``prompt_ids``, ``chosen_ids``, ``rejected_ids``), so ``group_by_length`` fails there. This
module measures a pair by what the collator pads it to, and groups pairs of similar length into batches
whose order is shuffled (transformers keeps each mega-batch in descending length order, which feeds the
model long-to-short within it).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pyarrow.compute as pc
import torch
from datasets import Dataset

PAIR_ID_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")


def pair_token_lengths(dataset: Dataset) -> list[tuple[int, int, int]]:
    """``(len(prompt_ids), len(chosen_ids), len(rejected_ids))`` of every row of a tokenised DPO dataset."""
    table = dataset.select_columns(list(PAIR_ID_COLUMNS)).with_format("arrow")[:]
    columns = [pc.list_value_length(table.column(name)).to_pylist() for name in PAIR_ID_COLUMNS]
    return list(zip(*columns, strict=True))


def padded_pair_length(prompt: int, chosen: int, rejected: int, max_length: int | None) -> int:
    """Length the collator pads a pair's two sequences to: the longer of prompt+chosen and prompt+rejected."""
    longest = prompt + max(chosen, rejected)
    return longest if max_length is None else min(longest, max_length)


def length_grouped_indices(
    lengths: Sequence[int], batch_size: int, generator: torch.Generator, max_mega_batches: int = 50
) -> list[int]:
    """A permutation of ``range(len(lengths))`` whose consecutive ``batch_size`` slices hold similar lengths.

    Rows are shuffled, cut into mega-batches of ``k * batch_size`` rows (k = n // (4 * batch_size), clamped
    to [1, max_mega_batches], as in transformers), each mega-batch sorted by length and cut into batches;
    then the batches are shuffled. Every row appears once; only the last batch can be short, and it stays
    last so that no later batch straddles two groups.
    """
    n = len(lengths)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    mega = max(1, min(n // (4 * batch_size), max_mega_batches)) * batch_size
    order = torch.randperm(n, generator=generator).tolist()
    batches: list[list[int]] = []
    for start in range(0, n, mega):
        group = sorted(order[start : start + mega], key=lambda i: lengths[i], reverse=True)
        batches += [group[i : i + batch_size] for i in range(0, len(group), batch_size)]
    short = [b for b in batches if len(b) < batch_size]
    full = [b for b in batches if len(b) == batch_size]
    shuffled = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()]
    return [i for batch in shuffled + short for i in batch]


class LengthGroupedSampler(torch.utils.data.Sampler[int]):
    """Yields :func:`length_grouped_indices`; a new grouping each epoch, the same on every rank (seeded)."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        return iter(length_grouped_indices(self.lengths, self.batch_size, self.generator))


def dpo_length_sampler(
    dataset: Dataset, batch_size: int, max_length: int | None, seed: int
) -> LengthGroupedSampler:
    """A :class:`LengthGroupedSampler` over a tokenised DPO dataset."""
    lengths = [padded_pair_length(p, c, r, max_length) for p, c, r in pair_token_lengths(dataset)]
    return LengthGroupedSampler(lengths, batch_size, seed)
