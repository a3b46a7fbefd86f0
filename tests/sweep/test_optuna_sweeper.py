"""dpo_lab's Optuna sweeper (hydra_plugins/dpo_lab_optuna_sweeper over dpo_lab.sweep.optuna_sweeper).

The cases hydra-optuna-sweeper's own tests cover (the search-space syntax, n_trials, n_jobs batches, both
directions and several objectives, a seeded TPE proposing the same trials, failed jobs and
max_failure_rate, optimization_results.yaml), plus what the ask-and-tell loop adds: pruned jobs told as
PRUNED, the study in a journal file or an RDB storage the jobs can open, a study continued by a second
sweep. Sweeps run in this process on a small app (x, y -> x^2 + y^2) through Hydra's basic launcher; Hydra's
own integration suite runs its example apps with the sweeper in subprocesses.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from hydra import version as hydra_version
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.test_utils.launcher_common_tests import IntegrationTestSuite
from omegaconf import DictConfig
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from dpo_lab.sweep.optuna_sweeper import (
    JOURNAL_FILE,
    PRUNED_AT_STEP,
    RESULTS_FILE,
    OptunaSearch,
    create_optuna_distribution_from_override,
    open_storage,
    quoted,
    search_space,
    shown_storage,
    trial_id,
)
from hydra_plugins.dpo_lab_optuna_sweeper.optuna_sweeper import DpoLabOptunaSweeper
from tests.helpers import ROOT

SWEEPER = "hydra/sweeper=dpo_lab_optuna"
SPACE = ["x=interval(-5.0, 5.0)", "y=choice(-2, 0, 2)"]


@pytest.fixture(autouse=True)
def plugin_on_the_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hydra's example apps run in subprocesses from other folders: the checkout on their path, as a wheel
    would put the plugin in site-packages."""
    paths = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))


@pytest.fixture(autouse=True)
def fresh_version_base(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no ``version_base`` set, as a fresh process does (see the packed launcher's)."""
    monkeypatch.setattr(hydra_version.VersionBase.instance(), "version_base", hydra_version._UNSPECIFIED_)


def test_discovery() -> None:
    assert DpoLabOptunaSweeper.__name__ in [x.__name__ for x in Plugins.instance().discover(Sweeper)]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("key=choice(1,2)", CategoricalDistribution(["1", "2"])),
        ("key=1,2", CategoricalDistribution(["1", "2"])),
        ("key=choice(true, false)", CategoricalDistribution(["True", "False"])),
        ("key=choice('hello', 'world')", CategoricalDistribution(["hello", "world"])),
        ("key=choice('a b', [q_proj,v_proj])", CategoricalDistribution(["a\\ b", "[q_proj,v_proj]"])),
        ("key=shuffle(range(1,3))", CategoricalDistribution(["1", "2"])),
        ("key=shuffle(16, 4, 8)", CategoricalDistribution(["16", "4", "8"])),  # sorted, as text
        ("key=range(1,3)", IntDistribution(1, 2)),  # Hydra's range: the stop is left out
        ("key=range(1,10,3)", IntDistribution(1, 7, step=3)),
        ("key=range(10,0,-2)", IntDistribution(2, 10, step=2)),
        ("key=range(0.5, 5.5, step=1)", FloatDistribution(0.5, 4.5, step=1.0)),
        ("key=range(0.1, 0.5, 0.1)", FloatDistribution(0.1, 0.4, step=0.1)),  # no 0.30000000000000004 drift
        ("key=interval(1, 5)", FloatDistribution(1.0, 5.0)),
        ("key=int(interval(1, 5))", IntDistribution(1, 5)),
        ("key=tag(log, interval(1e-6, 1e-3))", FloatDistribution(1e-6, 1e-3, log=True)),
        ("key=tag(log, int(interval(1, 64)))", IntDistribution(1, 64, log=True)),
        ("key=tag(log, range(1, 5))", IntDistribution(1, 4, log=True)),
        ("key=5", "5"),
        ("key=[a,b]", "[a,b]"),
    ],
)
def test_create_optuna_distribution_from_override(override: str, expected: Any) -> None:
    parsed = OverridesParser.create().parse_override(override)
    assert create_optuna_distribution_from_override(parsed) == expected


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("key=range(5, 1)", "key: key=range(5, 1) lists no value"),
        ("key=tag(log, range(0.1, 1.0, 0.1))", "key: a log-scaled float range has no grid"),
        ("key=tag(log, range(1, 9, 2))", "key: a log-scaled range needs step 1"),
        ("key=tag(log, interval(0.0, 1.0))", "key: "),  # Optuna: log needs low > 0
    ],
)
def test_a_space_optuna_cannot_sample_is_refused_naming_the_key(override: str, says: str) -> None:
    parsed = OverridesParser.create().parse_override(override)
    with pytest.raises(ValueError) as info:
        create_optuna_distribution_from_override(parsed)
    assert str(info.value).startswith(says) and "\n" not in str(info.value)


