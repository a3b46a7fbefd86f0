"""Resume a run folder: from the command line (``resume=<folder>``) and when a run starts in a used folder.

Two ways lead to the same place:

- ``python -m dpo_lab.run resume=runs/2026-05-01/10-00-00-123456`` re-runs the command-line overrides the
  folder was started with (its ``overrides.yaml``; Hydra's ``.hydra/overrides.yaml`` is rewritten by every
  launch, even one that is then refused) in that folder (``hydra.run.dir``);
- the same command again with the same ``hydra.run.dir`` (what a requeued SLURM job does).

Either way :func:`plan_resume` looks at the folder before anything heavy is loaded: a config that differs
from the one the folder was started with (``config.yaml``) is an error naming the first differing key; a
folder whose run already completed is left as it is; otherwise training continues from the newest complete
checkpoint (see :mod:`dpo_lab.train.checkpoints`), or starts fresh when there is none. A folder with neither a
checkpoint nor a completed result (its run failed or was killed before its first checkpoint) holds nothing
to keep, so it may be started again with another config (e.g. after fixing the data that made it fail).

A resumed run's ``log_history.jsonl`` is rewritten from the checkpoint's own log history first, and a fresh
start removes the old attempt's, so the file ends as an uninterrupted run's would.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from dpo_lab.errors import ConfigError
from dpo_lab.runs.atomic import atomic_write_text
from dpo_lab.runs.checkpoints import Checkpoint, discard, newest_intact
from dpo_lab.runs.history import HISTORY_FILE, restore_history
from dpo_lab.runs.layout import EVAL_BEFORE_FILE, OVERRIDES_FILE, RunLayout
from dpo_lab.runs.redaction import REDACTED, redact
from dpo_lab.runtime.processes import is_main_process

log = logging.getLogger(__name__)


# metrics.json statuses of a run that is over: a rerun leaves it as it is
FINISHED = ("completed", "pruned")

# Keys that may differ between the attempts of one run folder: ``prune.stop_at`` is the round's rung of the
# halving sweeper, which runs a promoted job on in its folder with a later one.
_FREE_KEYS = {"resume", "prune.stop_at"}


@dataclass
class ResumePlan:
    checkpoint: Checkpoint | None = None  # continue from here; None = train from step 0
    completed: dict[str, Any] | None = None  # metrics.json of a run that already finished
    # metrics.json of the earlier round this run goes on from (a job the halving sweeper promoted)
    rung: dict[str, Any] | None = None


def _is_multirun(args: list[str]) -> bool:
    return any(a in ("-m", "--multirun") for a in args)


def resume_overrides(args: list[str]) -> list[str]:
    """Expand ``resume=<folder>`` into the overrides that folder was started with + ``hydra.run.dir``."""
    given = [a for a in args if a.startswith("resume=")]
    if not given:
        return args
    folder = Path(given[-1].split("=", 1)[1]).expanduser()
    if _is_multirun(args):
        raise ConfigError("resume", "names one run folder; it cannot be combined with --multirun")
    stored = folder / OVERRIDES_FILE
    if not stored.is_file():
        raise ConfigError("resume", f"{folder} is not a dpo_lab run folder (no {OVERRIDES_FILE} in it)")
    for arg in args:
        if arg.startswith("hydra.run.dir=") and Path(arg.split("=", 1)[1]).resolve() != folder.resolve():
            raise ConfigError("resume", f"names {folder} but hydra.run.dir names another folder; give one")
    original = [o for o in yaml.safe_load(stored.read_text()) or [] if not o.startswith("resume=")]
    secret = next((o for o in original if REDACTED in o), None)
    if secret is not None:
        raise ConfigError(
            "resume",
            f"{folder} was started with a secret ({secret}) that dpo_lab does not store; rerun its command "
            f"with the secret and hydra.run.dir={folder}, or pass the secret through the environment",
        )
    rest = [a for a in args if not a.startswith(("resume=", "hydra.run.dir="))]
    log.info("resuming %s with its overrides: %s", folder, " ".join(original) or "(none)")
    return [*original, *rest, f"hydra.run.dir={folder}", f"resume={folder}"]


def first_difference(old: Any, new: Any, prefix: str = "") -> str | None:
    """Dotted path of the first key whose value differs between two nested configs, or None."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            path = f"{prefix}.{key}" if prefix else str(key)
            if path in _FREE_KEYS:
                continue
            if key not in old or key not in new:
                return path
            found = first_difference(old[key], new[key], path)
            if found:
                return found
        return None
    return None if old == new else (prefix or "config")


