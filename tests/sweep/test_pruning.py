"""The job's side of pruning (dpo_lab.sweep.pruning) on hand-built studies: the callback stops a losing job at
the step the pruner names and never before prune.min_steps, the trial is told how the job ended, the study
lives in memory, in a journal file or in SQLite, and processes that ask at once get distinct trials; and
the ``prune`` group's settings and YAML options (dpo_lab.config.pruning, conf/prune/)."""

from __future__ import annotations

import dataclasses
import importlib.util
import multiprocessing
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml
from omegaconf import OmegaConf
from optuna.trial import TrialState
from transformers import TrainerControl, TrainerState

from dpo_lab.config.choices import Direction
from dpo_lab.config.pruning import PrunerName, PruneSettings, single_run_problems, training_problems
from dpo_lab.config.schemas import ObjectiveSettings
from dpo_lab.errors import ConfigError
from dpo_lab.sweep.optuna_sweeper import (
    JOURNAL_FILE,
    PRUNED_AT_STEP,
    build_pruner,
    default_study_name,
    open_storage,
    pruned_at,
)
from dpo_lab.sweep.pruning import PRUNED, PruningCallback, PruningTrial, open_trial, pruned_record
from tests.helpers import CONF

ACCURACY = ObjectiveSettings()  # held-out rewards/accuracies, maximised
KEY = "eval_rewards/accuracies"
MEDIAN = PruneSettings(pruner=PrunerName.median, n_startup_trials=3)


def evaluate(callback: PruningCallback, step: int, value: float, max_steps: int = 10) -> TrainerControl:
    """One held-out evaluation as the Trainer hands it to the callback."""
    control = TrainerControl()
    state = TrainerState(global_step=step, max_steps=max_steps)
    callback.on_evaluate(None, state, control, metrics={KEY: value, "eval_loss": 0.7})
    return control


def finished_jobs(trials: list[PruningTrial], value: float = 0.9, steps: int = 10) -> None:
    """Jobs that evaluated ``value`` at every step and completed."""
    for trial in trials:
        callback = PruningCallback(trial, "rewards/accuracies", Direction.maximize)
        for step in range(steps + 1):
            assert not evaluate(callback, step, value, max_steps=steps).should_training_stop
        trial.finish(value)


def memory_trial(study: optuna.Study) -> PruningTrial:
    """A job's trial in an in-memory study, built by hand (what open_trial returns for a journal or RDB)."""
    return PruningTrial(study.ask(), study.study_name, "memory", PrunerName.median, Direction.maximize, True)


@pytest.fixture(params=["memory", "journal"])
def new_trial(request, tmp_path):
    """A factory of jobs' trials in one study with the median pruner (3 finished jobs before pruning)."""
    if request.param == "memory":
        study = optuna.create_study(direction="maximize", pruner=build_pruner(MEDIAN))
        return lambda settings=MEDIAN: memory_trial(study)
    return lambda settings=MEDIAN: open_trial(settings, tmp_path / "sweep", ACCURACY)


def test_a_job_far_behind_is_pruned_at_that_step_and_not_before_min_steps(new_trial) -> None:
    finished_jobs([new_trial() for _ in range(3)])
    trial = new_trial()
    callback = PruningCallback(trial, "rewards/accuracies", Direction.maximize, min_steps=2)
    assert not evaluate(callback, 0, 0.9).should_training_stop  # the base model: never pruned
    assert not evaluate(callback, 1, 0.1).should_training_stop  # far behind, but before min_steps
    assert trial.pruned_at_step is None
    assert evaluate(callback, 2, 0.1).should_training_stop
    assert trial.pruned_at_step == 2
    assert trial.trial.user_attrs[PRUNED_AT_STEP] == 2
    # the final evaluation the job still runs changes nothing
    assert not evaluate(callback, 2, 0.1).should_training_stop and trial.pruned_at_step == 2
    record = pruned_record(trial)
    assert record["status"] == PRUNED
    assert record["pruning"]["pruned_at_step"] == 2 and record["pruning"]["trial"] == 3
    assert record["pruning"]["reported_steps"] == [1, 2]  # not step 0: the base model, the same in every job
    trial.finish(0.1)  # the job asked for its trial: it tells the study
    frozen = trial.trial.study.trials[3]
    assert frozen.state is TrialState.PRUNED and frozen.value == 0.1  # Optuna keeps the last reported value
    assert [t.state for t in trial.trial.study.trials[:3]] == [TrialState.COMPLETE] * 3


