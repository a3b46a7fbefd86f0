"""``logger=none``: a tracker that records nothing (metrics.json, the history and the card are still written).
Also what processes other than the main one get, and a base class whose no-ops a tracker of your own can
inherit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dpo_lab.config.schemas import LoggerSettings
from dpo_lab.runs.layout import RunLayout


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


def start(
    cfg: LoggerSettings, *, layout: RunLayout, config: dict[str, Any], name: str, group: str
) -> NullTracker:
    return NullTracker()
