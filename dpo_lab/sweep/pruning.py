"""The job's side of pruning: its Optuna trial, the Trainer callback that reports every held-out evaluation
and stops a job that falls behind, and what ``metrics.json`` records (docs/pruning.md).

- :func:`open_trial` opens the sweep's study (created if missing) and gets the job's trial: the sweeper's
  (``prune.trial``, with ``hydra/sweeper=dpo_optuna``) or a new one the job asks for itself (any other
  sweeper or launcher; Optuna's storages hand out distinct trials to processes and nodes that ask at once).
  A job resumed in the same run folder goes on with the trial it had.
- :class:`PruningCallback` reports ``eval_<objective.metric>`` at ``state.global_step`` on every evaluation
  but the one before training (step 0: the base model, the same for every job; reported, it would be each
  job's best value so far, which the median pruner compares) and, from ``prune.min_steps`` on (never at the
  last step, where nothing is left to save), asks the pruner; a pruned job
  stops training there and then finishes as any run does (final held-out metrics = that evaluation,
  adapter, card, history and checkpoints saved). It marks its trial with the ``pruned_at_step`` user
  attribute: the sweeper reads it and tells Optuna PRUNED.
- :func:`pruned_record` is what ``metrics.json`` adds (``status: pruned``, ``pruning: {...}``);
  :meth:`PruningTrial.finish` tells the study how the job ended when the job asked for the trial itself
  (the sweeper tells the trials it asked for).
- :class:`PackPruning` judges the jobs of a pack (``hydra/launcher=packed``), which step together: at an
  evaluation every job still training reports first, then the pruner judges them all at once (successive
  halving synchronously: :func:`keeps_rung`). The pack hands each job's trial over to the job's run
  (``PackedOutcome.pruning``), which goes on with it (:func:`handed_over_trial`) rather than asking again.

In a job of several processes (torchrun, accelerate) rank 0 holds the trial and decides; every rank stops
with it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from transformers import TrainerCallback

from dpo_lab.config.choices import Direction
from dpo_lab.config.pruning import PrunerName, PruneSettings, single_run_problems
from dpo_lab.config.schemas import ObjectiveSettings
from dpo_lab.errors import ConfigError
from dpo_lab.runtime.collectives import any_process
from dpo_lab.runtime.processes import is_main_process
from dpo_lab.sweep.halving import RUNG_KEY, keeps_rung
from dpo_lab.sweep.optuna_sweeper import (
    PRUNED_AT_STEP,
    RUN_DIR,
    build_pruner,
    default_storage,
    default_study_name,
    open_storage,
    quiet_optuna,
    shown_storage,
    trial_id,
)

PRUNED = "pruned"  # metrics.json's status of a pruned job
OVERRIDES = "overrides"  # the trial's user attribute with the job's command-line overrides


@dataclass
class PruningTrial:
    """The job's Optuna trial. ``trial`` is None on the other processes of a multi-process job: they take
    part in the decision (a collective) but rank 0 alone reports and decides."""

    trial: optuna.Trial | None
    study: str
    storage: str  # as shown in logs and metrics.json (a URL's password hidden)
    pruner: PrunerName
    direction: Direction
    owned: bool  # the job asked for the trial and tells its result; False: the sweeper's trial
    reported: dict[int, float] = field(default_factory=dict)
    pruned_at_step: int | None = None

    @property
    def number(self) -> int | None:
        return self.trial.number if self.trial is not None else None

    def report(self, step: int, value: float) -> None:
        """The held-out objective at ``step`` (a step reported already, e.g. before a resume, is kept)."""
        if self.trial is None or step in self.reported:
            return
        with quiet_optuna():
            self.trial.report(value, step)
        self.reported[step] = value

    def should_prune(self) -> bool:
        if self.trial is None:
            return False
        with quiet_optuna():
            return self.trial.should_prune()

    def mark_pruned(self, step: int) -> None:
        """Record where the job stopped, here and on the trial (the sweeper reads it from the storage)."""
        self.pruned_at_step = step
        if self.trial is not None:
            self.trial.set_user_attr(PRUNED_AT_STEP, step)

    def finish(self, value: float | None) -> None:
        """Tell the study how the job ended, if the job asked for the trial: PRUNED, COMPLETE with its
        objective ``value``, or FAIL (``value`` None or not finite: a failed run). The sweeper tells its
        own trials."""
        if not self.owned or self.trial is None:
            return
        if self.pruned_at_step is not None:
            state, values = TrialState.PRUNED, None
        elif value is not None and math.isfinite(value):
            state, values = TrialState.COMPLETE, [float(value)]
        else:
            state, values = TrialState.FAIL, None
        with quiet_optuna():
            self.trial.study.tell(self.trial.number, values=values, state=state, skip_if_finished=True)


def storage_of(settings: PruneSettings, sweep_dir: Path | None) -> str:
    """``prune.storage``, or the sweep folder's journal; a single run must name one (ConfigError)."""
    _check_single_run(settings, sweep_dir)
    return settings.storage if settings.storage is not None else default_storage(sweep_dir)


