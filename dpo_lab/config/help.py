"""What every config key is for, read from the schema metadata (:func:`dpo_lab.config.fields.setting`).

- :func:`explain`: the help of one key (``dpo.beta``, ``eval.generation.top_p``, ``seed``,
  ``generate.prompt``), of a group (``dpo``, ``eval.checker``) or of a command's config (``merge``), as
  ``dpo-lab explain KEY`` and ``dpo-lab --help KEY`` print it;
- :func:`markdown_tables`: the key tables of docs/configuration.md (``dpo-lab explain --markdown``), kept
  in the page between :data:`GENERATED_START` and :data:`GENERATED_END` by :func:`replace_generated_block`.

Pure functions over the schemas and the shipped YAML options; nothing here imports torch or the training
libraries, so that ``dpo-lab explain`` answers at once.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import textwrap
import types
import typing
from dataclasses import dataclass
from enum import Enum
from importlib.resources import files
from typing import Any

from omegaconf import MISSING, OmegaConf

from dpo_lab.config.commands import ENTRY_POINTS
from dpo_lab.config.fields import ARTEFACTS, changes_of, default_of, differs_in_pack, help_of
from dpo_lab.config.resolvers import CONF_PACKAGE
from dpo_lab.config.schemas import GROUPS, RunConfig
from dpo_lab.config.user_configs import group_names, group_options
from dpo_lab.errors import ConfigError

GENERATED_START = "<!-- generated: dpo-lab explain --markdown -->"
GENERATED_END = "<!-- end generated -->"
REGENERATE = "dpo-lab explain --markdown --update docs/configuration.md"

# how the shared artefacts of dpo_lab.fields.ARTEFACTS read in a sentence
_ARTEFACT_TEXT = {
    "base": "base model",
    "tokenizer": "tokenizer",
    "pairs": "preference pairs",
    "tokenized": "tokenized datasets",
    "reference": "reference log-probs",
}
_WIDTH = 100


@dataclass(frozen=True)
class Entry:
    """A key or a group of keys that :func:`explain` knows."""

    name: str  # dotted, as explain() takes it: dpo.beta, seed, generate.prompt, eval.checker
    type: Any  # the declared type (a dataclass for a group)
    field: dataclasses.Field | None  # None for a group of RunConfig and a command's config
    area: str  # the group, "" for the top-level keys, or the command (generate, merge, compare)

    @property
    def is_group(self) -> bool:
        return isinstance(self.type, type) and dataclasses.is_dataclass(self.type)

    @property
    def is_command(self) -> bool:
        return self.area in ENTRY_POINTS

    @property
    def key(self) -> str:
        """The key as the command line spells it (a command's keys are not prefixed with its name)."""
        return self.name.split(".", 1)[1] if self.is_command and "." in self.name else self.name


# ----------------------------------------------------------------------------------------------------------
# the index of known keys


def _walk(schema: type, prefix: str, area: str) -> typing.Iterator[Entry]:
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        entry = Entry(f"{prefix}{f.name}", hints[f.name], f, area)
        yield entry
        if entry.is_group:
            yield from _walk(entry.type, f"{entry.name}.", area)


@functools.cache
def index() -> dict[str, Entry]:
    """Every key and group :func:`explain` knows, by dotted name: the run's groups, its top-level keys and
    the configs of the commands that work on a run folder."""
    entries: dict[str, Entry] = {}
    for group, schema in GROUPS.items():
        entries[group] = Entry(group, schema, None, group)
        entries.update((e.name, e) for e in _walk(schema, f"{group}.", group))
    hints = typing.get_type_hints(RunConfig)
    for f in dataclasses.fields(RunConfig):
        if f.name not in GROUPS:
            entries[f.name] = Entry(f.name, hints[f.name], f, "")
    for command, schema in ENTRY_POINTS.items():
        entries[command] = Entry(command, schema, None, command)
        entries.update((e.name, e) for e in _walk(schema, f"{command}.", command))
    return entries


def known_keys() -> list[str]:
    """Every name :func:`explain` accepts (keys, groups, commands, the option-only groups)."""
    return [*index(), *_option_only_groups()]


def _option_only_groups() -> list[str]:
    """Config groups with options but no keys of their own (experiment, sweep)."""
    return [g for g in group_names() if g not in GROUPS]


# ----------------------------------------------------------------------------------------------------------
# the shipped YAML options


@functools.cache
def _yaml(path: str) -> dict[str, Any]:
    """A shipped YAML file (relative to the config root) as plain data, interpolations unresolved; the
    defaults list and the hydra node left out."""
    data = OmegaConf.to_container(OmegaConf.create(files(CONF_PACKAGE).joinpath(path).read_text()))
    assert isinstance(data, dict)
    return {k: v for k, v in data.items() if k not in ("defaults", "hydra")}


@functools.cache
def default_options() -> dict[str, str]:
    """The option each group composes by default (the defaults list of conf/config.yaml)."""
    text = files(CONF_PACKAGE).joinpath("config.yaml").read_text()
    defaults = OmegaConf.to_container(OmegaConf.create(text)).get("defaults", [])  # type: ignore[union-attr]
    chosen = {}
    for item in defaults:
        if isinstance(item, dict):
            for group, option in item.items():
                if " " not in group and option is not None:
                    chosen[group] = str(option)
    return chosen


def option_summary(group: str, option: str) -> str:
    """The first sentence of the comment that opens ``conf/<group>/<option>.yaml``."""
    lines = []
    for line in files(CONF_PACKAGE).joinpath(group, f"{option}.yaml").read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if not text.startswith(("@package", "python -m", "dpo-lab ")):
            lines.append(text)
    words = " ".join(lines)
    return re.split(r"(?<=\.)\s+(?=[A-Z`(])", words, maxsplit=1)[0] if words else ""


_ABSENT = object()


def _lookup(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return _ABSENT
        data = data[part]
    return data


def shipped_values(entry: Entry) -> list[tuple[str, Any]]:
    """``(where, value)`` for each shipped config that sets ``entry`` to other than its schema default:
    ``train=default`` for an option of the key's group, ``generate.yaml`` for a command's config,
    ``config.yaml`` for a top-level key. The group's default option comes first."""
    assert entry.field is not None
    default = _plain(default_of(entry.field))
    if entry.area == "":
        sources = [("config.yaml", "config.yaml", entry.name)]
    elif entry.is_command:
        sources = [(f"{entry.area}.yaml", f"{entry.area}.yaml", entry.key)]
    else:
        first = default_options().get(entry.area)
        options = sorted(group_options(entry.area), key=lambda o: (o != first, o))
        relative = entry.name.split(".", 1)[1]
        sources = [(f"{entry.area}={o}", f"{entry.area}/{o}.yaml", relative) for o in options]
    found = []
    for where, path, key in sources:
        value = _lookup(_yaml(path), key)
        if value is not _ABSENT and value != default:
            found.append((where, value))
    return found


def _default_config_value(entry: Entry) -> tuple[str, Any] | None:
    """What the config composed without overrides sets instead of the schema default, if anything."""
    found = shipped_values(entry)
    if not found:
        return None
    where, value = found[0]
    if entry.area in GROUPS and where != f"{entry.area}={default_options().get(entry.area)}":
        return None
    return where, value


# ----------------------------------------------------------------------------------------------------------
# how types and values read


def type_text(tp: Any) -> str:
    """A declared type as a user reads it: ``float``, ``list[str]``, ``str | None``, ``none | nf4 | int8``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        kept = [a for a in args if a is not type(None)]
        text = " | ".join(type_text(a) for a in kept)
        if len(kept) < len(args):
            enum = len(kept) == 1 and isinstance(kept[0], type) and issubclass(kept[0], Enum)
            text = f"({text}) | None" if enum else f"{text} | None"
        return text
    if isinstance(tp, type) and issubclass(tp, Enum):
        return " | ".join(str(m.value) for m in tp)
    if origin is not None:
        return f"{origin.__name__}[{', '.join(type_text(a) for a in typing.get_args(tp))}]"
    if tp is Any:
        return "Any"
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return "group"
    return getattr(tp, "__name__", str(tp))


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def value_text(value: Any) -> str:
    """A value as it is written on the command line / in YAML: ``null``, ``true``, ``5e-6``, ``[sigmoid]``;
    ``???`` for a required key."""
    value = _plain(value)
    if value is MISSING or value == MISSING:
        return "???"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value and abs(value) < 1e-3:  # 5e-4, not 0.0005 (YAML reads 5e-4 as that float)
            mantissa, exponent = f"{value:.15e}".split("e")
            return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(value_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {value_text(v)}" for k, v in value.items()) + "}"
    if value == "":
        return "''"
    return str(value)


def default_text(entry: Entry) -> str:
    assert entry.field is not None
    return value_text(default_of(entry.field))


def _changes_text(changes: frozenset[str]) -> str:
    names = [_ARTEFACT_TEXT[a] for a in ARTEFACTS if a in changes]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"changes the shared {listed} (jobs that differ in it do not share them)"


def _trl_text(f: dataclasses.Field) -> str | None:
    name = f.metadata.get("trl")
    if not name:
        return None
    differs = f.metadata.get("trl_differs")
    same = f"differs from TRL's default: {differs}" if differs else "same default as TRL"
    return f"passed to trl.DPOConfig.{name}; {same}"


# ----------------------------------------------------------------------------------------------------------
# explain


def explain(key: str) -> str:
    """The help of a key, a group of keys or a command's config (see the module docstring); ConfigError
    naming the closest known keys for an unknown one."""
    key = key.strip()
    if not key:
        return overview()
    entries = index()
    if key in entries:
        entry = entries[key]
        return _explain_group(entry) if entry.is_group else _explain_key(entry)
    if key in _option_only_groups():
        return _explain_option_group(key)
    mapping = _inside_mapping(key)
    if mapping is not None:
        return f"{key}: a key inside the free-form mapping {mapping.name}\n\n{_explain_key(mapping)}"
    raise ConfigError(key, f"no such key; {_suggest(key)}")


def _inside_mapping(key: str) -> Entry | None:
    """The free-form mapping (train.extra, dpo.loss_params) that ``key`` is inside, if any."""
    parts = key.split(".")
    for depth in range(len(parts) - 1, 0, -1):
        entry = index().get(".".join(parts[:depth]))
        if entry is not None:
            return entry if typing.get_origin(entry.type) is dict else None
    return None


def _suggest(key: str) -> str:
    names = known_keys()
    last = key.rsplit(".", 1)[-1]
    matches = [n for n in names if n.rsplit(".", 1)[-1] == last and n != key]
    if not matches:
        matches = difflib.get_close_matches(key, names, n=1)
    if not matches:
        by_last: dict[str, list[str]] = {}
        for n in names:
            by_last.setdefault(n.rsplit(".", 1)[-1], []).append(n)
        close = difflib.get_close_matches(last, list(by_last), n=1)
        matches = by_last[close[0]] if close else []
    if not matches:
        return "`dpo-lab explain` lists the groups, the top-level keys and the commands"
    matches = matches[:4]
    listed = matches[0] if len(matches) == 1 else ", ".join(matches[:-1]) + " or " + matches[-1]
    return f"did you mean {listed}?"


def _wrap(text: str, indent: str = "  ", hang: str | None = None) -> str:
    """``text`` filled to the terminal width; ``hang``: the indent of its continuation lines."""
    return textwrap.fill(
        text,
        width=_WIDTH,
        initial_indent=indent,
        subsequent_indent=indent if hang is None else hang,
        break_on_hyphens=False,
    )


def _where(entry: Entry) -> str:
    if entry.is_command:
        return f"dpo-lab {entry.area} {entry.key}=..."
    return f"python -m dpo_lab.run {entry.name}=... (or dpo-lab train {entry.name}=...)"


def _explain_key(entry: Entry) -> str:
    f = entry.field
    assert f is not None
    lines = [f"{entry.name}", _wrap(help_of(f))]
    facts = [("type", type_text(entry.type)), ("default", default_text(entry))]
    shipped = shipped_values(entry)
    if shipped:
        sets = ", ".join(f"{where} sets {value_text(value)}" for where, value in shipped)
        facts.append(("shipped", sets))
    trl = _trl_text(f)
    if trl:
        facts.append(("TRL", trl))
    if differs_in_pack(f):
        facts.append(("pack", "may differ between jobs of one pack (hydra/launcher=packed)"))
    if changes_of(f):
        facts.append(("reuse", _changes_text(changes_of(f))))
    facts.append(("set", _where(entry)))
    width = max(len(name) for name, _ in facts) + 2
    for name, text in facts:
        lines.append(_wrap(text, indent=f"  {name + ':':<{width}}", hang=" " * (width + 2)))
    return "\n".join(lines)


def _key_lines(entries: list[Entry], relative_to: str = "") -> list[str]:
    names = [e.name[len(relative_to) :] for e in entries]
    defaults = [default_text(e) for e in entries]
    wn = max(len(n) for n in names)
    wd = min(max(len(d) for d in defaults), 24)
    rows = zip(names, defaults, entries, strict=True)
    return [f"  {n:<{wn}}  {d:<{wd}}  {help_of(e.field)}" for n, d, e in rows]  # type: ignore[arg-type]


def _leaf_entries(group: Entry) -> list[Entry]:
    prefix = f"{group.name}."
    return [e for e in index().values() if e.name.startswith(prefix) and not e.is_group]


def _explain_group(entry: Entry) -> str:
    leaves = _leaf_entries(entry)
    if entry.is_command and entry.field is None:
        lines = [
            f"{entry.name}: the config of `dpo-lab {entry.name}` (conf/{entry.name}.yaml)",
            f"  keys (dpo-lab {entry.name} KEY=VALUE ...):",
        ]
        lines += ["  " + line for line in _key_lines(leaves, relative_to=f"{entry.name}.")]
        return "\n".join(lines)
    if entry.field is None:  # a group of the run
        title = f"{entry.name}: the {entry.name} config group (conf/{entry.name}/)"
        lines = [title, *_options_lines(entry.name)]
        lines.append(f"  keys ({entry.name}.KEY=VALUE):")
    else:  # a group nested in another (data.columns, eval.checker, generate.generation)
        lines = [entry.name, _wrap(help_of(entry.field)), "  keys:"]
    lines += ["  " + line for line in _key_lines(leaves)]
    return "\n".join(lines)


def _options_lines(group: str) -> list[str]:
    options = group_options(group)
    if not options:
        return []
    chosen = default_options().get(group)
    head = f"  options ({group}=NAME" + (f"; default {chosen}):" if chosen else "):")
    width = max(len(o) for o in options)
    return [head, *(f"    {o:<{width}}  {option_summary(group, o)}".rstrip() for o in options)]


def _explain_option_group(group: str) -> str:
    return "\n".join(
        [
            f"{group}: a config group with options but no keys of its own (conf/{group}/)",
            *_options_lines(group),
        ]
    )


def overview() -> str:
    """What ``dpo-lab explain`` with no key prints: the groups, the top-level keys and the commands."""
    lines = ["config groups (python -m dpo_lab.run GROUP=OPTION GROUP.KEY=VALUE):"]
    groups = [*GROUPS, *_option_only_groups()]
    width = max(len(g) for g in groups)
    for group in groups:
        options = group_options(group)
        chosen = default_options().get(group)
        listed = ", ".join(f"{o} (default)" if o == chosen else o for o in options)
        listed = f"options: {listed}" if options else f"no options (set {group}.KEY=VALUE)"
        lines.append(f"  {group:<{width}}  {listed}")
    tops = [e for e in index().values() if e.area == "" and not e.is_group]
    lines += ["", "top-level keys (KEY=VALUE):", *_key_lines(tops)]
    lines += ["", "commands that work on a run folder (dpo-lab COMMAND KEY=VALUE):"]
    lines += [f"  {command}" for command in ENTRY_POINTS]
    lines += ["", "dpo-lab explain GROUP | KEY | COMMAND[.KEY] shows one of them in full."]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# markdown


def _cell(text: str) -> str:
    """Help text as a table cell: ``|`` escaped, ``<run>`` kept visible (not read as an HTML tag)."""
    return text.replace("|", "\\|").replace("<", "&lt;").replace("\n", " ")


def _code(text: str) -> str:
    """A value or type as a code span in a table cell (only ``|`` needs escaping there)."""
    return "`" + text.replace("|", "\\|") + "`" if text else ""


def _table(rows: list[Entry], relative_to: str = "") -> list[str]:
    lines = ["| key | type | default | what it is for |", "|---|---|---|---|"]
    for e in rows:
        assert e.field is not None
        name = e.name[len(relative_to) :]
        if e.is_group:
            lines.append(
                f"| {_code(name)} | group | | {_cell(help_of(e.field))}: the `{name}.*` keys below |"
            )
            continue
        default = _code(default_text(e))
        instead = _default_config_value(e)
        if instead is not None:
            default += f" ({_code(instead[0])}: {_code(value_text(instead[1]))})"
        lines.append(
            f"| {_code(name)} | {_code(type_text(e.type))} | {default} | {_cell(help_of(e.field))} |"
        )
    return lines


def markdown_tables() -> str:
    """The key tables of docs/configuration.md: one section per group of the run (in the order of
    GROUPS), the top-level keys, then the config of each command. Deterministic."""
    sections = []
    for group in GROUPS:
        options = group_options(group)
        chosen = default_options().get(group)
        listed = ", ".join(f"`{o}` (default)" if o == chosen else f"`{o}`" for o in options)
        intro = f"Options (`{group}=NAME`): {listed}." if options else f"No options: set `{group}.KEY=VALUE`."
        rows = [e for e in index().values() if e.name.startswith(f"{group}.")]
        lines = [f"### {group}", "", intro, "", *_table(rows)]
        sections.append("\n".join(lines))
    tops = [e for e in index().values() if e.area == "" and not e.is_group]
    sections.append("\n".join(["### top-level keys", "", *_table(tops)]))
    for command in ENTRY_POINTS:
        rows = [e for e in index().values() if e.name.startswith(f"{command}.")]
        intro = f"`dpo-lab {command} KEY=VALUE ...` (`conf/{command}.yaml`):"
        sections.append(
            "\n".join([f"### {command}", "", intro, "", *_table(rows, relative_to=f"{command}.")])
        )
    return "\n\n".join(sections) + "\n"


def replace_generated_block(page: str) -> str:
    """``page`` with the text between :data:`GENERATED_START` and :data:`GENERATED_END` replaced by
    :func:`markdown_tables`; ValueError when the page lacks the markers (or has them twice)."""
    if page.count(GENERATED_START) != 1 or page.count(GENERATED_END) != 1:
        raise ValueError(f"the page needs one {GENERATED_START} line and one {GENERATED_END} line after it")
    head, rest = page.split(GENERATED_START)
    _, tail = rest.split(GENERATED_END)
    return f"{head}{GENERATED_START}\n\n{markdown_tables()}\n{GENERATED_END}{tail}"
