"""One process per run folder: the OS lock, its release on SIGKILL, the ranks of a launch, the CLI refusal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dpo_lab.runs import lock as run_lock
from dpo_lab.runs.lock import LOCK_FILE, RunFolderBusy, hold_run_folder
from dpo_lab.runtime import processes as distributed
from tests.helpers import ROOT, run_cli
from tests.train.test_signals_guards import agent_store  # noqa: F401 (fixture: a stand-in for torchrun's store)

HOLDER = "import sys, time; from pathlib import Path; from dpo_lab.runs.lock import acquire; " \
         "acquire(Path(sys.argv[1])); print('held', flush=True); time.sleep(600)"  # fmt: skip


def start_holder(folder: Path) -> subprocess.Popen:
    """Another process that takes ``folder``'s lock and keeps it until it is killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_second_holder_is_refused_naming_folder_and_pid_until_the_first_is_killed(tmp_path: Path) -> None:
    holder = start_holder(tmp_path)
    try:
        with pytest.raises(RunFolderBusy) as info, hold_run_folder(tmp_path):
            pass
        assert info.value.holder == str(holder.pid)
        assert f"run folder {tmp_path} is in use by dpo_lab process {holder.pid}" in str(info.value)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    started = time.monotonic()
    with hold_run_folder(tmp_path):  # the kernel released the killed process's lock: free at once
        assert (tmp_path / LOCK_FILE).read_text().strip() == str(os.getpid())
    assert time.monotonic() - started < 1


def test_jobs_of_one_process_release_their_folder_at_the_end(tmp_path: Path) -> None:
    with hold_run_folder(tmp_path / "0"):
        with pytest.raises(RunFolderBusy):  # the same folder twice at once: refused even in one process
            run_lock.acquire(tmp_path / "0")
        with hold_run_folder(tmp_path / "1"):  # another job's folder
            pass
    with hold_run_folder(tmp_path / "0"):  # released when the job ended
        pass
    with pytest.raises(ValueError), hold_run_folder(tmp_path / "0"):  # released on an error too
        raise ValueError("job failed")
    with hold_run_folder(tmp_path / "0"):
        pass


def test_ranks_of_one_launch_follow_the_main_process(agent_store, monkeypatch, tmp_path: Path) -> None:  # noqa: F811
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    monkeypatch.setenv(distributed.LAUNCH_TIME_ENV, "2026-12-01T10:00:00.000001")
    monkeypatch.setenv("RANK", "0")
    with hold_run_folder(tmp_path):  # the main process holds it; rank 1 of the same launch may go on
        monkeypatch.setenv("RANK", "1")
        with hold_run_folder(tmp_path):
            pass
    # another launch while a process holds the folder: its main process and its other ranks all refuse
    holder = start_holder(tmp_path)
    try:
        monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(RunFolderBusy), hold_run_folder(tmp_path):
            pass
        monkeypatch.setenv("RANK", "1")
        with pytest.raises(RunFolderBusy) as info, hold_run_folder(tmp_path):
            pass
        assert info.value.holder == str(holder.pid)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


def test_cli_refuses_a_folder_another_process_holds(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    holder = start_holder(run_dir)
    try:
        args = ["train.max_steps=2", "logger=none", "eval=none", f"hydra.run.dir={run_dir}"]
        proc = run_cli(args, tmp_path, timeout=120)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert proc.returncode == 1, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert errors == [
        f"dpo_lab: run folder {run_dir} is in use by dpo_lab process {holder.pid} (it holds "
        f"{run_dir / LOCK_FILE}); wait for it to end or stop it, then run again to resume it, or give "
        "another hydra.run.dir"
    ]
    # nothing of the refused launch's own in the folder: no config, no history, no result
    assert not any((run_dir / name).exists() for name in ("config.yaml", "log_history.jsonl", "metrics.json"))


def test_the_lock_file_and_the_refusal_in_full(tmp_path: Path) -> None:
    """In process: the folder is made if missing, the file holds this pid while held and nothing after, and
    the refusal is the whole line the CLI prints (names the folder, the pid and the lock file)."""
    folder = tmp_path / "runs" / "one"  # neither exists yet
    lock = folder / LOCK_FILE
    fd = run_lock.acquire(folder)
    try:
        assert lock.read_text() == f"{os.getpid()}\n"
        umask = os.umask(0)
        os.umask(umask)
        assert lock.stat().st_mode & 0o777 == 0o644 & ~umask
        with pytest.raises(RunFolderBusy) as info:
            run_lock.acquire(folder)
        assert info.value.folder == folder and info.value.holder == str(os.getpid())
        assert str(info.value) == (
            f"run folder {folder} is in use by dpo_lab process {os.getpid()} (it holds {lock}); wait for it "
            "to end or stop it, then run again to resume it, or give another hydra.run.dir"
        )
        lock.write_text("starting")  # the holder has not written its pid yet
        with pytest.raises(RunFolderBusy) as info:
            run_lock.acquire(folder)
        assert info.value.holder == "unknown"
    finally:
        run_lock.release(fd)
    assert lock.read_text() == ""  # released: emptied, and kept (see release)
    fd = run_lock.acquire(folder)
    run_lock.release(fd)
