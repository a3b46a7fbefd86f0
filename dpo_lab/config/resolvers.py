"""OmegaConf resolvers used by the YAML in conf/ (registered explicitly, never at import time)."""

from __future__ import annotations

from omegaconf import OmegaConf

from dpo_lab.assets import ASSETS_DIR
from dpo_lab.runtime.processes import launch_time

# The shipped configs: the repository's top-level conf/, installed as the package ``dpo_lab.conf``
# (pyproject.toml), so the same lookup works in a checkout, an editable install and an installed wheel.
CONF_PACKAGE = "dpo_lab.conf"
CONF_PATH = f"pkg://{CONF_PACKAGE}"


def asset_path(name: str) -> str:
    """``${dpo_lab_asset:tiny-llama}`` -> absolute path of an asset shipped inside the package."""
    path = ASSETS_DIR / name
    if not path.exists():
        raise FileNotFoundError(f"dpo_lab ships no asset named {name!r} (looked in {ASSETS_DIR})")
    return str(path)


def launch_time_text(pattern: str) -> str:
    """``${dpo_lab_launch_time:%H-%M-%S}`` -> the launch's start time, the same in every process of a
    multi-process launch (Hydra's ``${now:...}`` is resolved by each process on its own)."""
    return launch_time().strftime(pattern)


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("dpo_lab_asset"):
        OmegaConf.register_new_resolver("dpo_lab_asset", asset_path)
    if not OmegaConf.has_resolver("dpo_lab_launch_time"):
        OmegaConf.register_new_resolver("dpo_lab_launch_time", launch_time_text)
