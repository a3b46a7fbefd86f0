"""Your own DPO loss, in one function: DPO with a target reward margin.

The chosen answer's implicit reward must beat the rejected one's by at least ``gamma`` before the loss
lets go of the pair (SimPO's margin term, applied to DPO's reference-based reward):

    loss = -log sigmoid(beta * (chosen log-ratio - rejected log-ratio) - gamma)

With ``gamma = 0`` it is DPO's sigmoid loss. ``dpo=margin`` (dpo/margin.yaml beside this file) selects it;
``dpo.loss_params.gamma`` sweeps it like any key. dpo_lab puts each ``--config-dir`` folder on the import
path, so ``my_losses:margin_dpo`` finds this file.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from dpo_lab.train.losses import PairLogps, PairLoss


@dataclass
class MarginParams:
    # the reward margin (in beta-scaled log-ratio units) the chosen answer must win by; 0 = plain DPO
    gamma: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.gamma < 100.0:
            raise ValueError(f"gamma must be in [0, 100), got {self.gamma}")


def margin_dpo(logps: PairLogps, dpo) -> PairLoss:
    params = MarginParams(**dpo.loss_params)
    chosen = dpo.beta * logps.chosen_logratios
    rejected = dpo.beta * logps.rejected_logratios
    losses = -F.logsigmoid(chosen - rejected - params.gamma)
    return PairLoss(losses, chosen.detach(), rejected.detach())


margin_dpo.params = MarginParams  # dpo_lab checks dpo.loss_params against it before anything loads
