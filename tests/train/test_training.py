"""Tier 2 (in-process): the trainer built from the schemas trains the adapter and only the adapter."""

from __future__ import annotations

import pytest
import torch

from dpo_lab.config.resolvers import asset_path
from dpo_lab.config.schemas import DataSettings, DPOSettings, LoraSettings, ModelSettings, TrainSettings
from dpo_lab.data.loading import load_preference_data
from dpo_lab.model.loading import build_lora_config, load_base_model, load_tokenizer
from dpo_lab.runtime.precision import Precision
from dpo_lab.train.trainer import build_dpo_args, build_trainer, run_mean_loss


def _build(tmp_path, dpo: DPOSettings | None = None, **train_overrides):
    model_cfg = ModelSettings(name_or_path=asset_path("tiny-llama"))
    data = load_preference_data(
        DataSettings(path=asset_path("finance"), max_train_samples=24, max_eval_samples=8), seed=0
    )
    train_cfg = TrainSettings(learning_rate=5e-3, per_device_train_batch_size=4, max_steps=3, logging_steps=1,
                            precision=Precision.fp32, **train_overrides)  # fmt: skip
    args = build_dpo_args(dpo or DPOSettings(max_length=256), train_cfg, output_dir=tmp_path / "out", seed=0,
                          precision=Precision.fp32, device="cpu")  # fmt: skip
    tokenizer = load_tokenizer(model_cfg)
    model = load_base_model(model_cfg, Precision.fp32, gradient_checkpointing=False)
    return build_trainer(model, tokenizer, args, data.train, data.eval, build_lora_config(LoraSettings(r=4)))


@pytest.mark.slow
def test_adapter_trains_and_base_stays_frozen(tmp_path) -> None:
    trainer = _build(tmp_path)
    assert trainer.ref_model is None, "the reference must be the base with the adapter disabled, not a copy"
    named = dict(trainer.model.named_parameters())
    lora = {n: p.detach().clone() for n, p in named.items() if "lora_" in n}
    base = {n: p.detach().clone() for n, p in named.items() if "lora_" not in n}
    assert lora and base
    assert all(not named[n].requires_grad for n in base)

    trainer.train()

    after = dict(trainer.model.named_parameters())
    changed = [n for n in lora if not torch.equal(lora[n], after[n].detach())]
    assert len(changed) == len(lora), f"{len(lora) - len(changed)} LoRA tensors did not move"
    for n, before in base.items():
        assert torch.equal(before, after[n].detach()), f"base weight {n} changed"
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))


def test_dpo_args_follow_the_schema(tmp_path) -> None:
    train_cfg = TrainSettings(eval_steps=10, save_steps=20, extra={"lr_scheduler_kwargs": {"min_lr": 1e-6}})
    args = build_dpo_args(DPOSettings(beta=0.3, loss_type=["ipo"]), train_cfg, output_dir=tmp_path, seed=7,
                          precision=Precision.fp32, device="cpu")  # fmt: skip
    assert args.beta == 0.3 and args.loss_type == ["ipo"]
    assert args.bf16 is False and args.fp16 is False and args.gradient_checkpointing is False
    assert args.eval_strategy == "steps" and args.eval_steps == 10
    assert args.save_strategy == "steps" and args.save_steps == 20
    assert args.seed == 7 and args.report_to == []
    assert args.lr_scheduler_kwargs == {"min_lr": 1e-6}


def test_run_mean_loss_weights_each_log_by_its_steps() -> None:
    # logs at steps 2 (mean of steps 1-2) and 5 (mean of 3-5), evaluations between, 1.5 summed since step 5
    history = [{"step": 0, "eval_loss": 0.7}, {"step": 2, "loss": 0.6}, {"step": 2, "eval_loss": 0.5},
               {"step": 5, "loss": 0.4}]  # fmt: skip
    assert run_mean_loss(history, 1.5, 7) == pytest.approx((0.6 * 2 + 0.4 * 3 + 1.5) / 7)
    assert run_mean_loss([], 0.0, 0) == 0.0


def _counting_precompute(monkeypatch) -> list[tuple[str, int]]:
    """Patches TRL's precompute (through dpo_lab's hook) to record (split, rows) of every call."""
    from dpo_lab.train import library

    precomputed: list[tuple[str, int]] = []
    trl_precompute = library.TrainerHooks.reference_logps_of_split

    def counted(self, dataset, name, batch_size):
        precomputed.append((name, len(dataset)))
        return trl_precompute(self, dataset, name, batch_size)

    monkeypatch.setattr(library.TrainerHooks, "reference_logps_of_split", counted)
    return precomputed


@pytest.mark.parametrize("group_by_length", [False, True])
def test_a_short_run_precomputes_only_the_pairs_it_draws(
    tmp_path, monkeypatch, group_by_length: bool
) -> None:
    """3 steps of 4 pairs draw 12 of the 24 training pairs: only those 12 (and the 8 held-out) get the
    reference forward before training, and every batch the prepared data loader yields carries a
    precomputed value."""
    precomputed = _counting_precompute(monkeypatch)
    dpo = DPOSettings(max_length=256, precompute_ref_log_probs=True)
    trainer = _build(tmp_path, dpo=dpo, group_by_length=group_by_length)
    assert precomputed == [("train", 12), ("eval", 8)]
    ref = torch.tensor(trainer.train_dataset["ref_chosen_logps"])
    assert int(torch.isnan(ref).sum()) == 12, "the 12 pairs no step draws must not be computed"
    drawn = [batch for batch, _ in zip(trainer.get_train_dataloader(), range(3), strict=False)]
    assert sum(len(b["ref_chosen_logps"]) for b in drawn) == 12
    assert not any(torch.isnan(b["ref_chosen_logps"]).any() for b in drawn), (
        "a drawn pair was not precomputed"
    )


@pytest.mark.slow
def test_a_short_run_on_the_pairs_it_draws_trains_as_one_that_precomputes_all(tmp_path, monkeypatch) -> None:
    """The same 3 steps, trained: nothing is computed in the step, and the losses equal those of a run
    that precomputes all 24 pairs."""
    from dpo_lab.train.trainer import DPOTrainer

    precomputed = _counting_precompute(monkeypatch)
    dpo = DPOSettings(max_length=256, precompute_ref_log_probs=True)
    trainer = _build(tmp_path / "short", dpo=dpo)
    trainer.train()
    assert trainer.reference_misses == 0 and precomputed[0] == ("train", 12)
    short_losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]

    monkeypatch.setattr(DPOTrainer, "training_draws", lambda self, dataset: None)  # precompute every pair
    precomputed.clear()
    full = _build(tmp_path / "full", dpo=dpo)
    assert precomputed[0] == ("train", 24)
    full.train()
    full_losses = [h["loss"] for h in full.state.log_history if "loss" in h]
    assert short_losses == pytest.approx(full_losses, abs=1e-6) and len(short_losses) == 3