def study_of(settings: PruneSettings, sweep_dir: Path | None) -> str:
    """``prune.study``, or the sweep folder's name; a single run must name one (ConfigError)."""
    _check_single_run(settings, sweep_dir)
    return settings.study if settings.study is not None else default_study_name(sweep_dir)


def _check_single_run(settings: PruneSettings, sweep_dir: Path | None) -> None:
    if sweep_dir is None:
        for key, message in single_run_problems(settings):
            raise ConfigError(key, message)


def open_trial(
    settings: PruneSettings,
    sweep_dir: Path | None,
    objective: ObjectiveSettings,
    *,
    run_dir: Path | None = None,
    overrides: Sequence[str] = (),
) -> PruningTrial | None:
    """The job's trial in the sweep's study, or None without a pruner (``prune=none``). ``sweep_dir``: the
    multirun's folder (None for a single run); ``run_dir``: the job's folder (a resumed job goes on with
    the trial it had there); ``overrides``: the job's command line, kept on a trial the job asks for."""
    if settings.pruner is PrunerName.none:
        return None
    storage_text = storage_of(settings, sweep_dir)
    name = study_of(settings, sweep_dir)
    shown = shown_storage(storage_text)
    common = dict(study=name, storage=shown, pruner=settings.pruner, direction=objective.direction)
    if not is_main_process():
        return PruningTrial(None, owned=settings.trial is None, **common)
    storage = open_storage(storage_text)
    study = _open_study(storage, name, shown, settings, objective)
    if settings.trial is not None:
        trial = _sweeper_trial(study, storage, settings.trial, shown)
    else:
        trial = _own_trial(study, storage, run_dir, overrides)
    if run_dir is not None:
        trial.set_user_attr(RUN_DIR, str(run_dir.absolute()))
    if settings.stop_at is not None and trial.user_attrs.get(PRUNED_AT_STEP) is not None:
        trial.set_user_attr(PRUNED_AT_STEP, None)  # promoted by the halving sweeper: its last stop is past
    reported = storage.get_trial(trial_id(storage, name, trial.number)).intermediate_values
    return PruningTrial(trial, owned=settings.trial is None, reported=dict(reported), **common)


def _open_study(
    storage: optuna.storages.BaseStorage,
    name: str,
    shown: str,
    settings: PruneSettings,
    objective: ObjectiveSettings,
) -> optuna.Study:
    """The study (created if missing: every job of a grid may be first), checked to optimise the same way as
    the objective."""
    with quiet_optuna():
        study = optuna.create_study(
            storage=storage,
            study_name=name,
            direction=objective.direction.value,
            pruner=build_pruner(settings),
            sampler=optuna.samplers.RandomSampler(),  # a job asks for no parameters
            load_if_exists=True,
        )
    found = [d.name.lower() for d in study.directions]
    if found != [objective.direction.value]:
        raise ConfigError(
            "prune.study",
            f"study {name} in {shown} is to {'/'.join(found)}; objective.direction is "
            f"{objective.direction.value}: name another study",
        )
    return study


