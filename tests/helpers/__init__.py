"""Test helpers: compose configs like the CLI does, and run the CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from dpo_lab.config.resolvers import register_resolvers
from dpo_lab.config.store import register_configs

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
# real preference data: the slice of the HH-RLHF harmless-base test split that ships in the package
HH_DATA = ROOT / "dpo_lab" / "assets" / "hh_rlhf" / "harmless-base-test.jsonl.gz"


def require_hh_data() -> Path:
    """The shipped HH-RLHF slice (a failed test, never a skip, if the package lost it)."""
    import pytest

    if not HH_DATA.is_file():
        pytest.fail(f"the HH-RLHF slice that ships with dpo_lab is missing: {HH_DATA}")
    return HH_DATA


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    register_configs()
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides or [])


def cli_env(tmp_path: Path) -> dict[str, str]:
    """Environment for a CLI run: offline W&B, files under tmp_path, no stray secrets."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(
        WANDB_SILENT="true",
        WANDB_CONFIG_DIR=str(tmp_path / "wandb-config"),
        WANDB_CACHE_DIR=str(tmp_path / "wandb-cache"),
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    return env


def run_cli(
    args: list[str], tmp_path: Path, module: str = "dpo_lab.run", timeout: int = 900, env=None, cwd=None
):
    """Run ``python -m <module> args`` from the repo root; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd or ROOT,
        env=env or cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _leet(run_folder: Path, *flags: str) -> str:
    """`wandb leet inspect <flags>` on the single offline W&B run under ``run_folder/wandb``."""
    runs = sorted((run_folder / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    wandb_cli = Path(sys.executable).with_name("wandb")
    out = subprocess.run([str(wandb_cli), "leet", "inspect", *flags, "--json", str(runs[0])],
                         capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
    return out.stdout


def wandb_records(run_folder: Path) -> list[dict]:
    """Every record of the offline W&B run of ``run_folder``."""
    import json

    return [json.loads(line) for line in _leet(run_folder).splitlines() if line.strip()]


def wandb_summary(run_folder: Path) -> dict:
    """State, config, latest metrics and summary of the offline W&B run of ``run_folder``."""
    import json

    return json.loads(_leet(run_folder, "--summary"))


def agent_command(spec: dict, values: dict) -> list[str]:
    """The argv wandb's agent runs for one set of parameter values (mirrors Agent._command_run)."""
    import platform

    from wandb.sdk.launch.sweeps import utils as sweep_utils

    command = {"args": {k: {"value": v} for k, v in values.items()}, "program": spec.get("program")}
    sweep_command = sweep_utils.create_sweep_command(list(spec["command"]))
    sweep_vars = sweep_utils.create_sweep_command_args(command)
    sweep_vars["interpreter"] = ["python"]
    sweep_vars["program"] = [command["program"]]
    if platform.system() != "Windows":
        sweep_vars["env"] = ["/usr/bin/env"]
    argv: list[str] = []
    for chunk in map(str, sweep_command):
        if chunk.startswith("${") and chunk.endswith("}"):
            argv += sweep_vars.get(chunk[2:-1]) or []
        else:
            argv.append(chunk)
    return argv
