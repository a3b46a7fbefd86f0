"""Resume a run folder: from the command line (``resume=<folder>``) and when a run starts in a used folder.

Two ways lead to the same place:

- ``python -m dpo_lab.run resume=runs/2026-05-01/10-00-00-123456`` re-runs the command-line overrides the
  folder was started with (its ``overrides.yaml``; Hydra's ``.hydra/overrides.yaml`` is rewritten by every
  launch, even one that is then refused) in that folder (``hydra.run.dir``);
- the same command again with the same ``hydra.run.dir`` (what a requeued SLURM job does).

Either way :func:`plan_resume` looks at the folder before anything heavy is loaded: a config that differs
from the one the folder was started with (``config.yaml``) is an error naming the first differing key; a
folder whose run already completed is left as it is; otherwise training continues from the newest complete
checkpoint (see :mod:`dpo_lab.checkpoints`), or starts fresh when there is none.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from transformers import TrainerCallback

from dpo_lab.artifacts import atomic_write_json, atomic_write_text
from dpo_lab.checkpoints import Checkpoint, resume_checkpoint
from dpo_lab.config import ConfigError
from dpo_lab.distributed import is_main_process
from dpo_lab.redaction import REDACTED, redact

log = logging.getLogger(__name__)

EVAL_BEFORE_FILE = "eval_before.json"
OVERRIDES_FILE = "overrides.yaml"

# Keys that may differ between the attempts of one run folder.
_FREE_KEYS = {"resume"}


@dataclass
class ResumePlan:
    checkpoint: Checkpoint | None = None  # continue from here; None = train from step 0
    completed: dict[str, Any] | None = None  # metrics.json of a run that already finished


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
            if not prefix and key in _FREE_KEYS:
                continue
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in old or key not in new:
                return path
            found = first_difference(old[key], new[key], path)
            if found:
                return found
        return None
    return None if old == new else (prefix or "config")


def check_same_config(run_dir: Path, resolved: dict[str, Any]) -> None:
    """Raise ConfigError if ``run_dir`` was started with a different config than ``resolved``."""
    stored = run_dir / "config.yaml"
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


def save_run_config(run_dir: Path, resolved: dict[str, Any], overrides: list[str]) -> None:
    """``config.yaml`` (the resolved config) and, on a folder's first launch, ``overrides.yaml`` (the
    command-line overrides it was started with, which ``resume=<folder>`` reuses)."""
    if not (run_dir / OVERRIDES_FILE).is_file():
        kept = redact([o for o in overrides if not o.startswith("resume=")], text=True)
        atomic_write_text(run_dir / OVERRIDES_FILE, yaml.safe_dump(kept, default_flow_style=False))
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(redact(resolved)))


def plan_resume(run_dir: Path, resolved: dict[str, Any]) -> ResumePlan:
    """What to do in ``run_dir``: resume, fresh start, or nothing (already completed)."""
    check_same_config(run_dir, resolved)
    metrics = run_dir / "metrics.json"
    if metrics.is_file() and (run_dir / "adapter").is_dir():
        record = json.loads(metrics.read_text())
        if record.get("status") == "completed":
            log.info("%s already holds a completed run; nothing to do", run_dir)
            return ResumePlan(completed=record)
    checkpoint = resume_checkpoint(run_dir / "checkpoints")
    if checkpoint is not None:
        log.info("resuming from %s", checkpoint.path)
    elif (run_dir / "config.yaml").is_file():
        log.info("%s was started before but holds no complete checkpoint: training from step 0", run_dir)
    return ResumePlan(checkpoint=checkpoint)


class HeldOutBefore(TrainerCallback):
    """Held-out metrics of the untrained adapter ("before"), computed once per run folder.

    They are computed by the Trainer's ``eval_on_start`` (pass :attr:`pending` to ``build_dpo_args``) rather
    than by ``trainer.evaluate()`` before ``train()``: with transformers 5 / accelerate 1.x, evaluating first
    marks the bare model as prepared and ``train()`` then never wraps it in DistributedDataParallel, so the
    processes of a multi-process run would train without averaging their gradients. The metrics are stored
    in ``eval_before.json`` and reused when the folder is resumed (a resumed adapter is no longer untrained).
    """

    def __init__(self, run_dir: Path, enabled: bool, resuming: bool):
        self.path = run_dir / EVAL_BEFORE_FILE
        stored = enabled and self.path.is_file()
        self.metrics: dict[str, Any] = json.loads(self.path.read_text()) if stored else {}
        self.pending = enabled and not stored and not resuming
        if enabled and resuming and not stored:
            log.warning(
                "no %s in the resumed folder: the run reports no held-out metrics before training", self.path
            )

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self.pending and state.global_step == 0 and metrics is not None:
            self.metrics, self.pending = dict(metrics), False
            if is_main_process():
                atomic_write_json(self.path, self.metrics)
        return control
