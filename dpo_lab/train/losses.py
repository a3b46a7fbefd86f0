"""Preference losses as pure functions of sequence log-probs: your own loss in one function.

``dpo.loss_type`` lists TRL's loss names (computed by TRL, as TRL defines them) and/or your own functions as
``package.module:function``. A function of yours takes the batch's :class:`PairLogps` and the ``dpo`` settings
and returns a :class:`PairLoss` (per-pair losses and implicit rewards)::

    def my_loss(logps: PairLogps, dpo: DPOSettings) -> PairLoss:
        margin = logps.chosen_logratios - logps.rejected_logratios
        losses = -F.logsigmoid(dpo.beta * margin - dpo.loss_params["gamma"])
        return PairLoss(losses, dpo.beta * logps.chosen_logratios.detach(),
                        dpo.beta * logps.rejected_logratios.detach())

Its own hyperparameters go in ``dpo.loss_params`` (sweepable like any key); give the function a ``params``
attribute naming a dataclass of them, and unknown or mistyped keys are refused before anything loads
(:func:`check_loss_params`). The same function trains a job alone and inside a pack (dpo_lab.packed).
``docs/user_configs/my_losses.py`` is a worked example.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from dpo_lab.config.choices import DPO_LOSS_TYPES
from dpo_lab.config.schemas import DPOSettings
from dpo_lab.errors import ConfigError


@dataclass(frozen=True)
class PairLogps:
    """Summed completion log-probs of a batch of pairs under the policy and the reference, each ``[pairs]``.

    The policy's carry gradients; the reference's do not."""

    policy_chosen: torch.Tensor
    policy_rejected: torch.Tensor
    reference_chosen: torch.Tensor
    reference_rejected: torch.Tensor

    @property
    def chosen_logratios(self) -> torch.Tensor:
        """log pi(chosen) - log pi_ref(chosen), ``[pairs]``."""
        return self.policy_chosen - self.reference_chosen

    @property
    def rejected_logratios(self) -> torch.Tensor:
        """log pi(rejected) - log pi_ref(rejected), ``[pairs]``."""
        return self.policy_rejected - self.reference_rejected


@dataclass(frozen=True)
class PairLoss:
    """What a loss function returns, each ``[pairs]``: per-pair losses (with gradients), implicit rewards."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


LossFunction = Callable[[PairLogps, DPOSettings], PairLoss]


def is_custom(name: str) -> bool:
    """A ``package.module:function`` entry of ``dpo.loss_type`` (TRL's names have no colon)."""
    return ":" in name


def resolve(name: str, key: str = "dpo.loss_type") -> LossFunction:
    """The function a ``package.module:function`` entry names (ConfigError naming ``key`` otherwise)."""
    module_name, _, attr = name.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(key, f"cannot import loss {name!r}: {err}") from None
    if not callable(fn):
        raise ConfigError(key, f"{name!r} is not a function")
    return fn


def check_losses(dpo: DPOSettings) -> None:
    """Each custom entry of ``dpo.loss_type`` imports, and ``dpo.loss_params`` fits what they declare."""
    plan_losses(dpo.loss_type, dpo.loss_weights)
    check_loss_params(dpo)


def check_loss_params(dpo: DPOSettings) -> None:
    """``dpo.loss_params`` against the ``params`` dataclass each custom loss declares: unknown keys (with a
    close name suggested) and values the dataclass refuses stop the run before anything loads."""
    declared = [getattr(resolve(n), "params", None) for n in dpo.loss_type if is_custom(n)]
    declared = [d for d in declared if d is not None]
    if not declared:
        return
    known = {f.name for params in declared for f in dataclasses.fields(params)}
    for key in dpo.loss_params:
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f"did you mean dpo.loss_params.{close[0]}? " if close else ""
            raise ConfigError(
                f"dpo.loss_params.{key}", f"no parameter of the loss; {hint}it takes: {sorted(known)}"
            )
    for params in declared:
        values = {
            k: v for k, v in dpo.loss_params.items() if k in {f.name for f in dataclasses.fields(params)}
        }
        try:
            params(**values)
        except (TypeError, ValueError) as err:
            raise ConfigError("dpo.loss_params", f"{params.__name__} refuses these values: {err}") from None


