"""Length-grouped batches: a permutation, less padding, and a working group_by_length on TRL's columns."""

from __future__ import annotations

import torch
from datasets import Dataset

from dpo_lab.train.batching import (
    LengthGroupedSampler,
    length_grouped_indices,
    padded_pair_length,
    pair_token_lengths,
)


def _padded_tokens(order: list[int], lengths: list[int], batch_size: int) -> int:
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return sum(len(b) * max(lengths[i] for i in b) for b in batches)


def test_every_row_once_and_the_short_batch_last() -> None:
    lengths = [5, 1, 9, 3, 7, 2, 8, 4, 6, 10]
    order = length_grouped_indices(lengths, batch_size=4, generator=torch.Generator().manual_seed(0))
    assert sorted(order) == list(range(10))
    # 10 rows in batches of 4: the 2-row remainder is the last batch, so no batch straddles two groups
    first_two = [order[0:4], order[4:8]]
    assert all(len(b) == 4 for b in first_two) and len(order[8:]) == 2


def test_grouping_pads_less_than_random_batches() -> None:
    lengths = [10, 200] * 32  # alternating short and long pairs: random batches almost always hold a long one
    gen = torch.Generator().manual_seed(1)
    grouped = length_grouped_indices(lengths, batch_size=4, generator=gen)
    shuffled = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(1)).tolist()
    assert _padded_tokens(grouped, lengths, 4) < 0.75 * _padded_tokens(shuffled, lengths, 4)


def test_seeded_and_different_each_epoch() -> None:
    lengths = list(range(40))
    a, b = LengthGroupedSampler(lengths, 4, seed=3), LengthGroupedSampler(lengths, 4, seed=3)
    epoch1, epoch2 = list(a), list(a)
    assert epoch1 == list(b), "same seed, same order (every rank draws the same permutation)"
    assert epoch1 != epoch2, "a new grouping each epoch"
    assert len(a) == 40


def test_pair_lengths_from_trl_columns() -> None:
    ds = Dataset.from_dict({"prompt_ids": [[1, 2], [1]], "chosen_ids": [[3], [4, 5, 6]],
                            "rejected_ids": [[7, 8, 9], [4]], "other": ["x", "y"]})  # fmt: skip
    assert pair_token_lengths(ds) == [(2, 1, 3), (1, 3, 1)]
    assert pair_token_lengths(ds.select([1])) == [(1, 3, 1)]
    assert padded_pair_length(2, 1, 3, max_length=None) == 5
    assert padded_pair_length(2, 1, 3, max_length=4) == 4


def test_group_by_length_works_with_the_dpo_trainer(tmp_path) -> None:
    """transformers' own sampler looks for input_ids and raises on TRL's DPO columns; ours groups them."""
    from dpo_lab.config.resolvers import asset_path
    from dpo_lab.config.schemas import DataSettings, DPOSettings, LoraSettings, ModelSettings, TrainSettings
    from dpo_lab.data.loading import load_preference_data
    from dpo_lab.model.loading import build_lora_config, load_base_model, load_tokenizer
    from dpo_lab.runtime.precision import Precision
    from dpo_lab.train.trainer import build_dpo_args, build_trainer

    model_cfg = ModelSettings(name_or_path=asset_path("tiny-llama"))
    data = load_preference_data(
        DataSettings(path=asset_path("finance"), max_train_samples=32, max_eval_samples=8), seed=0
    )
    train_cfg = TrainSettings(per_device_train_batch_size=4, max_steps=2, group_by_length=True,
                            precision=Precision.fp32)  # fmt: skip
    args = build_dpo_args(DPOSettings(max_length=256), train_cfg, output_dir=tmp_path, seed=0,
                          precision=Precision.fp32, device="cpu")  # fmt: skip
    model = load_base_model(model_cfg, Precision.fp32, False)
    trainer = build_trainer(model, load_tokenizer(model_cfg), args, data.train, data.eval,
                            build_lora_config(LoraSettings(r=4)))  # fmt: skip
    loader = trainer.get_train_dataloader()
    assert isinstance(trainer._get_train_sampler(), LengthGroupedSampler)
    pairs = pair_token_lengths(trainer.train_dataset)
    grouped_width = sum(batch["input_ids"].shape[1] for batch in loader)
    assert sum(batch["attention_mask"].sum() for batch in loader) > 0
    random_batches = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(0)).tolist()
    lengths = [padded_pair_length(p, c, r, 256) for p, c, r in pairs]
    random_width = sum(max(lengths[i] for i in random_batches[k : k + 4]) for k in range(0, len(pairs), 4))
    assert grouped_width < random_width, "grouped batches must be narrower than random ones"
    eval_sampler = trainer._get_eval_sampler(trainer.eval_dataset)
    assert list(eval_sampler) == list(range(len(trainer.eval_dataset))), "evaluation stays sequential"
