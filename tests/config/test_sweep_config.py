"""Sweep presets (conf/sweep/), the Optuna preset (conf/hydra/sweeper/, over dpo_lab's own Optuna sweeper
plugin) and the objective: every file composes, every swept value is a valid config, Optuna optimises the
configured metric in its direction."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution

from dpo_lab.config.choices import Direction
from dpo_lab.config.overrides import check_overrides
from dpo_lab.config.resolvers import register_resolvers
from dpo_lab.config.schemas import ObjectiveSettings
from dpo_lab.config.store import register_configs
from dpo_lab.config.validation import to_run_config
from dpo_lab.errors import ConfigError
from dpo_lab.sweep.objective import NonFiniteMetricError, better, check_finite, objective_value
from dpo_lab.sweep.optuna_sweeper import create_optuna_distribution_from_override
from tests.helpers import CONF, compose_config

PRESETS = sorted((CONF / "sweep").glob("*.yaml"))
SWEEPERS = sorted((CONF / "hydra" / "sweeper").glob("*.yaml"))


def compose_with_hydra(overrides: list[str]):
    register_configs()
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


def test_presets_exist() -> None:
    assert {p.stem for p in PRESETS} >= {"beta_rank_lr", "tiny_beta_rank"}
    assert [p.stem for p in SWEEPERS] == ["dpo_optuna"]


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_sweep_preset_composes_and_every_swept_value_is_valid(path) -> None:
    lines = path.read_text().splitlines()
    assert lines[0] == "# @package _global_"
    assert lines[1].startswith("# python -m dpo_lab.run -m ") and f"sweep={path.stem}" in lines[1]
    cfg = compose_with_hydra([f"sweep={path.stem}"])
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    assert params, "a sweep preset sweeps something"
    sweep_args = [f"{key}={value}" for key, value in params.items()]
    check_overrides(sweep_args)  # key names and each value's type
    parser = OverridesParser.create()
    jobs: list[list[str]] = [[]]
    for override in parser.parse_overrides(sweep_args):
        values = list(override.sweep_string_iterator())
        jobs = [job + [f"{override.key_or_group}={v}"] for job in jobs for v in values]
    assert len(jobs) == {"beta_rank_lr": 12, "tiny_beta_rank": 4}.get(path.stem, len(jobs))
    for job in jobs:  # each job's config, checked as the job checks it
        cfg = compose_config([f"sweep={path.stem}", *job])
        run_cfg = to_run_config(cfg)
        for override in parser.parse_overrides(job):
            assert OmegaConf.select(cfg, override.key_or_group) == override.value(), override
        assert run_cfg.dpo.precompute_ref_log_probs  # the presets let jobs share reference log-probs


def test_the_grid_preset_is_the_issue_grid() -> None:
    params = OmegaConf.to_container(compose_with_hydra(["sweep=beta_rank_lr"]).hydra.sweeper.params)
    assert params == {"dpo.beta": "0.05,0.1,0.5", "lora.r": "8,16", "train.learning_rate": "5e-6,5e-5"}


def test_command_line_sweep_wins_over_the_preset() -> None:
    check_overrides(["sweep=tiny_beta_rank", "hydra/sweeper=dpo_optuna"])  # group choices, not keys
    cfg = compose_with_hydra(["sweep=tiny_beta_rank", "dpo.beta=0.3"])
    assert cfg.dpo.beta == 0.3  # a plain override on top of a preset fixes that key for every job


MINIMIZE_LOSS = ["objective.metric=loss", "objective.direction=minimize"]


@pytest.mark.parametrize(("overrides", "direction"), [([], "maximize"), (MINIMIZE_LOSS, "minimize")])
def test_optuna_preset_optimises_the_objective_in_its_direction(overrides, direction) -> None:
    cfg = compose_with_hydra(["hydra/sweeper=dpo_optuna", *overrides])
    to_run_config(compose_config(overrides))
    sweeper_cfg = cfg.hydra.sweeper
    assert sweeper_cfg._target_ == "hydra_plugins.dpo_lab_optuna_sweeper.optuna_sweeper.DpoLabOptunaSweeper"
    sweeper = instantiate(sweeper_cfg)  # as Hydra does at the start of -m (resolves ${objective.direction})
    impl = sweeper.search
    assert impl.directions == [direction]
    assert impl.n_trials == 20 and impl.n_jobs == 1 and impl.max_failure_rate == 1.0
    assert impl.sampler.__class__.__name__ == "TPESampler"
    assert impl.sampler._n_startup_trials == 5 and impl.study_name == "dpo_lab" and impl.storage is None
    assert sweeper_cfg.sampler.seed == cfg.seed  # the run's seed: the same command, the same trials
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in impl.params.items()])
    space = {o.key_or_group: create_optuna_distribution_from_override(o) for o in parsed}
    assert _log_float(space["dpo.beta"]) and _log_float(space["train.learning_rate"])
    assert isinstance(space["lora.r"], CategoricalDistribution)
    check_overrides([f"lora.r={','.join(map(str, space['lora.r'].choices))}"])
    for beta in (space["dpo.beta"].low, space["dpo.beta"].high):
        to_run_config(compose_config([f"dpo.beta={beta}"]))


def _log_float(distribution) -> bool:
    """A log-scale float range."""
    return isinstance(distribution, FloatDistribution) and distribution.log


def test_objective_defaults_and_bad_values() -> None:
    run_cfg = to_run_config(compose_config())
    assert run_cfg.objective == ObjectiveSettings(metric="rewards/accuracies", direction=Direction.maximize)
    assert run_cfg.reuse is True
    with pytest.raises(ConfigError) as info:
        to_run_config(compose_config(["objective.metric=accuracy"]))
    assert info.value.key == "objective.metric" and "rewards/accuracies" in str(info.value)
    with pytest.raises(ConfigError) as info:
        to_run_config(compose_config(["objective.metric=loss"]))  # maximising a loss
    assert info.value.key == "objective.direction"
    with pytest.raises(ConfigError, match="maximize, minimize"):
        check_overrides(["objective.direction=up"])


def test_objective_value_and_divergence() -> None:
    evaluated = {"eval_loss": 0.4, "eval_rewards/accuracies": 0.75}
    assert objective_value(evaluated, ObjectiveSettings()) == 0.75
    assert objective_value(evaluated, ObjectiveSettings("loss", Direction.minimize)) == 0.4
    with pytest.raises(KeyError, match="rewards/margins.*held-out: \\['loss', 'rewards/accuracies'\\]"):
        objective_value(evaluated, ObjectiveSettings("rewards/margins"))
    check_finite({"train_loss": 0.5}, evaluated)
    with pytest.raises(NonFiniteMetricError, match="train_loss"):
        check_finite({"train_loss": float("nan")}, evaluated)
    with pytest.raises(NonFiniteMetricError, match="eval_loss"):
        check_finite({"train_loss": 0.5}, {"eval_loss": float("inf")})
    assert better(0.8, 0.7, Direction.maximize) and better(0.3, 0.4, Direction.minimize)
    assert not better(0.7, 0.7, Direction.maximize)


def test_sweep_and_job_folders_never_collide() -> None:
    hydra_cfg = OmegaConf.to_container(compose_with_hydra([]).hydra, resolve=False)
    assert hydra_cfg["sweep"]["dir"].endswith("${now:%H-%M-%S-%f}")  # microseconds: same-second sweeps differ
    assert hydra_cfg["sweep"]["subdir"] == "${hydra.job.num}"  # one folder per job inside a sweep
    assert hydra_cfg["callbacks"]["sweep_report"]["_target_"] == "dpo_lab.sweep.report.SweepReportCallback"