def test_search_space_the_last_override_of_a_key_wins() -> None:
    space, fixed = search_space(["a=1,2", "b=interval(0, 1)", "c=3", "+d=x", "a=7", "c=choice(4, 5)"])
    assert space == {"b": FloatDistribution(0.0, 1.0), "c": CategoricalDistribution(["4", "5"])}
    assert fixed == {"a": "a=7", "+d": "+d=x"}
    with pytest.raises(ValueError, match=r"^hydra.sweeper.params: "):
        search_space(["a=interval(0"])


@pytest.mark.parametrize(
    "text",
    ["sweep-2026-12-01_10-00-00-123456", "/tmp/a b/optuna.journal", "it's", 'say "hi"', "back\\slash",
     "end\\", "x'\\", "c=d", "postgresql://u:p@h:5432/db?sslmode=require", "-1", "1e5", "true", "null",
     "sqlite:////abs/path.db"],
)  # fmt: skip
def test_quoted_values_read_back_as_the_same_string(text: str) -> None:
    assert OverridesParser.create().parse_override(f"k={quoted(text)}").value() == text


def test_a_urls_password_is_hidden() -> None:
    assert shown_storage("postgresql://me:secret@db:5432/optuna") == "postgresql://me:***@db:5432/optuna"
    assert shown_storage("sqlite:///runs/optuna.db") == "sqlite:///runs/optuna.db"


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"n_trials": 0}, "hydra.sweeper.n_trials: expected a positive integer, got 0"),
        ({"n_jobs": -1}, "hydra.sweeper.n_jobs: expected a positive integer, got -1"),
        ({"max_failure_rate": 1.5}, "hydra.sweeper.max_failure_rate: expected a rate in [0, 1], got 1.5"),
        ({"direction": "up"}, "hydra.sweeper.direction: expected minimize or maximize"),
        ({"direction": []}, "hydra.sweeper.direction: expected minimize or maximize"),
    ],
)
def test_bad_sweeper_settings_are_refused_naming_the_key(settings: dict, says: str) -> None:
    with pytest.raises(ValueError) as info:
        OptunaSearch(**settings)
    assert str(info.value).startswith(says)


def test_settings_and_directions() -> None:
    search = OptunaSearch(direction=["minimize", "MAXIMIZE"], sampler={"seed": 3, "n_startup_trials": 2})
    assert search.directions == ["minimize", "maximize"]
    assert type(search.sampler).__name__ == "TPESampler" and search.sampler._n_startup_trials == 2


# ------------------------------------------------------------------ sweeps of a small app, in this process

APP_CONFIG = {"x": 0.0, "y": 0, "fail_if_y": None}
PRUNE_GROUP = {"prune": {"pruner": "median", "trial": None, "study": None, "storage": None}}


def sphere(cfg: DictConfig) -> float | None:
    """x^2 + y^2; a failed job returns None (as a failed dpo_lab job does), or raises when y is -3."""
    if cfg.fail_if_y is not None and cfg.y == cfg.fail_if_y:
        return None
    if cfg.y == -3:
        raise RuntimeError("y=-3 crashed")
    return cfg.x**2 + cfg.y**2


def sweep(runner, tmp_path: Path, overrides: list[str], task=sphere, config: dict | None = None, name="s"):
    """A multirun of the app with this sweeper; returns the runner (``with`` it to read the sweep)."""
    app = tmp_path / f"app_{name}"
    app.mkdir(exist_ok=True)
    (app / "config.yaml").write_text(yaml.safe_dump(config or APP_CONFIG))
    return runner(
        calling_file=str(app / "app.py"),
        calling_module=None,
        task_function=task,
        config_path=".",
        config_name="config",
        overrides=[SWEEPER, "hydra.job.chdir=false", *overrides],
        temp_dir=tmp_path / f"sweep_{name}",
    )


