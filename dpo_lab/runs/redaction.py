"""Secrets out of everything dpo_lab writes: one rule for what a secret-looking key is, one redaction.

A key is secret-looking when one of its ``_``/``-``/``.``-separated words is, or ends with, token, key,
secret, password, passwd, credential(s) or auth (``hub_token``, ``api_key``, ``wandb-apikey``,
``db.password``), so that ``max_new_tokens`` or ``lr_scheduler_kwargs`` are left alone. Its value is
replaced by ``<redacted>`` in nested configs (:func:`redact`) and in text that carries ``key=value`` or
``key: value`` pairs, such as command-line overrides and log lines (:func:`redact_text`).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

REDACTED = "<redacted>"
_SECRET_WORD = re.compile(r"(token|key|secret|password|passwd|credentials?|auth)$", re.IGNORECASE)
_WORD_SPLIT = re.compile(r"[_\-.\s]+")
# a key, then = or : (a quote may close the key in JSON); the value follows
_KEY = re.compile(r"""(?P<key>[A-Za-z0-9_\-.+~]+)['"]?\s*[:=]\s*""")
# a quoted value, or a bare one up to a separator of a Hydra mapping / list
_VALUE = re.compile(r"""'[^']*'|"[^"]*"|[^\s,{}\[\]'"]+""")


def is_secret_key(key: Any) -> bool:
    """True for keys such as ``hub_token``, ``api_key``, ``password`` (see the module docstring)."""
    return any(_SECRET_WORD.search(word) for word in _WORD_SPLIT.split(str(key).lstrip("+~")) if word)


def redact(value: Any, text: bool = False) -> Any:
    """A copy of a nested config with the values of secret-looking keys replaced (empty values kept, so
    that an unset ``hub_token: null`` still reads as unset). ``text=True`` also redacts ``key=value`` pairs
    inside strings (:func:`redact_text`), for lists of command-line overrides; other config strings (a
    system prompt that says "key: ...") are kept as they are."""
    if isinstance(value, dict):
        return {
            k: REDACTED if is_secret_key(k) and v not in (None, "") else redact(v, text)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [redact(v, text) for v in value]
    if text and isinstance(value, str):
        return redact_text(value)
    return value


def redact_text(text: str) -> str:
    """``text`` with the value of every ``<secret key>=value`` / ``<secret key>: value`` replaced."""
    if "=" not in text and ":" not in text:
        return text
    out, pos = [], 0
    for match in _KEY.finditer(text):
        if match.start() < pos or not is_secret_key(match["key"].rsplit(".", 1)[-1]):
            continue
        value = _VALUE.match(text, match.end())
        if value is None:
            continue
        out += [text[pos : match.end()], REDACTED]
        pos = value.end()
    return "".join([*out, text[pos:]])


def redact_yaml_file(path: Path) -> None:
    """Rewrite a YAML file (Hydra's ``.hydra/*.yaml``) with its secrets redacted; unchanged files are left."""
    if not path.is_file():
        return
    text = path.read_text()
    data = yaml.safe_load(text)
    redacted = redact(data, text=True)
    if redacted != data:
        from dpo_lab.runs.atomic import atomic_write_text

        atomic_write_text(path, yaml.safe_dump(redacted, default_flow_style=False, sort_keys=False))


def redact_hydra_outputs(output_dir: Path, subdir: str | None, sweep_dir: Path | None) -> None:
    """Redact what Hydra wrote before dpo_lab runs: its copies of the config and overrides
    (``<run>/.hydra/*.yaml``), a multirun's ``multirun.yaml``, and from now on every log record (run.log)."""
    paths = sorted((output_dir / subdir).glob("*.yaml")) if subdir is not None else []
    for path in [*paths, *([sweep_dir / "multirun.yaml"] if sweep_dir is not None else [])]:
        redact_yaml_file(path)
    redact_log_handlers()


@contextmanager
def redacted_argv() -> Iterator[None]:
    """``sys.argv`` redacted while a library records the command line (W&B's run metadata), then restored."""
    saved = sys.argv[:]
    sys.argv[:] = redact(saved, text=True)
    try:
        yield
    finally:
        sys.argv[:] = saved


class RedactingFilter(logging.Filter):
    """A logging filter that redacts secrets from every record a handler writes (Hydra's ``run.log``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def redact_log_handlers() -> None:
    """Install :class:`RedactingFilter` on the root logger's handlers (once each)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
