"""dpo_lab's Optuna sweeper (``hydra/sweeper=dpo_optuna``): Optuna's ask-and-tell loop over Hydra's launcher.

The Hydra plugin (``hydra_plugins/dpo_lab_optuna_sweeper``) is a thin shell over :class:`OptunaSearch`:

1. the sweep's params (``hydra.sweeper.params`` and the command line, in Hydra's sweep syntax:
   ``choice(...)``, plain comma lists, ``range(...)``, ``interval(...)``, ``tag(log, interval(...))``) become
   Optuna distributions; plain overrides are passed to every job as they are;
2. a batch of ``n_jobs`` trials is asked from the study, and launched through the configured launcher
   (basic, submitit, packed...) as one batch of jobs;
3. each job's result is told to the study: its number (COMPLETE), nothing or an error (FAIL), or PRUNED when
   the job was stopped by its pruner (the ``pruned_at_step`` user attribute the job set on its trial, or an
   ``optuna.TrialPruned`` raised by a plain Hydra app);
4. ``optimization_results.yaml`` in the sweep folder holds the best trial (the sweep report shows it).

The study lives in a storage the jobs can open too (``<sweep folder>/optuna.journal`` by default, or any
Optuna RDB URL): when the app has a ``prune`` group with a pruner, every job gets ``prune.trial``,
``prune.study`` and ``prune.storage`` and reports its held-out evaluations to its own trial
(:mod:`dpo_lab.sweep.pruning`). The helpers both sides open the study with live here too, so that the
sweeper never imports the training libraries.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import HydraException
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, ListConfig, OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from dpo_lab.config.pruning import PrunerName, PruneSettings
from dpo_lab.runs.naming import run_group

log = logging.getLogger(__name__)

JOURNAL_FILE = "optuna.journal"  # the study's journal in the sweep folder (storage null)
RESULTS_FILE = "optimization_results.yaml"
PRUNED_AT_STEP = "pruned_at_step"  # the trial's user attribute a pruned job sets: the step it stopped at
RUN_DIR = "run_dir"  # the trial's user attribute naming the job's run folder
DIRECTIONS = ("minimize", "maximize")
_PASSWORD = re.compile(r"(?P<head>://[^/:@]+:)[^/@]+(?P<tail>@)")


# ------------------------------------------------------------------ the study both sides open


@contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna's INFO lines ("A new study created ...", "Trial 3 finished ...") and experimental-feature
    warnings silenced while dpo_lab calls it; the verbosity is put back afterwards."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(level)


def is_rdb_url(storage: str) -> bool:
    return "://" in storage


def open_storage(storage: str) -> optuna.storages.BaseStorage:
    """An Optuna RDB URL (sqlite:///..., postgresql://...) or a journal file (created with its folder)."""
    if is_rdb_url(storage):
        return optuna.storages.get_storage(storage)
    path = Path(storage)
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def shown_storage(storage: str) -> str:
    """The storage as logs and metrics.json show it: a URL's password hidden."""
    return _PASSWORD.sub(r"\g<head>***\g<tail>", storage)


def default_storage(sweep_dir: Path) -> str:
    """``<sweep folder>/optuna.journal``, absolute: jobs in other processes or folders open the same file."""
    return str((sweep_dir / JOURNAL_FILE).absolute())


def default_study_name(sweep_dir: Path) -> str:
    """``sweep-<date>_<time>``: the sweep folder's name, as the W&B group of its jobs."""
    return run_group(str(sweep_dir), "", sweep_dir)


def build_pruner(settings: PruneSettings | None) -> optuna.pruners.BasePruner:
    """The Optuna pruner ``prune.pruner`` names, with its settings."""
    if settings is None or settings.pruner is PrunerName.none:
        return optuna.pruners.NopPruner()
    if settings.pruner is PrunerName.median:
        return optuna.pruners.MedianPruner(
            n_startup_trials=settings.n_startup_trials, n_warmup_steps=settings.min_steps
        )
    if settings.pruner is PrunerName.successive_halving:
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=settings.min_resource or "auto", reduction_factor=settings.reduction_factor
        )
    return optuna.pruners.HyperbandPruner(
        min_resource=settings.min_resource or 1,
        max_resource=settings.max_resource or "auto",
        reduction_factor=settings.reduction_factor,
    )


def trial_id(storage: optuna.storages.BaseStorage, study_name: str, number: int) -> int:
    """The storage's id of trial ``number`` of a study (KeyError when there is none)."""
    study_id = storage.get_study_id_from_name(study_name)
    return storage.get_trial_id_from_study_id_trial_number(study_id, number)


