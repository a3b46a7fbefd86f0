"""Configs of generate / merge / compare and of the ``eval`` group: they compose, and bad values fail
with one line naming the key (in process and through the CLI, exit code 2)."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from dpo_lab.config.choices import Judge
from dpo_lab.config.commands import CompareConfig, GenerateConfig, MergeConfig
from dpo_lab.config.overrides import check_overrides
from dpo_lab.config.resolvers import register_resolvers
from dpo_lab.config.store import register_configs
from dpo_lab.config.validation import typed_config, validate
from dpo_lab.errors import ConfigError
from dpo_lab.runs.folder import read_run
from tests.helpers import CONF, compose_config, run_cli

SCHEMAS = {"generate": GenerateConfig, "merge": MergeConfig, "compare": CompareConfig}


def compose_entry(name: str, overrides: list[str]):
    register_configs()
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides)
    return typed_config(cfg, SCHEMAS[name])


def test_entry_point_configs_compose() -> None:
    gen = compose_entry("generate", ["run=/some/run", "prompt=hello", "generation.max_new_tokens=32"])
    assert gen.run == "/some/run" and gen.generation.max_new_tokens == 32 and not gen.generation.do_sample
    assert compose_entry("merge", ["run=/some/run"]).out is None
    cmp = compose_entry("compare", ["a=/r1", "judge=reward_model", "reward_model=/rm"])
    assert cmp.b == "base" and cmp.judge is Judge.reward_model and cmp.checker.name == "finance_number"


@pytest.mark.parametrize(
    ("name", "overrides", "key"),
    [
        ("generate", ["run=/r", "prompt=hi", "chat=true"], "prompt"),  # two sources
        ("generate", ["run=/r", "prompt=hi", "generation.top_p=0"], "generation.top_p"),
        ("compare", ["a=/r", "judge=reward_model"], "reward_model"),
        ("compare", ["a=/r", "checker.name=null"], "checker.name"),
        ("compare", ["a=/r", "num_prompts=0"], "num_prompts"),
    ],
)
def test_entry_point_invariants(name: str, overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        compose_entry(name, overrides)
    assert info.value.key == key


def test_entry_point_overrides_are_checked_against_their_schema() -> None:
    check_overrides(["run=/r", "generation.max_new_tokens=8", "chat=true"], root=GenerateConfig)
    with pytest.raises(ConfigError, match=r"did you mean generation.max_new_tokens\?"):
        check_overrides(["generation.max_new_token=8"], root=GenerateConfig)
    with pytest.raises(ConfigError, match="must be one of checker, reward_model"):
        check_overrides(["judge=human"], root=CompareConfig)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("eval.num_prompts=0", "eval.num_prompts"),
        ("eval.generation.max_new_tokens=0", "eval.generation.max_new_tokens"),
        ("eval.checker.rel_tol=-0.1", "eval.checker.rel_tol"),
        ("eval.generation.batch_size=0", "eval.generation.batch_size"),
    ],
)
def test_eval_group_invariants(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate(OmegaConf.to_object(compose_config([override])))
    assert info.value.key == key


def test_eval_options() -> None:
    assert OmegaConf.to_object(compose_config()).eval.checker.name == "auto"
    assert OmegaConf.to_object(compose_config(["eval=samples"])).eval.checker.name is None
    assert OmegaConf.to_object(compose_config(["eval=none"])).eval.enabled is False
    # the HH preset has no ground truth: it switches the task evaluation to samples; the command line wins
    assert OmegaConf.to_object(compose_config(["data=hh_rlhf"])).eval.checker.name is None
    assert OmegaConf.to_object(compose_config(["data=hh_rlhf", "eval=none"])).eval.enabled is False


def test_read_run_needs_a_finished_run(tmp_path) -> None:
    with pytest.raises(ConfigError, match="no such run folder"):
        read_run(str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="no config.yaml"):
        read_run(str(tmp_path))
    (tmp_path / "config.yaml").write_text("model: {name_or_path: x}\n")
    with pytest.raises(ConfigError, match="no trained adapter"):
        read_run(str(tmp_path))


@pytest.mark.parametrize(
    ("module", "args", "expected"),
    [
        (
            "dpo_lab.cli.generate",
            ["run=/no/such/run", "prompt=hi"],
            "dpo_lab: invalid config: run: no such run folder",
        ),
        (
            "dpo_lab.cli.generate",
            ["run=/r", "prompt=hi", "generation.temprature=0.5"],
            "generation.temprature",
        ),
        ("dpo_lab.cli.merge", ["run=/no/such/run"], "dpo_lab: invalid config: run: no such run folder"),
    ],
)
def test_cli_errors_are_one_line_exit_2(module: str, args: list[str], expected: str, tmp_path) -> None:
    proc = run_cli(args, tmp_path, module=module, timeout=180)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("dpo_lab:")]
    assert len(lines) == 1 and expected in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and proc.stdout == ""
