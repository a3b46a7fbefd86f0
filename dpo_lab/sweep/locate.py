"""Find a sweep folder from where a user or a notebook stands.

A notebook's kernel runs in the notebook's own folder (``notebooks/``), not where the user typed
``DPO_LAB_SWEEP_DIR=multirun/<date>/<time> jupyter execute notebooks/sweep_analysis.ipynb``: a relative path
is therefore looked for from the folder the command was started in (``$PWD``), from the current folder, and
from the folder above a ``notebooks/`` folder; the newest sweep likewise under each of their ``multirun/``.
"""

from __future__ import annotations

import os
from pathlib import Path


def search_roots(cwd: Path | None = None, environ: dict[str, str] | None = None) -> list[Path]:
    """Where a relative sweep path may start: $PWD, the current folder, and the parent of notebooks/."""
    cwd = (cwd or Path.cwd()).resolve()
    environ = dict(os.environ) if environ is None else environ
    roots = [Path(environ["PWD"]).resolve()] if environ.get("PWD") else []
    roots.append(cwd)
    if cwd.name == "notebooks":
        roots.append(cwd.parent)
    return list(dict.fromkeys(roots))


def find_sweep_dir(value: str | None, roots: list[Path]) -> Path:
    """The sweep folder ``value`` names (absolute, or relative to one of ``roots``), or the newest
    ``multirun/<date>/<time>`` under them when ``value`` is None; FileNotFoundError saying where it looked."""
    if value:
        path = Path(value).expanduser()
        candidates = [path] if path.is_absolute() else [root / path for root in roots]
        for candidate in candidates:
            if candidate.is_dir():
                return candidate.resolve()
        looked = ", ".join(str(c) for c in candidates)
        raise FileNotFoundError(f"no sweep folder {value!r}: looked at {looked}")
    found = [p for root in roots for p in (root / "multirun").glob("*/*") if p.is_dir()]
    if not found:
        looked = ", ".join(str(root / "multirun") for root in roots)
        raise FileNotFoundError(
            f"no sweep under {looked}: set DPO_LAB_SWEEP_DIR to a multirun/<date>/<time> folder"
        )
    return max(found, key=lambda p: p.stat().st_mtime).resolve()