@dataclass(frozen=True)
class LossPlan:
    """How ``dpo.loss_type`` splits between TRL and dpo_lab: TRL computes its own names (with their weights)
    and its metrics; dpo_lab adds each custom function's weighted mean loss."""

    trl_types: list[str]
    trl_weights: list[float]
    custom: list[tuple[LossFunction, float]]

    @property
    def all_custom(self) -> bool:
        return bool(self.custom) and not any(self.trl_weights)


def plan_losses(loss_type: Sequence[str], loss_weights: Sequence[float] | None) -> LossPlan:
    """Split the configured losses (see :class:`LossPlan`). With custom losses only, TRL still runs its
    ``sigmoid`` at weight 0: its forward, metrics and bookkeeping stay TRL's, its loss adds nothing."""
    weights = list(loss_weights) if loss_weights is not None else [1.0] * len(loss_type)
    trl_types = [n for n in loss_type if not is_custom(n)]
    trl_weights = [w for n, w in zip(loss_type, weights, strict=True) if not is_custom(n)]
    custom = [(resolve(n), w) for n, w in zip(loss_type, weights, strict=True) if is_custom(n)]
    if not trl_types:
        trl_types, trl_weights = ["sigmoid"], [0.0]
    unknown = [n for n in trl_types if n not in DPO_LOSS_TYPES]
    if unknown:
        raise ConfigError(
            "dpo.loss_type", f"unknown loss {unknown[0]!r}; allowed: {', '.join(DPO_LOSS_TYPES)}"
        )
    return LossPlan(trl_types, trl_weights, custom)


def sequence_logps(
    per_token_logps: torch.Tensor, completion_mask: torch.Tensor, ld_alpha: float | None = None
) -> torch.Tensor:
    """Summed log-probs of each sequence's completion, as TRL sums them.

    ``per_token_logps``: ``[rows, length - 1]`` (the log-prob of token t+1 at position t);
    ``completion_mask``: ``[rows, length]``, 1 on completion tokens. Rows are the chosen completions then
    the rejected ones. With ``ld_alpha`` (LD-DPO), tokens beyond the shorter completion of the pair count
    ``ld_alpha`` times. Returns ``[rows]``.
    """
    shift_mask = completion_mask[..., 1:]
    per_token = per_token_logps[:, -shift_mask.size(1) :]
    if ld_alpha is None:
        return per_token.sum(dim=1)
    positions = shift_mask.cumsum(dim=1)
    lengths = shift_mask.sum(dim=1).long()
    chosen, rejected = lengths.chunk(2, dim=0)
    shared = torch.minimum(chosen, rejected)
    shared = torch.cat([shared, shared], dim=0).to(per_token.device).unsqueeze(1)
    shared_part = (per_token * ((positions > 0) & (positions <= shared))).sum(dim=1)
    tail_part = (per_token * (positions > shared)).sum(dim=1)
    return shared_part + ld_alpha * tail_part


def sigmoid_dpo(logps: PairLogps, dpo: DPOSettings) -> PairLoss:
    """The DPO paper's loss, -log sigmoid(beta * (chosen log-ratio - rejected log-ratio)), as a function of
    this module's shape (TRL's ``sigmoid``; a test holds the two to 1e-6, gradients included)."""
    margin = logps.chosen_logratios - logps.rejected_logratios
    losses = -F.logsigmoid(dpo.beta * margin)
    return PairLoss(
        losses, dpo.beta * logps.chosen_logratios.detach(), dpo.beta * logps.rejected_logratios.detach()
    )


def custom_loss(plan: LossPlan, logps: PairLogps, dpo: DPOSettings) -> tuple[torch.Tensor, PairLoss | None]:
    """The weighted sum of the custom losses' batch means, and the first custom loss's output (whose rewards
    stand for the run's when every loss is custom); ``(0, None)`` without custom losses."""
    total: Any = 0.0
    first = None
    for fn, weight in plan.custom:
        out = fn(logps, dpo)
        first = first or out
        total = total + weight * out.losses.mean()
    return torch.as_tensor(total, device=logps.policy_chosen.device), first