def pruned_at(storage: optuna.storages.BaseStorage, study_name: str, number: int) -> int | None:
    """The step a job stopped its trial at, as the job recorded it in the storage; None if it was not."""
    step = storage.get_trial_user_attrs(trial_id(storage, study_name, number)).get(PRUNED_AT_STEP)
    return int(step) if step is not None else None


def directions_of(direction: Any) -> list[str]:
    """``maximize`` / ``minimize`` (or a list of them, several objectives); enums are read by their name."""
    items = list(direction) if isinstance(direction, (list, tuple, ListConfig)) else [direction]
    names = [str(getattr(d, "name", d)).lower() for d in items]
    if not names or any(n not in DIRECTIONS for n in names):
        raise ValueError(
            f"hydra.sweeper.direction: expected minimize or maximize, or a list of them; got {direction!r}"
        )
    return names


# ------------------------------------------------------------------ the search space


def create_optuna_distribution_from_override(override: Override) -> BaseDistribution | str:
    """A sweep override as an Optuna distribution; a plain override as its value text.

    A choice (``choice(4, 8)``, ``4,8``, ``shuffle(...)``) is categorical over the values' override texts,
    exactly what the basic sweeper would pass to the job; ``range(start, stop, step)`` is the int or float
    grid Hydra lists (stop excluded, as in the basic sweeper); ``interval(low, high)`` is continuous (int
    when both ends are ints, ``int(interval(...))``), log-scaled with ``tag(log, ...)``."""
    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    key = override.get_key_element()
    try:
        if override.is_choice_sweep():
            return _categorical(override)
        if override.is_range_sweep():
            return _range_distribution(override)
        if override.is_interval_sweep():
            return _interval_distribution(override.value())
    except (ValueError, HydraException) as err:
        raise ValueError(f"{key}: {err}") from None
    raise ValueError(f"{key}: {override.input_line} is no choice, range or interval sweep")


def _categorical(override: Override) -> CategoricalDistribution:
    texts = list(override.sweep_string_iterator())
    if getattr(override.value(), "shuffle", False):
        texts.sort()  # the sampler chooses: a shuffled order would only make a seeded search irreproducible
    return CategoricalDistribution(texts)


def _range_distribution(override: Override) -> BaseDistribution:
    sweep = override.value()
    assert isinstance(sweep, RangeSweep)
    values = list(override.sweep_iterator())
    if not values:
        raise ValueError(f"{override.input_line} lists no value")
    if sweep.shuffle:
        return _categorical(override)
    low, step, log = min(values), abs(sweep.step), "log" in sweep.tags
    if all(isinstance(v, int) for v in values):
        if log and step != 1:
            raise ValueError("a log-scaled range needs step 1")
        return IntDistribution(low, max(values), log=log, step=1 if log else int(step))
    if log:
        raise ValueError("a log-scaled float range has no grid: use tag(log, interval(low, high))")
    high = float(Decimal(str(low)) + Decimal(str(step)) * (len(values) - 1))  # no float drift in the grid
    return FloatDistribution(float(low), high, step=float(step))


def _interval_distribution(sweep: IntervalSweep) -> BaseDistribution:
    log = "log" in sweep.tags
    if isinstance(sweep.start, int) and isinstance(sweep.end, int):
        return IntDistribution(sweep.start, sweep.end, log=log)
    return FloatDistribution(float(sweep.start), float(sweep.end), log=log)


def search_space(overrides: Sequence[str]) -> tuple[dict[str, BaseDistribution], dict[str, str]]:
    """``({key: distribution}, {key: fixed override text})`` from sweep params then the command line; a key
    given twice takes its last value (the command line wins over a preset)."""
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as err:
        raise ValueError(f"hydra.sweeper.params: {str(err).splitlines()[0]}") from None
    space: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for override in parsed:
        key = override.get_key_element()
        space.pop(key, None)
        fixed.pop(key, None)
        value = create_optuna_distribution_from_override(override)
        if isinstance(value, BaseDistribution):
            space[key] = value
        else:
            fixed[key] = override.input_line or f"{key}={value}"
    return space, fixed


def override_value(value: Any) -> str:
    """A sampled value as override text (a categorical value already is)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)
    return str(value)


def quoted(text: str) -> str:
    """Text that Hydra's override grammar reads back as this string: as it is where that works, else quoted
    (``'a b'``, ``'it\\'s'``: a backslash is doubled only before a quote or at the end)."""
    if _reads_back(text, text):
        return text
    escaped = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, text).replace("'", "\\'")
    if not _reads_back(f"'{escaped}'", text):
        raise ValueError(f"{text!r} cannot be written as a Hydra override value")
    return f"'{escaped}'"


def _reads_back(value_text: str, text: str) -> bool:
    try:
        value = OverridesParser.create().parse_override(f"x={value_text}").value()
    except HydraException:
        return False
    return isinstance(value, str) and value == text