def test_a_job_level_with_the_others_is_never_pruned(new_trial) -> None:
    finished_jobs([new_trial() for _ in range(3)])
    trial = new_trial()
    finished_jobs([trial], value=0.95)
    assert trial.pruned_at_step is None and "status" not in pruned_record(trial)
    assert trial.trial.study.trials[3].state is TrialState.COMPLETE
    assert trial.trial.study.trials[3].value == 0.95


def test_no_pruning_below_min_steps_nor_at_the_last_step(new_trial) -> None:
    finished_jobs([new_trial() for _ in range(3)])
    trial = new_trial()
    callback = PruningCallback(trial, "rewards/accuracies", Direction.maximize, min_steps=5)
    for step in range(5):
        assert not evaluate(callback, step, 0.0).should_training_stop, step
    assert evaluate(callback, 5, 0.0).should_training_stop  # the first step it may: pruned there
    late = new_trial()
    callback = PruningCallback(late, "rewards/accuracies", Direction.maximize, min_steps=5)
    assert not evaluate(callback, 4, 0.0, max_steps=4).should_training_stop  # its last step: nothing to save
    assert late.pruned_at_step is None


def test_nothing_is_pruned_before_n_startup_trials_finished(new_trial) -> None:
    finished_jobs([new_trial() for _ in range(2)])  # n_startup_trials is 3
    trial = new_trial()
    callback = PruningCallback(trial, "rewards/accuracies", Direction.maximize)
    assert not any(evaluate(callback, step, 0.0).should_training_stop for step in range(1, 10))


@pytest.mark.parametrize(
    "settings",
    [
        PruneSettings(pruner=PrunerName.median),
        PruneSettings(pruner=PrunerName.successive_halving),  # min_resource estimated from the finished jobs
        PruneSettings(pruner=PrunerName.successive_halving, min_resource=2, reduction_factor=2),
        PruneSettings(pruner=PrunerName.hyperband),
        PruneSettings(pruner=PrunerName.hyperband, min_resource=2, max_resource=10),
    ],
    ids=lambda s: f"{s.pruner.value}-{s.min_resource}",
)
def test_every_pruner_stops_jobs_far_behind_and_lets_level_ones_finish(tmp_path, settings) -> None:
    # hyperband spreads the jobs over its brackets by a hash of the study name and trial number (a job is
    # judged against the others of its bracket): a fixed name, and enough jobs for every bracket
    settings = dataclasses.replace(settings, study="pruned")
    finished_jobs([open_trial(settings, tmp_path, ACCURACY) for _ in range(12)])  # none of them pruned
    for _ in range(3):
        trial = open_trial(settings, tmp_path, ACCURACY)
        callback = PruningCallback(trial, "rewards/accuracies", Direction.maximize)
        assert any(evaluate(callback, step, 0.1).should_training_stop for step in range(1, 10))
        assert trial.pruned_at_step is not None


