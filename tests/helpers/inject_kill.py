"""Test driver: the dpo_lab CLI, killed by a signal to itself at one precise point of a run.

``DPO_LAB_TEST_KILL=<point>[:<step>] [DPO_LAB_TEST_SIGNAL=SIGTERM] python -m tests.helpers.inject_kill
[overrides]``
sends SIGKILL (or the named signal) to its own process at that point, the way a crash, an OOM killer or a
cluster would, but at a chosen moment instead of a polled one:

- ``step:N``: inside optimizer step N, after the forward and backward pass, before the optimizer step;
- ``checkpoint-write:N``: inside the save of checkpoint-N, after the adapter and optimizer files are
  written and before the RNG and trainer state (so before dpo_lab's completeness marker);
- ``after-last-checkpoint``: right after the final step's checkpoint is complete (marker written);
- ``final-save``: inside the final save, with ``.adapter.partial`` written and not yet renamed to ``adapter``;
- ``before-final-save``: as the final save starts (outside training: for signals that training handles);
- ``pack-step:N``: inside packed optimizer step N of a ``hydra/launcher=packed`` sweep, after the forward
  and backward pass, before the jobs' optimizer steps;
- ``pack-finish:N``: as the N-th job of a packed sweep takes its adapter from the pack (after the pack's
  outcome is saved, with the jobs before it complete).

Only the tests use it; the package has no hook for it.
"""

from __future__ import annotations

import os
import runpy
import signal

import transformers

from dpo_lab.packed import handoff
from dpo_lab.packed import pack as packed
from dpo_lab.runs import atomic as artifacts
from dpo_lab.train import checkpoints, trainer

POINT, _, STEP = os.environ["DPO_LAB_TEST_KILL"].partition(":")
SIGNAL = signal.Signals[os.environ.get("DPO_LAB_TEST_SIGNAL", "SIGKILL")]


def die() -> None:
    os.kill(os.getpid(), SIGNAL)


def patch() -> None:
    if POINT == "step":
        training_step = trainer.DPOTrainer.training_step

        def killed_in_step(self, *args, **kwargs):
            loss = training_step(self, *args, **kwargs)
            if self.state.global_step + 1 == int(STEP):
                die()
            return loss

        trainer.DPOTrainer.training_step = killed_in_step
    elif POINT == "checkpoint-write":
        save_optimizer = transformers.Trainer._save_optimizer_and_scheduler

        def killed_in_save(self, output_dir):
            save_optimizer(self, output_dir)
            if self.state.global_step == int(STEP):
                die()

        transformers.Trainer._save_optimizer_and_scheduler = killed_in_save
    elif POINT == "after-last-checkpoint":
        on_save = checkpoints.CheckpointCallback.on_save

        def killed_after_save(self, args, state, control, **kwargs):
            control = on_save(self, args, state, control, **kwargs)
            if state.global_step == state.max_steps:
                die()
            return control

        checkpoints.CheckpointCallback.on_save = killed_after_save
    elif POINT in ("final-save", "before-final-save"):
        save_adapter, replace_dir = artifacts.save_adapter, artifacts.replace_dir

        def killed_before_save(*args, **kwargs):
            die()
            return save_adapter(*args, **kwargs)

        def killed_before_rename(tmp, dest):
            if dest.name == "adapter":
                die()
            return replace_dir(tmp, dest)

        if POINT == "final-save":
            artifacts.replace_dir = killed_before_rename
        else:
            artifacts.save_adapter = killed_before_save
    elif POINT == "pack-step":
        optimizer_step = packed.Pack._optimizer_step

        def killed_in_pack_step(self, *args, **kwargs):
            if self.leader.state.global_step + 1 == int(STEP):
                die()
            return optimizer_step(self, *args, **kwargs)

        packed.Pack._optimizer_step = killed_in_pack_step
    elif POINT == "pack-finish":
        finish, taken = handoff.finish_as_trained, []

        def killed_taking_share(*args, **kwargs):
            taken.append(1)
            if len(taken) == int(STEP):
                die()
            return finish(*args, **kwargs)

        handoff.finish_as_trained = killed_taking_share
    else:
        raise ValueError(f"DPO_LAB_TEST_KILL: unknown point {POINT!r}")


if __name__ == "__main__":
    patch()
    # as `python -m dpo_lab.run` does (Hydra finds conf/ relative to the file run as __main__)
    runpy.run_module("dpo_lab.run", run_name="__main__", alter_sys=True)
