"""A tracker of your own, in one module: every metric, table and summary as a JSON line in one file.

``logger=jsonl`` (logger/jsonl.yaml beside this file) selects it with ``backend: my_tracker:start``; its own
setting ``logger.options.file`` names the file in the run folder. MLflow or TensorBoard fit the same shape:
``start`` opens the run, the methods feed it, ``finish`` closes it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dpo_lab.track.null_tracker import NullTracker


class JsonlTracker(NullTracker):
    """Appends one JSON object per call; what it does not record (artifacts) the base class ignores."""

    active = True

    def __init__(self, path: Path, name: str, group: str):
        self.path = path
        self.run_id = name
        self._write({"event": "start", "name": name, "group": group})

    def _write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as out:
            out.write(json.dumps(record, default=str) + "\n")

    def log(self, metrics: dict[str, float], step: int) -> None:
        self._write({"event": "log", "step": step, **metrics})

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        self._write({"event": "table", "key": key, "step": step, "columns": columns, "rows": len(rows)})

    def summarize(self, values: dict[str, Any]) -> None:
        self._write({"event": "summary", **values})

    def finish(self, exit_code: int = 0) -> None:
        self._write({"event": "finish", "exit_code": exit_code})


def start(settings, *, layout, config: dict[str, Any], name: str, group: str) -> JsonlTracker:
    return JsonlTracker(layout.root / settings.options.get("file", "tracker.jsonl"), name, group)