def test_a_minimised_loss_is_pruned_when_it_is_higher(tmp_path) -> None:
    loss = ObjectiveSettings(metric="loss", direction=Direction.minimize)
    sweep = tmp_path / "sweep"
    for _ in range(3):
        trial = open_trial(MEDIAN, sweep, loss)
        callback = PruningCallback(trial, "loss", Direction.minimize)
        for step in range(1, 4):
            callback.on_evaluate(None, TrainerState(global_step=step, max_steps=3), TrainerControl(),
                                 metrics={"eval_loss": 0.5})  # fmt: skip
        trial.finish(0.5)
    for value, pruned in ((0.4, False), (0.9, True)):  # lower is better
        trial = open_trial(MEDIAN, sweep, loss)
        callback = PruningCallback(trial, "loss", Direction.minimize)
        control = TrainerControl()
        state = TrainerState(global_step=1, max_steps=3)
        callback.on_evaluate(None, state, control, metrics={"eval_loss": value})
        assert control.should_training_stop is pruned and trial.pruned_at_step == (1 if pruned else None)


def test_the_grid_study_lives_in_the_sweep_folders_journal(tmp_path) -> None:
    sweep = tmp_path / "multirun" / "2026-12-01" / "10-00-00-123456"
    trial = open_trial(MEDIAN, sweep, ACCURACY, overrides=["dpo.beta=0.1"])
    assert (sweep / JOURNAL_FILE).is_file()
    assert trial.study == default_study_name(sweep) == "sweep-2026-12-01_10-00-00-123456"
    assert trial.owned and trial.number == 0
    study = optuna.load_study(study_name=trial.study, storage=open_storage(str(sweep / JOURNAL_FILE)))
    assert study.trials[0].user_attrs["overrides"] == ["dpo.beta=0.1"]
    assert study.direction.name == "MAXIMIZE"


def test_the_sweepers_trial_is_used_and_told_by_the_sweeper(tmp_path) -> None:
    """hydra/sweeper=dpo_optuna asks the trial and passes prune.trial / study / storage: the job reports to
    it and marks it pruned, and leaves telling to the sweeper."""
    journal = str(tmp_path / "optuna.journal")
    storage = open_storage(journal)
    sweeper_side = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    asked = [sweeper_side.ask() for _ in range(2)]
    settings = PruneSettings(pruner=PrunerName.successive_halving, storage=journal, study="s", trial=1)
    trial = open_trial(settings, tmp_path, ACCURACY, run_dir=tmp_path / "1")
    assert trial.number == asked[1].number == 1 and not trial.owned
    trial.report(3, 0.5)
    trial.mark_pruned(3)
    trial.finish(0.5)  # not the job's to tell
    frozen = optuna.load_study(study_name="s", storage=open_storage(journal)).trials[1]
    assert frozen.state is TrialState.RUNNING and frozen.intermediate_values == {3: 0.5}
    assert frozen.user_attrs["run_dir"] == str((tmp_path / "1").absolute())
    assert pruned_at(storage, "s", 1) == 3 and pruned_at(storage, "s", 0) is None


def test_a_resumed_job_goes_on_with_its_trial(tmp_path) -> None:
    sweep, run_dir = tmp_path / "sweep", tmp_path / "sweep" / "0"
    first = open_trial(MEDIAN, sweep, ACCURACY, run_dir=run_dir)
    first.report(5, 0.7)  # then the job was preempted
    other = open_trial(MEDIAN, sweep, ACCURACY, run_dir=sweep / "1")
    again = open_trial(MEDIAN, sweep, ACCURACY, run_dir=run_dir)
    assert again.number == first.number == 0 and other.number == 1
    assert again.reported == {5: 0.7}  # a step it reported before is not reported twice


def test_a_real_sqlite_storage_url(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'sweeps.db'}"
    settings = PruneSettings(pruner=PrunerName.median, n_startup_trials=1, storage=url, study="dpo")
    first = open_trial(settings, None, ACCURACY)  # a single run: storage and study named
    finished_jobs([first])
    second = open_trial(settings, None, ACCURACY)
    callback = PruningCallback(second, "rewards/accuracies", Direction.maximize)
    assert evaluate(callback, 3, 0.2).should_training_stop
    second.finish(0.2)
    study = optuna.load_study(study_name="dpo", storage=url)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.PRUNED]
    assert study.trials[1].user_attrs[PRUNED_AT_STEP] == 3


