"""The ``prune`` group: stop a sweep's losing jobs early with one of Optuna's pruners (docs/pruning.md).

At every held-out evaluation a job reports its objective (``objective.metric``) to an Optuna study that
all jobs of the sweep share; the pruner compares it with the other jobs' values at the same step and may
stop the job there. A pruned job still finishes as a run (adapter, history, checkpoints, ``metrics.json``
with ``status: pruned``). The trial a job reports to is the sweeper's (``prune.trial``, set by
``hydra/sweeper=dpo_optuna``) or, with any other sweeper or launcher, one the job asks the study for.

Nothing here imports optuna: the command line is checked before it loads.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, fields
from enum import Enum

from dpo_lab.config.fields import default_of, setting


class PrunerName(str, Enum):
    """Which Optuna pruner judges the jobs (``prune=<option>``)."""

    none = "none"  # no study, no pruning: every job trains to its end
    median = "median"  # stop a job whose value is worse than the median of the others' at the same step
    successive_halving = "successive_halving"  # asynchronous successive halving: keep the top 1/factor
    hyperband = "hyperband"  # several successive-halving brackets with different first rungs


# the job's trial, handed over by the sweeper: overrides it adds to every job (not the user's settings)
SWEEPER_KEYS = ("prune.trial", "prune.study", "prune.storage", "prune.stop_at")
# Optuna's relational storages (SQLAlchemy URLs: sqlite:///f.db, postgresql+psycopg2://..., mysql://...)
RDB_SCHEMES = ("sqlite", "postgresql", "mysql")
_URL = re.compile(r"^(?P<scheme>[A-Za-z][\w+.-]*)://")

_PRUNERS = [p.value for p in PrunerName if p is not PrunerName.none]
# the pruners that read each pruner-specific key (any other pruner refuses a non-default value)
_USED_BY = {
    "n_startup_trials": {PrunerName.median},
    "min_resource": {PrunerName.successive_halving, PrunerName.hyperband},
    "reduction_factor": {PrunerName.successive_halving, PrunerName.hyperband},
    "max_resource": {PrunerName.hyperband},
    "stop_at": {PrunerName.successive_halving},
}


@dataclass
class PruneSettings:
    pruner: PrunerName = setting(
        PrunerName.none,
        help=(
            "none | median | successive_halving | hyperband: the Optuna pruner that stops a job whose "
            "held-out objective falls behind the other jobs' at the same step; chosen by prune=<option>"
        ),
    )
    min_steps: int = setting(
        0,
        help=(
            "no job is pruned before this optimizer step: early held-out values are noisy (the step-0 "
            "evaluation is the base model, the same for every job)"
        ),
    )
    n_startup_trials: int = setting(
        5, help="median: jobs that must finish before any job is pruned (their curves make the median)"
    )
    min_resource: int | None = setting(
        None,
        help=(
            "successive_halving, hyperband: optimizer steps before the first rung; null = "
            "successive_halving: Optuna's estimate (the first finished job's steps / 100), hyperband: 1"
        ),
    )
    reduction_factor: int = setting(
        3,
        help=(
            "successive_halving, hyperband: each rung keeps the best 1/reduction_factor of the jobs that "
            "reached it, and the next rung is reduction_factor times further"
        ),
    )
    max_resource: int | None = setting(
        None,
        help="hyperband: the steps of a full job; null = the last step of the first job that finishes",
    )
    storage: str | None = setting(
        None,
        help=(
            "where the study lives, shared by every job: an Optuna RDB URL (sqlite:///sweeps.db, "
            "postgresql://host/db) or a journal file path; null = <sweep folder>/optuna.journal"
        ),
    )
    study: str | None = setting(
        None, help="the study's name in the storage; null = the sweep folder's (sweep-<date>_<time>)"
    )
    trial: int | None = setting(
        None,
        help=(
            "the trial number this job reports to, set by hydra/sweeper=dpo_optuna; null = the job asks the "
            "study for a new trial itself (a grid on the basic launcher, submitit or any other launcher)"
        ),
    )
    stop_at: int | None = setting(
        None,
        help=(
            "set by hydra/sweeper=dpo_lab_halving (synchronous successive halving) for each round: train to "
            "this step (a rung) and stop there as pruned, the checkpoint saved; the sweeper runs a promoted "
            "job on from it in the next round. The job never asks the pruner itself; null = not in such a "
            "sweep"
        ),
    )

    def problems(self) -> Iterator[tuple[str, str]]:
        yield from self._range_problems()
        yield from self._unused_problems()
        if self.storage is not None:
            yield from storage_problems(self.storage)
        if self.study is not None and not self.study.strip():
            yield "study", "must name a study, or be null (the sweep folder's name)"

    def _range_problems(self) -> Iterator[tuple[str, str]]:
        for key, low in (("min_steps", 0), ("n_startup_trials", 0), ("reduction_factor", 2)):
            if getattr(self, key) < low:
                yield key, f"must be an integer >= {low}, got {getattr(self, key)}"
        for key, low in (("min_resource", 1), ("max_resource", 1), ("trial", 0), ("stop_at", 1)):
            value = getattr(self, key)
            if value is not None and value < low:
                yield key, f"must be an integer >= {low} or null, got {value}"
        low = self.min_resource or 1
        if self.max_resource is not None and self.max_resource <= low:
            yield "max_resource", f"must be larger than min_resource ({low}), got {self.max_resource}"

    def _unused_problems(self) -> Iterator[tuple[str, str]]:
        """A value the chosen pruner would ignore is refused rather than dropped."""
        defaults = {f.name: default_of(f) for f in fields(self)}
        for key, users in _USED_BY.items():
            if self.pruner not in users and getattr(self, key) != defaults[key]:
                names = " and ".join(sorted(u.value for u in users))
                yield key, f"only {names} read it; prune.pruner is {self.pruner.value}"
        if self.pruner is PrunerName.none:
            for key in ("min_steps", "storage", "study", "trial"):
                if getattr(self, key) != defaults[key]:
                    yield key, f"no pruner reads it: choose one (prune={'|'.join(_PRUNERS)})"


def storage_problems(storage: str) -> Iterator[tuple[str, str]]:
    """An RDB URL must name a database Optuna stores studies in; anything else is a journal file path."""
    if not storage.strip():
        yield "storage", "must be an Optuna RDB URL or a journal file path, or null (the sweep's journal)"
        return
    match = _URL.match(storage)
    if match is not None and match["scheme"].split("+")[0].lower() not in RDB_SCHEMES:
        yield (
            "storage",
            f"{match['scheme']}:// is no Optuna RDB storage; use {', '.join(RDB_SCHEMES)} URLs or a journal "
            "file path",
        )


def training_problems(prune: PruneSettings, eval_steps: int) -> Iterator[tuple[str, str]]:
    """Cross-group rule for ``RunConfig.problems``: a pruner needs held-out evaluations during training."""
    if prune.pruner is not PrunerName.none and eval_steps <= 0:
        yield (
            "prune.pruner",
            f"{prune.pruner.value} compares held-out values during training: set train.eval_steps > 0",
        )


def single_run_problems(prune: PruneSettings) -> Iterator[tuple[str, str]]:
    """For a run outside a multirun: with no sweep folder, the study must be named (storage and name)."""
    if prune.pruner is PrunerName.none:
        return
    if prune.storage is None:
        yield (
            "prune.storage",
            "a single run (no -m) is pruned against other runs only through a shared study: name its storage "
            "(sqlite:///sweeps.db, or a journal file) and prune.study",
        )
    elif prune.study is None:
        yield "prune.study", "a single run (no -m) must name the study it is pruned in"
