"""Crash-safe writes (dpo_lab.runs.atomic): a failure at any point of a write leaves the old file whole and no
temporary file behind; what is written reaches the disk before it replaces the old file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dpo_lab.runs import atomic
from dpo_lab.runs.atomic import (
    atomic_write,
    atomic_write_json,
    atomic_write_jsonl,
    atomic_write_text,
    fsync_tree,
    partial_path,
    replace_dir,
)


class Boom(Exception):
    pass


def _old_file(tmp_path: Path) -> Path:
    target = tmp_path / "metrics.json"
    atomic_write_text(target, '{"status": "running"}')
    return target


def _raise(*_args, **_kwargs):
    raise Boom("failed part-way")


def test_a_writer_that_fails_part_way_leaves_the_old_file(tmp_path: Path) -> None:
    target = _old_file(tmp_path)

    def write(handle) -> None:
        handle.write('{"status": "compl')
        handle.flush()
        raise Boom("disk went away")

    with pytest.raises(Boom):
        atomic_write(target, write)
    assert target.read_text() == '{"status": "running"}'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


@pytest.mark.parametrize("step", ["fsync", "replace"])
def test_a_failed_flush_or_rename_leaves_the_old_file(tmp_path: Path, monkeypatch, step: str) -> None:
    target = _old_file(tmp_path)
    monkeypatch.setattr(atomic.os, step, _raise)
    with pytest.raises(Boom):
        atomic_write_text(target, '{"status": "completed"}')
    monkeypatch.undo()
    assert target.read_text() == '{"status": "running"}'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_failed_first_write_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(atomic.os, "replace", _raise)
    with pytest.raises(Boom):
        atomic_write_text(tmp_path / "new.json", "{}")
    assert list(tmp_path.iterdir()) == []


def test_the_new_text_is_written_beside_the_target_and_flushed_before_the_rename(
    tmp_path: Path, monkeypatch
) -> None:
    """The temporary file is a hidden file in the target's folder (a rename across file systems is not
    atomic), it holds every byte when it is renamed, and the folder is flushed after the rename."""
    target = _old_file(tmp_path)
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append(("replace", str(src)))
        assert Path(src).read_text() == "new text"
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)
    atomic_write_text(target, "new text")
    monkeypatch.undo()
    assert target.read_text() == "new text"
    (_, temp), (_, renamed), (_, folder) = events
    assert events[0][0] == "fsync" and events[1][0] == "replace" and events[2][0] == "fsync"
    assert temp == renamed and Path(temp).parent == tmp_path and Path(temp).name.startswith(".metrics.json")
    assert folder == str(tmp_path)


def test_json_and_jsonl_round_trip(tmp_path: Path) -> None:
    atomic_write_json(tmp_path / "a.json", {"loss": 0.5, "name": "β"})
    assert json.loads((tmp_path / "a.json").read_text()) == {"loss": 0.5, "name": "β"}
    records = [{"step": 1, "text": "é"}, {"step": 2, "text": "b"}]
    atomic_write_jsonl(tmp_path / "h.jsonl", records)
    text = (tmp_path / "h.jsonl").read_text()
    assert text.endswith("\n") and text.count("\n") == 2 and "é" in text
    assert [json.loads(line) for line in text.splitlines()] == records
    atomic_write_jsonl(tmp_path / "empty.jsonl", [])
    assert (tmp_path / "empty.jsonl").read_text() == ""


def test_binary_mode(tmp_path: Path) -> None:
    atomic_write(tmp_path / "w.bin", lambda handle: handle.write(b"\x00\xff"), mode="wb")
    assert (tmp_path / "w.bin").read_bytes() == b"\x00\xff"


def test_fsync_tree_flushes_every_file_and_folder(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.bin").write_text("a")
    (tmp_path / "b.json").write_text("b")
    flushed: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(
        atomic.os, "fsync", lambda fd: (flushed.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd))
    )
    fsync_tree(tmp_path)
    monkeypatch.undo()
    expected = {tmp_path, tmp_path / "sub", tmp_path / "sub" / "a.bin", tmp_path / "b.json"}
    assert {Path(p) for p in flushed} == expected


def test_replace_dir_swaps_a_folder_and_clears_a_crashed_swaps_leftovers(tmp_path: Path) -> None:
    dest = tmp_path / "adapter"
    dest.mkdir()
    (dest / "old.bin").write_text("old")
    left = tmp_path / ".adapter.old"  # a swap killed before it deleted the old folder
    left.mkdir()
    (left / "older.bin").write_text("older")
    tmp = partial_path(dest)
    assert tmp == tmp_path / ".adapter.partial"
    tmp.mkdir()
    (tmp / "new.bin").write_text("new")
    replace_dir(tmp, dest)
    assert [p.name for p in dest.iterdir()] == ["new.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_replace_dir_into_a_new_place(tmp_path: Path) -> None:
    tmp = partial_path(tmp_path / "merged")
    tmp.mkdir()
    (tmp / "model.safetensors").write_text("w")
    replace_dir(tmp, tmp_path / "merged")
    assert (tmp_path / "merged" / "model.safetensors").read_text() == "w"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]


def test_replace_dir_puts_the_old_folder_back_when_the_move_fails(tmp_path: Path, monkeypatch) -> None:
    """The old adapter/ is moved aside before the new one goes in: a failed move must not leave no adapter."""
    dest, tmp = tmp_path / "adapter", tmp_path / ".adapter.partial"
    dest.mkdir()
    (dest / "weights").write_text("old")
    tmp.mkdir()
    (tmp / "weights").write_text("new")
    real = os.replace

    def fail_on_the_new_folder(src, dst):
        if Path(src) == tmp:
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", fail_on_the_new_folder)
    with pytest.raises(OSError, match="No space"):
        replace_dir(tmp, dest)
    assert (dest / "weights").read_text() == "old" and (tmp / "weights").read_text() == "new"
    assert not (tmp_path / ".adapter.old").exists()
