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


def _build(tmp_path, **train_overrides):
    model_cfg = ModelSettings(name_or_path=asset_path("tiny-llama"))
    data = load_preference_data(
        DataSettings(path=asset_path("finance"), max_train_samples=24, max_eval_samples=8), seed=0
    )
    train_cfg = TrainSettings(learning_rate=5e-3, per_device_train_batch_size=4, max_steps=3, logging_steps=1,
                            precision=Precision.fp32, **train_overrides)  # fmt: skip
    args = build_dpo_args(DPOSettings(max_length=256), train_cfg, output_dir=tmp_path / "out", seed=0,
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


@pytest.mark.parametrize(("max_steps", "rows", "warned"), [(4, 33, True), (4, 32, False), (-1, 100, False)])
def test_a_precompute_for_pairs_the_run_never_uses_is_named_with_the_fix(
    caplog, max_steps: int, rows: int, warned: bool
) -> None:
    """4 steps of 4 pairs x 2 accumulation use 32 pairs: precomputing 33 wastes one and says so (with the
    data.max_train_samples that avoids it); 32 or an epoch-long run (max_steps=-1) waste none."""
    from types import SimpleNamespace

    from dpo_lab.train.trainer import _say_when_precompute_outruns_training

    args = SimpleNamespace(max_steps=max_steps, per_device_train_batch_size=4, gradient_accumulation_steps=2,
                           world_size=1)  # fmt: skip
    with caplog.at_level("WARNING", logger="dpo_lab.train.trainer"):
        _say_when_precompute_outruns_training(args, rows)
    assert ("data.max_train_samples=32" in caplog.text) is warned
