"""W&B sweep specs in sweeps/: the command line a W&B agent builds composes into a valid config, and W&B's
early termination (hyperband) judges the metric the runs log at every held-out evaluation.

The agent's command line is built with wandb's own code (wandb.sdk.launch.sweeps.utils, as wandb_agent.py
calls it): the spec's ``command`` list with its macros filled, ``${args_no_hyphens}`` -> ``key=value``.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from omegaconf import OmegaConf

from dpo_lab.config.overrides import check_overrides
from dpo_lab.config.schemas import RunConfig
from dpo_lab.config.validation import to_run_config
from dpo_lab.track.callbacks import MetricsCallback
from tests.helpers import ROOT, agent_command, compose_config

SPECS = sorted((ROOT / "sweeps").glob("*.yaml"))


def candidate_values(name: str, param: dict[str, Any]) -> list[Any]:
    """Every value of a parameter, or for a distribution its bounds and a point inside."""
    if "values" in param:
        return list(param["values"])
    if "value" in param:
        return [param["value"]]
    kind, low, high = param.get("distribution"), param.get("min"), param.get("max")
    if kind in ("log_uniform_values", "q_log_uniform_values"):
        return [low, math.sqrt(low * high), high]
    if kind in ("uniform", "q_uniform", "normal"):
        return [low, (low + high) / 2, high]
    if kind == "int_uniform":
        return [low, (low + high) // 2, high]
    raise AssertionError(f"{name}: teach this test the distribution {kind!r}")


def spec_cases(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """One set of values per value of each parameter, the others at their first value."""
    candidates = {name: candidate_values(name, p) for name, p in spec["parameters"].items()}
    first = {name: values[0] for name, values in candidates.items()}
    return [first | {name: v} for name, values in candidates.items() for v in values]


def test_there_are_specs() -> None:
    assert {p.name for p in SPECS} >= {"beta_rank_lr.yaml", "bayes_beta_rank_lr.yaml"}


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_agent_command_line_composes_for_every_parameter_value(path: Path) -> None:
    spec = yaml.safe_load(path.read_text())
    assert "${args_no_hyphens}" in spec["command"]
    cases = spec_cases(spec)
    assert len(cases) >= len(spec["parameters"])
    for values in cases:
        argv = agent_command(spec, values)
        assert argv[:4] == ["/usr/bin/env", "python", "-m", "dpo_lab.run"], argv
        overrides = argv[4:]
        assert len(overrides) == len(values) and all("=" in a and not a.startswith("-") for a in overrides)
        check_overrides(overrides)  # the CLI's own first check
        cfg = compose_config(overrides)
        run_cfg = to_run_config(cfg)  # types and ranges, as a job checks them
        for key, value in values.items():
            got = OmegaConf.select(cfg, key)
            got = getattr(got, "value", got)
            if isinstance(value, float):
                assert got == pytest.approx(value, rel=1e-12), (path.name, key)
            else:
                assert got == value, (path.name, key)
        # W&B ranks by the summary key dpo_lab writes for the job's own objective
        assert spec["metric"]["name"] == f"eval/{run_cfg.objective.metric}", path.name
        assert spec["metric"]["goal"] == run_cfg.objective.direction.value, path.name


@pytest.mark.slow  # starts the CLI (imports torch, trl): seconds, not milliseconds
@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_agent_command_runs_the_entry_point(path: Path) -> None:
    """The real entry point accepts the agent's argv (composition only: --cfg job prints, trains nothing)."""
    spec = yaml.safe_load(path.read_text())
    values = spec_cases(spec)[-1]
    argv = agent_command(spec, values)
    proc = subprocess.run([sys.executable, *argv[2:], "--cfg", "job"], cwd=ROOT, capture_output=True,
                          text=True, timeout=180)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = yaml.safe_load(proc.stdout)
    for key, value in values.items():
        group, name = key.split(".")
        expected = pytest.approx(value, rel=1e-12) if isinstance(value, float) else value
        assert printed[group][name] == expected, (path.name, key)


# the keys of W&B's hyperband stopping (its sweep config schema, ``hyperband_stopping``)
HYPERBAND_KEYS = {"type", "min_iter", "max_iter", "s", "eta", "strict"}


class _Logged:
    """A tracker that keeps what the Trainer callbacks log."""

    def __init__(self) -> None:
        self.records: list[tuple[dict, int]] = []

    def log(self, metrics: dict, step: int) -> None:
        self.records.append((metrics, step))


def evaluations(run_cfg: RunConfig) -> int:
    """How many held-out evaluations a run logs: before training, every eval_steps, and at its last step."""
    train = run_cfg.train
    assert train.max_steps > 0, "a spec with early_terminate fixes the steps (or composes with max_steps)"
    steps = set(range(train.eval_steps, train.max_steps + 1, train.eval_steps)) if train.eval_steps else set()
    return len(steps | {train.max_steps}) + int(train.eval_before_training)


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_early_termination_is_hyperband_on_the_metric_logged_at_each_evaluation(path: Path) -> None:
    spec = yaml.safe_load(path.read_text())
    stop = spec["early_terminate"]
    assert stop["type"] == "hyperband" and set(stop) <= HYPERBAND_KEYS, stop
    assert isinstance(stop["min_iter"], int) and stop["min_iter"] >= 1 and stop["eta"] > 1
    # W&B counts a run's logged values of metric.name: dpo_lab logs it once per held-out evaluation
    run_cfg = to_run_config(compose_config(agent_command(spec, spec_cases(spec)[0])[4:]))
    logged = _Logged()
    state = type("State", (), {"is_world_process_zero": True, "global_step": 40})()
    MetricsCallback(logged, lambda: 0.0).on_log(
        None, state, None, logs={f"eval_{run_cfg.objective.metric}": 0.5}
    )
    ((metrics, step),) = logged.records
    assert metrics == {spec["metric"]["name"]: 0.5} and step == 40
    # evaluations during training, enough of them to reach the first band (min_iter-th value) before the end
    assert run_cfg.train.eval_steps > 0
    assert evaluations(run_cfg) > stop["min_iter"], (evaluations(run_cfg), stop)
