"""A user's own config folder (``--config-dir DIR``): checked before Hydra composes.

Hydra searches a ``--config-dir`` folder after the shipped configs, so a file there with the same path as a
shipped option (say ``data/finance.yaml``) would be ignored without a word. Such a folder is refused with one
line that says how to name the file instead; new options, experiments and sweeps are found as usual.
"""

from __future__ import annotations

import os
import sys
from importlib.resources import files
from pathlib import Path

from dpo_lab.config.resolvers import CONF_PACKAGE
from dpo_lab.errors import ConfigError


def config_dirs(args: list[str]) -> list[Path]:
    """The folders given with ``--config-dir DIR`` / ``--config-dir=DIR`` / ``-cd DIR``."""
    found = []
    for i, arg in enumerate(args):
        if arg in ("--config-dir", "-cd") and i + 1 < len(args):
            found.append(Path(args[i + 1]))
        elif arg.startswith("--config-dir="):
            found.append(Path(arg.split("=", 1)[1]))
    return found


def config_roots(args: list[str]) -> list:
    """Where Hydra looks for options: the shipped configs, then each ``--config-dir`` folder."""
    return [files(CONF_PACKAGE), *(d for d in config_dirs(args) if d.is_dir())]


def group_names(args: list[str] = ()) -> list[str]:
    """The config groups (folders of the config roots), Hydra's own left out."""
    names = {p.name for root in config_roots(list(args)) for p in root.iterdir() if p.is_dir()}
    return sorted(names - {"hydra", "__pycache__"})


def group_options(group: str, args: list[str] = ()) -> list[str]:
    """The options of a config group: ``<root>/<group>/*.yaml`` of every config root."""
    options = set()
    for root in config_roots(list(args)):
        folder = root.joinpath(group)
        if folder.is_dir():
            options |= {p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml")}
    return sorted(options)


def shipped_config_files() -> set[str]:
    """Every YAML path of the shipped configs, relative to their root (``data/finance.yaml``, ...)."""
    names: set[str] = set()
    pending = [("", files(CONF_PACKAGE))]
    while pending:
        prefix, folder = pending.pop()
        for entry in folder.iterdir():
            if entry.is_dir():
                pending.append((f"{prefix}{entry.name}/", entry))
            elif entry.name.endswith(".yaml"):
                names.add(prefix + entry.name)
    return names


def check_user_config_dirs(args: list[str]) -> None:
    """Raise ConfigError for a missing ``--config-dir`` folder or one that shadows a shipped option."""
    shipped = None
    for folder in config_dirs(args):
        if not folder.is_dir():
            raise ConfigError("--config-dir", f"{folder} is not a folder")
        shipped = shipped if shipped is not None else shipped_config_files()
        for path in sorted(folder.rglob("*.yaml")):
            rel = path.relative_to(folder).as_posix()
            if rel in shipped:
                group, _, name = rel.rpartition("/")
                stem = name[: -len(".yaml")]
                hint = (
                    f"select it with {group}={stem}_mine" if group else "name your primary config differently"
                )
                raise ConfigError(
                    "--config-dir",
                    f"{path} has the name of a shipped config, which Hydra would use instead; rename it "
                    f"(e.g. {rel[: -len('.yaml')]}_mine.yaml) and {hint}",
                )


def make_config_dirs_importable(args: list[str]) -> list[Path]:
    """Put each ``--config-dir`` folder at the end of the import path, in this process and (through
    ``PYTHONPATH``) in the processes a launcher starts, so that ``package.module:function`` names a loss,
    checker or reward function in a Python file beside your configs. Appended, never prepended: a file there
    cannot shadow an installed package. Returns the folders added."""
    added = []
    for folder in config_dirs(args):
        path = str(folder.resolve())
        if folder.is_dir() and path not in sys.path:
            sys.path.append(path)
            added.append(folder)
    if added:
        current = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        extra = [str(f.resolve()) for f in added if str(f.resolve()) not in current]
        os.environ["PYTHONPATH"] = os.pathsep.join([*current, *extra])
    return added
