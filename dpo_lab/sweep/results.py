"""A finished sweep read back from its run folders: the jobs, their swept values, status, metrics, curves and
per-pair held-out records, the objective that ranks them, and how sure that ranking is (no network, no W&B
API): :attr:`Sweep.assessment`; and what pruning did (:attr:`Sweep.pruning`: the jobs it stopped and where,
the compute the sweep spent and saved, a pruned job that may have been misjudged, and, against the same
sweep unpruned, whether the answer is the same)."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from dpo_lab.config.choices import Direction
from dpo_lab.config.pruning import SWEEPER_KEYS
from dpo_lab.config.schemas import OBJECTIVE_METRICS, ObjectiveSettings
from dpo_lab.runs.history import read_history
from dpo_lab.runs.layout import RunLayout
from dpo_lab.runs.naming import format_value
from dpo_lab.stats import (
    LEVEL,
    RESAMPLES,
    Interval,
    SeedGroup,
    across_seeds,
    bootstrap_interval,
    finite_array,
    paired_difference,
    seed_groups,
    separated,
    shared_ids,
)
from dpo_lab.sweep.objective import Contender, Verdict, better, decide, per_pair_field

PAIRS_PHASE = "after"  # the per-pair records a sweep is judged by: the held-out evaluation after training
SEED_KEY = "seed"  # a swept seed is replication: jobs that differ only in it are one setting


class ReportError(ValueError):
    """A folder that is not a sweep, or a metric the jobs did not report."""


@dataclass
class Job:
    """One run folder of a sweep."""

    name: str
    path: Path
    status: str  # completed | failed | interrupted | missing (no metrics.json: killed, or still running)
    overrides: dict[str, Any]
    config: DictConfig | None
    metrics: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    pairs: list[dict[str, Any]] | None = None  # heldout_pairs_after.jsonl; None: no such file (older runs)
    pairs_error: str | None = None  # the file is there but unreadable

    @property
    def error(self) -> str | None:
        return self.metrics.get("error")

    @property
    def steps(self) -> int | None:
        """The optimizer steps the job took (``global_step``; None when it recorded none: failed early)."""
        return _integer(self.metrics.get("global_step"))

    @property
    def max_steps(self) -> int | None:
        """The steps of the job at full length (``train.max_steps``; None when not set in its config)."""
        found = _integer(self.value("train.max_steps"))
        return found if found is not None and found > 0 else None

    @property
    def pruned_at_step(self) -> int | None:
        """Where a pruner stopped the job (metrics.json ``pruning.pruned_at_step``), None if none did."""
        pruning = self.metrics.get("pruning")
        return _integer(pruning.get("pruned_at_step")) if isinstance(pruning, dict) else None

    def pair_values(self, metric: str) -> tuple[dict[str, float] | None, str | None]:
        """``({pair id: value}, None)``: the per-pair values whose mean is ``metric`` (a pair id seen again
        in the same file is keyed ``<id>#1``, ``#2``...); or ``(None, why there are none)``."""
        name = per_pair_field(metric)
        if name is None:
            return None, f"no per-pair interval for `{metric}` (per-pair records give accuracy, margin, loss)"
        if self.pairs_error is not None:
            return None, self.pairs_error
        if self.pairs is None:
            return None, "no per-pair records"
        if not self.pairs:
            return None, "no per-pair records (empty file)"
        values: dict[str, float] = {}
        seen: dict[str, int] = {}
        for record in self.pairs:
            pair = str(record.get("pair_id"))
            repeat = seen.get(pair, 0)
            seen[pair] = repeat + 1
            value = record.get(name)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                return None, f"per-pair `{name}` not recorded"
            margin = record.get("margin")
            if name == "correct" and isinstance(margin, float) and not math.isfinite(margin):
                value = math.nan  # a NaN margin is no wrong answer: refused below as non-finite
            values[pair if repeat == 0 else f"{pair}#{repeat}"] = float(value)
        return values, None

    def eval_metric(self, metric: str) -> float | None:
        """A final held-out metric (``loss``, ``rewards/accuracies``...), None when there is none."""
        value = self.metrics.get("eval", {}).get(f"eval_{metric}")
        return float(value) if isinstance(value, (int, float)) else None

    def value(self, key: str) -> Any:
        """The job's value of a swept key: from its resolved config, else from its command-line override."""
        if self.config is not None:  # a group choice (dpo=ipo) selects a node: its override names it
            found = OmegaConf.select(self.config, key, default=None, throw_on_resolution_failure=False)
            if found is not None and not OmegaConf.is_config(found):
                return found
        return self.overrides.get(key)


@dataclass
class Sweep:
    path: Path
    jobs: list[Job]
    swept: list[str]
    objective: ObjectiveSettings
    reference: Sweep | None = None  # the same sweep unpruned, to compare with (dpo-lab report --compare)

    @property
    def metric_column(self) -> str:
        return f"eval/{self.objective.metric}"

    def best(self) -> Job | None:
        """The completed job with the best finite objective metric (the first one on ties), by value alone:
        whether it is told apart from the others is :attr:`assessment`'s verdict."""
        best: Job | None = None
        for job in self.jobs:
            value = job.eval_metric(self.objective.metric)
            if job.status != "completed" or value is None or not math.isfinite(value):
                continue
            incumbent = best.eval_metric(self.objective.metric) if best is not None else None
            if incumbent is None or better(value, incumbent, self.objective.direction):
                best = job  # strictly better only: the first job wins a tie
        return best

    def label(self, job: Job) -> str:
        """``beta=0.05,r=8`` from a job's swept values (the job number alone when nothing varies)."""
        parts = [f"{key.rsplit('.', 1)[-1]}={short_value(job.value(key))}" for key in self.swept]
        return ",".join(parts) or f"job {job.name}"

    def setting_label(self, job: Job) -> str:
        """The job's label without its seed: the name of its setting when seeds are swept."""
        parts = [f"{k.rsplit('.', 1)[-1]}={short_value(job.value(k))}" for k in self.swept if k != SEED_KEY]
        return ",".join(parts) or "all"

    def job(self, name: str) -> Job:
        return next(j for j in self.jobs if j.name == name)

    @cached_property
    def assessment(self) -> Assessment:
        """How sure the ranking is, at 95% (see :func:`assess`)."""
        return assess(self)

    @cached_property
    def pruning(self) -> PruningSummary | None:
        """What pruning did (see :func:`pruning_summary`); None when no job had a pruner and there is no
        :attr:`reference` to compare with."""
        return pruning_summary(self, self.reference)


@dataclass
class Assessment:
    """The intervals of a sweep and its verdict.

    ``jobs``: every contending job (completed, finite objective) with its per-pair interval, against the
    top job (paired differences). ``verdict``: what decides: ``jobs`` itself, or, when the seed is swept,
    the settings (jobs that differ only in seed, their means across seeds). ``notes``: why a job has no
    interval; ``non_finite``: completed jobs whose objective is NaN or infinite (treated as failed, never
    ranked); ``groups``: the seed groups (empty unless the seed is swept); ``setting_of``: a job's setting.
    """

    jobs: Verdict
    verdict: Verdict
    notes: dict[str, str]
    non_finite: dict[str, str]
    groups: list[SeedGroup]
    setting_of: dict[str, str]

    @property
    def by_setting(self) -> bool:
        return self.verdict.unit == "setting"

    def interval(self, job: Job) -> Interval | None:
        contender = self.jobs.contender(job.name)
        return contender.interval if contender is not None else None


def assess(sweep: Sweep, *, level: float = LEVEL, seed: int = 0, resamples: int = RESAMPLES) -> Assessment:
    """Each completed job's objective with its interval over the held-out pairs (its
    ``heldout_pairs_after.jsonl``), the paired difference of each to the top job, the seed groups and the
    verdict. A job without per-pair records is ranked by its held-out metric alone; where no job has any
    (older runs) and no seed is swept, the top job is named best by value, as before intervals."""
    metric, direction = sweep.objective.metric, sweep.objective.direction
    notes: dict[str, str] = {}
    non_finite: dict[str, str] = {}
    contenders: list[Contender] = []
    for job in sweep.jobs:
        if job.status != "completed":
            continue
        reported = job.eval_metric(metric)
        if reported is not None and not math.isfinite(reported):
            non_finite[job.name] = f"held-out {metric} = {reported}"
            continue
        pairs, note = job.pair_values(metric)
        interval = None
        if pairs is not None:
            try:
                finite_array(pairs.values(), f"per-pair {per_pair_field(metric)}", list(pairs))
            except ValueError as err:
                non_finite[job.name] = str(err)
                continue
            interval = bootstrap_interval(pairs.values(), seed=seed, resamples=resamples, level=level)
        value = interval.value if interval is not None else reported
        if value is None:
            notes[job.name] = f"no held-out {metric} reported"
            continue
        if note is not None:
            notes[job.name] = note
        contenders.append(
            Contender(job.name, sweep.label(job), (job.name,), value, pairs, interval, note=note)
        )
    jobs = decide(contenders, direction, level=level, seed=seed, resamples=resamples)
    groups: list[SeedGroup] = []
    setting_of: dict[str, str] = {}
    verdict = jobs
    if SEED_KEY in sweep.swept:
        groups = seed_groups(
            {j.name: {k: j.value(k) for k in sweep.swept} for j in sweep.jobs}, seed_key=SEED_KEY
        )
        if any(len(g.members) > 1 for g in groups):
            settings = []
            for group in groups:
                name = sweep.setting_label(sweep.job(group.members[0]))
                if name in setting_of.values():  # two settings that print alike (3 significant digits)
                    name = f"{name} ({group.members[0]})"
                setting_of.update({member: name for member in group.members})
                members = [c for c in contenders if c.name in group.members]
                if members:
                    settings.append(_setting(name, members, level=level, seed=seed, resamples=resamples))
            verdict = decide(settings, direction, unit="setting", level=level, seed=seed, resamples=resamples)
        else:
            groups = []
    return Assessment(jobs, verdict, notes, non_finite, groups, setting_of)


def _setting(name: str, members: list[Contender], *, level: float, seed: int, resamples: int) -> Contender:
    """One setting from its seeds' jobs: the mean over seeds (t interval), and its per-pair values averaged
    over the seeds, pair by pair, over the pairs every seed has (bootstrap interval)."""
    seed_values = tuple(m.value for m in members)
    pairs = interval = None
    note = next((m.note for m in members if m.pairs is None), None)
    if note is None:
        ids = set.intersection(*(set(m.pairs) for m in members))  # type: ignore[arg-type]
        if ids:
            pairs = {i: statistics.fmean(m.pairs[i] for m in members) for i in sorted(ids)}  # type: ignore[index]
            interval = bootstrap_interval(pairs.values(), seed=seed, resamples=resamples, level=level)
        else:
            note = "its seeds share no held-out pairs"
    return Contender(name, name, tuple(m.name for m in members), statistics.fmean(seed_values), pairs,
                     interval, seed_values, across_seeds(seed_values, level=level), note)  # fmt: skip


def short_value(value: Any) -> str:
    """A value for labels and axis ticks: floats to 3 significant digits (2.94e-06), else format_value."""
    if isinstance(value, float):
        return f"{value:.3g}"
    return format_value(value)


def parse_overrides(lines: Sequence[str]) -> dict[str, Any]:
    """``{key: value}`` of a job's command-line overrides (hydra.* left out)."""
    try:
        parsed = OverridesParser.create().parse_overrides(list(lines))
    except HydraException as err:
        raise ReportError(f"unreadable overrides {list(lines)}: {err}") from None
    return {o.key_or_group: o.value() for o in parsed if not o.key_or_group.startswith("hydra")}


def is_run_folder(path: Path) -> bool:
    """The folder of one run (its metrics.json, config.yaml or Hydra record at the top), not a sweep's."""
    layout = RunLayout(path)
    return layout.metrics.is_file() or layout.config.is_file() or (path / ".hydra").is_dir()


def run_folder_message(path: Path) -> str:
    """What to say when a run folder is given where a sweep folder is wanted: where its results are, and its
    sweep when it is a job of one."""
    layout = RunLayout(path)
    sweep = path.resolve().parent
    hint = (
        f"; its sweep is {sweep}: dpo-lab report {sweep}"
        if (sweep / "multirun.yaml").is_file()
        else "; report takes a sweep folder (multirun/<date>/<time>, made by -m)"
    )
    return (
        f"{path} is a run folder, not a sweep folder: its results (the closing table's numbers) are in "
        f"{layout.metrics} and its model card {layout.card}{hint}"
    )


def job_folders(sweep_dir: Path) -> list[Path]:
    """The run folders of a sweep: its sub-folders that Hydra or dpo_lab wrote a job into."""
    found = [
        p
        for p in sweep_dir.iterdir()
        if p.is_dir() and ((p / ".hydra").is_dir() or RunLayout(p).metrics.is_file())
    ]
    return sorted(found, key=lambda p: (0, int(p.name), "") if p.name.isdigit() else (1, 0, p.name))


def load_job(path: Path) -> Job:
    overrides_file = path / ".hydra" / "overrides.yaml"
    overrides = parse_overrides(OmegaConf.load(overrides_file)) if overrides_file.is_file() else {}
    config = None
    for candidate in (RunLayout(path).config, path / ".hydra" / "config.yaml"):  # resolved one first
        if candidate.is_file():
            config = OmegaConf.load(candidate)
            break
    metrics_file = RunLayout(path).metrics
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    status = metrics.get("status", "missing")
    pairs, pairs_error = read_pairs(RunLayout(path).heldout_pairs(PAIRS_PHASE))
    return Job(path.name, path, status, overrides, config, metrics, read_history(path), pairs, pairs_error)


def read_pairs(file: Path) -> tuple[list[dict[str, Any]] | None, str | None]:
    """The records of a ``heldout_pairs_<phase>.jsonl`` (None when there is no file), or why it is unreadable
    (the report goes on without them)."""
    if not file.is_file():
        return None, None
    records = []
    for number, line in enumerate(file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            return None, f"unreadable per-pair records ({file.name}:{number}: {err.msg})"
        if not isinstance(record, dict) or "pair_id" not in record:
            return None, f"unreadable per-pair records ({file.name}:{number}: no pair_id)"
        records.append(record)
    return records, None


def swept_keys(jobs: Sequence[Job]) -> list[str]:
    """Override keys whose value differs between jobs, in command-line order (all of them for one job)."""
    keys: list[str] = []
    for job in jobs:  # the trial a sweeper hands each job (prune.trial...) is bookkeeping, not a setting
        keys += [k for k in job.overrides if k not in keys and k not in SWEEPER_KEYS]
    if len(jobs) < 2:
        return keys
    return [k for k in keys if len({repr(job.overrides.get(k)) for job in jobs}) > 1]


def load_sweep(sweep_dir: Path | str, metric: str | None = None, direction: str | None = None) -> Sweep:
    """Every job of a sweep folder; the objective from the arguments, else from the jobs' configs."""
    path = Path(sweep_dir)
    if not path.is_dir():
        raise ReportError(f"{path}: no such sweep folder")
    if is_run_folder(path):
        raise ReportError(run_folder_message(path))
    jobs = [load_job(p) for p in job_folders(path)]
    if not jobs:
        raise ReportError(f"{path}: no run folders in it (expected <sweep>/<job number>/ with metrics.json)")
    objective = _objective(jobs, metric, direction)
    return Sweep(path, jobs, swept_keys(jobs), objective)


def _objective(jobs: Sequence[Job], metric: str | None, direction: str | None) -> ObjectiveSettings:
    configured = [OmegaConf.select(j.config, "objective", default=None) for j in jobs if j.config is not None]
    first = configured[0] if configured else None
    metric = metric or (first.metric if first is not None else ObjectiveSettings.metric)
    if direction is None:
        direction = enum_text(first.direction) if first is not None and first.metric == metric else None
        direction = direction or (Direction.minimize.value if metric == "loss" else Direction.maximize.value)
    if metric not in OBJECTIVE_METRICS:
        raise ReportError(
            f"--metric: unknown held-out metric {metric!r}; allowed: {', '.join(OBJECTIVE_METRICS)}"
        )
    if direction not in Direction.__members__:
        raise ReportError(f"--direction: must be maximize or minimize, got {direction!r}")
    return ObjectiveSettings(metric=metric, direction=Direction(direction))


def enum_text(value: Any) -> str:
    """An enum's value, or the text itself (configs hold Direction members or plain strings)."""
    return str(getattr(value, "value", value))


# ----------------------------------------------------------------------------------------------------------
# What pruning did: the jobs it stopped, the compute spent and saved, a pruned job it may have misjudged,
# and whether the answer is the one of the same sweep unpruned


def _integer(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _finite(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


@dataclass(frozen=True)
class Compute:
    """A sweep's training cost, read from its jobs' metrics.json.

    ``steps``: optimizer steps taken, summed over the jobs that recorded them (``global_step``);
    ``full_steps``: what the same jobs take at full length (each job's ``train.max_steps``; None where a job's
    is not known); ``train_s``: training wall time (``train_runtime_s``) summed over the jobs run alone and
    over the packs, each pack's once (a packed job's is its pack's, shared with the pack's other jobs; a job
    the pack pruned stopped its clock there); ``jobs``: the jobs counted; ``packs``: the packs among them."""

    jobs: int
    steps: int
    full_steps: int | None
    train_s: float
    packs: int

    def to_dict(self) -> dict[str, Any]:
        return {"jobs": self.jobs, "steps": self.steps, "full_steps": self.full_steps,
                "train_s": round(self.train_s, 3), "packs": self.packs}  # fmt: skip


def compute_of(sweep: Sweep) -> Compute:
    """The training cost of ``sweep`` (see :class:`Compute`)."""
    jobs = steps = full = 0
    known = True
    alone = 0.0
    packs: dict[str, float] = {}
    for job in sweep.jobs:
        taken = job.steps
        if taken is None:
            continue
        jobs += 1
        steps += taken
        if job.max_steps is None:
            known = False
        else:
            full += max(job.max_steps, taken)
        runtime = _finite(job.metrics.get("train_runtime_s")) or 0.0
        train = job.metrics.get("train")
        pack = train.get("pack_id") if isinstance(train, dict) else None
        if pack:
            packs[str(pack)] = max(packs.get(str(pack), 0.0), runtime)
        else:
            alone += runtime
    return Compute(jobs, steps, full if known else None, alone + sum(packs.values()), len(packs))


@dataclass(frozen=True)
class PrunedJob:
    """A job a pruner stopped. ``reported``: the held-out value it was last judged by (TRL's metric, as
    reported to its trial); ``value``: the same evaluation on the scale of the best job's interval (the mean
    of its per-pair records, ties counting half; its reported value where it has none); ``within_best``:
    ``value`` lies inside the eventual best job's interval (None: no interval to compare with): the pruner
    stopped it where it could not yet be told apart from the job that won."""

    name: str
    label: str
    step: int
    max_steps: int | None
    reported: float | None
    value: float | None
    within_best: bool | None

    def to_dict(self) -> dict[str, Any]:
        return {"job": self.name, "params": self.label, "pruned_at_step": self.step,
                "max_steps": self.max_steps, "last_reported": self.reported, "value": self.value,
                "within_best_interval": self.within_best}  # fmt: skip


@dataclass(frozen=True)
class BestComparison:
    """A sweep's top job against a reference sweep's (the same grid unpruned), on the held-out pairs both
    evaluated: ``same_setting`` (the same swept values), else ``difference`` (this top minus the reference's
    top, paired over their shared pairs) and whether it excludes 0. ``verdict``: ``same job``, ``cannot be
    told apart``, ``worse`` or ``better`` (separated at 95%), or why it cannot say."""

    job: str | None
    reference_job: str | None
    params: dict[str, Any]
    reference_params: dict[str, Any]
    same_setting: bool
    difference: Interval | None
    verdict: str

    @property
    def same_answer(self) -> bool:
        """The reference's best is found, or one that cannot be told apart from it."""
        return self.verdict in ("same job", "cannot be told apart")

    def to_dict(self) -> dict[str, Any]:
        return {"job": self.job, "reference_job": self.reference_job, "params": self.params,
                "reference_params": self.reference_params, "same_setting": self.same_setting,
                "difference": self.difference.to_dict() if self.difference is not None else None,
                "verdict": self.verdict, "same_answer": self.same_answer}  # fmt: skip


def compare_best(sweep: Sweep, reference: Sweep, *, level: float = LEVEL, seed: int = 0) -> BestComparison:
    """Whether ``sweep``'s top job is ``reference``'s top job (the same values of every key swept in either)
    or cannot be told apart from it: the paired difference of their per-pair values of the objective over
    the held-out pairs both evaluated (pair ids) includes 0 (dpo_lab.stats.paired_difference)."""
    metric, direction = sweep.objective.metric, sweep.objective.direction
    tops = [s.assessment.jobs.top for s in (sweep, reference)]
    keys = [*sweep.swept, *[k for k in reference.swept if k not in sweep.swept]]
    jobs = [s.job(t.name) if t is not None else None for s, t in zip((sweep, reference), tops, strict=True)]
    params = [{k: j.value(k) for k in keys} if j is not None else {} for j in jobs]
    names = [t.name if t is not None else None for t in tops]
    if None in jobs:
        return BestComparison(*names, *params, False, None, "unknown: a sweep has no completed job")
    if params[0] == params[1]:
        return BestComparison(*names, *params, True, None, "same job")
    (mine, why), (theirs, why_theirs) = (j.pair_values(metric) for j in jobs)
    if mine is None or theirs is None or not shared_ids(mine, theirs):
        reason = why or why_theirs or "no held-out pairs in common"
        return BestComparison(*names, *params, False, None, f"unknown: {reason}")
    difference = paired_difference(mine, theirs, seed=seed, level=level)
    if not separated(difference):
        verdict = "cannot be told apart"
    elif (difference.value > 0) == (direction is Direction.maximize):
        verdict = "better"
    else:
        verdict = "worse"
    return BestComparison(*names, *params, False, difference, verdict)


@dataclass
class PruningSummary:
    """What pruning did in a sweep (``dpo-lab report``'s "Pruning" section, report.json ``pruning``).

    ``pruners``: the pruners the jobs ran under; ``pruned``: the jobs stopped, with where and by what value;
    ``best`` / ``best_interval``: the eventual best job (the top completed one) and its interval over the
    held-out pairs, which a pruned job's value is held against; ``compute``: what the sweep spent;
    ``reference`` / ``same_answer``: the same sweep unpruned (``--compare``), and whether its answer is the
    same."""

    pruners: list[str]
    pruned: list[PrunedJob]
    best: str | None
    best_interval: Interval | None
    compute: Compute
    reference: Compute | None = None
    reference_path: Path | None = None
    same_answer: BestComparison | None = None

    @property
    def flagged(self) -> list[PrunedJob]:
        """Pruned jobs whose last value lies inside the eventual best job's interval."""
        return [job for job in self.pruned if job.within_best]

    def savings(self) -> dict[str, float | None]:
        """How many times less: steps than at full length; steps and training time than the reference."""

        def ratio(full: float | None, spent: float) -> float | None:
            return round(full / spent, 2) if full is not None and spent > 0 else None

        out = {"steps_vs_full_length": ratio(self.compute.full_steps, self.compute.steps)}
        if self.reference is not None:
            out["steps_vs_unpruned"] = ratio(self.reference.steps, self.compute.steps)
            out["train_time_vs_unpruned"] = ratio(self.reference.train_s, self.compute.train_s)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "pruners": self.pruners,
            "pruned": [job.to_dict() for job in self.pruned],
            "flagged": [job.name for job in self.flagged],
            "best": self.best,
            "best_interval": self.best_interval.to_dict() if self.best_interval is not None else None,
            "compute": self.compute.to_dict(),
            "unpruned": None if self.reference is None else {
                "path": str(self.reference_path), **self.reference.to_dict()},
            "savings": self.savings(),
            "same_answer": self.same_answer.to_dict() if self.same_answer is not None else None,
        }  # fmt: skip


def pruning_summary(sweep: Sweep, reference: Sweep | None = None) -> PruningSummary | None:
    """What pruning did in ``sweep`` (see :class:`PruningSummary`), against ``reference`` (the same sweep
    unpruned) when given; None when no job had a pruner (no ``pruning`` record) and no reference is given."""
    records = [j.metrics.get("pruning") for j in sweep.jobs if isinstance(j.metrics.get("pruning"), dict)]
    if not records and reference is None:
        return None
    pruners = sorted({str(r.get("pruner")) for r in records if r.get("pruner")})
    metric = sweep.objective.metric
    top = sweep.assessment.jobs.top
    interval = top.interval if top is not None else None
    pruned = []
    for job in sweep.jobs:
        step = job.pruned_at_step
        if step is None:
            continue
        last = job.metrics.get("pruning", {}).get("last_reported")
        reported = _finite(last.get("value")) if isinstance(last, dict) else job.eval_metric(metric)
        pairs, _ = job.pair_values(metric)
        value = statistics.fmean(pairs.values()) if pairs else reported
        within = None
        if interval is not None and interval.bounded and value is not None and math.isfinite(value):
            within = interval.low <= value <= interval.high
        pruned.append(PrunedJob(job.name, sweep.label(job), step, job.max_steps, reported, value, within))
    summary = PruningSummary(pruners, pruned, top.name if top else None, interval, compute_of(sweep))
    if reference is not None:
        summary.reference = compute_of(reference)
        summary.reference_path = reference.path
        summary.same_answer = compare_best(sweep, reference)
    return summary
