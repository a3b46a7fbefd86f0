"""What Hydra tells a job: is it part of a multirun, its command-line overrides, its name and group."""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from dpo_lab.runs.naming import run_group, run_name, swept_keys


def in_multirun() -> bool:
    """True inside a job of ``-m`` (any sweeper or launcher)."""
    mode = HydraConfig.get().mode
    return mode is not None and mode.name == "MULTIRUN"


def task_overrides() -> list[str]:
    """The job's own command-line overrides (a sweep's swept values included)."""
    return list(HydraConfig.get().overrides.task)


def run_identity(cfg: DictConfig, run_dir: Path) -> tuple[str, str, list[str]]:
    """(name, group, tags) for the tracker: config values win, else derived from the command line / sweep.
    A sweep's job is named after every key the sweep varies; the tags carry the experiment and those keys."""
    hydra_cfg = HydraConfig.get()
    choices = dict(hydra_cfg.runtime.choices)
    defaults = _default_config(hydra_cfg.job.config_name)
    default_choices = dict(defaults.hydra.runtime.choices) if defaults is not None else {}
    swept = sweep_keys(hydra_cfg) if in_multirun() else []
    derived = run_name(list(hydra_cfg.overrides.task), cfg, defaults, choices, default_choices, swept)
    experiment = choices.get("experiment")
    name = cfg.logger.name or derived or experiment or "default"
    sweep_dir = hydra_cfg.sweep.dir if in_multirun() else None
    group = cfg.logger.group or run_group(sweep_dir, name, run_dir, experiment)
    tags = [*([f"experiment:{experiment}"] if experiment else []), *(f"swept:{key}" for key in swept)]
    return name, group, tags


def sweep_keys(hydra_cfg: DictConfig) -> list[str]:
    """The keys this job's sweep varies: its sweeper's params, and the sweep overrides of the command line
    (as the sweep folder's multirun.yaml records them: a job's own overrides hold one value each)."""
    params = hydra_cfg.sweeper.get("params") if "sweeper" in hydra_cfg else None
    params = OmegaConf.to_container(params) if params is not None else {}
    recorded = Path(str(hydra_cfg.sweep.dir)) / "multirun.yaml"
    overrides: list[str] = []
    if recorded.is_file():
        try:
            overrides = list(OmegaConf.load(recorded).hydra.overrides.task)
        except Exception:  # an unreadable record: the sweeper's params alone
            overrides = []
    return swept_keys(overrides, params)


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
