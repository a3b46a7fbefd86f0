"""A composed config as typed, checked objects: one conversion and one walker for every entry point."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import fields, is_dataclass
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from dpo_lab.config.schemas import RunConfig
from dpo_lab.errors import ConfigError

T = TypeVar("T")


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


def non_finite(obj: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(key path, message) for every float of a dataclass tree (lists and dicts of floats included) that is
    NaN or infinite: no float key of dpo_lab takes them, and a range check such as ``> 0`` lets inf through
    (and NaN compares false with everything)."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if is_dataclass(value):
            yield from non_finite(value, f"{key}.")
        else:
            yield from _non_finite_value(key, value)


def _non_finite_value(key: str, value: Any) -> Iterator[tuple[str, str]]:
    if isinstance(value, float) and not math.isfinite(value):
        yield key, f"must be a finite number, got {value}"
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _non_finite_value(f"{key}[{i}]", item)
    elif isinstance(value, dict):
        for name, item in value.items():
            yield from _non_finite_value(f"{key}.{name}", item)


def validate(obj: Any) -> None:
    """Raise :class:`ConfigError` for the first value outside its allowed range (key path included):
    NaN or infinite floats first, then each group's own checks."""
    for key, message in (*non_finite(obj), *problems(obj)):
        raise ConfigError(key, message)


def typed_config(cfg: DictConfig, schema: type[T]) -> T:
    """The composed config as a ``schema`` object with every invariant checked (raises ConfigError)."""
    try:
        obj = OmegaConf.to_object(cfg)
    except MissingMandatoryValue as err:
        key = getattr(err, "full_key", None) or "config"
        raise ConfigError(key, f"required, and no value was given: add {key}=... to the command") from None
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "config"
        raise ConfigError(key, str(err).splitlines()[0]) from None
    assert isinstance(obj, schema)
    validate(obj)
    return obj


def to_run_config(cfg: DictConfig) -> RunConfig:
    """The training config as typed objects (raises ConfigError)."""
    return typed_config(cfg, RunConfig)