def typed_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's params with categorical override texts read back as values (``"16"`` -> 16)."""
    parser = OverridesParser.create()
    out = {}
    for key, value in params.items():
        out[key] = parser.parse_override(f"x={value}").value() if isinstance(value, str) else value
    return out


# ------------------------------------------------------------------ the sweeper


def tpe_sampler(settings: Mapping[str, Any] | None) -> optuna.samplers.TPESampler:
    """Optuna's TPE sampler with ``hydra.sweeper.sampler``'s settings (seed, n_startup_trials, ...)."""
    kwargs = OmegaConf.to_container(settings) if isinstance(settings, DictConfig) else dict(settings or {})
    with quiet_optuna():
        return optuna.samplers.TPESampler(**kwargs)


def job_prune_settings(config: DictConfig) -> PruneSettings | None:
    """The sweep's ``prune`` group when the app has one and it names a pruner, else None."""
    node = OmegaConf.select(config, "prune", default=None)
    if node is None:
        return None
    settings = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(PruneSettings), node))
    assert isinstance(settings, PruneSettings)
    return settings if settings.pruner is not PrunerName.none else None


def outcome(ret: JobReturn, was_pruned: bool, n_values: int) -> tuple[TrialState, list[float] | None, str]:
    """(state, values, why) to tell Optuna about a finished job."""
    if ret.status is JobStatus.FAILED:  # the job raised (JobReturn.return_value would re-raise it)
        err = ret._return_value
        if isinstance(err, optuna.TrialPruned):
            return TrialState.PRUNED, None, "pruned"
        return TrialState.FAIL, None, f"{type(err).__name__}: {err}"
    value = ret.return_value
    if was_pruned:
        return TrialState.PRUNED, None, "pruned"
    if value is None:
        return TrialState.FAIL, None, "the job returned no value (a failed run)"
    items = list(value) if isinstance(value, (list, tuple, ListConfig)) else [value]
    try:
        values = [float(v) for v in items]
    except (TypeError, ValueError):
        return TrialState.FAIL, None, f"the job returned {value!r}, not a number"
    if len(values) != n_values:
        return TrialState.FAIL, None, f"the job returned {len(values)} values for {n_values} directions"
    if not all(math.isfinite(v) for v in values):
        return TrialState.FAIL, None, f"the job returned {value!r}"
    return TrialState.COMPLETE, values, "complete"


class LaunchingSearch:
    """What dpo_lab's sweepers share: the multirun's config, the launcher Hydra configured, and job numbers
    that go on across the batches launched (``launch``)."""

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        self.params = dict(params or {})
        self.job_idx = 0
        self.config: DictConfig | None = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.job_idx = 0
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    @property
    def sweep_dir(self) -> Path:
        assert self.config is not None
        return Path(str(self.config.hydra.sweep.dir))

    def launch(self, overrides: Sequence[Sequence[str]]) -> Sequence[JobReturn]:
        """One batch of jobs through the launcher, numbered after the batches before it."""
        assert self.launcher is not None
        returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
        self.job_idx += len(returns)
        return returns