def jobs(result) -> list:
    return [ret for batch in result.returns for ret in batch]


def study_of(sweep_dir: Path) -> optuna.Study:
    return optuna.load_study(study_name=None, storage=open_storage(str(sweep_dir / JOURNAL_FILE)))


def results(sweep_dir: Path) -> dict:
    return yaml.safe_load((sweep_dir / RESULTS_FILE).read_text())


def test_n_trials_in_batches_of_n_jobs(hydra_sweep_runner, tmp_path) -> None:
    args = [*SPACE, "hydra.sweeper.n_trials=7", "hydra.sweeper.n_jobs=3", "hydra.sweeper.sampler.seed=0"]
    with sweep(hydra_sweep_runner, tmp_path, args) as result:
        sweep_dir = Path(result.temp_dir)
        assert [len(batch) for batch in result.returns] == [3, 3, 1]
        rets = jobs(result)
        assert [r.hydra_cfg.hydra.job.num for r in rets] == list(range(7))
        assert len({r.hydra_cfg.hydra.runtime.output_dir for r in rets}) == 7
        values = [r.return_value for r in rets]
        for ret in rets:
            assert -5.0 <= ret.cfg.x <= 5.0 and ret.cfg.y in (-2, 0, 2)
            assert [o.split("=")[0] for o in ret.overrides] == ["x", "y"]  # no prune.* for an app without it
        study = study_of(sweep_dir)
        assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 7
        assert [t.value for t in study.trials] == values
        found = results(sweep_dir)
        assert found["best_value"] == min(values) and found["trials"] == {"complete": 7}
        best = values.index(min(values))
        assert found["best_params"] == {"x": rets[best].cfg.x, "y": rets[best].cfg.y}  # typed back: y an int
        assert found["name"] == "optuna" and found["storage"] == str((sweep_dir / JOURNAL_FILE).absolute())


def _proposals(runner, tmp_path: Path, seed: int, name: str) -> list[list[str]]:
    args = [*SPACE, "hydra.sweeper.n_trials=6", "hydra.sweeper.sampler.n_startup_trials=3",
            f"hydra.sweeper.sampler.seed={seed}"]  # fmt: skip
    with sweep(runner, tmp_path, args, name=name) as result:
        return [list(ret.overrides) for ret in jobs(result)]


def test_a_seeded_tpe_proposes_the_same_trials_for_the_same_command(hydra_sweep_runner, tmp_path) -> None:
    first = _proposals(hydra_sweep_runner, tmp_path, 123, "a")
    assert first == _proposals(hydra_sweep_runner, tmp_path, 123, "b")  # beyond the random start-up trials
    assert first != _proposals(hydra_sweep_runner, tmp_path, 124, "c")


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_the_best_trial_follows_the_direction(hydra_sweep_runner, tmp_path, direction: str) -> None:
    args = [*SPACE, "hydra.sweeper.n_trials=5", f"hydra.sweeper.direction={direction}"]
    with sweep(hydra_sweep_runner, tmp_path, args) as result:
        values = [ret.return_value for ret in jobs(result)]
        best = max(values) if direction == "maximize" else min(values)
        assert results(Path(result.temp_dir))["best_value"] == best
        assert study_of(Path(result.temp_dir)).direction.name.lower() == direction


def test_several_objectives_give_the_pareto_front(hydra_sweep_runner, tmp_path) -> None:
    args = [*SPACE, "hydra.sweeper.n_trials=6", "hydra.sweeper.direction=[minimize,maximize]"]
    with sweep(hydra_sweep_runner, tmp_path, args, task=lambda cfg: (cfg.x**2, cfg.y)) as result:
        found = results(Path(result.temp_dir))
        assert "best_value" not in found and found["solutions"]
        front = {(s["values"][0], s["values"][1]) for s in found["solutions"]}
        points = [(ret.cfg.x**2, ret.cfg.y) for ret in jobs(result)]
        for a, b in front:  # nothing proposed dominates a point of the front
            assert not any(x < a and y > b for x, y in points)


