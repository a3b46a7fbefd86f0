"""Where ``python -m dpo_lab.cli.merge`` may write: never over the run folder it reads, nor its base model."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from dpo_lab.cli.merge import output_folder
from dpo_lab.config.commands import MergeConfig
from dpo_lab.errors import ConfigError
from tests.helpers import compose_config, run_cli


def finished_run(tmp_path: Path) -> Path:
    """A run folder as read_run sees a finished one: config.yaml, adapter/, its card, checkpoints/."""
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    (run / "checkpoints" / "checkpoint-4").mkdir(parents=True)
    (run / "config.yaml").write_text(OmegaConf.to_yaml(compose_config(["logger=none"])))
    (run / "README.md").write_text("the run's model card")
    return run


@pytest.mark.parametrize(
    ("out", "why"),
    [
        (".", "is the run folder itself"),
        ("adapter", "is inside the run's own adapter"),
        ("checkpoints/checkpoint-4", "is inside the run's own checkpoints"),
    ],
)
def test_output_over_the_runs_own_files_is_refused_even_with_overwrite(tmp_path: Path, out: str, why: str):
    run = finished_run(tmp_path)
    with pytest.raises(ConfigError, match=why) as info:
        output_folder(MergeConfig(run=str(run), out=str(run / out), overwrite=True), run.resolve())
    assert info.value.key == "out"


def test_output_beside_or_below_the_run_is_allowed(tmp_path: Path) -> None:
    run = finished_run(tmp_path).resolve()
    assert output_folder(MergeConfig(run=str(run)), run) == run / "merged"  # the default
    assert output_folder(MergeConfig(run=str(run), out=str(run / "merged-fp32")), run) == run / "merged-fp32"
    assert output_folder(MergeConfig(run=str(run), out=str(tmp_path / "m")), run) == tmp_path / "m"


def test_output_over_the_local_base_model_is_refused(tmp_path: Path) -> None:
    run, base = finished_run(tmp_path).resolve(), tmp_path / "base"
    base.mkdir()
    with pytest.raises(ConfigError, match="is the run's base model"):
        output_folder(MergeConfig(run=str(run), out=str(base), overwrite=True), run, str(base))


def test_cli_merge_into_the_run_folder_is_one_line_and_touches_nothing(tmp_path: Path) -> None:
    run = finished_run(tmp_path)
    # the documented command (`dpo-lab merge`, here `python -m dpo_lab merge`): it filters the libraries'
    # notices before it imports the command's module
    proc = run_cli(
        ["merge", f"run={run}", f"out={run}", "overwrite=true"], tmp_path, module="dpo_lab", timeout=120
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"dpo_lab: invalid config: out: {run.resolve()} is the run folder itself: the merge would overwrite "
        "it; give another folder"
    ]
    assert (run / "README.md").read_text() == "the run's model card"
