"""The held-out metrics of the untrained adapter ("before"), measured once per run folder and kept."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from dpo_lab.runs.atomic import atomic_write_json
from dpo_lab.runs.layout import RunLayout
from dpo_lab.runtime.processes import is_main_process

log = logging.getLogger(__name__)


class HeldOutBefore(TrainerCallback):
    """Held-out metrics of the untrained adapter ("before"), computed once per run folder.

    They are computed by the Trainer's ``eval_on_start`` (pass :attr:`pending` to ``build_dpo_args``) rather
    than by ``trainer.evaluate()`` before ``train()``: with transformers 5 / accelerate 1.x, evaluating first
    marks the bare model as prepared and ``train()`` then never wraps it in DistributedDataParallel, so the
    processes of a multi-process run would train without averaging their gradients. The metrics are stored
    in ``eval_before.json`` and reused when the folder is resumed (a resumed adapter is no longer untrained).
    """

    def __init__(self, run_dir: Path, enabled: bool, resuming: bool):
        self.path = RunLayout(run_dir).eval_before
        # a fresh start always computes them: every process decides alike, whatever an old attempt left
        stored = enabled and resuming and self.path.is_file()
        self.metrics: dict[str, Any] = json.loads(self.path.read_text()) if stored else {}
        self.pending = enabled and not resuming
        if enabled and resuming and not stored:
            log.warning(
                "no %s in the resumed folder: the run reports no held-out metrics before training", self.path
            )

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self.pending and state.global_step == 0 and metrics is not None:
            self.metrics, self.pending = dict(metrics), False
            if is_main_process():
                atomic_write_json(self.path, self.metrics)
        return control
