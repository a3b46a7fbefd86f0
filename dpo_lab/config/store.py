"""Hydra's ConfigStore entries of dpo_lab: every run group's schema, the run's root schema and the schemas of
the commands that work on a run folder (registered explicitly by the entry points, never at import time)."""

from __future__ import annotations

from hydra.core.config_store import ConfigStore

from dpo_lab.config.commands import ENTRY_POINTS
from dpo_lab.config.schemas import GROUPS, RunConfig


def register_configs() -> None:
    """Register every group schema as ``<group>/base_<group>`` and the root schema as ``base_config``."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=RunConfig)
    for group, schema in GROUPS.items():
        cs.store(group=group, name=f"base_{group}", node=schema)
    for name, schema in ENTRY_POINTS.items():
        cs.store(name=f"base_{name}", node=schema)
