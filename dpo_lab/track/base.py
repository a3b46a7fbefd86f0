"""What a run tells its tracker (a small protocol), and which tracker a run gets.

A tracker is chosen by ``logger.backend``: ``wandb`` (dpo_lab.track.wandb_tracker), ``none``
(dpo_lab.track.null_tracker), or ``package.module:function`` naming your own: a function called as
``start(settings, layout=, config=, name=, group=)`` that returns an object with the :class:`Tracker`
methods (subclass :class:`dpo_lab.track.null_tracker.NullTracker` to inherit no-ops). A new tracker is one
module and one YAML option (``conf/logger/<name>.yaml`` or your own ``--config-dir``) setting ``backend``;
its own settings go in ``logger.options``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from dpo_lab.config.schemas import LoggerSettings
from dpo_lab.errors import ConfigError
from dpo_lab.runs.layout import RunLayout
from dpo_lab.runtime.processes import is_main_process


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


# logger.backend -> "package.module:function" that starts the tracker; any other backend names its own
BUILT_IN = {
    "wandb": "dpo_lab.track.wandb_tracker:start",
    "none": "dpo_lab.track.null_tracker:start",
}

# what starts a tracker: (logger settings, run folder, resolved config, run name, run group) -> Tracker
TrackerFactory = Callable[..., Tracker]


def tracker_factory(backend: str) -> TrackerFactory:
    """The function that starts ``backend``'s tracker (ConfigError naming ``logger.backend`` if it does not
    import)."""
    target = BUILT_IN.get(backend, backend)
    module_name, _, attr = target.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError("logger.backend", f"cannot import tracker {backend!r}: {err}") from None
    if not callable(factory):
        raise ConfigError("logger.backend", f"{backend!r} is not a function")
    return factory


def start_tracker(
    cfg: LoggerSettings, *, layout: RunLayout, config: dict[str, Any], name: str, group: str
) -> Tracker:
    """The run's tracker, chosen by ``logger.backend``: started on the main process only (the others get a
    NullTracker), with the run's folder, resolved config, name and group."""
    if not is_main_process():
        from dpo_lab.track.null_tracker import NullTracker

        return NullTracker()
    return tracker_factory(cfg.backend)(cfg, layout=layout, config=config, name=name, group=group)