def _sweeper_trial(
    study: optuna.Study, storage: optuna.storages.BaseStorage, number: int, shown: str
) -> optuna.Trial:
    try:
        tid = trial_id(storage, study.study_name, number)
    except KeyError:
        raise ConfigError(
            "prune.trial", f"study {study.study_name} in {shown} has no trial {number}"
        ) from None
    state = storage.get_trial(tid).state
    if state is not TrialState.RUNNING:
        raise ConfigError(
            "prune.trial", f"trial {number} of study {study.study_name} is {state.name.lower()}, not running"
        )
    return optuna.Trial(study, tid)


def _own_trial(
    study: optuna.Study,
    storage: optuna.storages.BaseStorage,
    run_dir: Path | None,
    overrides: Sequence[str],
) -> optuna.Trial:
    """A new trial for this job, or the running one a previous attempt in the same run folder had."""
    if run_dir is not None:
        folder = str(run_dir.absolute())
        for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if frozen.user_attrs.get(RUN_DIR) == folder:
                return optuna.Trial(study, trial_id(storage, study.study_name, frozen.number))
    with quiet_optuna():
        trial = study.ask()
    trial.set_user_attr(OVERRIDES, list(overrides))
    return trial


class PruningCallback(TrainerCallback):
    """Report ``eval_<metric>`` at every evaluation; stop training when the pruner says the job lost.

    With ``stop_at`` (``prune.stop_at``: a round of ``hydra/sweeper=dpo_lab_halving``) the job never asks the
    pruner: it evaluates at that step, saves a checkpoint there and stops as pruned at it; the sweeper,
    which ranks every job of the round together, runs it on from that checkpoint if it is promoted."""

    def __init__(
        self,
        trial: PruningTrial,
        metric: str,
        direction: Direction,
        min_steps: int = 0,
        stop_at: int | None = None,
    ) -> None:
        if direction is not trial.direction:
            raise ValueError(
                f"the trial's study is to {trial.direction.value}, the objective {direction.value}"
            )
        self.trial = trial
        self.key = f"eval_{metric}"
        self.min_steps = min_steps
        self.stop_at = stop_at

    def _at_rung(self, state) -> bool:
        step = state.global_step
        return self.stop_at is not None and step >= self.stop_at and not (0 < state.max_steps <= step)

    def on_step_end(self, args, state, control, **kwargs):
        if self._at_rung(state):
            control.should_evaluate = True  # the rung's value: an evaluation at this step whatever eval_steps
        return control

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        step = state.global_step
        if self.trial.pruned_at_step is not None or not metrics or self.key not in metrics or step == 0:
            return control
        self.trial.report(step, float(metrics[self.key]))
        if self.stop_at is not None:  # the halving sweeper judges the round; the job stops at its rung
            if self._at_rung(state):
                self.trial.mark_pruned(step)
                control.should_save = True  # the checkpoint a promoted job goes on from
                control.should_training_stop = True
            return control
        if step < self.min_steps or (state.max_steps > 0 and step >= state.max_steps):
            return control  # too early to judge; at the last step there is nothing left to save
        if any_process(self.trial.should_prune()):  # rank 0 decides, every rank stops
            self.trial.mark_pruned(step)
            control.should_training_stop = True
        return control


def pruned_record(trial: PruningTrial | None, stop_at: int | None = None) -> dict[str, Any]:
    """What ``metrics.json`` adds for pruning: nothing without a pruner; ``pruning`` (the study, the trial,
    where it stopped, and ``stop_at``, the round's rung, in a round of the halving sweeper); and
    ``status: pruned`` for a pruned job (merge it over the completed record)."""
    if trial is None:
        return {}
    last = max(trial.reported) if trial.reported else None
    record: dict[str, Any] = {
        "pruning": {
            "pruner": trial.pruner.value,
            "study": trial.study,
            "storage": trial.storage,
            "trial": trial.number,
            "pruned_at_step": trial.pruned_at_step,
            "reported_steps": sorted(trial.reported),
            # the value the pruner last judged the job by (the sweep report compares it with the best job)
            "last_reported": None if last is None else {"step": last, "value": trial.reported[last]},
        }
    }
    if stop_at is not None:  # a round of the halving sweeper: stopped at its rung, or run to it
        record["pruning"]["stop_at"] = stop_at
    if trial.pruned_at_step is not None:
        record["status"] = PRUNED
    return record


