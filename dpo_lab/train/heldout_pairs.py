"""The held-out evaluation per pair: rewards, margin, log-probs and loss of every held-out pair, keyed by a
stable pair id, from the evaluation pass the Trainer runs anyway (no second pass).

The trainer shows each evaluation batch's per-pair values to its pair observers (already gathered across
processes, in the data's order); :class:`HeldOutPairs` collects them and, when the evaluation ends, joins
them to the held-out pairs by position and writes ``heldout_pairs_before.jsonl`` (the untrained adapter, step
0) and ``heldout_pairs_after.jsonl`` (the last step). A pair's id is a digest of its prompt, chosen and
rejected responses (:func:`pair_id`), so two runs on the same pairs compare pair by pair. Ties (margin 0:
the untrained adapter gives every pair exactly 0) count as half a correct pair.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from dpo_lab.runs.atomic import atomic_write_jsonl
from dpo_lab.runs.layout import RunLayout
from dpo_lab.runtime.processes import is_main_process
from dpo_lab.train.losses import PairLogps

log = logging.getLogger(__name__)

BEFORE, AFTER = "before", "after"


def pair_id(prompt: Any, chosen: Any, rejected: Any) -> str:
    """A stable id of a preference pair: sha256 over its prompt and both responses (strings or message
    lists, as the data holds them), 16 hex characters."""
    text = json.dumps([prompt, chosen, rejected], sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def correctness(margin: float) -> float:
    """1 for a pair the rewards rank right, 0 for one they rank wrong, 0.5 for a tie (margin exactly 0);
    NaN for a non-finite margin (no interval is then given: dpo_lab.stats refuses non-finite values)."""
    if not math.isfinite(margin):
        return math.nan
    return 1.0 if margin > 0 else 0.5 if margin == 0 else 0.0


def pair_records(
    ids: Sequence[str],
    logps: PairLogps,
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    losses: torch.Tensor | None,
) -> list[dict[str, Any]]:
    """One record per pair (tensors of shape ``[pairs]``, ``ids`` in the same order)."""
    columns = {
        "chosen_reward": chosen_rewards,
        "rejected_reward": rejected_rewards,
        "policy_chosen_logp": logps.policy_chosen,
        "policy_rejected_logp": logps.policy_rejected,
        "reference_chosen_logp": logps.reference_chosen,
        "reference_rejected_logp": logps.reference_rejected,
    }
    values = {k: v.detach().float().cpu().tolist() for k, v in columns.items()}
    loss_values = losses.detach().float().cpu().tolist() if losses is not None else [None] * len(ids)
    records = []
    for i, pid in enumerate(ids):
        record = {"pair_id": pid, **{k: v[i] for k, v in values.items()}}
        record["margin"] = record["chosen_reward"] - record["rejected_reward"]
        record["correct"] = correctness(record["margin"])
        record["loss"] = loss_values[i]
        records.append(record)
    return records


class HeldOutPairs(TrainerCallback):
    """Collects the per-pair values of each held-out evaluation (see the module docstring).

    :meth:`observe` is the trainer's pair observer; :meth:`bind` gives it the held-out pairs in the order
    the evaluation sees them. ``by_step`` keeps each evaluation's records; the ones at step 0 and at the last
    step are written into the run folder (when ``run_dir`` is given).
    """

    def __init__(self, run_dir: Path | None = None):
        self.layout = RunLayout(run_dir) if run_dir is not None else None
        self.ids: list[str] = []
        self.by_step: dict[int, list[dict[str, Any]]] = {}
        self._batches: list[tuple[PairLogps, torch.Tensor, torch.Tensor, torch.Tensor | None]] = []

    def bind(self, eval_dataset: Any) -> None:
        """The held-out pairs (TRL's prepared eval dataset, with its ``prompt``/``chosen``/``rejected``)."""
        columns = (
            [eval_dataset[c] for c in ("prompt", "chosen", "rejected")] if eval_dataset is not None else []
        )
        self.ids = [pair_id(*row) for row in zip(*columns, strict=True)] if columns else []

    def observe(self, mode: str, logps: PairLogps, chosen: torch.Tensor, rejected: torch.Tensor,
                losses: torch.Tensor | None) -> None:  # fmt: skip
        if mode == "eval":
            self._batches.append((logps, chosen.detach(), rejected.detach(), losses))

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        batches, self._batches = self._batches, []
        if not batches or not self.ids:
            return control
        logps = PairLogps(*(torch.cat([getattr(b[0], f) for b in batches]) for f in _LOGP_FIELDS))
        chosen = torch.cat([b[1] for b in batches])
        rejected = torch.cat([b[2] for b in batches])
        losses = torch.cat([b[3] for b in batches]) if all(b[3] is not None for b in batches) else None
        if len(chosen) != len(self.ids):
            log.warning("held-out evaluation saw %d pairs, the split holds %d: no per-pair records",
                        len(chosen), len(self.ids))  # fmt: skip
            return control
        records = pair_records(self.ids, logps, chosen, rejected, losses)
        self.by_step[state.global_step] = records
        phase = (
            BEFORE if state.global_step == 0 else AFTER if state.global_step >= state.max_steps > 0 else None
        )
        if phase is not None and self.layout is not None and is_main_process():
            atomic_write_jsonl(self.layout.heldout_pairs(phase), records)
        return control

    def final(self, step: int) -> list[dict[str, Any]] | None:
        return self.by_step.get(step)


_LOGP_FIELDS = ("policy_chosen", "policy_rejected", "reference_chosen", "reference_rejected")


def read_pairs(path: Path) -> list[dict[str, Any]]:
    """The records of a ``heldout_pairs_<phase>.jsonl`` file (empty when there is none)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def finite_values(records: Sequence[Mapping[str, Any]], key: str) -> list[float] | None:
    """The records' values of ``key`` when every record has a finite one, else None."""
    values = [r.get(key) for r in records]
    if not values or any(v is None or not math.isfinite(v) for v in values):
        return None
    return [float(v) for v in values]


# the held-out numbers given an interval, and the per-pair value each is the mean of
INTERVAL_METRICS = {"reward_accuracy": "correct", "margin": "margin", "loss": "loss"}
# the TRL eval metric each stands for (the objective, the closing table)
TRL_NAMES = {"reward_accuracy": "rewards/accuracies", "margin": "rewards/margins", "loss": "loss"}


def heldout_summary(layout: RunLayout) -> dict[str, dict[str, dict[str, Any]]]:
    """``{phase: {metric: Interval.to_dict()}}`` from the run folder's per-pair files: the tie-aware reward
    accuracy, the margin and (where each pair's loss is known) the loss, each a mean over pairs with its 95%
    bootstrap interval (dpo_lab.stats, seed 0 like the sweep report, so both give the same interval). A
    phase without records is left out."""
    from dpo_lab.stats import bootstrap_interval

    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for phase in (BEFORE, AFTER):
        records = read_pairs(layout.heldout_pairs(phase))
        if not records:
            continue
        found = {}
        for metric, key in INTERVAL_METRICS.items():
            values = finite_values(records, key)
            if values is not None:
                found[metric] = bootstrap_interval(values, seed=0).to_dict()
        summary[phase] = found
    return summary
