"""Reference log-probs for only the pairs a run uses (dpo_lab.train.reference), on hand-built data."""

from __future__ import annotations

import math

import pytest
import torch
from datasets import Dataset
from torch.utils.data import RandomSampler, SequentialSampler

from dpo_lab.train.batching import LengthGroupedSampler
from dpo_lab.train.reference import REF_COLUMNS, fill_reference_logps, first_epoch_draws, with_reference_logps


def _rows(n: int) -> Dataset:
    return Dataset.from_dict({"x": list(range(n))})


class _Compute:
    """Stands for TRL's precompute: chosen = -x, rejected = -2x; remembers the rows it was given."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    def __call__(self, part: Dataset) -> Dataset:
        xs = list(part["x"])
        self.calls.append(xs)
        return part.add_column(REF_COLUMNS[0], [-float(x) for x in xs]).add_column(
            REF_COLUMNS[1], [-2.0 * x for x in xs]
        )


def test_only_the_needed_rows_are_computed_and_the_rest_stay_nan() -> None:
    compute = _Compute()
    filled, computed = fill_reference_logps(_rows(6), None, [4, 1, 4], compute)
    assert compute.calls == [[1, 4]] and computed == 2
    chosen = filled[REF_COLUMNS[0]]
    assert chosen[1] == -1.0 and chosen[4] == -4.0 and filled[REF_COLUMNS[1]][4] == -8.0
    assert [i for i, v in enumerate(chosen) if math.isnan(v)] == [0, 2, 3, 5]
    assert filled["x"] == list(range(6))


def test_a_later_job_computes_only_what_the_earlier_one_left() -> None:
    compute = _Compute()
    first, _ = fill_reference_logps(_rows(6), None, [0, 1], compute)
    second, computed = fill_reference_logps(_rows(6), first, [1, 2, 3], compute)
    assert compute.calls == [[0, 1], [2, 3]] and computed == 2
    assert second[REF_COLUMNS[0]][:4] == [0.0, -1.0, -2.0, -3.0]
    again, computed = fill_reference_logps(_rows(6), second, [3, 0], compute)
    assert again is second and computed == 0 and len(compute.calls) == 2


def test_a_run_that_uses_every_pair_gets_trls_output_unchanged() -> None:
    compute = _Compute()
    rows = _rows(3)
    filled, computed = fill_reference_logps(rows, None, None, compute)
    assert computed == 3 and compute.calls == [[0, 1, 2]] and filled[REF_COLUMNS[1]] == [0.0, -2.0, -4.0]
    # an earlier job that needed fewer rows: the rest are filled in, nothing computed twice
    partial, _ = fill_reference_logps(rows, None, [2], compute)
    whole, computed = fill_reference_logps(rows, partial, None, compute)
    assert computed == 2 and compute.calls[-1] == [0, 1] and whole[REF_COLUMNS[0]] == [0.0, -1.0, -2.0]


def test_the_random_order_is_accelerates_seeded_one() -> None:
    """What accelerate iterates for a RandomSampler with use_seedable_sampler: its SeedableRandomSampler
    seeded with data_seed, first epoch."""
    from accelerate.data_loader import SeedableRandomSampler

    data = list(range(50))
    sampler = SeedableRandomSampler(data_source=data, generator=torch.Generator(), data_seed=7)
    expected = list(iter(sampler))[:20]
    assert first_epoch_draws(RandomSampler(data), 50, 20, data_seed=7) == expected
    assert first_epoch_draws(RandomSampler(data), 50, 20, data_seed=8) != expected


def test_the_length_grouped_order_is_the_samplers_first_epoch() -> None:
    lengths = [5, 1, 9, 3, 7, 2, 8, 4, 6, 10, 11, 12]
    expected = list(iter(LengthGroupedSampler(lengths, batch_size=2, seed=3)))[:6]
    assert (
        first_epoch_draws(LengthGroupedSampler(lengths, batch_size=2, seed=3), 12, 6, data_seed=3) == expected
    )


@pytest.mark.parametrize(
    ("sampler", "draws", "seed"),
    [
        (RandomSampler(range(10)), 10, 0),  # a whole epoch: every row
        (RandomSampler(range(10)), 12, 0),  # more than an epoch
        (RandomSampler(range(10)), 0, 0),  # no step limit (max_steps=-1 gives draws <= 0)
        (RandomSampler(range(10)), 5, None),  # accelerate's seedable sampler off: order not known ahead
        (RandomSampler(range(10), replacement=True), 5, 0),
        (None, 5, 0),
    ],
)
def test_no_prediction_means_every_row(sampler, draws: int, seed: int | None) -> None:
    assert first_epoch_draws(sampler, 10, draws, data_seed=seed) is None


def test_sequential_order_is_the_first_rows() -> None:
    assert first_epoch_draws(SequentialSampler(range(10)), 10, 4, data_seed=0) == [0, 1, 2, 3]


def _batch(chosen: list[float], rejected: list[float]) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.zeros(len(chosen), 2), REF_COLUMNS[0]: torch.tensor(chosen),
            REF_COLUMNS[1]: torch.tensor(rejected)}  # fmt: skip


def test_a_batch_with_every_value_is_left_alone() -> None:
    calls = []
    batch = _batch([-1.0, -2.0], [-3.0, -4.0])
    out, missed = with_reference_logps(batch, lambda b: calls.append(b) or (None, None))
    assert out is batch and missed == 0 and not calls


def test_missing_rows_are_computed_in_the_step_and_the_others_kept() -> None:
    nan = float("nan")
    batch = _batch([-1.0, nan, -3.0], [-4.0, -5.0, nan])
    out, missed = with_reference_logps(batch, lambda b: (torch.full((3,), -10.0), torch.full((3,), -20.0)))
    assert missed == 2
    assert out[REF_COLUMNS[0]].tolist() == [-1.0, -10.0, -10.0]  # a row missing either value gets both
    assert out[REF_COLUMNS[1]].tolist() == [-4.0, -20.0, -20.0]


def test_without_precomputed_columns_the_whole_batch_is_computed_and_nothing_counted_missed() -> None:
    batch = {"input_ids": torch.zeros(2, 2)}
    out, missed = with_reference_logps(
        batch, lambda b: (torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -4.0]))
    )
    assert missed == 0 and out[REF_COLUMNS[1]].tolist() == [-3.0, -4.0]


def test_a_step_takes_batch_times_accumulation_times_processes_pairs() -> None:
    from types import SimpleNamespace

    from dpo_lab.train.reference import pairs_per_step

    args = SimpleNamespace(per_device_train_batch_size=4, gradient_accumulation_steps=2, world_size=3)
    assert pairs_per_step(args) == 24