def handed_over_trial(
    settings: PruneSettings,
    sweep_dir: Path | None,
    objective: ObjectiveSettings,
    handoff: Mapping[str, Any],
    *,
    run_dir: Path | None = None,
) -> PruningTrial | None:
    """The trial a pack reported a job's evaluations to (``PackedOutcome.pruning``): the job's run goes on
    with it (no second trial), pruned where the pack stopped it, and tells the study how it ended if the
    pack asked for the trial on the job's behalf (``owned``) and nobody told it yet (a job run again from its
    pack's saved outcome finds it told)."""
    if settings.pruner is PrunerName.none:
        return None
    storage_text = storage_of(settings, sweep_dir)
    name = study_of(settings, sweep_dir)
    shown = shown_storage(storage_text)
    common = dict(study=name, storage=shown, pruner=settings.pruner, direction=objective.direction,
                  pruned_at_step=handoff.get("pruned_at_step"))  # fmt: skip
    if not is_main_process():
        return PruningTrial(None, owned=False, **common)
    storage = open_storage(storage_text)
    study = _open_study(storage, name, shown, settings, objective)
    number = int(handoff["trial"])
    try:
        tid = trial_id(storage, name, number)
    except KeyError:
        raise ConfigError("prune.trial", f"study {name} in {shown} has no trial {number}") from None
    frozen = storage.get_trial(tid)
    running = frozen.state is TrialState.RUNNING
    if running and run_dir is not None:
        storage.set_trial_user_attr(tid, RUN_DIR, str(run_dir.absolute()))
    owned = bool(handoff.get("owned", False)) and running
    return PruningTrial(optuna.Trial(study, tid), owned=owned, reported=dict(frozen.intermediate_values),
                        **common)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# A pack's jobs (dpo_lab.packed): judged together at each evaluation


@dataclass
class PackedTrial:
    """One job of a pack as its pruning sees it: the job's trial, the objective it reports
    (``eval_<objective.metric>`` of its trainer's evaluation) and its ``prune`` settings."""

    trial: PruningTrial
    metric: str
    settings: PruneSettings

    @property
    def handoff(self) -> dict[str, Any]:
        """What the job's run receives (``PackedOutcome.pruning``)."""
        return {"trial": self.trial.number, "owned": self.trial.owned,
                "pruned_at_step": self.trial.pruned_at_step}  # fmt: skip