class OptunaSearch(LaunchingSearch):
    """The sweep: ask ``n_jobs`` trials at a time, launch them, tell their results, ``n_trials`` in all."""

    def __init__(
        self,
        sampler: Mapping[str, Any] | None = None,
        direction: Any = "minimize",
        storage: str | None = None,
        study_name: str | None = None,
        n_trials: int = 20,
        n_jobs: int = 1,
        max_failure_rate: float = 0.0,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        for key, value in (("n_trials", n_trials), ("n_jobs", n_jobs)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"hydra.sweeper.{key}: expected a positive integer, got {value!r}")
        if not 0.0 <= max_failure_rate <= 1.0:
            raise ValueError(
                f"hydra.sweeper.max_failure_rate: expected a rate in [0, 1], got {max_failure_rate}"
            )
        super().__init__(params)
        self.directions = directions_of(direction)
        self.sampler = tpe_sampler(sampler)
        self.storage = storage
        self.study_name = study_name
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.max_failure_rate = max_failure_rate

    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        """Run the search; returns the launched batches' JobReturns."""
        assert self.config is not None and self.launcher is not None
        space, fixed = search_space([*(f"{k}={v}" for k, v in self.params.items()), *arguments])
        prune = job_prune_settings(self.config)
        storage_text = self.storage or (prune.storage if prune else None) or default_storage(self.sweep_dir)
        storage = open_storage(storage_text)
        study = self.open_study(storage, storage_text, prune)
        log.info(
            "Optuna study %s in %s: %s, %d trials, %d at a time, pruner %s",
            study.study_name, shown_storage(storage_text), "/".join(self.directions), self.n_trials,
            self.n_jobs, prune.pruner.value if prune else "none",
        )  # fmt: skip
        batches = []
        remaining = self.n_trials
        while remaining > 0:
            size = min(self.n_jobs, remaining)
            with quiet_optuna():
                trials = [study.ask(space) for _ in range(size)]
            handoff = prune is not None
            overrides = [
                self.job_overrides(t, fixed, study.study_name, storage_text, handoff) for t in trials
            ]
            returns = self.launch(overrides)
            self.tell(study, storage, trials, returns)
            batches.append(returns)
            remaining -= size
        write_results(study, self.sweep_dir / RESULTS_FILE, storage_text)
        return batches

    def open_study(
        self, storage: optuna.storages.BaseStorage, storage_text: str, prune: PruneSettings | None
    ) -> optuna.Study:
        """The study (created, or loaded to go on with it), with the jobs' pruner: a hyperband search then
        samples each bracket's trials from that bracket's results."""
        name = self.study_name or default_study_name(self.sweep_dir)
        with quiet_optuna():
            study = optuna.create_study(
                storage=storage,
                sampler=self.sampler,
                pruner=build_pruner(prune),
                study_name=name,
                directions=self.directions,
                load_if_exists=True,
            )
        found = [d.name.lower() for d in study.directions]
        if found != self.directions:
            raise ValueError(
                f"hydra.sweeper.direction: study {name} in {shown_storage(storage_text)} was created to "
                f"{'/'.join(found)}, not {'/'.join(self.directions)}; name another study (study_name)"
            )
        return study

    def job_overrides(
        self, trial: optuna.Trial, fixed: Mapping[str, str], study: str, storage: str, handoff: bool
    ) -> list[str]:
        """The job's command line: the trial's values, the fixed overrides, and (with a pruner) its trial."""
        overrides = [f"{key}={override_value(value)}" for key, value in trial.params.items()]
        overrides += list(fixed.values())
        if handoff:
            overrides += [f"prune.trial={trial.number}", f"prune.study={quoted(study)}",
                          f"prune.storage={quoted(storage)}"]  # fmt: skip
        return overrides

    def tell(
        self,
        study: optuna.Study,
        storage: optuna.storages.BaseStorage,
        trials: Sequence[optuna.Trial],
        returns: Sequence[JobReturn],
    ) -> None:
        """Each job's result to its trial; raises when more of the batch failed than max_failure_rate."""
        failed = 0
        for trial, ret in zip(trials, returns, strict=True):
            was_pruned = pruned_at(storage, study.study_name, trial.number) is not None
            state, values, why = outcome(ret, was_pruned, len(self.directions))
            with quiet_optuna():
                study.tell(trial.number, values=values, state=state, skip_if_finished=True)
            if state is TrialState.FAIL:
                failed += 1
                log.warning("trial %d (job %s) failed: %s", trial.number, _job_num(ret), why)
            else:
                log.info("trial %d (job %s): %s", trial.number, _job_num(ret), values or why)
        if failed / len(returns) > self.max_failure_rate:
            for ret in returns:
                ret.return_value  # noqa: B018  (re-raises the first job error, with its traceback)
            raise RuntimeError(
                f"{failed} of {len(returns)} jobs of the batch failed "
                f"(hydra.sweeper.max_failure_rate={self.max_failure_rate})"
            )


def _job_num(ret: JobReturn) -> Any:
    return OmegaConf.select(ret.hydra_cfg, "hydra.job.num", default="?") if ret.hydra_cfg else "?"


def write_results(study: optuna.Study, path: Path, storage: str) -> None:
    """``optimization_results.yaml``: the best trial (or the Pareto front), as the old plugin wrote it, and
    how many trials ended in each state."""
    trials = study.get_trials(deepcopy=False)
    counts = {state.name.lower(): sum(t.state is state for t in trials) for state in TrialState}
    result: dict[str, Any] = {"name": "optuna", "study": study.study_name, "storage": shown_storage(storage)}
    result["trials"] = {state: n for state, n in counts.items() if n}
    complete = [t for t in trials if t.state is TrialState.COMPLETE]
    if not complete:
        log.warning("no trial of study %s completed: no best trial", study.study_name)
    elif len(study.directions) == 1:
        best = study.best_trial
        result.update(best_params=typed_params(best.params), best_value=best.value, best_trial=best.number)
        log.info("best trial %d: value %s, params %s", best.number, best.value, result["best_params"])
    else:
        result["solutions"] = [
            {"params": typed_params(t.params), "values": t.values} for t in study.best_trials
        ]
    OmegaConf.save(OmegaConf.create(result), path)
