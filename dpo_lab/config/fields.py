"""Schema fields that carry their own documentation and reuse rules, as dataclass field metadata.

Every key of a config group is declared once, with :func:`setting`: its type and default (the dataclass
field), one line of help (shown by ``dpo-lab explain``, written into docs/configuration.md), and what the
value changes that jobs of a sweep could otherwise share:

``changes``
    the shared artefacts the value goes into: ``base`` (the loaded base model), ``tokenizer``, ``pairs``
    (the loaded, checked preference pairs), ``tokenized`` (TRL's tokenised datasets) and ``reference`` (the
    reference log-probs). The process cache (dpo_lab.reuse) keys each artefact on exactly these fields.
``differs_in_pack``
    jobs whose values differ only in such keys can train as one pack over one base (dpo_lab.packed); every
    other key of the training groups must be equal inside a pack.
``trl``
    the ``trl.DPOConfig`` / ``TrainingArguments`` field the key is passed to; its default equals TRL's
    unless ``trl_differs`` says why not (a test holds both against the installed TRL).

Nothing here imports torch or the training libraries: the command line is checked before they load.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from omegaconf import MISSING

# what a config value can change besides the adapter it trains (dpo_lab.reuse keys each on its own fields)
ARTEFACTS = ("base", "tokenizer", "pairs", "tokenized", "reference")


def setting(
    default: Any = MISSING,
    *,
    help: str,
    factory: Callable[[], Any] | None = None,
    changes: Iterable[str] = (),
    differs_in_pack: bool = False,
    trl: str | None = None,
    trl_differs: str | None = None,
) -> Any:
    """A schema field with its help text and reuse rules (see the module docstring)."""
    changes = tuple(changes)
    unknown = set(changes) - set(ARTEFACTS)
    if unknown:
        raise ValueError(f"unknown artefacts {sorted(unknown)}; known: {', '.join(ARTEFACTS)}")
    metadata = {
        "help": help,
        "changes": frozenset(changes),
        "differs_in_pack": differs_in_pack,
        "trl": trl,
        "trl_differs": trl_differs,
    }
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def help_of(f: dataclasses.Field) -> str:
    return f.metadata.get("help", "")


def changes_of(f: dataclasses.Field) -> frozenset[str]:
    return f.metadata.get("changes", frozenset())


def differs_in_pack(f: dataclasses.Field) -> bool:
    return bool(f.metadata.get("differs_in_pack", False))


def default_of(f: dataclasses.Field) -> Any:
    """The field's default value (a fresh one for a factory default); MISSING when the key is required."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def leaves(obj: Any, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field, Any]]:
    """(dotted key, field, value) of every leaf of a schema object or class, nested groups walked
    (``DataColumns`` inside ``data``); for a class the values are the defaults."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name) if not isinstance(obj, type) else default_of(f)
        if dataclasses.is_dataclass(value):
            yield from leaves(value if not isinstance(obj, type) else type(value), f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f, value


def plain(value: Any) -> Any:
    """A config value as JSON-ready data (dataclasses as dicts, enums as their values)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return getattr(value, "value", value)


def values_where(obj: Any, keep: Callable[[dataclasses.Field], bool], prefix: str = "") -> dict[str, Any]:
    """``{dotted key: plain value}`` of the leaves of ``obj`` whose field ``keep`` accepts."""
    return {key: plain(value) for key, f, value in leaves(obj, prefix) if keep(f)}


def config_key(values: dict[str, Any]) -> str:
    """A stable text key from plain config values (key order does not matter)."""
    return json.dumps(plain(values), sort_keys=True, default=str)


def digest(values: dict[str, Any], length: int = 16) -> str:
    """A short sha256 digest of :func:`config_key`."""
    return hashlib.sha256(config_key(values).encode()).hexdigest()[:length]