class PackPruning:
    """The pruning of a pack's jobs (``hydra/launcher=packed``; dpo_lab.packed.pack.PackJudge).

    The jobs of a pack take their optimizer steps together, so they reach each held-out evaluation at the
    same step. There every job that evaluated reports its objective to its trial first; then the jobs from
    ``prune.min_steps`` on (never at the last step) are judged, those of one study and one set of ``prune``
    settings together:

    - ``successive_halving``, synchronously: at a rung (the first evaluation at or after
      ``min_resource x reduction_factor^k`` steps) the pack's jobs are ranked together with the values every
      other job of the study had at that rung (earlier packs, jobs run alone), and the best
      ``max(1, n // reduction_factor)`` of those ``n`` go on (:func:`keeps_rung`, Optuna's promotion rule).
      Asked one by one, as a job alone asks, the first job of the pack to be judged would be ranked against
      none of its pack-mates and the last against all of them. ``min_resource`` null: the pack's
      ``max_steps // 100`` (what Optuna estimates from a job that trained to its end), at least 1;
    - ``median``, ``hyperband``: the pruner is asked for each job in turn, after every job reported (the
      median pruner compares with finished jobs only, so the order does not matter; hyperband's brackets are
      judged asynchronously, as for jobs alone).

    A job stopped before a restart (its trial says where) is stopped at the same step again when the pack
    replays it from a checkpoint.
    """

    def __init__(self, jobs: Sequence[PackedTrial | None]) -> None:
        self.jobs = list(jobs)
        self.decided: dict[int, int] = {}  # index -> the step its trial says it was pruned at (a restart)
        for index, job in enumerate(self.jobs):
            if job is not None and job.trial.trial is not None:
                step = job.trial.trial.user_attrs.get(PRUNED_AT_STEP)
                if step is not None:
                    self.decided[index] = int(step)

    def handoff(self, index: int) -> dict[str, Any] | None:
        job = self.jobs[index]
        return job.handoff if job is not None else None

    def judge(self, step: int, evaluated: Mapping[int, Mapping[str, Any]], max_steps: int) -> list[int]:
        """The jobs that evaluated at ``step`` (index -> their held-out metrics) report; returns the indices
        of those the pruner stops here (marked on their trials)."""
        if step <= 0:
            return []
        values: dict[int, float] = {}
        for index, metrics in evaluated.items():
            job = self.jobs[index] if index < len(self.jobs) else None
            key = f"eval_{job.metric}" if job is not None else None
            if job is None or job.trial.pruned_at_step is not None or key not in metrics:
                continue
            values[index] = float(metrics[key])
            job.trial.report(step, values[index])
        judged = [
            i for i in values
            if step >= self.jobs[i].settings.min_steps and not (max_steps > 0 and step >= max_steps)
        ]  # fmt: skip
        pruned = {i for i in judged if self.decided.get(i) == step}  # decided before a restart
        groups: dict[tuple, list[int]] = {}
        for index in judged:
            if index not in pruned and index not in self.decided:
                groups.setdefault(self._group_key(index), []).append(index)
        for group in groups.values():
            pruned.update(self._judge_group(group, step, values, max_steps))
        for index in sorted(pruned):
            self.jobs[index].trial.mark_pruned(step)
        return sorted(pruned)

    def _group_key(self, index: int) -> tuple:
        job = self.jobs[index]
        settings = dataclasses.replace(job.settings, trial=None)
        return (job.trial.study, job.trial.storage, job.trial.direction, dataclasses.astuple(settings))

    def _judge_group(
        self, group: list[int], step: int, values: Mapping[int, float], max_steps: int
    ) -> set[int]:
        trials = [self.jobs[i].trial for i in group]
        if self.jobs[group[0]].settings.pruner is not PrunerName.successive_halving:
            return {i for i, trial in zip(group, trials, strict=True) if trial.should_prune()}
        if any(trial.trial is None for trial in trials):
            return set()
        return self._halving(group, step, values, max_steps)

    def _halving(self, group: list[int], step: int, values: Mapping[int, float], max_steps: int) -> set[int]:
        """Synchronous successive halving over ``group`` at ``step`` (see the class docstring)."""
        first = self.jobs[group[0]]
        settings, direction = first.settings, first.trial.direction
        handle = first.trial.trial
        storage, study = handle.storage, handle.study
        ids = {i: trial_id(storage, study.study_name, self.jobs[i].trial.number) for i in group}
        numbers = {self.jobs[i].trial.number for i in group}
        frozen = study.get_trials(deepcopy=False)
        others = [t for t in frozen if t.number not in numbers]
        attrs = {t.number: t.system_attrs for t in frozen}
        rung = {i: _rungs_done(attrs.get(self.jobs[i].trial.number, {})) for i in group}
        min_resource = settings.min_resource or max(max_steps // 100, 1)
        factor = settings.reduction_factor
        pruned: set[int] = {i for i in group if math.isnan(values[i])}  # Optuna's rule: NaN is pruned
        while True:
            ready = [i for i in group if i not in pruned and step >= min_resource * factor ** rung[i]]
            if not ready:
                return pruned
            k = min(rung[i] for i in ready)
            key = RUNG_KEY.format(k)
            at_rung = [i for i in ready if rung[i] == k]
            competing = [t.system_attrs[key] for t in others if key in t.system_attrs]
            for i in at_rung:  # every job of the pack at this rung is in before any is judged
                storage.set_trial_system_attr(ids[i], key, values[i])
            competing += [values[i] for i in at_rung]
            for i in at_rung:
                if keeps_rung(values[i], competing, factor, direction):
                    rung[i] += 1
                else:
                    pruned.add(i)


def _rungs_done(system_attrs: Mapping[str, Any]) -> int:
    rung = 0
    while RUNG_KEY.format(rung) in system_attrs:
        rung += 1
    return rung
