"""Where a run's code came from: the git commit of the checkout and whether it had uncommitted changes."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any


def git_state(path: Path) -> dict[str, Any]:
    """Commit and dirty flag of the git checkout holding ``path`` (None outside a checkout)."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=path, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None}
