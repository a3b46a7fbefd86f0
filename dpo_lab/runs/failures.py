"""One line instead of a traceback for what the machine refuses: a full disk, a read-only or unwritable run
folder, an output path that is a file.

:func:`check_output_dirs` looks at ``hydra.run.dir`` / ``hydra.sweep.dir`` before Hydra creates them (Hydra
writes ``.hydra/`` and ``run.log`` before dpo_lab runs, and fails there with a traceback).
:func:`describe_write_failure` words an error raised while the run writes (a checkpoint, the adapter): the
chain of exceptions is searched for the operating system's reason, since libraries wrap it
(safetensors' ``SafetensorError``, torch's ``RuntimeError``, ...).
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from dpo_lab.errors import ConfigError
from dpo_lab.runs.checkpoints import latest_complete

DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
FULL_BELOW = 1 << 20  # bytes left under which a write error is put down to a full disk
NOT_WRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}
# how libraries that do not raise OSError word the same reasons
_WORDED = {
    "no space left on device": errno.ENOSPC,
    "os error 28": errno.ENOSPC,
    "disk quota exceeded": errno.EDQUOT,
    "read-only file system": errno.EROFS,
    "os error 30": errno.EROFS,
}


def _chain(err: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [err]
    while todo:
        current = todo.pop(0)
        if current is None or any(current is s for s in seen):
            continue
        seen.append(current)
        todo += [current.__cause__, current.__context__]
    return seen


def write_errno(err: BaseException) -> tuple[int, str | None] | None:
    """(errno, file name or None) of a full-disk or not-writable error anywhere in ``err``'s chain."""
    for found in _chain(err):
        if isinstance(found, OSError) and found.errno in DISK_FULL | NOT_WRITABLE:
            return found.errno, found.filename
    for found in _chain(err):
        text = str(found).lower()
        for words, number in _WORDED.items():
            if words in text:
                return number, None
    return None


def free_bytes(path: Path) -> int | None:
    """Bytes an unprivileged process can still write on the file system holding ``path`` (None if unknown)."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        return shutil.disk_usage(existing).free
    except OSError:
        return None


def describe_write_failure(err: BaseException, run_dir: Path) -> str | None:
    """The one line for a full disk or an unwritable folder met while running in ``run_dir``; None for any
    other error. On a full disk it names the last complete checkpoint, which is kept, and how to resume.

    torch.save on a full disk raises neither an OSError nor the system's words (``RuntimeError: [enforce
    fail at inline_container.cc] . unexpected pos ...``), so an error met while the run folder's file
    system has less than :data:`FULL_BELOW` bytes left counts as a full disk too."""
    found = write_errno(err)
    if found is None:
        free = free_bytes(run_dir)
        if free is None or free >= FULL_BELOW:
            return None
        found = (errno.ENOSPC, None)
    number, filename = found
    where = f" writing {filename}" if filename else f" in {run_dir}"
    if number in DISK_FULL:
        checkpoint = latest_complete(run_dir / "checkpoints")
        if checkpoint is None:
            kept = "no complete checkpoint was saved: free space and run again"
        else:
            kept = (
                f"the last complete checkpoint {checkpoint.path} (step {checkpoint.step}) is kept: free "
                f"space, then resume with python -m dpo_lab.run resume={run_dir}"
            )
        return f"disk full ({os.strerror(number)}){where}; {kept}"
    return (
        f"{os.strerror(number)}{where}; make the run folder writable or point hydra.run.dir at a writable "
        "folder"
    )


_NO_RUN_FLAGS = {
    "--help",
    "-h",
    "--hydra-help",
    "--cfg",
    "-c",
    "--info",
    "--version",
    "--shell-completion",
    "-sc",
}


def check_output_dirs(args: list[str]) -> None:
    """ConfigError when the run (or sweep) folder given on the command line, or the default ``runs/`` /
    ``multirun/`` under the working directory, is a file or cannot be written."""
    if any(a in _NO_RUN_FLAGS or a.startswith(("--cfg=", "--info=")) for a in args):
        return  # Hydra prints and exits: nothing is written
    multirun = any(a in ("-m", "--multirun") for a in args)
    key, default = ("hydra.sweep.dir", "multirun") if multirun else ("hydra.run.dir", "runs")
    given = [a.split("=", 1)[1] for a in args if a.lstrip("+").startswith(f"{key}=")]
    value = given[-1] if given else default
    if "${" in value:
        value = value.split("${", 1)[0] or "."  # the fixed part of an interpolated folder name
    _check_writable_folder(Path(value).expanduser(), key if given else f"{key} (default {default}/)")


def _check_writable_folder(path: Path, key: str) -> None:
    if path.exists() and not path.is_dir():
        raise ConfigError(key, f"{path} is a file, not a folder; name a folder for the run's files")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(key, f"{existing} is a file, so {path} cannot be created; name a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        reason = "read-only file system" if _read_only_fs(existing) else "permission denied"
        raise ConfigError(
            key, f"{existing} is not writable ({reason}); point {key.split()[0]} at a writable folder"
        )


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False