def _postgres_missing() -> str | None:
    """Why a throwaway PostgreSQL server cannot start here (None: it can)."""
    if not (shutil.which("initdb") and shutil.which("pg_ctl")):
        return "no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql"
    if importlib.util.find_spec("psycopg2") is None:
        return "no PostgreSQL driver for SQLAlchemy: pip install psycopg2-binary"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root without a postgres user to run the server as"
    return None


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server of its own (a new cluster, Unix socket only, trust auth), seconds to start;
    skipped, saying why, where the binaries or the driver are not installed."""
    missing = _postgres_missing()
    if missing is not None:
        pytest.skip(missing)
    as_server = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = tempfile.mkdtemp(prefix="dpo_lab_pg_", dir="/tmp")  # reachable by the server's user
    if as_server:
        shutil.chown(folder, "postgres")
    data = f"{folder}/data"

    def run(*cmd: str) -> None:
        subprocess.run([*as_server, *cmd], check=True, capture_output=True, timeout=120)

    run(shutil.which("initdb"), "-D", data, "-U", "dpo_lab", "-A", "trust")
    server = f"-k {folder} -c listen_addresses=''"  # a Unix socket in the folder, no TCP port
    run(shutil.which("pg_ctl"), "-D", data, "-o", server, "-l", f"{folder}/log", "-w", "start")
    try:
        yield f"postgresql+psycopg2://dpo_lab@/postgres?host={folder}"
    finally:
        run(shutil.which("pg_ctl"), "-D", data, "-w", "stop", "-m", "fast")
        shutil.rmtree(folder, ignore_errors=True)


def test_a_real_postgresql_storage_url(postgres_url: str) -> None:
    settings = PruneSettings(pruner=PrunerName.median, n_startup_trials=1, storage=postgres_url, study="pg")
    assert list(settings.problems()) == []
    first = open_trial(settings, None, ACCURACY)
    finished_jobs([first])
    second = open_trial(settings, None, ACCURACY)
    assert evaluate(
        PruningCallback(second, "rewards/accuracies", Direction.maximize), 3, 0.2
    ).should_training_stop
    second.finish(0.2)
    study = optuna.load_study(study_name="pg", storage=postgres_url)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.PRUNED]
    assert study.trials[1].user_attrs[PRUNED_AT_STEP] == 3


def test_a_failed_job_fails_its_own_trial(tmp_path) -> None:
    trial = open_trial(MEDIAN, tmp_path, ACCURACY)
    trial.finish(None)
    assert trial.trial.study.trials[0].state is TrialState.FAIL


def _ask_trials(sweep: str, count: int, ready, out) -> None:
    """A job process: waits for the other, then asks ``count`` trials of the sweep's study."""
    ready.wait(timeout=120)
    out.put([open_trial(MEDIAN, Path(sweep), ACCURACY).number for _ in range(count)])


def test_processes_asking_at_once_get_distinct_trials(tmp_path) -> None:
    ctx = multiprocessing.get_context("spawn")
    ready, out = ctx.Barrier(2), ctx.Queue()
    jobs = [ctx.Process(target=_ask_trials, args=(str(tmp_path), 5, ready, out)) for _ in range(2)]
    for job in jobs:
        job.start()
    numbers = [out.get(timeout=300) for _ in jobs]
    for job in jobs:
        job.join(timeout=60)
        assert job.exitcode == 0
    assert sorted(numbers[0] + numbers[1]) == list(range(10))
    study = optuna.load_study(study_name=default_study_name(tmp_path),
                              storage=open_storage(str(tmp_path / JOURNAL_FILE)))  # fmt: skip
    assert len(study.trials) == 10


