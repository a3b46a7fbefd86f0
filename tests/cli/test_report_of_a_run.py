"""``dpo-lab report`` given a run folder where a sweep folder is wanted: one plain line that says so, where
the run's results are (and its sweep, for a job of one), exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dpo_lab.cli.main import main
from tests.helpers import ROOT, cli_env


def _run_folder(path: Path) -> Path:
    """A finished run's folder as a run leaves it: metrics.json, config.yaml and Hydra's record."""
    (path / ".hydra").mkdir(parents=True)
    (path / "config.yaml").write_text("seed: 1\n")
    (path / "metrics.json").write_text(json.dumps({"status": "completed", "eval": {"eval_loss": 0.5}}))
    return path


def _report(folder: Path, capsys) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as exited:
        main(["report", str(folder)])
    return exited.value.code, capsys.readouterr().err.strip().splitlines()


def test_a_single_run_folder_is_named_as_such(tmp_path: Path, capsys) -> None:
    run = _run_folder(tmp_path / "runs" / "2026-12-03" / "05-12-38-948123")
    code, err = _report(run, capsys)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"dpo_lab: {run} is a run folder, not a sweep folder: ")
    assert f"{run / 'metrics.json'}" in err[0] and f"{run / 'README.md'}" in err[0]
    assert "report takes a sweep folder" in err[0]


@pytest.mark.parametrize("kept", ["metrics.json", "config.yaml", ".hydra"])
def test_any_mark_of_a_run_makes_a_run_folder(tmp_path: Path, capsys, kept: str) -> None:
    """A run stopped early has only some of its files (no metrics.json yet, or no resolved config)."""
    run = _run_folder(tmp_path / "run")
    for name in {"metrics.json", "config.yaml"} - {kept}:
        (run / name).unlink()
    if kept != ".hydra":
        (run / ".hydra").rmdir()
    code, err = _report(run, capsys)
    assert code == 2 and err == [err[0]] and "is a run folder, not a sweep folder" in err[0]


def test_a_job_of_a_sweep_points_at_its_sweep(tmp_path: Path, capsys) -> None:
    sweep = tmp_path / "multirun" / "2026-12-03" / "05-00-00-000000"
    job = _run_folder(sweep / "3")
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    code, err = _report(job, capsys)
    assert code == 2 and len(err) == 1
    assert err[0].endswith(f"; its sweep is {sweep}: dpo-lab report {sweep}")


def test_the_console_command_prints_the_one_line(tmp_path: Path) -> None:
    """As a user runs it: nothing else on stderr (no log lines, no traceback), nothing on stdout."""
    run = _run_folder(tmp_path / "run")
    command = [sys.executable, "-m", "dpo_lab", "report", str(run)]
    proc = subprocess.run(
        command, cwd=ROOT, env=cli_env(tmp_path), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith(f"dpo_lab: {run} is a run folder, not a sweep folder")
