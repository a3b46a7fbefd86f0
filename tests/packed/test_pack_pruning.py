"""Pruning inside a pack (dpo_lab.packed.pack, dpo_lab.sweep.pruning.PackPruning): a job the pruner stops at
a rung leaves the pack there, and the jobs that go on train exactly as if it had never been in the pack; the
pack's jobs are judged together (synchronous successive halving) on the same Optuna study that jobs run
alone report to; and the job's run goes on with the trial its pack opened."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from dpo_lab.config.choices import Direction
from dpo_lab.config.pruning import PrunerName, PruneSettings
from dpo_lab.config.resolvers import asset_path
from dpo_lab.config.schemas import (
    DataSettings,
    DPOSettings,
    LoraSettings,
    ModelSettings,
    ObjectiveSettings,
    TrainSettings,
)
from dpo_lab.data.loading import load_preference_data
from dpo_lab.model.loading import build_lora_config, load_base_model, load_tokenizer, strip_adapters
from dpo_lab.packed.pack import PackJob, build_pack
from dpo_lab.reuse.cache import ModelSnapshot
from dpo_lab.runtime.precision import Precision
from dpo_lab.sweep.halving import RUNG_KEY, keeps_rung
from dpo_lab.sweep.optuna_sweeper import PRUNED_AT_STEP, build_pruner
from dpo_lab.sweep.pruning import (
    PackedTrial,
    PackPruning,
    PruningTrial,
    handed_over_trial,
    open_trial,
    pruned_record,
)
from dpo_lab.train.trainer import build_dpo_args

MODEL = ModelSettings(name_or_path=asset_path("tiny-llama"))
KEY = "eval_rewards/accuracies"
HALVING = PruneSettings(pruner=PrunerName.successive_halving, min_resource=1, reduction_factor=2)

# three jobs that differ in beta, learning rate and rank; job 1 is the one a pruner stops
JOBS = [
    dict(beta=0.1, lr=1e-3, r=4),
    dict(beta=0.5, lr=1e-12, r=8),
    dict(beta=0.3, lr=3e-3, r=2),
]
LOSER = 1


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    data = load_preference_data(
        DataSettings(path=asset_path("finance"), max_train_samples=12, max_eval_samples=6), seed=0
    )
    tokenizer = load_tokenizer(MODEL)
    model = load_base_model(MODEL, Precision.fp32, gradient_checkpointing=False)
    return data, tokenizer, model, ModelSnapshot.capture(model)


def _reset(setup) -> None:
    _, _, model, snapshot = setup
    strip_adapters(model)
    snapshot.restore(model)


def _job(spec: dict, tmp_path: Path, name: str) -> PackJob:
    dpo = DPOSettings(beta=spec["beta"], max_length=128)
    train = TrainSettings(
        learning_rate=spec["lr"], per_device_train_batch_size=3, per_device_eval_batch_size=6, max_steps=4,
        logging_steps=1, eval_steps=2, precision=Precision.fp32, warmup_steps=0, lr_scheduler_type="linear",
    )  # fmt: skip
    args = build_dpo_args(dpo, train, output_dir=tmp_path / name, seed=0, precision=Precision.fp32,
                          device="cpu")  # fmt: skip
    return PackJob(args=args, lora=build_lora_config(LoraSettings(r=spec["r"], alpha=8)), dpo=dpo)


def _train(setup, tmp_path: Path, specs: list[dict], in_turn: bool, pruning=None, name: str = "p"):
    data, tokenizer, model, _ = setup
    jobs = [_job(spec, tmp_path, f"{name}{i}") for i, spec in enumerate(specs)]
    pack = build_pack(model, tokenizer, jobs, data.train, data.eval, in_turn=in_turn)
    try:
        return pack.train(pruning=pruning)
    finally:
        _reset(setup)


class _StopAt:
    """A judge (dpo_lab.packed.pack.PackJudge) that stops one job at one step and records what it saw."""

    def __init__(self, index: int, step: int):
        self.index, self.step = index, step
        self.seen: list[tuple[int, list[int], int]] = []

    def judge(self, step: int, evaluated: dict, max_steps: int) -> list[int]:
        self.seen.append((step, sorted(evaluated), max_steps))
        assert all(KEY in metrics for metrics in evaluated.values())
        return [self.index] if step == self.step and self.index in evaluated else []


def _logged(outcome, keys=("loss", "grad_norm", "learning_rate", "eval_loss", KEY, "eval_rewards/margins")):
    """The training log without timings: (step, key, value) of every loss, gradient and evaluation."""
    return [(h["step"], k, h[k]) for h in outcome.log_history for k in keys if k in h]


@pytest.mark.parametrize(
    "in_turn", [True, pytest.param(False, marks=pytest.mark.slow)], ids=["in_turn", "together"]
)
def test_a_pruned_job_leaves_the_pack_and_the_others_train_as_without_it(setup, tmp_path, in_turn) -> None:
    """A pack of 3 whose job 1 is stopped at the rung of step 2 (of 4): jobs 0 and 2 end exactly where the
    pack of jobs 0 and 2 alone ends (bit-identical stepping in turn, 1e-5 together, where the batch is
    replicated 3 times, then 2); job 1 keeps its adapter, log history and step 2, as the unpruned pack had
    them at step 2, and its outcome says it was pruned there."""
    judge = _StopAt(LOSER, 2)
    pruned = _train(setup, tmp_path, JOBS, in_turn, judge, "pruned")
    without = _train(setup, tmp_path, [JOBS[0], JOBS[2]], in_turn, None, "two")
    assert judge.seen == [(2, [0, 1, 2], 4), (4, [0, 2], 4)]  # every job evaluated before any was judged
    tolerance = 0.0 if in_turn else 1e-5
    for survivor, alone in ((pruned[0], without[0]), (pruned[2], without[1])):
        assert survivor.pruned_at_step is None and survivor.global_step == 4 and survivor.error is None
        diff = max((survivor.adapter[k] - alone.adapter[k]).abs().max().item() for k in alone.adapter)
        assert diff <= tolerance, f"a job that went on differs from the pack without the pruned one: {diff}"
        mine, theirs = _logged(survivor), _logged(alone)
        assert [(s, k) for s, k, _ in mine] == [(s, k) for s, k, _ in theirs]
        if in_turn:
            assert mine == theirs
        else:
            assert [v for *_, v in mine] == pytest.approx([v for *_, v in theirs], abs=1e-5)
        assert survivor.pack_size == 3 and survivor.metrics["pack_size"] == 3
    loser = pruned[LOSER]
    assert loser.pruned_at_step == 2 and loser.global_step == 2 and loser.error is None
    assert len(loser.step_times) == 2
    assert max(h["step"] for h in loser.log_history) == 2
    assert [s for s, k, _ in _logged(loser) if k == "eval_loss"] == [2]  # its last evaluation: the rung
    assert loser.heldout_after is not None and len(loser.heldout_after) == 6  # per pair, at step 2
    assert loser.metrics["train_runtime"] <= pruned[0].metrics["train_runtime"]
    if not in_turn:  # (slow) up to step 2 it is the unpruned pack's job 1: the same computation
        never = _StopAt(LOSER, -1)
        unpruned = _train(setup, tmp_path, JOBS, in_turn, never, "full")
        assert never.seen == [(2, [0, 1, 2], 4), (4, [0, 1, 2], 4)] and unpruned[LOSER].global_step == 4
        assert _logged(loser) == [(s, k, v) for s, k, v in _logged(unpruned[LOSER]) if s <= 2]


def _study_with_a_bad_finished_job(direction: str = "maximize") -> optuna.Study:
    """An in-memory study in which one job (alone, before the pack) reached the first rung far behind."""
    study = optuna.create_study(direction=direction, pruner=build_pruner(HALVING))
    earlier = study.ask()
    earlier.report(-1.0 if direction == "maximize" else 10.0, 1)
    assert not earlier.should_prune()  # alone at the rung: it goes on (and its rung value is recorded)
    study.tell(earlier, -1.0 if direction == "maximize" else 10.0)
    return study


def _trials(
    study: optuna.Study, count: int, settings: PruneSettings = HALVING, metric: str = "rewards/accuracies"
):
    direction = Direction(study.direction.name.lower())
    return [
        PackedTrial(
            PruningTrial(study.ask(), study.study_name, "memory", settings.pruner, direction, True),
            metric,
            settings,
        )  # fmt: skip
        for _ in range(count)
    ]


def test_the_pack_prunes_the_job_that_cannot_learn_and_keeps_the_others(setup, tmp_path) -> None:
    """PackPruning on a real pack and a real study: job 1's learning rate (1e-12) cannot move its adapter, so
    its held-out accuracy at the first rung is the base model's (0: every margin is 0, none is positive);
    with the earlier job of the study, 4 jobs reached that rung and successive halving (factor 2) keeps the
    best 2: jobs 0 and 2 go on, job 1 stops there."""
    study = _study_with_a_bad_finished_job()
    settings = PruneSettings(pruner=PrunerName.successive_halving, min_resource=2, reduction_factor=2)
    jobs = _trials(study, 3, settings)
    results = _train(setup, tmp_path, JOBS, True, PackPruning(jobs), "real")
    accuracies = {i: jobs[i].trial.reported[2] for i in range(3)}
    assert accuracies[LOSER] == 0.0 and min(accuracies[0], accuracies[2]) > 0.0, accuracies
    assert [r.pruned_at_step for r in results] == [None, 2, None]
    assert [r.global_step for r in results] == [4, 2, 4]
    assert jobs[LOSER].trial.pruned_at_step == 2 and jobs[LOSER].trial.trial.user_attrs[PRUNED_AT_STEP] == 2
    assert jobs[0].trial.reported.keys() == {2, 4} and jobs[LOSER].trial.reported.keys() == {2}
    frozen = {t.number: t for t in study.get_trials()}
    rung_values = {n: frozen[n].system_attrs.get(RUNG_KEY.format(0)) for n in (1, 2, 3)}
    assert rung_values == {jobs[i].trial.number: accuracies[i] for i in range(3)}
    assert all(RUNG_KEY.format(1) not in frozen[n].system_attrs for n in (1, 2, 3))  # step 4: the last step


def _evaluate(pruning: PackPruning, step: int, values: list[float | None], max_steps: int = 16) -> list[int]:
    evaluated = {i: {KEY: v, "eval_loss": 0.5} for i, v in enumerate(values) if v is not None}
    return pruning.judge(step, evaluated, max_steps)


def test_successive_halving_in_a_pack_judges_every_job_of_the_rung_at_once() -> None:
    """Rungs at 1, 2, 4... steps (min_resource 1, factor 2): at step 1 the 4 jobs are ranked together and
    the best 2 go on, whatever order the pack holds them in; at step 2 the best of those 2 goes on."""
    for order in ([0.9, 0.8, 0.3, 0.2], [0.2, 0.3, 0.8, 0.9], [0.3, 0.9, 0.2, 0.8]):
        study = optuna.create_study(direction="maximize", pruner=build_pruner(HALVING))
        jobs = _trials(study, 4)
        pruning = PackPruning(jobs)
        stopped = _evaluate(pruning, 1, order)
        assert sorted(order[i] for i in stopped) == [0.2, 0.3], order
        left = [None if i in stopped else v + 0.05 for i, v in enumerate(order)]
        assert [order[i] for i in _evaluate(pruning, 2, left)] == [0.8], order
        assert all(
            jobs[i].trial.pruned_at_step == 1 and jobs[i].handoff["pruned_at_step"] == 1 for i in stopped
        )
    # asked one job at a time instead (what a job alone does), the same values would keep more: the first
    # job judged is ranked against itself alone
    study = optuna.create_study(direction="maximize", pruner=build_pruner(HALVING))
    kept = []
    for value in (0.2, 0.3, 0.8, 0.9):
        trial = study.ask()
        trial.report(value, 1)
        kept.append(not trial.should_prune())
    assert kept == [True, True, True, True]


def test_the_pack_and_jobs_alone_compete_at_the_same_rungs() -> None:
    """The values the pack recorded at a rung are the ones Optuna's own pruner compares a job alone with
    (and the other way round): one study for a sweep whatever ran packed."""
    study = optuna.create_study(direction="maximize", pruner=build_pruner(HALVING))
    _evaluate(PackPruning(_trials(study, 4)), 1, [0.9, 0.8, 0.3, 0.2])
    for value, pruned in ((0.5, True), (0.85, False)):  # 5 (then 6) values at the rung: the best 2 (3) go on
        alone = study.ask()
        alone.report(value, 1)
        assert alone.should_prune() is pruned
        study.tell(alone, state=TrialState.PRUNED if pruned else TrialState.COMPLETE,
                   values=None if pruned else [value])  # fmt: skip
    # a later pack is ranked with all of them: 6 values at the rung before it, 8 with it, the best 4 go on
    late = _trials(study, 2)
    assert _evaluate(PackPruning(late), 1, [0.82, 0.7]) == [1]


def test_no_job_is_judged_before_min_steps_nor_at_the_last_step_and_nan_is_pruned() -> None:
    study = optuna.create_study(direction="maximize", pruner=build_pruner(HALVING))
    settings = PruneSettings(pruner=PrunerName.successive_halving, min_resource=1, reduction_factor=2,
                             min_steps=3)  # fmt: skip
    jobs = _trials(study, 3, settings)
    pruning = PackPruning(jobs)
    assert _evaluate(pruning, 0, [0.9, 0.1, 0.1]) == []  # step 0: the base model, not even reported
    assert _evaluate(pruning, 2, [0.9, 0.1, 0.1]) == []  # before min_steps: reported, not judged
    assert jobs[1].trial.reported == {2: 0.1}
    assert _evaluate(pruning, 4, [0.9, 0.1, 0.1], max_steps=4) == []  # the last step: nothing to save
    fresh = PackPruning(_trials(study, 2, HALVING))
    assert _evaluate(fresh, 1, [0.9, math.nan]) == [1]


def test_other_pruners_are_asked_job_by_job_after_every_job_reported() -> None:
    """The median pruner compares with finished jobs only: each job of the pack is asked in turn."""
    median = PruneSettings(pruner=PrunerName.median, n_startup_trials=1)
    study = optuna.create_study(direction="maximize", pruner=build_pruner(median))
    done = study.ask()
    for step in (1, 2):
        done.report(0.6, step)
    study.tell(done, 0.6)
    jobs = _trials(study, 3, median)
    assert _evaluate(PackPruning(jobs), 1, [0.7, 0.5, 0.6]) == [1]
    assert [j.trial.reported for j in jobs] == [{1: 0.7}, {1: 0.5}, {1: 0.6}]


def test_a_restarted_pack_stops_a_job_where_its_trial_says_it_was_stopped(tmp_path) -> None:
    """Killed after a job was pruned (its trial marked) but before the pack's next checkpoint: the pack that
    replays the steps from its checkpoint reopens the same trials and stops that job at the same step."""
    objective = ObjectiveSettings()
    run_dirs = [tmp_path / str(i) for i in range(3)]
    first = [PackedTrial(open_trial(HALVING, tmp_path, objective, run_dir=d), objective.metric, HALVING)
             for d in run_dirs]  # fmt: skip
    assert _evaluate(PackPruning(first), 1, [0.9, 0.1, 0.8]) == [1, 2]  # 3 at the rung: the best goes on
    again = [PackedTrial(open_trial(HALVING, tmp_path, objective, run_dir=d), objective.metric, HALVING)
             for d in run_dirs]  # fmt: skip
    assert [j.trial.number for j in again] == [j.trial.number for j in first]  # no new trial
    # the replayed evaluations need not judge again: the same jobs stop, and job 0 is past that rung
    assert _evaluate(PackPruning(again), 1, [0.1, 0.9, 0.8]) == [1, 2]


def test_the_jobs_run_goes_on_with_the_trial_its_pack_opened(tmp_path) -> None:
    """PackedOutcome.pruning: the run reopens the pack's trial (no second one), is pruned where the pack
    stopped it, and tells the study so when the trial was asked for the job (a grid)."""
    objective = ObjectiveSettings()
    trial = open_trial(HALVING, tmp_path, objective, run_dir=tmp_path / "0")
    job = PackedTrial(trial, objective.metric, HALVING)
    trial.report(2, 0.25)
    trial.mark_pruned(2)
    run_side = handed_over_trial(HALVING, tmp_path, objective, job.handoff, run_dir=tmp_path / "0")
    assert run_side.number == trial.number and run_side.owned and run_side.pruned_at_step == 2
    record = pruned_record(run_side)
    assert record["status"] == "pruned" and record["pruning"]["pruned_at_step"] == 2
    assert record["pruning"]["last_reported"] == {"step": 2, "value": 0.25}
    run_side.finish(0.25)
    study = trial.trial.study
    assert len(study.trials) == 1 and study.trials[0].state is TrialState.PRUNED
    # run again from the pack's saved outcome (a sweep killed while its jobs wrote their folders): the trial
    # is told already, and is not told twice
    again = handed_over_trial(HALVING, tmp_path, objective, job.handoff, run_dir=tmp_path / "0")
    assert again.number == trial.number and not again.owned and pruned_record(again)["status"] == "pruned"
    again.finish(0.25)
    assert len(study.trials) == 1 and study.trials[0].state is TrialState.PRUNED
    assert handed_over_trial(PruneSettings(), tmp_path, objective, job.handoff) is None


@pytest.mark.parametrize(
    ("value", "competing", "factor", "direction", "kept"),
    [
        (0.9, [0.9], 4, Direction.maximize, True),  # alone at the rung
        (0.5, [0.9, 0.5], 4, Direction.maximize, False),  # fewer than the factor: only the best goes on
        (0.5, [0.9, 0.5, 0.5, 0.1], 2, Direction.maximize, True),  # a tie at the cut goes on
        (0.3, [0.9, 0.8, 0.3, 0.2], 2, Direction.maximize, False),
        (0.3, [0.9, 0.8, 0.3, 0.2], 2, Direction.minimize, True),
        (0.8, [0.9, 0.8, 0.3, 0.2], 2, Direction.minimize, False),
    ],
)
def test_keeps_rung_is_optunas_promotion_rule(value, competing, factor, direction, kept) -> None:
    assert keeps_rung(value, competing, factor, direction) is kept
