"""Test driver: the dpo_lab CLI with a NaN injected into the training loss of one optimizer step.

``DPO_LAB_TEST_NAN_STEP=5 python -m tests.helpers.inject_nan [overrides]``: the DPO loss of every
micro-batch of step 5 is multiplied by NaN (its gradients become NaN too), the way a diverging run produces
one. Only the tests use it; the package has no hook for it.
"""

from __future__ import annotations

import os
import runpy

import trl

NAN_STEP = int(os.environ["DPO_LAB_TEST_NAN_STEP"])
_compute_loss = trl.DPOTrainer.compute_loss


def compute_loss_with_nan(self, model, inputs, return_outputs=False, num_items_in_batch=None):
    out = _compute_loss(self, model, inputs, return_outputs, num_items_in_batch)
    if not (model.training and self.state.global_step + 1 == NAN_STEP):
        return out
    if return_outputs:
        return out[0] * float("nan"), out[1]
    return out * float("nan")


if __name__ == "__main__":
    trl.DPOTrainer.compute_loss = compute_loss_with_nan
    # as `python -m dpo_lab.run` does (Hydra finds conf/ relative to the file run as __main__)
    runpy.run_module("dpo_lab.run", run_name="__main__", alter_sys=True)
