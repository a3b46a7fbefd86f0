"""Per-step training and held-out logs of a run, as ``<run>/log_history.jsonl`` (one Trainer log a line).

The sweep report draws its train/eval curves from these files, so it needs nothing but the run folders:
no network, no W&B API. Lines are appended as the Trainer logs (tracking.LogHistoryCallback), so a job
that fails half-way keeps the steps it made. No transformers import here: the report stays quick to start.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from dpo_lab.runs.layout import HISTORY_FILE


def append_record(path: Path, step: int, logs: dict[str, Any]) -> None:
    """Append one Trainer log (its numbers only) with the global step it was made at."""
    record = {"step": step, **{k: v for k, v in logs.items() if _is_number(v)}}
    with path.open("a") as out:
        out.write(json.dumps(record) + "\n")


def restore_history(path: Path, log_history: list[dict[str, Any]]) -> None:
    """Rewrite ``path`` from a checkpoint's Trainer log history (what was logged up to that checkpoint), so
    that a resumed run appends its steps to exactly that, not after rows of the attempt it replaces."""
    lines = []
    for entry in log_history:
        record = {"step": entry["step"], **{k: v for k, v in entry.items() if k != "step" and _is_number(v)}}
        lines.append(json.dumps(record) + "\n")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(lines))
    tmp.replace(path)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_history(run_dir: Path) -> list[dict[str, float]]:
    """The records of ``run_dir/log_history.jsonl`` (empty when the run logged nothing)."""
    path = run_dir / HISTORY_FILE
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not a JSON record ({err.msg})") from None
    return records


def series(records: list[dict[str, float]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one logged key, skipping records without it and non-finite values."""
    steps, values = [], []
    for record in records:
        value = record.get(key)
        if value is not None and math.isfinite(value):
            steps.append(int(record["step"]))
            values.append(float(value))
    return steps, values