def test_no_trial_without_a_pruner_and_none_for_a_single_run_without_a_storage(tmp_path) -> None:
    assert open_trial(PruneSettings(), tmp_path, ACCURACY) is None
    assert pruned_record(None) == {}
    with pytest.raises(ConfigError) as info:
        open_trial(MEDIAN, None, ACCURACY)
    assert info.value.key == "prune.storage"
    with pytest.raises(ConfigError) as info:
        open_trial(PruneSettings(pruner=PrunerName.median, storage=str(tmp_path / "j")), None, ACCURACY)
    assert info.value.key == "prune.study"


def test_a_study_that_optimises_the_other_way_or_a_missing_trial_is_refused(tmp_path) -> None:
    open_trial(MEDIAN, tmp_path, ACCURACY)
    with pytest.raises(ConfigError, match="is to maximize; objective.direction is minimize") as info:
        open_trial(MEDIAN, tmp_path, ObjectiveSettings("loss", Direction.minimize))
    assert info.value.key == "prune.study"
    with pytest.raises(ConfigError, match="has no trial 7") as info:
        open_trial(PruneSettings(pruner=PrunerName.median, trial=7), tmp_path, ACCURACY)
    assert info.value.key == "prune.trial"
    first = open_trial(MEDIAN, tmp_path, ACCURACY)
    first.finish(0.5)
    with pytest.raises(ConfigError, match="is complete, not running"):
        open_trial(PruneSettings(pruner=PrunerName.median, trial=first.number), tmp_path, ACCURACY)


@pytest.mark.parametrize(
    ("settings", "kind"),
    [
        (PruneSettings(), optuna.pruners.NopPruner),
        (MEDIAN, optuna.pruners.MedianPruner),
        (PruneSettings(pruner=PrunerName.successive_halving), optuna.pruners.SuccessiveHalvingPruner),
        (PruneSettings(pruner=PrunerName.hyperband, max_resource=100), optuna.pruners.HyperbandPruner),
    ],
)
def test_each_pruner_is_built_with_its_settings(settings, kind) -> None:
    pruner = build_pruner(settings)
    assert type(pruner) is kind
    if kind is optuna.pruners.MedianPruner:
        assert pruner._n_startup_trials == 3 and pruner._n_warmup_steps == 0
    if kind is optuna.pruners.HyperbandPruner:
        assert pruner._min_resource == 1 and pruner._max_resource == 100 and pruner._reduction_factor == 3


def _problems(**values) -> list[tuple[str, str]]:
    return list(PruneSettings(**values).problems())


@pytest.mark.parametrize(
    ("values", "key", "says"),
    [
        ({"pruner": PrunerName.median, "min_steps": -1}, "min_steps", "must be an integer >= 0, got -1"),
        ({"pruner": PrunerName.median, "n_startup_trials": -1}, "n_startup_trials", ">= 0"),
        ({"pruner": PrunerName.hyperband, "reduction_factor": 1}, "reduction_factor", ">= 2, got 1"),
        ({"pruner": PrunerName.hyperband, "min_resource": 0}, "min_resource", ">= 1 or null, got 0"),
        ({"pruner": PrunerName.hyperband, "min_resource": 10, "max_resource": 10}, "max_resource",
         "larger than min_resource (10)"),
        ({"pruner": PrunerName.median, "trial": -1}, "trial", ">= 0 or null"),
        ({"pruner": PrunerName.median, "reduction_factor": 4}, "reduction_factor",
         "only hyperband and successive_halving read it; prune.pruner is median"),
        ({"pruner": PrunerName.successive_halving, "max_resource": 50}, "max_resource", "only hyperband"),
        ({"pruner": PrunerName.hyperband, "n_startup_trials": 2}, "n_startup_trials", "only median"),
        ({"min_steps": 20}, "min_steps", "no pruner reads it"),
        ({"storage": "sqlite:///x.db"}, "storage", "no pruner reads it"),
        ({"pruner": PrunerName.median, "storage": "redis://localhost"}, "storage", "redis:// is no Optuna"),
        ({"pruner": PrunerName.median, "storage": " "}, "storage", "journal file path"),
        ({"pruner": PrunerName.median, "study": ""}, "study", "must name a study"),
    ],
)  # fmt: skip
def test_bad_prune_values_are_refused_with_the_key(values, key, says) -> None:
    found = _problems(**values)
    assert len(found) == 1 and found[0][0] == key and says in found[0][1], found