def test_failed_jobs_are_failed_trials_and_the_search_goes_on(hydra_sweep_runner, tmp_path) -> None:
    args = ["x=interval(-1.0, 1.0)", "y=choice(-3, 0, 2)", "fail_if_y=2", "hydra.sweeper.n_trials=9",
            "hydra.sweeper.max_failure_rate=1.0", "hydra.sweeper.sampler.seed=0",
            "hydra.sweeper.sampler.n_startup_trials=9"]  # fmt: skip
    with sweep(hydra_sweep_runner, tmp_path, args) as result:
        study = study_of(Path(result.temp_dir))
        assert len(study.trials) == 9
        for trial, ret in zip(study.trials, jobs(result), strict=True):
            assert (trial.state is TrialState.FAIL) == (ret.cfg.y in (-3, 2)), (ret.cfg.y, trial.state)
        assert {ret.cfg.y for ret in jobs(result)} == {-3, 0, 2}  # both kinds of failure, and successes
        assert set(results(Path(result.temp_dir))["trials"]) >= {"fail", "complete"}


def test_a_failure_rate_above_the_maximum_stops_the_sweep(hydra_sweep_runner, tmp_path) -> None:
    args = ["x=interval(-1.0, 1.0)", "y=-3", "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2"]
    with pytest.raises(RuntimeError, match="y=-3 crashed"):  # the job's own error, re-raised
        with sweep(hydra_sweep_runner, tmp_path, args):
            pass
    args = ["x=interval(-1.0, 1.0)", "y=2", "fail_if_y=2", "hydra.sweeper.n_trials=4",
            "hydra.sweeper.max_failure_rate=0.5"]  # fmt: skip
    with pytest.raises(
        RuntimeError, match=r"1 of 1 jobs of the batch failed \(hydra.sweeper.max_failure_rate"
    ):
        with sweep(hydra_sweep_runner, tmp_path, args, name="none_returned"):
            pass
    study = study_of(tmp_path / "sweep_none_returned")
    assert [t.state for t in study.trials] == [TrialState.FAIL]  # stopped after the first batch


def pruning_job(cfg: DictConfig) -> float:
    """A job that reports its value at steps 1 and 2 to the trial the sweeper handed it, and stops at step 2
    when its trial number is odd (marking the trial as a dpo_lab job does)."""
    storage = open_storage(cfg.prune.storage)
    study = optuna.load_study(study_name=cfg.prune.study, storage=storage)
    trial = optuna.Trial(study, trial_id(storage, cfg.prune.study, cfg.prune.trial))
    value = float(cfg.x**2)
    trial.report(value + 1.0, 1)
    trial.report(value, 2)
    if cfg.prune.trial % 2:
        trial.set_user_attr(PRUNED_AT_STEP, 2)
    return value


# every launcher dpo_lab ships: jobs in this process (basic, packed) or in processes of their own (submitit)
@pytest.mark.parametrize("launcher", ["basic", "packed", "submitit_local"])
def test_jobs_get_their_trial_and_pruned_jobs_are_told_pruned(hydra_sweep_runner, tmp_path, launcher) -> None:
    args = ["x=interval(-1.0, 1.0)", "hydra.sweeper.n_trials=5", "hydra.sweeper.n_jobs=2",
            "hydra.sweeper.study_name=my study", f"hydra/launcher={launcher}"]  # fmt: skip
    config = {**APP_CONFIG, **PRUNE_GROUP}
    with sweep(hydra_sweep_runner, tmp_path, args, task=pruning_job, config=config) as result:
        sweep_dir = Path(result.temp_dir)
        journal = str((sweep_dir / JOURNAL_FILE).absolute())
        for number, ret in enumerate(jobs(result)):
            assert ret.cfg.prune.trial == number and ret.cfg.prune.study == "my study"
            assert ret.cfg.prune.storage == journal
            assert f"prune.study={quoted('my study')}" in ret.overrides
        study = optuna.load_study(study_name="my study", storage=open_storage(journal))
        states = [t.state for t in study.trials]
        assert states == [TrialState.COMPLETE, TrialState.PRUNED] * 2 + [TrialState.COMPLETE]
        pruned = study.trials[1]
        assert pruned.value == pruned.intermediate_values[2] and pruned.user_attrs[PRUNED_AT_STEP] == 2
        assert results(sweep_dir)["trials"] == {"complete": 3, "pruned": 2}
        assert (sweep_dir / ".submitit").is_dir() is (
            launcher == "submitit_local"
        )  # jobs in their own processes
        assert results(sweep_dir)["best_trial"] in (0, 2, 4)


