"""Synchronous successive halving over a grid (hydra/sweeper=dpo_lab_halving, dpo_lab.sweep.halving): the
rungs, the grid (as Hydra's basic sweeper lists it), the rounds through a launcher that records what it was
asked, the job's side (prune.stop_at) and the resume rule that runs a promoted job on from its rung."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf
from optuna.trial import TrialState
from transformers import TrainerControl, TrainerState

from dpo_lab.config.choices import Direction
from dpo_lab.config.pruning import PrunerName, PruneSettings
from dpo_lab.sweep.halving import RUNG_KEY, HalvingSearch, grid, keeps_rung, rungs, swept
from dpo_lab.sweep.optuna_sweeper import JOURNAL_FILE, PRUNED_AT_STEP, open_storage
from dpo_lab.sweep.pruning import PruningCallback, PruningTrial, pruned_record
from dpo_lab.train.resume import first_difference, goes_on_from_rung

KEY = "eval_rewards/accuracies"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((64, 4, 4), [4, 16, 64]),
        ((64, 4, 4, 5), [16, 64]),  # no rung before prune.min_steps
        ((1000, None, 3), [10, 30, 90, 270, 810, 1000]),  # null: max_steps // 100, as Optuna estimates it
        ((8, 2, 2), [2, 4, 8]),
        ((4, 4, 2), [4]),  # the first rung at the end: a plain grid
        ((50, 1, 10), [1, 10, 50]),
    ],
)
def test_the_rungs_are_min_resource_times_the_factor_to_the_k_then_the_end(args, expected) -> None:
    assert rungs(*args) == expected


def test_halving_needs_a_step_count() -> None:
    with pytest.raises(ValueError, match="train.max_steps: .* got -1"):
        rungs(-1, 4, 2)


@pytest.mark.parametrize(
    "overrides",
    [
        ["dpo.beta=0.1,0.5", "train.learning_rate=1e-6,2e-4,1e-3", "lora.r=4,16"],
        ["lora=default", "seed=range(1,4)", "dpo.beta=choice(0.1, 0.5)", "+extra=a,b"],
        ["dpo.beta=0.1", "train.max_steps=64"],
        ["dpo.beta=0.1,0.5", "dpo.beta=0.2,0.3,0.4"],  # a key given twice: the last
    ],
)
def test_the_grid_is_the_basic_sweepers(overrides) -> None:
    parsed = OverridesParser.create().parse_overrides(overrides)
    basic = [list(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    assert grid(overrides) == basic


def test_a_grid_refuses_intervals_and_swept_rungs() -> None:
    with pytest.raises(ValueError, match="an interval has no grid"):
        grid(["dpo.beta=interval(0.1, 0.5)"])
    with pytest.raises(
        ValueError, match="train.max_steps: every job of a halving sweep takes the same rungs"
    ):
        grid(["train.max_steps=32,64"])
    assert swept(grid(["a=1", "b=2,3", "c=x,y"])) == {"b": ["2", "3"], "c": ["x", "y"]}


class RecordingLauncher:
    """A launcher that runs no job: it records each batch it is asked for and returns, for each job, the
    value ``score(overrides)`` gives (None: a failed job), from the folder ``<sweep>/<job number>``."""

    def __init__(self, sweep_dir: Path, score) -> None:
        self.sweep_dir = sweep_dir
        self.score = score
        self.batches: list[list[list[str]]] = []

    def launch(self, job_overrides, initial_job_idx):
        self.batches.append([list(o) for o in job_overrides])
        returns = []
        for i, overrides in enumerate(job_overrides):
            subdir = next(
                (o.split("=", 1)[1].strip("'") for o in overrides if o.startswith("hydra.sweep.subdir=")),
                str(initial_job_idx + i),
            )
            value = self.score(dict(o.split("=", 1) for o in overrides))
            hydra_cfg = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(self.sweep_dir / subdir)}}})
            status = JobStatus.COMPLETED if value is not None else JobStatus.FAILED
            returns.append(
                JobReturn(
                    overrides=list(overrides),
                    hydra_cfg=hydra_cfg,
                    status=status,
                    _return_value=value if value is not None else RuntimeError("boom"),
                )
            )
        return returns


def search(
    tmp_path: Path,
    score,
    *,
    launcher: str = "hydra._internal.core_plugins.basic_launcher.BasicLauncher",
    prune: str = "successive_halving",
    max_steps: int = 64,
    factor: int = 4,
    direction: str = "maximize",
) -> tuple[HalvingSearch, RecordingLauncher]:
    sweep_dir = tmp_path / "sweep"
    config = OmegaConf.create(
        {
            "hydra": {"sweep": {"dir": str(sweep_dir)}, "launcher": {"_target_": launcher}},
            "prune": {
                "pruner": prune,
                "min_resource": 4 if prune != "none" else None,
                "reduction_factor": factor if prune != "none" else 3,
            },
            "objective": {"metric": "rewards/accuracies", "direction": direction},
            "train": {"max_steps": max_steps},
        }
    )
    found = HalvingSearch()
    found.config = config
    found.launcher = RecordingLauncher(sweep_dir, score)
    return found, found.launcher


GRID = ["dpo.beta=0.1,0.5", "train.learning_rate=1e-6,2e-4,1e-3,2e-2", "lora.r=4,16"]


def lr_score(job: dict[str, str]) -> float:
    """Better with the learning rate, slightly better at beta 0.1 and rank 16: job (0.1, 2e-2, 16) wins."""
    return (
        float(job["train.learning_rate"]) * 10
        + (job["dpo.beta"] == "0.1") * 0.01
        + (job["lora.r"] == "16") * 0.001
    )


def _values(job: list[str]) -> tuple[float, float, int]:
    found = dict(o.split("=", 1) for o in job)
    return float(found["dpo.beta"]), float(found["train.learning_rate"]), int(found["lora.r"])


def _study(tmp_path: Path) -> optuna.Study:
    storage = open_storage(str(tmp_path / "sweep" / JOURNAL_FILE))
    return optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)


def test_sixteen_jobs_go_to_the_first_rung_four_to_the_second_one_to_the_end(tmp_path) -> None:
    sweeper, launcher = search(tmp_path, lr_score)
    sweeper.sweep(list(GRID))
    sizes = [len(batch) for batch in launcher.batches]
    assert sizes == [16, 4, 1]
    stops = [
        {o for job in batch for o in job if o.startswith("prune.stop_at=")} for batch in launcher.batches
    ]
    assert stops == [{"prune.stop_at=4"}, {"prune.stop_at=16"}, {"prune.stop_at=64"}]
    # every job reports to its own trial; a promoted job goes on in the folder it started in
    first = {
        tuple(o for o in job if not o.startswith("prune.")): i for i, job in enumerate(launcher.batches[0])
    }
    for batch in launcher.batches[1:]:
        for job in batch:
            point = tuple(o for o in job if not o.startswith(("prune.", "hydra.sweep.subdir=")))
            assert f"hydra.sweep.subdir='{first[point]}'" in job  # a string: the folder's name
            assert f"prune.trial={first[point]}" in job
    assert all("hydra.sweep.subdir" not in " ".join(job) for job in launcher.batches[0])
    # the best quarter of the round went on: the four at the highest learning rate, then the best of them
    assert {_values(job)[1] for job in launcher.batches[1]} == {2e-2}
    assert _values(launcher.batches[2][0]) == (0.1, 2e-2, 16)
    study = _study(tmp_path)
    states = [t.state for t in study.trials]
    assert states.count(TrialState.PRUNED) == 15 and states.count(TrialState.COMPLETE) == 1
    best = study.best_trial
    assert best.params == {"dpo.beta": "0.1", "train.learning_rate": "0.02", "lora.r": "16"}
    assert {k for k in best.system_attrs if k.startswith("completed_rung")} == {
        RUNG_KEY.format(k) for k in range(3)
    }
    assert (tmp_path / "sweep" / "optimization_results.yaml").is_file()


def test_ties_at_the_cut_go_on_and_a_failed_job_leaves_the_sweep(tmp_path) -> None:
    def score(job):
        if float(job["train.learning_rate"]) == 2e-2:
            return None  # diverged: a failed job
        return 0.5  # every other job level

    sweeper, launcher = search(tmp_path, score, factor=2)
    sweeper.sweep(["train.learning_rate=1e-6,1e-3,2e-2"])
    assert [len(batch) for batch in launcher.batches] == [3, 2, 2, 2, 2]  # rungs 4, 8, 16, 32, 64
    states = sorted(t.state.name for t in _study(tmp_path).trials)
    assert states == ["COMPLETE", "COMPLETE", "FAIL"]


def test_a_job_that_failed_is_tried_again_on_a_new_trial_when_the_sweep_runs_again(tmp_path) -> None:
    def rate(job):
        return float(job["train.learning_rate"])

    sweeper, _ = search(tmp_path, lambda job: None if rate(job) == 2e-2 else rate(job), factor=2, max_steps=8)
    sweeper.sweep(["train.learning_rate=1e-3,2e-2"])
    assert [t.state.name for t in _study(tmp_path).trials] == ["COMPLETE", "FAIL"]
    again, launcher = search(tmp_path, rate, factor=2, max_steps=8)
    again.sweep(["train.learning_rate=1e-3,2e-2"])
    assert [t.state.name for t in _study(tmp_path).trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert [o for o in launcher.batches[0][1] if o.startswith("prune.trial=")] == ["prune.trial=2"]
    assert "train.learning_rate=0.02" in launcher.batches[-1][0]  # fixed, it goes on and wins


def test_a_minimised_objective_keeps_the_lowest(tmp_path) -> None:
    sweeper, launcher = search(
        tmp_path, lambda job: float(job["train.learning_rate"]), direction="minimize", max_steps=16
    )
    sweeper.sweep(["train.learning_rate=1,2,3,4"])
    assert [[o for o in job if o.startswith("train.")] for job in launcher.batches[-1]] == [
        ["train.learning_rate=1"]
    ]


def test_a_rerun_takes_its_trials_and_the_rung_values_recorded_before(tmp_path) -> None:
    """Run again in the same folder, the sweep asks no new trial; a job that went further before returns its
    later value, and the ranking still takes the value it had at the rung."""
    sweeper, _ = search(tmp_path, lr_score)
    sweeper.sweep(list(GRID))
    trials = len(_study(tmp_path).trials)

    def later(job):  # the jobs that went on return what they ended with, here worse than the rest
        return -1.0 if float(job["train.learning_rate"]) == 2e-2 else lr_score(job)

    again, launcher = search(tmp_path, later)
    again.sweep(list(GRID))
    assert len(_study(tmp_path).trials) == trials
    assert [len(batch) for batch in launcher.batches] == [16, 4, 1]
    assert _values(launcher.batches[2][0]) == (0.1, 2e-2, 16)


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"prune": "median"}, "add prune=successive_halving"),
        (
            {"launcher": "hydra_plugins.dpo_lab_packed_launcher.packed_launcher.PackedLauncher"},
            "hydra/launcher=packed halves synchronously inside each pack",
        ),
    ],
)
def test_what_the_halving_sweeper_refuses(tmp_path, kwargs, says) -> None:
    sweeper, launcher = search(tmp_path, lr_score, **kwargs)
    with pytest.raises(ValueError, match=says):
        sweeper.sweep(["dpo.beta=0.1,0.5"])
    assert launcher.batches == []


# ---------------------------------------------------------------------------- the job's side


def _evaluate(callback, step, value, max_steps=64):
    control = TrainerControl()
    state = TrainerState(global_step=step, max_steps=max_steps)
    callback.on_step_end(None, state, control)
    evaluating = control.should_evaluate
    callback.on_evaluate(None, state, control, metrics={KEY: value})
    return evaluating, control


def _trial(pruner) -> PruningTrial:
    study = optuna.create_study(direction="maximize", pruner=pruner)
    return PruningTrial(
        study.ask(),
        study.study_name,
        "memory",
        PrunerName.successive_halving,
        Direction.maximize,
        owned=False,
    )


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return True


def test_a_round_trains_to_its_rung_saves_there_and_never_asks_the_pruner() -> None:
    trial = _trial(AlwaysPrune())
    callback = PruningCallback(trial, "rewards/accuracies", Direction.maximize, stop_at=16)
    for step in (4, 8, 12):  # a pruner that prunes everything is not asked
        evaluating, control = _evaluate(callback, step, 0.1)
        assert not evaluating and not control.should_training_stop and not control.should_save
    evaluating, control = _evaluate(callback, 16, 0.4)
    assert evaluating  # the rung's value is evaluated at its step, whatever train.eval_steps says
    assert control.should_training_stop and control.should_save
    assert trial.pruned_at_step == 16 and trial.trial.user_attrs[PRUNED_AT_STEP] == 16
    assert trial.reported == {4: 0.1, 8: 0.1, 12: 0.1, 16: 0.4}
    record = pruned_record(trial, 16)
    assert record["status"] == "pruned" and record["pruning"]["stop_at"] == 16


def test_the_last_round_trains_to_the_end() -> None:
    trial = _trial(AlwaysPrune())
    callback = PruningCallback(trial, "rewards/accuracies", Direction.maximize, stop_at=64)
    evaluating, control = _evaluate(callback, 64, 0.9)
    assert not control.should_training_stop and trial.pruned_at_step is None
    assert "status" not in pruned_record(trial, 64)


def test_stop_at_is_for_successive_halving_and_at_least_1() -> None:
    assert list(PruneSettings(pruner=PrunerName.successive_halving, stop_at=4).problems()) == []
    assert [k for k, _ in PruneSettings(pruner=PrunerName.median, stop_at=4).problems()] == ["stop_at"]
    assert [k for k, _ in PruneSettings(pruner=PrunerName.successive_halving, stop_at=0).problems()] == [
        "stop_at"
    ]


def _record(status="pruned", stopped=4, stop_at=4):
    return {"status": status, "pruning": {"pruned_at_step": stopped, "stop_at": stop_at}}


@pytest.mark.parametrize(
    ("record", "stop_at", "goes_on"),
    [
        (_record(), 16, True),  # promoted: on to the next rung
        (_record(), 4, False),  # the same round again: finished
        (_record(), None, False),  # not a halving launch
        (_record(stop_at=None), 16, False),  # pruned by a pruner: finished for good
        (_record(status="completed", stopped=None, stop_at=64), 64, False),
        ({"status": "completed"}, 16, False),
    ],
)
def test_a_job_stopped_at_a_rung_goes_on_only_to_a_later_one(record, stop_at, goes_on) -> None:
    assert goes_on_from_rung(record, stop_at) is goes_on


def test_a_later_rung_is_no_change_of_config() -> None:
    old = {"prune": {"stop_at": 4, "pruner": "successive_halving"}, "seed": 1}
    assert (
        first_difference(old, {"prune": {"stop_at": 16, "pruner": "successive_halving"}, "seed": 1}) is None
    )
    assert first_difference(old, {"prune": {"stop_at": 16, "pruner": "median"}, "seed": 1}) == "prune.pruner"


def test_keeps_rung_is_shared_with_the_packs() -> None:
    assert keeps_rung(0.5, [0.5, 0.5, 0.1, 0.0], 4, Direction.maximize)  # a tie at the cut goes on
    assert not keeps_rung(0.1, [0.5, 0.4, 0.1, 0.0], 4, Direction.maximize)


def test_a_refused_halving_sweep_says_why_in_one_line_and_exits_non_zero(tmp_path) -> None:
    from tests.helpers import run_cli

    args = ["-m", "hydra/sweeper=dpo_lab_halving", "dpo.beta=0.1,0.5", f"hydra.sweep.dir={tmp_path / 's'}"]
    proc = run_cli(args, tmp_path)
    assert proc.returncode != 0
    assert "add prune=successive_halving" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "s" / "0").exists()  # no job was launched
