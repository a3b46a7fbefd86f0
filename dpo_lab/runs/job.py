"""What Hydra tells a job: is it part of a multirun, its command-line overrides, its name and group."""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from dpo_lab.runs.naming import run_group, run_name


def in_multirun() -> bool:
    """True inside a job of ``-m`` (any sweeper or launcher)."""
    mode = HydraConfig.get().mode
    return mode is not None and mode.name == "MULTIRUN"


def task_overrides() -> list[str]:
    """The job's own command-line overrides (a sweep's swept values included)."""
    return list(HydraConfig.get().overrides.task)


def run_identity(cfg: DictConfig, run_dir: Path) -> tuple[str, str]:
    """(name, group) for the tracker: config values win, else derived from the command line / sweep."""
    hydra_cfg = HydraConfig.get()
    choices = dict(hydra_cfg.runtime.choices)
    defaults = _default_config(hydra_cfg.job.config_name)
    default_choices = dict(defaults.hydra.runtime.choices) if defaults is not None else {}
    derived = run_name(list(hydra_cfg.overrides.task), cfg, defaults, choices, default_choices)
    name = cfg.logger.name or derived or choices.get("experiment") or "default"
    group = cfg.logger.group or run_group(hydra_cfg.sweep.dir if in_multirun() else None, name, run_dir)
    return name, group


_DEFAULT_CONFIGS: dict[str, DictConfig | None] = {}


def _default_config(config_name: str) -> DictConfig | None:
    """The config with no overrides, to name a run after what it changed; composed once per process (the
    jobs of a same-process sweep share it). None where this process has no global Hydra (some launchers):
    the run is then named after every override."""
    if config_name not in _DEFAULT_CONFIGS:
        try:
            _DEFAULT_CONFIGS[config_name] = hydra.compose(config_name=config_name, return_hydra_config=True)
        except Exception:
            return None
    return _DEFAULT_CONFIGS[config_name]
