"""Reference log-probs computed only for the pairs a run uses.

TRL precomputes the reference log-probs of every training pair before training. A run whose ``max_steps``
ends inside the first epoch draws only some of them, and which ones is known before training starts: the
first ``max_steps x pairs per step`` indices of the first epoch's order, from the same seeded sampler
training uses. :func:`first_epoch_draws` reads that order; :func:`fill_reference_logps` computes the rows
still missing among those needed (an earlier job of a sweep may have computed some) and leaves NaN in the
rows no one needs. :func:`with_reference_logps` is the safety net in the step: a batch row whose value is
NaN gets the reference forward there, so a wrong prediction costs time, never a wrong loss.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from accelerate.data_loader import SeedableRandomSampler
from datasets import Dataset
from torch.utils.data import RandomSampler, Sampler

# the batch / dataset columns that carry the reference log-probs (TRL's names)
REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")

# computes the reference log-probs of a batch: (chosen, rejected), one value per row
BatchReference = Callable[[dict[str, Any]], tuple[torch.Tensor, torch.Tensor]]


def pairs_per_step(args: Any) -> int:
    """Pairs one optimizer step consumes over all processes."""
    return args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size


def first_epoch_draws(
    sampler: Sampler[int] | None, rows: int, draws: int, data_seed: int | None
) -> list[int] | None:
    """The first ``draws`` indices training draws from ``sampler`` in its first epoch, or None when the run
    reaches the end of an epoch (``draws >= rows``, or no step limit: every row is used) or the order is
    not known ahead.

    ``sampler`` must be the one training will iterate, built fresh. A plain ``RandomSampler`` is what
    accelerate swaps for its seedable sampler seeded with ``data_seed`` when it prepares the data loader
    (``use_seedable_sampler``; pass None for ``data_seed`` when that is off): the order is that sampler's.
    """
    if sampler is None or not 0 < draws < rows:
        return None
    if type(sampler) is RandomSampler:
        if data_seed is None or sampler.replacement:
            return None
        generator = torch.Generator()
        sampler = SeedableRandomSampler(
            data_source=range(rows), num_samples=sampler.num_samples, generator=generator, data_seed=data_seed
        )
    return list(itertools.islice(iter(sampler), draws))


def fill_reference_logps(
    dataset: Dataset,
    known: Dataset | None,
    needed: Sequence[int] | None,
    compute: Callable[[Dataset], Dataset],
) -> tuple[Dataset, int]:
    """``dataset`` with its reference log-prob columns, and how many rows were computed now.

    ``known``: the same rows with the columns already filled for some of them (NaN elsewhere), or None.
    ``needed``: the row indices the run uses (None: all). ``compute``: TRL's precompute over a dataset,
    returning it with the columns added. Only the needed rows missing from ``known`` are computed; the rows
    no one needs stay NaN. A full computation with nothing known returns ``compute``'s output unchanged.
    """
    rows = len(dataset)
    if known is None and needed is None:
        return compute(dataset), rows
    values = {name: np.full(rows, np.nan) for name in REF_COLUMNS}
    if known is not None:
        for name in REF_COLUMNS:
            values[name][:] = np.asarray(known[name], dtype=np.float64)
    wanted = range(rows) if needed is None else sorted(set(needed))
    missing = [
        i for i in wanted if np.isnan(values[REF_COLUMNS[0]][i]) or np.isnan(values[REF_COLUMNS[1]][i])
    ]
    if known is not None and not missing:
        return known, 0
    feature = None  # missing is empty only when nothing is needed: columns of NaN, their type inferred
    if missing:
        part = compute(dataset.select(missing))
        feature = part.features[REF_COLUMNS[0]]
        for name in REF_COLUMNS:
            values[name][missing] = np.asarray(part[name], dtype=np.float64)
    base = dataset.remove_columns([name for name in REF_COLUMNS if name in dataset.column_names])
    for name in REF_COLUMNS:
        base = base.add_column(name, values[name].tolist(), feature=feature)
    return base, len(missing)


def with_reference_logps(inputs: dict[str, Any], compute: BatchReference) -> tuple[dict[str, Any], int]:
    """The batch with its reference log-probs, and how many of its rows had to be computed here although
    the run precomputes (rows left NaN because no one predicted they would be drawn).

    Columns present without NaN: the batch as it is. Columns absent: ``compute`` for the whole batch (what
    TRL does without precomputation; 0 is returned, nothing was missed). NaN in some rows: ``compute`` for
    the batch, its values taken for those rows only.
    """
    if not all(name in inputs for name in REF_COLUMNS):
        chosen, rejected = compute(inputs)
        return {**inputs, REF_COLUMNS[0]: chosen, REF_COLUMNS[1]: rejected}, 0
    have = [inputs[name] for name in REF_COLUMNS]
    gaps = torch.isnan(have[0]) | torch.isnan(have[1])
    if not bool(gaps.any()):
        return inputs, 0
    fresh = compute(inputs)
    filled = {
        name: torch.where(gaps, new.to(old.dtype), old)
        for name, new, old in zip(REF_COLUMNS, fresh, have, strict=True)
    }
    return {**inputs, **filled}, int(gaps.sum())
