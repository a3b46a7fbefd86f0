"""What only composing the config finds is refused in one line with exit code 2, before anything loads:
a YAML syntax error in a file of the user's --config-dir (file, line, column), a misspelt key inside such a
file (with the close key), a deleted required key, an override that does not parse, a bad or misspelt key of
dpo_lab's packed launcher. (Before, each was Hydra's multi-line text or a traceback, with exit code 1.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import run_cli


def _one_line(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("dpo_lab: invalid config: "), lines[0]
    return lines[0]


@pytest.fixture
def user_configs(tmp_path: Path) -> Path:
    folder = tmp_path / "mine"
    (folder / "experiment").mkdir(parents=True)
    (folder / "experiment" / "broken.yaml").write_text("# @package _global_\ndpo:\n  beta: [0.1\n")
    (folder / "experiment" / "misspelt.yaml").write_text("# @package _global_\ndpo:\n  bta: 0.1\n")
    (folder / "experiment" / "fine.yaml").write_text("# @package _global_\ndpo:\n  beta: 0.3\n")
    return folder


def test_a_yaml_syntax_error_names_the_file_line_and_column(user_configs: Path, tmp_path: Path) -> None:
    line = _one_line(run_cli(["--config-dir", str(user_configs), "experiment=broken"], tmp_path))
    assert f"{user_configs / 'experiment' / 'broken.yaml'} line 4, column 1: invalid YAML:" in line
    assert "from line 3, column 9" in line  # where the unclosed bracket opened


def test_a_misspelt_key_in_a_config_file_suggests_the_close_one(user_configs: Path, tmp_path: Path) -> None:
    line = _one_line(run_cli(["--config-dir", str(user_configs), "experiment=misspelt"], tmp_path))
    assert "dpo.bta: no such key (in experiment/misspelt.yaml) (did you mean dpo.beta?)" in line
    proc = run_cli(["--config-dir", str(user_configs), "experiment=fine", "--cfg", "job"], tmp_path)
    assert proc.returncode == 0 and "beta: 0.3" in proc.stdout  # the same folder's good file composes


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["~model.name_or_path"], "model.name_or_path: a key of the schema cannot be deleted"),
        (["train.extra={a: [1, 2"], "train.extra: cannot parse 'train.extra={a: [1, 2'"),
        (["-m", "hydra/launcher=packed", "hydra.launcher.pack_size=0", "dpo.beta=0.1,0.2"],
         "hydra.launcher.pack_size: expected a positive integer or 'auto', got 0"),
        (["-m", "hydra/launcher=packed", "hydra.launcher.step=sideways", "dpo.beta=0.1,0.2"],
         "hydra.launcher.step: expected one of together, in_turn, auto, got 'sideways'"),
        (["-m", "hydra/launcher=packed", "hydra.launcher.pack_sise=2", "dpo.beta=0.1,0.2"],
         "hydra.launcher.pack_sise: no such key"),
    ],
)  # fmt: skip
def test_what_only_composition_finds_is_one_line(args: list[str], says: str, tmp_path: Path) -> None:
    line = _one_line(run_cli(args, tmp_path))
    assert says in line, line


def test_sweeps_and_plain_runs_that_compose_are_not_refused() -> None:
    from dpo_lab.config.composition import check_composition
    from dpo_lab.config.resolvers import register_resolvers
    from dpo_lab.config.store import register_configs

    register_configs()
    register_resolvers()
    for args in (
        ["-m", "dpo.beta=0.1,0.2", "lora.r=4,8"],  # the first value of each sweep stands for it
        ["-m", "hydra/launcher=packed", "hydra.launcher.pack_size=2", "dpo.beta=0.1,0.2"],
        ["-m", "hydra/sweeper=dpo_optuna", "train.learning_rate=tag(log, interval(1e-6, 1e-3))"],
        ["experiment=smollm2_hh_finance", "dpo.beta=0.2"],
        [],
    ):
        check_composition(args)


@pytest.mark.parametrize(
    ("typed", "meant"), [("generat", "generate"), ("reprot", "report"), ("mrege", "merge")]
)
def test_a_misspelt_command_is_named_with_the_close_one(typed: str, meant: str, tmp_path: Path) -> None:
    """Before, ``dpo-lab generat run=...`` was taken as training overrides."""
    proc = run_cli([typed, "run=x"], tmp_path, module="dpo_lab")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-1500:]
    assert lines[0].startswith(f"dpo_lab: no command '{typed}' (did you mean {meant}?)")


def test_plain_messages_for_a_missing_run_and_a_folder_without_split_files(tmp_path: Path) -> None:
    line = _one_line(run_cli(["generate"], tmp_path, module="dpo_lab"))
    assert (
        line == "dpo_lab: invalid config: run: required, and no value was given: add run=... to the command"
    )
    empty = tmp_path / "pairs"
    empty.mkdir()
    (empty / "notes.txt").write_text("not data")
    line = _one_line(run_cli([f"data.path={empty}"], tmp_path))
    assert f"data.split: no file for split 'train' in {empty}: looked for train, train.jsonl," in line
