"""The notebook finds its sweep from where the user stands: `DPO_LAB_SWEEP_DIR=multirun/<date>/<time> jupyter
execute notebooks/sweep_analysis.ipynb` runs the kernel in notebooks/, where that relative path is not."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from dpo_lab.sweep.locate import find_sweep_dir, search_roots


def _repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "notebooks").mkdir(parents=True)
    for name in ("10-00-00-1", "11-00-00-1"):
        (repo / "multirun" / "2026-12-02" / name).mkdir(parents=True)
        time.sleep(0.01)
    os.utime(repo / "multirun" / "2026-12-02" / "10-00-00-1")  # the older name is the newest folder
    return repo


def test_a_relative_path_is_found_from_where_the_command_started(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    sweep = repo / "multirun" / "2026-12-02" / "11-00-00-1"
    kernel = repo / "notebooks"  # where jupyter runs the kernel
    roots = search_roots(cwd=kernel, environ={"PWD": str(repo)})
    assert find_sweep_dir("multirun/2026-12-02/11-00-00-1", roots) == sweep.resolve()
    # without $PWD (another client), the folder above notebooks/ still finds it
    assert (
        find_sweep_dir("multirun/2026-12-02/11-00-00-1", search_roots(cwd=kernel, environ={}))
        == sweep.resolve()
    )
    assert find_sweep_dir(str(sweep), []) == sweep.resolve()  # absolute


def test_the_newest_sweep_is_looked_for_above_notebooks_too(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    newest = find_sweep_dir(None, search_roots(cwd=repo / "notebooks", environ={}))
    assert newest == (repo / "multirun" / "2026-12-02" / "10-00-00-1").resolve()


def test_where_it_looked_is_said(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    roots = search_roots(cwd=repo / "notebooks", environ={})
    with pytest.raises(
        FileNotFoundError, match=r"no sweep folder 'multirun/x': looked at .*notebooks/multirun/x"
    ):
        find_sweep_dir("multirun/x", roots)
    with pytest.raises(FileNotFoundError, match="no sweep under"):
        find_sweep_dir(None, search_roots(cwd=tmp_path, environ={}))


def test_the_roots_in_order_without_repeats(tmp_path: Path, monkeypatch) -> None:
    repo = _repo(tmp_path)
    kernel = repo / "notebooks"
    assert search_roots(cwd=kernel, environ={"PWD": str(repo)}) == [repo.resolve(), kernel.resolve()]
    assert search_roots(cwd=kernel, environ={"PWD": str(tmp_path)}) == [
        tmp_path.resolve(), kernel.resolve(), repo.resolve()
    ]  # fmt: skip
    assert search_roots(cwd=repo, environ={"PWD": ""}) == [repo.resolve()]
    # no environ given: the process's own $PWD
    monkeypatch.setenv("PWD", str(tmp_path))
    assert search_roots(cwd=repo) == [tmp_path.resolve(), repo.resolve()]
    monkeypatch.delenv("PWD")
    assert search_roots(cwd=repo) == [repo.resolve()]


def test_the_messages_list_every_place_looked_at(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    with pytest.raises(FileNotFoundError) as info:
        find_sweep_dir("multirun/x", [one, two])
    assert str(info.value) == f"no sweep folder 'multirun/x': looked at {one}/multirun/x, {two}/multirun/x"
    with pytest.raises(FileNotFoundError) as info:
        find_sweep_dir(None, [one, two])
    assert str(info.value) == (
        f"no sweep under {one}/multirun, {two}/multirun: "
        "set DPO_LAB_SWEEP_DIR to a multirun/<date>/<time> folder"
    )
