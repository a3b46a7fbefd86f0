"""Fixtures shared by the test tiers (helpers live in tests/helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A fresh run folder for hydra.run.dir=..."""
    return tmp_path / "run"
