"""Option YAMLs state only what differs from their schema: every key has one default, in the schema."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from dpo_lab.config.schemas import GROUPS
from tests.helpers import CONF


def repeated_defaults(values: dict, defaults: dict, prefix: str = "") -> list[str]:
    """Keys of ``values`` (nested) whose value equals the schema default."""
    found = []
    for key, value in values.items():
        if key == "defaults" or key not in defaults:
            continue
        default = defaults[key]
        if isinstance(value, dict) and isinstance(default, dict):
            found += repeated_defaults(value, default, f"{prefix}{key}.")
        elif value == default or getattr(default, "value", object()) == value:
            found.append(prefix + key)
    return found


OPTIONS = [(group, path) for group in GROUPS for path in sorted((CONF / group).glob("*.yaml"))]


@pytest.mark.parametrize(("group", "path"), OPTIONS, ids=lambda v: v if isinstance(v, str) else v.stem)
def test_option_states_only_what_differs_from_its_schema(group: str, path: Path) -> None:
    defaults = OmegaConf.to_container(OmegaConf.structured(GROUPS[group]))
    values = yaml.safe_load(path.read_text()) or {}
    assert repeated_defaults(values, defaults) == [], f"{path.relative_to(CONF)} repeats schema defaults"


def test_the_check_finds_a_repeated_default() -> None:
    defaults = OmegaConf.to_container(OmegaConf.structured(GROUPS["dpo"]))
    assert repeated_defaults({"beta": defaults["beta"], "max_length": 7}, defaults) == ["beta"]
