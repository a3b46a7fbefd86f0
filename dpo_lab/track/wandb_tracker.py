"""``logger=wandb``: the W&B run lifecycle, one run per experiment, created, fed and finished by dpo_lab
itself (settings under ``logger.wandb``).

transformers' own W&B callback reuses whatever run is active and never finishes it, so in a same-process
multirun job 2 would log into job 1's run; dpo_lab therefore sets ``report_to="none"`` and logs TRL's
metrics through :class:`MetricsCallback` into the run it owns.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpo_lab.config.choices import WandbMode
from dpo_lab.config.schemas import LoggerSettings
from dpo_lab.runs.atomic import atomic_write_json
from dpo_lab.runs.layout import RunLayout
from dpo_lab.runs.redaction import redact, redact_text, redacted_argv
from dpo_lab.track.base import Tracker
from dpo_lab.track.null_tracker import NullTracker

log = logging.getLogger(__name__)

WANDB_HOST = ("api.wandb.ai", 443)


def has_api_key() -> bool:
    """An API key from the environment or ~/.netrc (never read into any config)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def network_reachable(host: tuple[str, int] = WANDB_HOST, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection(host, timeout=timeout):
            return True
    except OSError:
        return False


def resolve_mode(mode: WandbMode) -> str:
    """``auto`` -> online with an API key and a reachable server, offline otherwise (never a hang)."""
    if mode is not WandbMode.auto:
        return mode.value
    base_url = os.environ.get("WANDB_BASE_URL", "")
    host = WANDB_HOST
    if base_url.startswith("http"):
        netloc = base_url.split("://", 1)[1].split("/", 1)[0]
        name, _, port = netloc.partition(":")
        host = (name, int(port) if port else (443 if base_url.startswith("https") else 80))
    return "online" if has_api_key() and network_reachable(host) else "offline"


@dataclass
class WandbTracker:
    """A live W&B run (``run`` is None once finished)."""

    run: Any = None  # wandb.sdk.wandb_run.Run

    @property
    def run_id(self) -> str | None:
        return self.run.id if self.run is not None else None

    @property
    def active(self) -> bool:
        return self.run is not None

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.run is not None:
            self.run.log({**metrics, "train/global_step": step})

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        """Log a table (e.g. sample generations) under ``key``."""
        if self.run is not None:
            import wandb

            self.run.log({key: wandb.Table(columns=columns, data=rows), "train/global_step": step})

    def summarize(self, values: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.summary.update(values)

    def log_artifact(self, folder: Path, name: str, kind: str, metadata: dict[str, Any]) -> None:
        """Upload a folder (e.g. the adapter with its model card) as a versioned W&B artifact."""
        if self.run is not None:
            import wandb

            artifact = wandb.Artifact(name=name, type=kind, metadata=metadata)
            artifact.add_dir(str(folder))
            self.run.log_artifact(artifact)

    def finish_preempted(self, step: int, exit_code: int) -> None:
        """Finish as preempted: a ``preempting`` record, the step it stopped at, a non-zero exit code."""
        if self.run is not None:
            self.summarize({"status": "preempted", "preempted_at_step": step})
            self.run.mark_preempting()
            self.finish(exit_code=exit_code)

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            offline = self.run.settings.mode == "offline"
            run_dir = Path(self.run.dir).parent
            self.run.finish(exit_code=exit_code)
            self.run = None
            if offline:
                log.info("W&B run saved offline; upload it with: wandb sync %s", run_dir)


def stored_run_id(layout: RunLayout) -> str | None:
    """The W&B run id an earlier attempt in this run folder stored, if any."""
    path = layout.wandb_run
    return json.loads(path.read_text())["id"] if path.is_file() else None


def start(
    cfg: LoggerSettings, *, layout: RunLayout, config: dict[str, Any], name: str, group: str
) -> Tracker:
    """Create the run for this experiment (its id is stored in the run folder), or continue the stored one
    when the run folder was started before (resume)."""
    settings = cfg.wandb
    if settings.mode is WandbMode.disabled:
        return NullTracker()
    run_dir = layout.root
    import wandb

    run_id = stored_run_id(layout)
    mode = resolve_mode(settings.mode)
    wandb_dir = Path(settings.dir).expanduser() if settings.dir else run_dir
    wandb_dir.mkdir(parents=True, exist_ok=True)
    name, group = redact_text(name), redact_text(group)
    with redacted_argv():  # W&B records the command line in its run metadata
        run = wandb.init(
            project=settings.project,
            entity=settings.entity,
            name=name,
            group=group,
            tags=list(cfg.tags),
            job_type=settings.job_type,
            notes=cfg.notes,
            config=redact(config),
            dir=str(wandb_dir),
            mode=mode,
            reinit="finish_previous",
            id=run_id,
            resume="allow" if run_id else None,
            # quiet: no run history printed at the end; dpo_lab logs the run's id and how to upload it
            settings=wandb.Settings(init_timeout=60, console="off", quiet=True),
        )
    run.define_metric("train/global_step")
    run.define_metric("*", step_metric="train/global_step", step_sync=True)
    atomic_write_json(
        layout.wandb_run, {"id": run.id, "project": settings.project, "entity": settings.entity, "mode": mode}
    )
    log.info("W&B run %s (%s, %s%s)", run.id, name, mode, ", resumed" if run_id else "")
    return WandbTracker(run)
