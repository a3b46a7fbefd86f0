"""Synchronous successive halving over a grid (``hydra/sweeper=dpo_lab_halving``), through any Hydra launcher.

Optuna's pruner judges a job as it reaches a rung, against whatever reached that rung before it: jobs run one
after another (Hydra's basic launcher) are judged against fewer and fewer rivals the earlier they run, and
the first jobs pass every rung. This sweeper runs the grid in rounds instead, so that every job at a rung is
ranked against all the others there:

1. the grid is expanded as Hydra's basic sweeper expands it (``hydra.sweeper.params``, then the command line;
   choices and ranges; a plain value goes to every job), and each grid point gets a trial in the sweep's
   Optuna study (``prune.storage`` / ``prune.study``, as for any pruned sweep: optuna-dashboard shows it);
2. round k launches the jobs still in play as one batch through the configured launcher (one after another
   with the basic launcher, side by side with submitit), each with ``prune.stop_at`` = the rung
   ``min_resource x reduction_factor^k`` steps (``prune.min_resource``, ``prune.reduction_factor``; the last
   round runs to ``train.max_steps``): a job trains to its rung, evaluates, saves its checkpoint there and
   stops, recorded as pruned at that step (:class:`dpo_lab.sweep.pruning.PruningCallback`);
3. the round's values (each job's objective at its rung) are ranked together: the best
   ``max(1, n // reduction_factor)`` of the ``n`` go on (a tie at the cut goes on: :func:`keeps_rung`); the
   rest are told PRUNED, and stay as they stopped (adapter, card, history, ``metrics.json`` pruned at the
   rung). A promoted job is launched again in the same run folder with the next rung: it goes on from its
   checkpoint (:func:`dpo_lab.train.resume.plan_resume`), not from step 0;
4. the jobs of the last round are told COMPLETE with their objective; a failed job (no number) FAIL.

The sweep run again in the same folder (``hydra.sweep.dir=...``) takes the trials it asked before (by the
grid point) and trains nothing twice: a job finished for a round returns its record, a promoted job goes on
from its newest checkpoint.

Nothing here imports the training libraries: the sweeper runs in the launching process.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import CompactHydraException, HydraException
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from dpo_lab.config.choices import Direction
from dpo_lab.config.pruning import PrunerName, PruneSettings
from dpo_lab.sweep.optuna_sweeper import (
    RESULTS_FILE,
    LaunchingSearch,
    default_storage,
    default_study_name,
    job_prune_settings,
    open_storage,
    quiet_optuna,
    quoted,
    shown_storage,
    trial_id,
    write_results,
)

log = logging.getLogger(__name__)

GRID_POINT = "grid_point"  # the trial's user attribute: the job's overrides (a rerun finds its trial by them)
# the trial system attribute in which Optuna's SuccessiveHalvingPruner keeps a trial's value at rung k
# (optuna/pruners/_successive_halving.py, _completed_rung_key): the halving sweeper and the packs record rung
# values under the same name, so that every way of halving in one study competes at the same rungs
# (tests/packed/test_pack_pruning.py checks that Optuna still reads it)
RUNG_KEY = "completed_rung_{}"
# what a halving sweep must not vary between jobs: the rungs are steps of one schedule
FIXED_KEYS = ("train.max_steps", "prune.min_resource", "prune.reduction_factor", "prune.min_steps")


class HalvingSettingsError(CompactHydraException, ValueError):
    """A sweep the halving sweeper cannot run (which key, what is allowed): Hydra prints the message alone, no
    stack trace, and exits non-zero."""


def keeps_rung(value: float, competing: Sequence[float], reduction_factor: int, direction: Direction) -> bool:
    """Whether ``value`` goes on from a rung where ``competing`` were reached (``value`` among them): it must
    be at least as good as the ``max(1, n // reduction_factor)``-th best of the ``n`` (ties go on), Optuna's
    promotion rule of successive halving."""
    keep = max(len(competing) // reduction_factor, 1)
    ranked = sorted(competing, reverse=direction is Direction.maximize)
    cutoff = ranked[keep - 1]
    return value >= cutoff if direction is Direction.maximize else value <= cutoff


def rungs(max_steps: int, min_resource: int | None, reduction_factor: int, min_steps: int = 0) -> list[int]:
    """The steps the rounds train to: ``min_resource x reduction_factor^k`` below ``max_steps`` and not before
    ``min_steps`` (no job is judged earlier), then ``max_steps``. ``min_resource`` null: ``max_steps // 100``
    (Optuna's estimate from a job trained to its end), at least 1."""
    if max_steps < 1:
        raise HalvingSettingsError(
            f"train.max_steps: successive halving counts steps; expected >= 1, got {max_steps}"
        )
    step = min_resource or max(max_steps // 100, 1)
    out = []
    while step < max_steps:
        if step >= min_steps:
            out.append(step)
        step *= reduction_factor
    return [*out, max_steps]


def grid(overrides: Sequence[str]) -> list[list[str]]:
    """The jobs' overrides, as Hydra's basic sweeper lists them: the cartesian product of each key's values
    in the order given (a key given twice takes its last values); ``interval(...)`` has no grid."""
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as err:
        raise HalvingSettingsError(f"hydra.sweeper.params: {str(err).splitlines()[0]}") from None
    options: dict[str, list[str]] = {}
    for override in parsed:
        key = override.get_key_element()  # given twice: the last values, in the first one's place
        if not override.is_sweep_override():
            options[key] = [f"{key}={override.get_value_element_as_str()}"]
        elif override.is_discrete_sweep():
            options[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            raise HalvingSettingsError(
                f"{override.input_line}: an interval has no grid; list the values (a,b,c)"
            )
    fixed = [key for key in options if key.lstrip("+~") in FIXED_KEYS and len(options[key]) > 1]
    if fixed:
        raise HalvingSettingsError(
            f"{fixed[0]}: every job of a halving sweep takes the same rungs; give one value"
        )
    return [list(point) for point in itertools.product(*options.values())]


def swept(points: Sequence[Sequence[str]]) -> dict[str, list[str]]:
    """``{key: value texts}`` of the keys whose value differs between the grid's jobs, in grid order."""
    values: dict[str, list[str]] = {}
    for point in points:
        for override in point:
            key, text = override.split("=", 1)
            if text not in values.setdefault(key, []):
                values[key].append(text)
    return {key: texts for key, texts in values.items() if len(texts) > 1}


@dataclass
class Job:
    """A grid point: its overrides, its trial, its run folder (relative to the sweep folder, once launched)
    and the value of its last round."""

    index: int
    overrides: list[str]
    trial: int
    label: str
    subdir: str | None = None
    value: float | None = None


class HalvingSearch(LaunchingSearch):
    """The sweep (see the module docstring)."""

    def settings(self) -> tuple[PruneSettings, Direction, int]:
        """The sweep's ``prune`` settings, objective direction and ``train.max_steps``, checked."""
        assert self.config is not None
        prune = job_prune_settings(self.config)
        if prune is None or prune.pruner is not PrunerName.successive_halving:
            raise HalvingSettingsError(
                "hydra/sweeper=dpo_lab_halving halves by successive halving's settings: add "
                "prune=successive_halving (prune.min_resource, prune.reduction_factor)"
            )
        launcher = str(OmegaConf.select(self.config, "hydra.launcher._target_", default=""))
        if "packed" in launcher.lower():
            raise HalvingSettingsError(
                "hydra/launcher=packed halves synchronously inside each pack itself: use it with Hydra's "
                "basic sweeper (drop hydra/sweeper=dpo_lab_halving)"
            )
        direction = OmegaConf.select(self.config, "objective.direction", default=Direction.maximize)
        direction = Direction(getattr(direction, "value", direction))
        max_steps = int(OmegaConf.select(self.config, "train.max_steps", default=-1))
        return prune, direction, max_steps

    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        """Run the rounds; returns the launched batches' JobReturns."""
        assert self.config is not None and self.launcher is not None
        prune, direction, max_steps = self.settings()
        points = grid([*(f"{k}={v}" for k, v in self.params.items()), *arguments])
        steps = rungs(max_steps, prune.min_resource, prune.reduction_factor, prune.min_steps)
        storage_text = prune.storage or default_storage(self.sweep_dir)
        storage = open_storage(storage_text)
        study = self.open_study(storage, prune, direction)
        space = swept(points)
        jobs = []
        for i, point in enumerate(points):
            params = {k: v for k, v in (o.split("=", 1) for o in point) if k in space}
            label = " ".join(f"{k}={v}" for k, v in params.items()) or f"job {i}"
            jobs.append(Job(i, point, self.trial_for(study, point, params, space), label))
        log.info(
            "successive halving over %d jobs in study %s (%s): rungs at %s steps, each keeps the best 1/%d",
            len(jobs),
            study.study_name,
            shown_storage(storage_text),
            steps,
            prune.reduction_factor,
        )
        batches = []
        alive = jobs
        for k, stop_at in enumerate(steps):
            returns = self.launch_round(alive, stop_at, study.study_name, storage_text)
            batches.append(returns)
            alive = self.judge(
                study,
                storage,
                alive,
                returns,
                k,
                last=stop_at == steps[-1],
                direction=direction,
                reduction_factor=prune.reduction_factor,
            )
            if not alive:
                break
        write_results(study, self.sweep_dir / RESULTS_FILE, storage_text)
        return batches

    def open_study(
        self, storage: optuna.storages.BaseStorage, prune: PruneSettings, direction: Direction
    ) -> optuna.Study:
        name = prune.study or default_study_name(self.sweep_dir)
        with quiet_optuna():
            study = optuna.create_study(
                storage=storage, study_name=name, direction=direction.value, load_if_exists=True
            )
        found = [d.name.lower() for d in study.directions]
        if found != [direction.value]:
            raise HalvingSettingsError(
                f"prune.study: study {name} is to {'/'.join(found)}; objective.direction is "
                f"{direction.value}: name another study"
            )
        return study

    def trial_for(
        self, study: optuna.Study, point: list[str], params: dict[str, str], space: Mapping[str, list[str]]
    ) -> int:
        """The trial a previous attempt of this sweep asked for the grid point (unless its job failed: it is
        tried again on a new trial), or a new one holding the point's swept values as its params
        (optuna-dashboard and optimization_results.yaml show them)."""
        for frozen in study.get_trials(deepcopy=False):
            if frozen.user_attrs.get(GRID_POINT) == point and frozen.state is not TrialState.FAIL:
                return frozen.number
        distributions = {key: CategoricalDistribution(texts) for key, texts in space.items()}
        with quiet_optuna():
            study.enqueue_trial(params, skip_if_exists=False)
            trial = study.ask(distributions)
        trial.set_user_attr(GRID_POINT, point)
        return trial.number

    def launch_round(
        self, jobs: Sequence[Job], stop_at: int, study: str, storage: str
    ) -> Sequence[JobReturn]:
        overrides = []
        for job in jobs:
            line = [
                *job.overrides,
                f"prune.trial={job.trial}",
                f"prune.study={quoted(study)}",
                f"prune.storage={quoted(storage)}",
                f"prune.stop_at={stop_at}",
            ]
            if job.subdir is not None:  # the folder the job was started in: it goes on there
                line.append(f"hydra.sweep.subdir={quoted(job.subdir)}")
            overrides.append(line)
        log.info("round to step %d: %d jobs", stop_at, len(jobs))
        returns = self.launch(overrides)
        for job, ret in zip(jobs, returns, strict=True):
            if job.subdir is None:
                job.subdir = self.subdir_of(ret)
        return returns

    def subdir_of(self, ret: JobReturn) -> str:
        """The job's folder relative to the sweep folder, as the launcher made it."""
        output = OmegaConf.select(ret.hydra_cfg, "hydra.runtime.output_dir") if ret.hydra_cfg else None
        if output is None:
            raise RuntimeError("the launcher returned a job without its hydra config: cannot find its folder")
        return str(Path(str(output)).resolve().relative_to(self.sweep_dir.resolve()))

    def judge(
        self,
        study: optuna.Study,
        storage: optuna.storages.BaseStorage,
        jobs: Sequence[Job],
        returns: Sequence[JobReturn],
        rung: int,
        *,
        last: bool,
        direction: Direction,
        reduction_factor: int,
    ) -> list[Job]:
        """Tell the round's results: failures FAIL; in the last round COMPLETE; else the best go on (returned)
        and the rest are PRUNED."""
        ran = []
        key = RUNG_KEY.format(rung)
        for job, ret in zip(jobs, returns, strict=True):
            job.value = job_value(ret)
            if job.value is None:
                self.tell(study, job, TrialState.FAIL, "failed")
                continue
            ran.append(job)
            tid = trial_id(storage, study.study_name, job.trial)
            recorded = storage.get_trial_system_attrs(tid).get(key)
            if recorded is not None:  # a rerun: a job that went further returns its later value
                job.value = float(recorded)
            else:
                storage.set_trial_system_attr(tid, key, job.value)
        if last:
            for job in ran:
                self.tell(study, job, TrialState.COMPLETE, job.value)
            return []
        values = [job.value for job in ran]
        kept = [job for job in ran if keeps_rung(job.value, values, reduction_factor, direction)]
        for job in ran:
            if job not in kept:
                self.tell(study, job, TrialState.PRUNED, job.value)
        log.info(
            "rung %d: %d of %d go on: %s", rung, len(kept), len(ran), ", ".join(job.label for job in kept)
        )
        return kept

    def tell(self, study: optuna.Study, job: Job, state: TrialState, why: Any) -> None:
        values = [float(job.value)] if state is TrialState.COMPLETE and job.value is not None else None
        with quiet_optuna():
            study.tell(job.trial, values=values, state=state, skip_if_finished=True)
        log.info("trial %d (%s): %s, %s", job.trial, job.label, state.name.lower(), why)


def job_value(ret: JobReturn) -> float | None:
    """The job's objective at the end of its round; None for a failed job (raised, no number, not finite)."""
    if ret.status is JobStatus.FAILED:
        return None
    try:
        value = float(ret.return_value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None