def check_same_config(run_dir: Path, resolved: dict[str, Any]) -> None:
    """Raise ConfigError if ``run_dir`` was started with a different config than ``resolved``."""
    stored = RunLayout(run_dir).config
    if not stored.is_file():
        return
    old = yaml.safe_load(stored.read_text())
    # compare through YAML, written the way config.yaml is written (enums -> strings)
    new = yaml.safe_load(OmegaConf.to_yaml(redact(resolved)))
    key = first_difference(old, new)
    if key is not None:
        raise ConfigError(
            key,
            f"differs from the config {run_dir} was started with (see its config.yaml); a resumed run "
            "must keep its config: start a new run folder to change it",
        )


def save_run_config(
    run_dir: Path, resolved: dict[str, Any], overrides: list[str], fresh: bool = False
) -> None:
    """``config.yaml`` (the resolved config) and, on a folder's first launch or a ``fresh`` start (nothing
    to resume), ``overrides.yaml`` (the command-line overrides it was started with, which
    ``resume=<folder>`` reuses)."""
    if fresh or not (run_dir / OVERRIDES_FILE).is_file():
        kept = redact([o for o in overrides if not o.startswith("resume=")], text=True)
        atomic_write_text(run_dir / OVERRIDES_FILE, yaml.safe_dump(kept, default_flow_style=False))
    atomic_write_text(RunLayout(run_dir).config, OmegaConf.to_yaml(redact(resolved)))


def completed_result(run_dir: Path) -> dict[str, Any] | None:
    """metrics.json of a run that finished in ``run_dir`` (its adapter saved), else None. A job a pruner
    stopped early (status ``pruned``) is finished too: run again, it is reported, not trained on."""
    metrics = RunLayout(run_dir).metrics
    if metrics.is_file() and RunLayout(run_dir).adapter.is_dir():
        record = json.loads(metrics.read_text())
        if record.get("status") in FINISHED:
            return record
    return None


def goes_on_from_rung(record: dict[str, Any], stop_at: int | None) -> bool:
    """Whether a finished record is a round of the halving sweeper that this launch runs on: stopped at its
    rung (``pruning.stop_at``) before the step this launch trains to (``prune.stop_at``)."""
    pruning = record.get("pruning") if isinstance(record.get("pruning"), dict) else {}
    stopped = pruning.get("pruned_at_step")
    return (
        record.get("status") == "pruned"
        and pruning.get("stop_at") is not None
        and stopped is not None
        and stop_at is not None
        and stop_at > stopped
    )


def plan_resume(run_dir: Path, resolved: dict[str, Any]) -> ResumePlan:
    """What to do in ``run_dir``: resume, fresh start, or nothing (already completed). A job the halving
    sweeper stopped at a rung and now runs to a later one (``prune.stop_at``) goes on from its checkpoint."""
    completed = completed_result(run_dir)
    rung = None
    prune = resolved.get("prune")
    if completed is not None and goes_on_from_rung(completed, (prune or {}).get("stop_at")):
        rung, completed = completed, None
    checkpoint, skipped = newest_intact(RunLayout(run_dir).checkpoints)
    if completed is not None or checkpoint is not None or rung is not None:
        check_same_config(run_dir, resolved)  # something to keep: the config must be the one it was made by
    elif RunLayout(run_dir).config.is_file():
        try:
            check_same_config(run_dir, resolved)
        except ConfigError as err:
            log.info("%s holds no checkpoint and no result: starting it again with the new config "
                     "(%s differs)", run_dir, err.key)  # fmt: skip
    if completed is not None:
        log.info("%s already holds a %s run; nothing to do", run_dir, completed["status"])
        return ResumePlan(completed=completed)
    discard(RunLayout(run_dir).checkpoints, skipped)
    if checkpoint is not None:
        log.info("resuming from %s", checkpoint.path)
    elif RunLayout(run_dir).config.is_file():
        log.info("%s was started before but holds no complete checkpoint: training from step 0", run_dir)
    if is_main_process():
        restart_history(run_dir, checkpoint)
    if rung is not None and checkpoint is None:
        log.info("%s holds no checkpoint of the rung it stopped at: training from step 0", run_dir)
        rung = None
    return ResumePlan(checkpoint=checkpoint, rung=rung)


def restart_history(run_dir: Path, checkpoint: Checkpoint | None) -> None:
    """The folder's per-step files as they were at ``checkpoint``: ``log_history.jsonl`` rewritten from the
    checkpoint's log history; with no checkpoint (a fresh start), the old attempt's history and held-out
    "before" metrics removed (the new attempt computes them again)."""
    history = run_dir / HISTORY_FILE
    if checkpoint is None:
        history.unlink(missing_ok=True)
        (run_dir / EVAL_BEFORE_FILE).unlink(missing_ok=True)
        return
    state = json.loads((checkpoint.path / "trainer_state.json").read_text())
    restore_history(history, state.get("log_history", []))
