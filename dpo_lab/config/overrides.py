"""Check command-line overrides against the schemas before Hydra composes, for one-line errors.

Hydra rejects a misspelt key or a wrong type too, but with a multi-line message that does not say what
is allowed. This check covers ``key=value`` and ``+key=value`` overrides (and each value of a discrete
sweep) and the option named by a group choice (``experiment=...``, ``sweep=...``: Hydra silently skips an
unknown option of an ``optional`` group); ``~`` overrides and ``hydra.*`` keys are left to Hydra.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from enum import Enum
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dpo_lab.config.schemas import GROUPS, RunConfig
from dpo_lab.config.user_configs import group_names, group_options
from dpo_lab.errors import ConfigError

_OTHER_GROUPS = {"experiment", "sweep", "hydra"}
_SETS = (OverrideType.CHANGE, OverrideType.ADD, OverrideType.FORCE_ADD)
_PLURALS = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}


def check_overrides(args: list[str], root: type = RunConfig) -> None:
    """Raise ConfigError for the first override naming an unknown key or a value of the wrong type.

    ``root`` is the schema of the entry point (RunConfig for ``dpo_lab.run``, GenerateConfig, ...)."""
    candidates = [a for a in args if "=" in a and not a.startswith("-")]
    try:
        overrides = OverridesParser.create().parse_overrides(candidates)
    except HydraException:
        return  # a syntax error: Hydra's own message says where
    for override in overrides:
        if root is RunConfig and _is_group_choice(override, args):
            _check_group_choice(override, args)
        elif _is_checked(override, root):
            _check_one(override, root)


def _is_checked(override: Override, root: type = RunConfig) -> bool:
    key = override.key_or_group
    if override.type not in _SETS or override.package is not None:
        return False
    groups = GROUPS if root is RunConfig else {}
    return "/" not in key and key.split(".", 1)[0] not in _OTHER_GROUPS and key not in groups


def _is_group_choice(override: Override, args: list[str]) -> bool:
    key = override.key_or_group
    return override.type in _SETS and "." not in key and key in group_names(args)


def set_values(override: Override) -> list[Any]:
    """The values an override sets: its one value, or each value of a discrete sweep (none for a range or
    interval sweep, whose values the sweeper draws)."""
    if not override.is_sweep_override():
        return [override.value()]
    return list(override.sweep_iterator()) if override.is_discrete_sweep() else []


def _check_group_choice(override: Override, args: list[str]) -> None:
    group = override.key_or_group
    values = set_values(override)
    options = group_options(group, args)
    for value in values:
        if value is not None and str(value) not in options:
            close = difflib.get_close_matches(str(value), options, n=1)
            hint = f" (did you mean {group}={close[0]}?)" if close else ""
            raise ConfigError(
                group, f"no option {value!r}{hint}; the {group} options are: {', '.join(options)}"
            )


def dict_overrides_as_force_add(args: list[str], root: type = RunConfig) -> list[str]:
    """``train.extra={...}`` and ``train.extra.key=v`` as ``++train.extra...``: a free-form mapping of the
    schema is struct-locked once Hydra composes, so a plain override of it fails ("not in struct") and only
    ``+`` worked; ``++`` merges into the mapping the same way, with or without a key there already."""
    out = []
    for arg in args:
        out.append(f"++{arg}" if _sets_into_mapping(arg, root) else arg)
    return out


def _sets_into_mapping(arg: str, root: type) -> bool:
    if "=" not in arg or arg.startswith(("-", "+", "~")):
        return False
    try:
        (override,) = OverridesParser.create().parse_overrides([arg])
    except (HydraException, ValueError):
        return False
    if not _is_checked(override, root):
        return False
    node: Any = root
    for part in override.key_or_group.split("."):
        if not (isinstance(node, type) and dataclasses.is_dataclass(node)):
            return False
        node = typing.get_type_hints(node).get(part)
        if typing.get_origin(node) is dict:
            return True
    return False


def _check_one(override: Override, root: type = RunConfig) -> None:
    key = override.key_or_group
    field_type = field_type_at(key, root)
    values = set_values(override)
    schema = OmegaConf.structured(root)
    for value in values:
        try:
            OmegaConf.update(schema, key, value, merge=False)
        except OmegaConfBaseException as err:
            raise ConfigError(key, f"{describe_type(field_type)}; got {value!r}") from err


def field_type_at(key: str, root: type = RunConfig) -> Any:
    """The declared type of a dotted key in ``root``; ConfigError naming the allowed keys if unknown."""
    node: Any = root
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if not (isinstance(node, type) and dataclasses.is_dataclass(node)):
            return Any  # inside a free-form mapping such as train.extra
        hints = typing.get_type_hints(node)
        if part not in hints:
            parent = ".".join(parts[:depth]) or "the config"
            allowed = sorted(hints)
            close = difflib.get_close_matches(part, allowed, n=1)
            hint = f" (did you mean {'.'.join([*parts[:depth], close[0]])}?)" if close else ""
            raise ConfigError(key, f"no such key{hint}; {parent} accepts: {', '.join(allowed)}")
        node = hints[part]
    return node


def describe_type(tp: Any) -> str:
    """What values a schema type allows, for a user."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    optional = len(args) < len(typing.get_args(tp))
    if optional and len(args) == 1:
        return describe_type(args[0]) + " (or null)"
    if isinstance(tp, type) and issubclass(tp, Enum):
        return "must be one of " + ", ".join(m.value for m in tp)
    if tp is bool:
        return "must be true or false"
    if tp is int:
        return "must be an integer"
    if tp is float:
        return "must be a number"
    if tp is str:
        return "must be a string"
    origin = typing.get_origin(tp)
    if origin is list:
        item = typing.get_args(tp)[0]
        return f"must be a list like [a,b] of {_PLURALS.get(item, str(item))}"
    if origin is dict:
        return "must be a mapping like {key: value}"
    return f"must be of type {tp}"
