"""What the entry points that work on a finished run (generate, merge, compare) share: one-line config
errors, typed and validated configs, logging to stderr (stdout carries the answers)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import fields, is_dataclass
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dpo_lab.config.overrides import check_overrides
from dpo_lab.config.resolvers import register_resolvers
from dpo_lab.config.schemas import ConfigError, register_configs
from dpo_lab.config.user_configs import check_user_config_dirs

T = TypeVar("T")


def typed_config(cfg: DictConfig, schema: type[T]) -> T:
    """The composed config as a ``schema`` object with every ``problems()`` checked (raises ConfigError)."""
    try:
        obj = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "config"
        raise ConfigError(key, str(err).splitlines()[0]) from None
    assert isinstance(obj, schema)
    for key, message in problems(obj):
        raise ConfigError(key, message)
    return obj


def problems(obj: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(key path, message) for every invalid value of a dataclass tree; a node's own ``problems()`` is
    responsible for its nested dataclasses, the others are walked."""
    if hasattr(obj, "problems"):
        for key, message in obj.problems():
            yield prefix + key, message
        return
    for f in fields(obj):
        value = getattr(obj, f.name)
        if is_dataclass(value):
            yield from problems(value, f"{prefix}{f.name}.")


def setup_logging() -> None:
    """INFO logs of dpo_lab on stderr, so that stdout holds only the answers."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")
    logging.getLogger("dpo_lab").setLevel(logging.INFO)


def exit_with_config_error(err: ConfigError) -> None:
    print(f"dpo_lab: invalid config: {err}", file=sys.stderr)
    sys.exit(2)


def run_entry_point(hydra_main: Callable[[], Any], schema: type) -> None:
    """Console entry: register the schemas, give one-line errors for bad overrides, then run Hydra."""
    register_configs()
    register_resolvers()
    try:
        check_overrides(sys.argv[1:], root=schema)
        check_user_config_dirs(sys.argv[1:])
    except ConfigError as err:
        exit_with_config_error(err)
    hydra_main()