def test_an_app_raising_trialpruned_is_a_pruned_trial(hydra_sweep_runner, tmp_path) -> None:
    def task(cfg: DictConfig) -> float:
        if cfg.y == 2:
            raise optuna.TrialPruned()
        return cfg.y

    args = ["y=choice(0, 2)", "hydra.sweeper.n_trials=6", "hydra.sweeper.sampler.seed=5"]
    with sweep(hydra_sweep_runner, tmp_path, args, task=task) as result:
        for trial, ret in zip(study_of(Path(result.temp_dir)).trials, jobs(result), strict=True):
            assert trial.state is (TrialState.PRUNED if ret.cfg.y == 2 else TrialState.COMPLETE)


def test_the_search_space_syntax_reaches_the_jobs(hydra_sweep_runner, tmp_path) -> None:
    config = {"a": 0, "b": 0.0, "c": 0.0, "d": "p", "e": 0, "f": [], "g": 0}
    args = ["a=range(1, 9, 2)", "b=interval(0.5, 1.5)", "c=tag(log, interval(1e-6, 1e-3))", "d=p,q,'r s'",
            "e=int(interval(2, 4))", "f=choice([q_proj],[q_proj,v_proj])", "g=7",
            "hydra.sweeper.n_trials=12", "hydra.sweeper.sampler.seed=2"]  # fmt: skip
    with sweep(hydra_sweep_runner, tmp_path, args, task=lambda cfg: cfg.b, config=config) as result:
        seen = {key: set() for key in "adef"}
        for ret in jobs(result):
            cfg = ret.cfg
            assert cfg.a in (1, 3, 5, 7) and 0.5 <= cfg.b <= 1.5 and 1e-6 <= cfg.c <= 1e-3
            assert cfg.d in ("p", "q", "r s") and cfg.e in (2, 3, 4) and cfg.g == 7
            assert list(cfg.f) in (["q_proj"], ["q_proj", "v_proj"])
            for key in seen:
                seen[key].add(str(cfg[key]))
        assert all(len(values) > 1 for values in seen.values()), seen


def test_a_study_in_an_rdb_storage_goes_on_in_the_next_sweep(hydra_sweep_runner, tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    args = [*SPACE, "hydra.sweeper.n_trials=3", f"hydra.sweeper.storage={url}", "hydra.sweeper.study_name=s"]
    with sweep(hydra_sweep_runner, tmp_path, args, name="first"):
        pass
    with sweep(hydra_sweep_runner, tmp_path, [*args[:-3], "hydra.sweeper.n_trials=2", *args[-2:]],
               name="second") as result:  # fmt: skip
        assert [r.hydra_cfg.hydra.job.num for r in jobs(result)] == [0, 1]
        assert not (Path(result.temp_dir) / JOURNAL_FILE).exists()
        assert results(Path(result.temp_dir))["storage"] == url
    study = optuna.load_study(study_name="s", storage=url)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 5
    with pytest.raises(ValueError, match="hydra.sweeper.direction: study s in .* was created to minimize"):
        with sweep(hydra_sweep_runner, tmp_path, [*args, "hydra.sweeper.direction=maximize"], name="third"):
            pass


def test_a_job_value_that_is_no_number_fails_its_trial(hydra_sweep_runner, tmp_path) -> None:
    values = iter(["abc", math.nan, 1.5])
    args = ["x=interval(0.0, 1.0)", "hydra.sweeper.n_trials=3", "hydra.sweeper.max_failure_rate=1.0"]
    with sweep(hydra_sweep_runner, tmp_path, args, task=lambda cfg: next(values)) as result:
        states = [t.state for t in study_of(Path(result.temp_dir)).trials]
        assert states == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]


# ------------------------------------------------------------------ Hydra's own integration suite


# as Hydra parametrizes it for its basic launcher, with this sweeper running one trial per multirun (the
# suite's apps print one value into one file; they return nothing, which the sweeper records as failed)
@pytest.mark.parametrize(
    "task_launcher_cfg, extra_flags",
    [
        (
            {
                "defaults": [
                    {"override hydra/sweeper": "dpo_lab_optuna"},
                    {"override hydra/hydra_logging": "hydra_debug"},
                    {"override hydra/job_logging": "disabled"},
                ],
                "hydra": {"sweeper": {"n_trials": 1, "max_failure_rate": 1.0}},
            },
            ["-m"],
        )
    ],
)
class TestOptunaSweeperIntegration(IntegrationTestSuite):
    pass
