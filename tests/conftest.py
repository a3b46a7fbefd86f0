"""Fixtures shared by the test tiers (helpers live in tests/helpers/)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A fresh run folder for hydra.run.dir=..."""
    return tmp_path / "run"


@pytest.fixture(scope="module")
def one_torch_thread():
    """In-process generation on one intra-op thread (see inference_helpers.env), restored after the module."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