def test_good_prune_values_pass() -> None:
    assert _problems() == []
    assert _problems(pruner=PrunerName.median, min_steps=20, n_startup_trials=0) == []
    assert _problems(pruner=PrunerName.hyperband, min_resource=10, max_resource=200, reduction_factor=2) == []
    for storage in ("sqlite:///a.db", "postgresql+psycopg2://u@h/db", "mysql://h/db", "runs/optuna.journal"):
        assert _problems(pruner=PrunerName.successive_halving, storage=storage, study="s", trial=0) == []


def test_a_single_run_names_its_study() -> None:
    assert list(single_run_problems(PruneSettings())) == []
    assert [k for k, _ in single_run_problems(MEDIAN)] == ["prune.storage"]
    named = PruneSettings(pruner=PrunerName.median, storage="sqlite:///s.db")
    assert [k for k, _ in single_run_problems(named)] == ["prune.study"]
    assert list(single_run_problems(PruneSettings(pruner=PrunerName.median, storage="j", study="s"))) == []


def test_a_pruner_needs_evaluations_during_training() -> None:
    assert list(training_problems(MEDIAN, eval_steps=10)) == []
    assert list(training_problems(PruneSettings(), eval_steps=0)) == []
    ((key, message),) = training_problems(MEDIAN, eval_steps=0)
    assert key == "prune.pruner" and "set train.eval_steps > 0" in message


PRUNE_OPTIONS = sorted((CONF / "prune").glob("*.yaml"))


def test_there_is_one_option_per_pruner() -> None:
    assert [p.stem for p in PRUNE_OPTIONS] == sorted(p.value for p in PrunerName)


@pytest.mark.parametrize("path", PRUNE_OPTIONS, ids=lambda p: p.stem)
def test_each_prune_option_starts_with_its_command_and_holds_its_pruner(path: Path) -> None:
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# python -m dpo_lab.run -m ") and f" prune={path.stem}" in lines[0]
    values = yaml.safe_load(path.read_text())
    assert values.pop("defaults") == ["base_prune"]
    merged = OmegaConf.merge(OmegaConf.structured(PruneSettings), values)
    settings = OmegaConf.to_object(merged)
    assert settings.pruner is PrunerName(path.stem) and list(settings.problems()) == []
    assert values == ({} if path.stem == "none" else {"pruner": path.stem})  # only what differs


def test_the_storage_and_single_run_messages_in_full() -> None:
    """The whole line a user reads, not a word of it: each says what to give instead."""
    assert _problems(pruner=PrunerName.median, storage=" ") == [
        ("storage", "must be an Optuna RDB URL or a journal file path, or null (the sweep's journal)")
    ]
    assert _problems(pruner=PrunerName.median, storage="redis://h/0") == [
        (
            "storage",
            "redis:// is no Optuna RDB storage; use sqlite, postgresql, mysql URLs or a journal file path",
        )
    ]
    assert list(single_run_problems(MEDIAN)) == [
        (
            "prune.storage",
            "a single run (no -m) is pruned against other runs only through a shared study: name its storage "
            "(sqlite:///sweeps.db, or a journal file) and prune.study",
        )
    ]
    named = PruneSettings(pruner=PrunerName.median, storage="sqlite:///s.db")
    assert list(single_run_problems(named)) == [
        ("prune.study", "a single run (no -m) must name the study it is pruned in")
    ]
