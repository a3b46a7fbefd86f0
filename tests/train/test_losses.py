"""Your own loss in one function (dpo_lab.train.losses): hand-computed values of the pure functions, a
function reproducing TRL's sigmoid gives TRL's loss and gradients, custom rewards reach the metrics, and
bad loss names or parameters are refused with the key named."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
import trl

from dpo_lab.config.resolvers import asset_path
from dpo_lab.config.schemas import DataSettings, DPOSettings, LoraSettings, ModelSettings, TrainSettings
from dpo_lab.config.validation import validate
from dpo_lab.errors import ConfigError
from dpo_lab.train.library import pending_metrics
from dpo_lab.train.losses import (
    PairLogps,
    PairLoss,
    check_losses,
    plan_losses,
    sequence_logps,
    sigmoid_dpo,
)

SIGMOID = "dpo_lab.train.losses:sigmoid_dpo"


def test_sequence_logps_sums_the_completion_tokens_as_trl_does() -> None:
    # two pairs: rows 0-1 chosen, rows 2-3 rejected; length 5, completion mask on the last tokens
    mask = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0], [0, 0, 1, 0, 0], [0, 1, 1, 1, 1]])
    per_token = torch.tensor(
        [[9.0, -1.0, -2.0, -3.0], [9.0, -1.0, 9.0, 9.0], [9.0, -4.0, 9.0, 9.0], [-1.0, -1.0, -1.0, -1.0]]
    )
    # per_token[:, t] is the log-prob of token t + 1: shifted mask [[0,1,1,1],[1,1,0,0],[0,1,0,0],[1,1,1,1]]
    masked = per_token * mask[:, 1:]
    assert sequence_logps(masked, mask).tolist() == [-6.0, 8.0, -4.0, -4.0]
    # LD-DPO: pair 0 chosen 3 tokens vs rejected 1 -> 1 shared, chosen's 2 tail tokens count 0.5 each
    assert sequence_logps(masked, mask, ld_alpha=0.5).tolist() == [-1.0 + 0.5 * -5.0, 8.0, -4.0, -2.0 - 1.0]


def test_sigmoid_dpo_by_hand() -> None:
    logps = PairLogps(
        policy_chosen=torch.tensor([-1.0, -3.0]), policy_rejected=torch.tensor([-2.0, -1.0]),
        reference_chosen=torch.tensor([-1.5, -2.0]), reference_rejected=torch.tensor([-1.5, -2.0]),
    )  # fmt: skip
    out = sigmoid_dpo(logps, DPOSettings(beta=0.5))
    # pair 0: log-ratios 0.5, -0.5 -> margin 1.0; pair 1: -1.0, 1.0 -> margin -2.0
    expected = [-math.log(1 / (1 + math.exp(-0.5))), -math.log(1 / (1 + math.exp(1.0)))]
    assert out.losses.tolist() == pytest.approx(expected, abs=1e-7)
    assert out.chosen_rewards.tolist() == [0.25, -0.5] and out.rejected_rewards.tolist() == [-0.25, 0.5]


def test_the_loss_plan_splits_trl_names_from_functions() -> None:
    plan = plan_losses(["sigmoid", SIGMOID], [0.7, 0.3])
    assert plan.trl_types == ["sigmoid"] and plan.trl_weights == [0.7]
    assert [w for _, w in plan.custom] == [0.3] and plan.custom[0][0] is sigmoid_dpo and not plan.all_custom
    only = plan_losses([SIGMOID], None)
    assert only.trl_types == ["sigmoid"] and only.trl_weights == [0.0] and only.all_custom


@pytest.fixture(scope="module")
def tiny():
    from dpo_lab.data.loading import load_preference_data
    from dpo_lab.model.loading import load_tokenizer

    model_cfg = ModelSettings(name_or_path=asset_path("tiny-llama"))
    data = load_preference_data(
        DataSettings(path=asset_path("finance"), max_train_samples=8, max_eval_samples=4), seed=0
    )
    return model_cfg, load_tokenizer(model_cfg), data


def _trainer(tiny, tmp_path, dpo: DPOSettings):
    from dpo_lab.model.loading import build_lora_config, load_base_model
    from dpo_lab.runtime.precision import Precision
    from dpo_lab.train.trainer import build_dpo_args, build_trainer

    model_cfg, tokenizer, data = tiny
    model = load_base_model(model_cfg, Precision.fp32, gradient_checkpointing=False)
    args = build_dpo_args(
        dpo, TrainSettings(per_device_train_batch_size=4), output_dir=tmp_path, seed=0,
        precision=Precision.fp32, device="cpu",
    )  # fmt: skip
    lora = build_lora_config(LoraSettings(r=4, dropout=0.0))
    trainer = build_trainer(model, tokenizer, args, data.train, data.eval, lora, dpo=dpo)
    for name, param in trainer.model.named_parameters():
        if "lora_B" in name:  # trained-looking adapters: the policy differs from the reference
            param.data.normal_(std=0.3, generator=torch.Generator().manual_seed(len(name)))
    trainer.model.train()
    inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    return trainer, inputs


def _loss_and_grads(trainer, compute) -> tuple[float, dict[str, torch.Tensor]]:
    trainer.model.zero_grad(set_to_none=True)
    loss = compute()
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    assert grads, "no gradient reached the adapter"
    return float(loss), grads


def test_a_function_reproducing_trls_sigmoid_gives_trls_loss_and_gradients(tiny, tmp_path) -> None:
    trainer, inputs = _trainer(tiny, tmp_path, DPOSettings(beta=0.2, max_length=128))
    # TRL's own path, its reference forward inline (dpo_lab's compute_loss bypassed)
    trl_loss, trl_grads = _loss_and_grads(
        trainer, lambda: trl.DPOTrainer.compute_loss(trainer, trainer.model, inputs)
    )
    # dpo_lab's path with TRL's sigmoid: the reference supplied first, TRL's loss
    ours, ours_grads = _loss_and_grads(trainer, lambda: trainer.compute_loss(trainer.model, inputs))
    # the same loss as a function of dpo_lab's shape, TRL's own loss at weight 0
    trainer.dpo = DPOSettings(beta=0.2, max_length=128, loss_type=[SIGMOID])
    trainer.loss_plan = plan_losses(trainer.dpo.loss_type, None)
    trainer.loss_weights = trainer.loss_plan.trl_weights
    custom, custom_grads = _loss_and_grads(trainer, lambda: trainer.compute_loss(trainer.model, inputs))
    assert ours == pytest.approx(trl_loss, abs=1e-6) and custom == pytest.approx(trl_loss, abs=1e-6)
    assert trl_loss > 0.01 and abs(trl_loss - math.log(2)) > 1e-3  # the policy really differs
    assert trl_grads.keys() == ours_grads.keys() == custom_grads.keys()
    for name, grad in trl_grads.items():
        assert torch.allclose(ours_grads[name], grad, atol=1e-6), name
        assert torch.allclose(custom_grads[name], grad, atol=1e-6), name


def doubled_rewards(logps: PairLogps, dpo: DPOSettings) -> PairLoss:
    """sigmoid DPO whose reported rewards are twice TRL's: the metrics must show the function's."""
    out = sigmoid_dpo(logps, dpo)
    return PairLoss(out.losses, 2 * out.chosen_rewards, 2 * out.rejected_rewards)


def test_custom_rewards_replace_trls_in_the_logged_metrics(tiny, tmp_path) -> None:
    dpo = DPOSettings(beta=0.2, max_length=128, loss_type=[f"{__name__}:doubled_rewards"])
    trainer, inputs = _trainer(tiny, tmp_path, dpo)
    seen = []
    trainer.pair_observers.append(
        lambda mode, logps, chosen, rejected, losses: seen.append((chosen, rejected, logps))
    )
    trainer.compute_loss(trainer.model, inputs)
    chosen, rejected, logps = seen[-1]
    assert torch.allclose(chosen, 2 * 0.2 * logps.chosen_logratios.detach())
    metrics = pending_metrics(trainer, "train")
    assert metrics["rewards/chosen"][-1] == pytest.approx(float(chosen.mean()), abs=1e-6)
    assert metrics["rewards/margins"][-1] == pytest.approx(float((chosen - rejected).mean()), abs=1e-6)


@dataclass
class GammaParams:
    gamma: float = 0.5

    def __post_init__(self) -> None:
        if self.gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {self.gamma}")


def with_gamma(logps: PairLogps, dpo: DPOSettings) -> PairLoss:
    return sigmoid_dpo(logps, dpo)


with_gamma.params = GammaParams


def test_bad_loss_names_and_parameters_are_refused_with_the_key() -> None:
    ok = DPOSettings(loss_type=[f"{__name__}:with_gamma"], loss_params={"gamma": 0.3})
    check_losses(ok)
    with pytest.raises(ConfigError, match=r"dpo.loss_params.gama: .*did you mean dpo.loss_params.gamma"):
        check_losses(DPOSettings(loss_type=[f"{__name__}:with_gamma"], loss_params={"gama": 0.3}))
    with pytest.raises(ConfigError, match=r"dpo.loss_params: GammaParams refuses these values: gamma must"):
        check_losses(DPOSettings(loss_type=[f"{__name__}:with_gamma"], loss_params={"gamma": -1.0}))
    with pytest.raises(ConfigError, match=r"dpo.loss_type: cannot import loss 'no_such_module:f'"):
        check_losses(DPOSettings(loss_type=["no_such_module:f"]))
    with pytest.raises(
        ConfigError, match=r"dpo.loss_type: cannot import loss 'tests.train.test_losses:nope'"
    ):
        check_losses(DPOSettings(loss_type=["tests.train.test_losses:nope"]))
    with pytest.raises(ConfigError, match=r"^loss_type: 'a b:c' is not a package.module:function path"):
        validate(DPOSettings(loss_type=["a b:c"]))
    validate(DPOSettings(loss_type=["sigmoid", SIGMOID], loss_weights=[1.0, 0.5]))  # both kinds together
    with pytest.raises(ConfigError, match=r"^loss_params: only your own loss functions"):
        validate(DPOSettings(loss_type=["sigmoid"], loss_params={"gamma": 1.0}))  # nothing would read it
