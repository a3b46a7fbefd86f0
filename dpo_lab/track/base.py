"""What a run tells its tracker (a small protocol), and the tracker that does nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol


class Tracker(Protocol):
    """What a run tells its tracker: metrics as it goes, tables, the final summary, artifacts, the end."""

    @property
    def active(self) -> bool: ...

    @property
    def run_id(self) -> str | None: ...

    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]], step: int) -> None: ...

    def summarize(self, values: dict[str, Any]) -> None: ...

    def log_artifact(self, folder: Path, name: str, kind: str, metadata: dict[str, Any]) -> None: ...

    def finish_preempted(self, step: int, exit_code: int) -> None: ...

    def finish(self, exit_code: int = 0) -> None: ...


class NullTracker:
    """Logging off (``logger=none``, W&B disabled, or a process other than the main one): does nothing."""

    active = False
    run_id = None

    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        pass

    def summarize(self, values: dict[str, Any]) -> None:
        pass

    def log_artifact(self, folder: Path, name: str, kind: str, metadata: dict[str, Any]) -> None:
        pass

    def finish_preempted(self, step: int, exit_code: int) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass
