"""Crash-safe writes of a run's files: every file and the adapter folder appear complete or not at all.

A file is written under a temporary name in the same folder, flushed to disk, then renamed over the final
name (``os.replace`` is atomic on POSIX file systems). The adapter folder is written as ``.adapter.partial``
and renamed to ``adapter`` once everything in it is on disk. The final artifacts are written in the order
adapter -> README.md -> metrics.json, so a ``metrics.json`` with ``"status": "completed"`` means the rest
is there too.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from dpo_lab.model.base_names import set_adapter_base
from dpo_lab.runs.layout import CARD_FILE, RunLayout
from dpo_lab.runtime.collectives import wait_for_everyone
from dpo_lab.runtime.processes import is_main_process

TRAINING_ARGS_FILE = "training_args.bin"  # what Trainer.save_model writes beside the weights


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[IO], Any], mode: str = "w") -> None:
    """Write ``path`` with ``write(handle)`` (a file opened with ``mode``) so that a crash leaves the old file
    or the new one, never a torn one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`atomic_write`)."""
    atomic_write(path, lambda handle: handle.write(text))


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2))


def atomic_write_jsonl(path: Path, records: Iterable[Any]) -> None:
    """One JSON object a line, written atomically."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def fsync_tree(folder: Path) -> None:
    """Flush every file under ``folder`` (and the folders themselves) to disk."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        elif path.is_dir():
            _fsync_dir(path)
    _fsync_dir(folder)


def partial_path(dest: Path) -> Path:
    """Where a folder is assembled before it is renamed to ``dest`` (the same name on every process)."""
    return dest.with_name(f".{dest.name}.partial")


def replace_dir(tmp: Path, dest: Path) -> None:
    """Move a finished folder into place; an older ``dest`` is moved aside first and deleted after. If the
    move fails, the older ``dest`` is put back (``tmp`` stays, for the next attempt to replace)."""
    fsync_tree(tmp)
    old = dest.with_name(f".{dest.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if dest.exists():
        os.replace(dest, old)
    try:
        os.replace(tmp, dest)
    except OSError:
        if old.exists() and not dest.exists():
            os.replace(old, dest)
        raise
    _fsync_dir(dest.parent)
    shutil.rmtree(old, ignore_errors=True)


def save_adapter(trainer: Any, tokenizer: Any, dest: Path, card: str, base_name: str | None = None) -> None:
    """The trained adapter, the tokenizer and the model card into ``dest``, atomically. ``base_name``: the
    base as adapter_config.json names it for other machines (PEFT writes the folder it loaded it from).

    Every process calls this (FSDP and DeepSpeed gather the weights collectively); only the main process
    writes files.
    """
    tmp = partial_path(dest)
    if is_main_process() and tmp.exists():
        shutil.rmtree(tmp)
    wait_for_everyone()
    trainer.save_model(str(tmp))
    if is_main_process():
        # the pickled TrainingArguments hold every train.extra value (a hub_token too): not for sharing
        (tmp / TRAINING_ARGS_FILE).unlink(missing_ok=True)
        if base_name is not None:
            set_adapter_base(tmp, base_name)
        tokenizer.save_pretrained(str(tmp))
        (tmp / CARD_FILE).write_text(card)
        replace_dir(tmp, dest)
    wait_for_everyone()


def write_final_artifacts(
    trainer: Any,
    tokenizer: Any,
    run_dir: Path,
    card: str,
    metrics: dict[str, Any],
    base_name: str | None = None,
) -> None:
    """adapter/ (with the card), README.md, then metrics.json last: its ``status`` says the run finished.
    ``base_name``: the base's portable name, for the adapter's adapter_config.json."""
    layout = RunLayout(run_dir)
    save_adapter(trainer, tokenizer, layout.adapter, card, base_name)
    if is_main_process():
        atomic_write_text(layout.card, card)
        atomic_write_json(layout.metrics, metrics)
