"""One launch per run folder at a time: an OS lock on ``<run folder>/.dpo_lab.lock``.

Two launches in one folder would both append to ``log_history.jsonl``, and the later one would resume from
the live run's checkpoints (or delete its half-written one as "incomplete"). The main process therefore
takes an exclusive ``fcntl.flock`` on the folder's lock file before it looks at the folder, and keeps it
until the job ends; the kernel drops it when the process ends in any way, SIGKILL included, so a killed run's
folder can be resumed at once. The lock file holds the pid of the process that has the lock, which the
refusal names.

- Several processes of one launch (torchrun, accelerate) share the folder: only the main process takes the
  lock, and publishes in the launcher's key-value store whether it got it; the other ranks wait for that
  answer, so every process of a refused launch stops with the same one-line error.
- The jobs of a same-process sweep each have their own folder; each job holds its folder's lock for its
  own duration only (:func:`hold_run_folder` is a context manager).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from dpo_lab.runs.layout import LOCK_FILE
from dpo_lab.runtime.processes import is_main_process, launch_time, launcher_store, world_size


class RunFolderBusy(RuntimeError):
    """Another process holds the run folder's lock; names the folder and that process's pid."""

    def __init__(self, folder: Path, holder: str):
        super().__init__(
            f"run folder {folder} is in use by dpo_lab process {holder} (it holds {folder / LOCK_FILE}); "
            "wait for it to end or stop it, then run again to resume it, or give another hydra.run.dir"
        )
        self.folder = folder
        self.holder = holder


def _holder(fd: int) -> str:
    """The pid written in the lock file by the process that holds it ('unknown' while it is being written)."""
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 64).decode(errors="replace").strip()
    return text if text.isdigit() else "unknown"


def acquire(folder: Path) -> int:
    """Lock ``folder`` for this process (non-blocking); returns the lock file's descriptor.

    Raises :class:`RunFolderBusy` when another process (or another job of this one) holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by exec'd children
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        holder = _holder(fd)
        os.close(fd)
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise RunFolderBusy(folder, holder) from None
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def release(fd: int) -> None:
    """Drop the lock (the file stays: removing it would let two processes lock two different files)."""
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
    os.close(fd)  # closing the only descriptor of the open file releases the flock


def _answer_key() -> str:
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    return f"dpo_lab/{run_id}/{restart}/{launch_time().isoformat()}/run_lock"


def _share_answer(answer: str | None) -> str | None:
    """Main process: publish ``answer`` ('ok' or the holder's pid); others: wait for the main's answer.

    None where several processes run without a launcher store (they then rely on the main process, whose
    refusal ends the launch)."""
    if world_size() <= 1:
        return answer
    store = launcher_store()
    if store is None:
        return answer
    key = _answer_key()
    if answer is not None:
        store.set(key, answer)
        return answer
    return store.get(key).decode()


@contextlib.contextmanager
def hold_run_folder(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s lock for the block (main process; the other ranks learn whether it was granted).

    Raises :class:`RunFolderBusy` on every process of the launch when another launch holds it."""
    fd = None
    if is_main_process():
        try:
            fd = acquire(folder)
        except RunFolderBusy as err:
            _share_answer(err.holder)
            raise
        _share_answer("ok")
    else:
        answer = _share_answer(None)
        if answer not in (None, "ok"):
            raise RunFolderBusy(folder, answer)
    try:
        yield
    finally:
        if fd is not None:
            release(fd)
