"""Compose the config as Hydra will, before Hydra runs, so that what only composition finds is refused in
one line too (exit code 2): a YAML syntax error in a file (with its file, line and column), a misspelt key
inside a config file (with a close key suggested), a deleted required key, an override that does not parse,
a bad value of a launcher's own keys (``hydra.launcher.pack_size=0``) or a misspelt one.

With ``-m`` the first value of each sweep override stands for the sweep (every value of a discrete sweep
is type-checked by dpo_lab.config.overrides already). Nothing here imports torch or the training libraries.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, OverrideParseException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from dpo_lab.config.overrides import field_type_at
from dpo_lab.config.resolvers import CONF_PACKAGE
from dpo_lab.config.user_configs import config_dirs
from dpo_lab.errors import ConfigError

# flags of Hydra's command line that take a value, and ones that do not
_FLAGS_WITH_VALUE = {"--config-dir", "-cd", "--config-name", "-cn", "--config-path", "-cp", "--cfg", "-c",
                     "--package", "-p", "--info", "-i", "--experimental-rerun"}  # fmt: skip
_KEY_NOT_IN = re.compile(r"Key '(?P<key>[^']+)' not in '(?P<schema>[^']+)'")
_FULL_KEY = re.compile(r"full_key: (?P<key>\S+)")


def check_composition(args: list[str]) -> None:
    """Raise ConfigError for what composing ``args`` (a command line) finds; nothing when it composes."""
    overrides, config_name = _overrides(args)
    if overrides is None:
        return  # a sweep value this check cannot stand in for: Hydra reports it itself
    dirs = [d.resolve() for d in config_dirs(args)]
    if dirs:
        overrides.append("hydra.searchpath=[" + ",".join(f"file://{d}" for d in dirs) + "]")
    cfg = _compose(overrides, config_name)
    check_launcher(cfg)


def _overrides(args: list[str]) -> tuple[list[str] | None, str]:
    """The key=value overrides of a command line (a sweep's first values), and the config name."""
    config_name, plain, skip = "config", [], False
    for i, arg in enumerate(args):
        if skip:
            skip = False
            continue
        if arg in _FLAGS_WITH_VALUE:
            skip = True
            if arg in ("--config-name", "-cn") and i + 1 < len(args):
                config_name = args[i + 1]
        elif arg.startswith("--config-name="):
            config_name = arg.split("=", 1)[1]
        elif not arg.startswith("-"):
            plain.append(arg)
    overrides = []
    parser = OverridesParser.create()
    for arg in plain:
        try:
            [override] = parser.parse_overrides([arg])
        except OverrideParseException as err:
            raise ConfigError(arg.split("=", 1)[0], f"cannot parse {arg!r}: {_first_line(err)}") from None
        if not override.is_sweep_override():
            overrides.append(arg)
            continue
        try:
            first = next(iter(override.sweep_iterator()))
        except (TypeError, ValueError, HydraException, StopIteration):
            return None, config_name  # an interval() or the like: no first value
        overrides.append(f"{override.get_key_element()}={_text(first)}")
    return overrides, config_name


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value if re.fullmatch(r"[\w./:@+-]*", value) else "'" + value.replace("'", "\\'") + "'"
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    return str(value)


def _compose(overrides: list[str], config_name: str) -> DictConfig:
    from hydra import compose, initialize_config_module
    from hydra.core.plugins import Plugins

    if any(o.startswith(("hydra/", "+hydra/", "~hydra/")) for o in overrides):
        Plugins.instance()  # the launchers' and sweepers' nodes (hydra/launcher=packed...) are registered
    try:
        with initialize_config_module(config_module=CONF_PACKAGE, version_base="1.3"):
            return compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    except yaml.YAMLError as err:
        raise _yaml_error(err) from None
    except (HydraException, OmegaConfBaseException) as err:
        raise _composition_error(err) from None


def _yaml_error(err: yaml.YAMLError) -> ConfigError:
    """``<file> line L, column C: invalid YAML: <problem>`` (where the parser stopped, and where what it was
    reading began, e.g. an unclosed bracket)."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or _first_line(err)
    if mark is None:
        return ConfigError("YAML", problem)
    context, opened = getattr(err, "context", None), getattr(err, "context_mark", None)
    began = (
        f" ({context} from line {opened.line + 1}, column {opened.column + 1})" if context and opened else ""
    )
    where = f"{mark.name} line {mark.line + 1}, column {mark.column + 1}"
    return ConfigError(where, f"invalid YAML: {problem}{began}")


def _composition_error(err: Exception) -> ConfigError:
    """One line from what Hydra / OmegaConf raised while composing (the innermost error says the key)."""
    texts = [str(err)]
    cause = err.__cause__ or err.__context__
    while cause is not None:
        texts.append(str(cause))
        cause = cause.__cause__ or cause.__context__
    text = "\n".join(texts)
    where = re.search(r"In '([^']+)'", text)
    source = f" (in {where.group(1)}.yaml)" if where else ""
    missing = _KEY_NOT_IN.search(text)
    full = _FULL_KEY.search(text)
    if missing and full:
        return _unknown_key(full.group("key"), source)
    if "does not support deletion" in text and full:
        return ConfigError(
            full.group("key"), "a key of the schema cannot be deleted; set it to a value instead"
        )
    key = full.group("key") if full else "config"
    return ConfigError(key, _first_line(err) + source)


def _unknown_key(key: str, source: str) -> ConfigError:
    """A key no schema has: the check of command-line keys names what is allowed and the closest one."""
    if key.startswith("hydra."):
        parent, _, name = key.rpartition(".")
        return ConfigError(key, f"no such key{source}; see `python -m dpo_lab.run --cfg hydra` for {parent}")
    try:
        field_type_at(key)
    except ConfigError as err:
        message = str(err).split(": ", 1)[1]
        return ConfigError(key, message.replace("no such key", f"no such key{source}", 1))
    return ConfigError(key, f"no such key{source}")


def check_launcher(cfg: DictConfig) -> None:
    """A launcher plugin checks its own keys when Hydra makes it, with a multi-line error; here it is made
    once, ahead, and its refusal becomes one line (dpo_lab's packed launcher: pack_size, step)."""
    from hydra.utils import instantiate

    launcher = cfg.hydra.get("launcher") if "hydra" in cfg else None
    if launcher is None or not str(launcher.get("_target_", "")).startswith("hydra_plugins.dpo_lab"):
        return
    try:
        instantiate(launcher)
    except Exception as err:  # InstantiationException around the plugin's own ValueError
        inner = err.__cause__ or err
        message = _first_line(inner)
        key, sep, rest = message.partition(": ")
        if sep and key.startswith("hydra.launcher."):
            raise ConfigError(key, rest) from None
        raise ConfigError("hydra.launcher", message) from None


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__
