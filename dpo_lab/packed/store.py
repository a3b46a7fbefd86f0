"""A packed group's state on disk: its checkpoints while it trains, its outcome once it has trained.

A pack trains K jobs' adapters before any of the K jobs runs, so a kill during the pack's training would
lose the whole group's work, and a kill after it, while the jobs write their folders one by one, would leave
the remaining jobs to train again. Each pack therefore keeps a folder in the sweep's folder,
``<hydra.sweep.dir>/.packs/<pack id>/``:

- ``pack.json``: which jobs (run folders, and a digest of each job's validated config);
- ``checkpoint-<step>.pt``, every ``train.save_steps`` optimizer steps: every adapter, optimizer and
  schedule of the pack, each job's trainer state and pending metrics, the RNG state (the newest two are kept;
  one that does not load sends the pack back to the one before);
- ``result.pt``, once training and the shared task answers are done: each job's outcome
  (``PackedOutcome.to_state()`` of dpo_lab.packed.handoff: plain values and tensors).

The pack id is a digest of its jobs' run folders and configs, so running the same command again finds the
same folder; a job whose config changed belongs to another pack. Every file is written under a temporary
name and renamed into place (``os.replace``), so a file is there whole or not at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from dpo_lab.config.fields import digest, plain
from dpo_lab.packed.handoff import PackedOutcome
from dpo_lab.packed.plan import PackedJobInfo
from dpo_lab.runs.atomic import atomic_write, atomic_write_json

log = logging.getLogger(__name__)

PACKS_FOLDER = ".packs"
RESULT_FILE = "result.pt"
INDEX_FILE = "pack.json"
KEEP_CHECKPOINTS = 2
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)\.pt$")


def job_digest(run_config: Any) -> str:
    """A digest of a job's validated config (everything that decides what it trains)."""
    return digest(plain(run_config))


class PackStore:
    """The on-disk folder of one pack (see the module docstring)."""

    def __init__(self, folder: Path):
        self.folder = folder

    @classmethod
    def for_jobs(cls, sweep_dir: Path, jobs: Sequence[tuple[Path, Any]]) -> PackStore:
        """The folder of the pack made of ``jobs`` (run folder, validated config), in pack order."""
        members = [{"run_dir": str(run_dir), "config": job_digest(cfg)} for run_dir, cfg in jobs]
        pack_id = hashlib.sha256(json.dumps(members).encode()).hexdigest()[:12]
        store = cls(sweep_dir / PACKS_FOLDER / pack_id)
        store.folder.mkdir(parents=True, exist_ok=True)
        if not (store.folder / INDEX_FILE).is_file():
            atomic_write_json(store.folder / INDEX_FILE, {"jobs": members})
        return store

    # ---- checkpoints -------------------------------------------------------------------------------------

    def checkpoints(self) -> list[tuple[int, Path]]:
        """(step, path) of every checkpoint file, oldest first."""
        found = []
        for path in self.folder.glob("checkpoint-*.pt"):
            match = _CHECKPOINT.match(path.name)
            if match:
                found.append((int(match.group(1)), path))
        return sorted(found)

    def save_checkpoint(self, step: int, state: dict[str, Any]) -> Path:
        """Write the pack's state after optimizer step ``step``; keep the newest two."""
        path = self.folder / f"checkpoint-{step}.pt"
        _atomic_torch_save(state, path)
        for _, old in self.checkpoints()[:-KEEP_CHECKPOINTS]:
            old.unlink(missing_ok=True)
        log.info("pack checkpoint at step %d: %s", step, path)
        return path

    def latest_checkpoint(self) -> dict[str, Any] | None:
        """The newest checkpoint that loads (an unreadable one is reported and passed over), or None."""
        for step, path in reversed(self.checkpoints()):
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as err:  # a torn or overwritten file: the previous checkpoint serves
                log.warning("pack checkpoint %s does not load (%s); trying the previous one", path, err)
                continue
            if state.get("step") != step:
                log.warning("pack checkpoint %s holds step %s; passed over", path, state.get("step"))
                continue
            log.info("packed training resumes from %s", path)
            return state
        return None

    # ---- the outcome -------------------------------------------------------------------------------------

    def save_result(self, states: Sequence[dict[str, Any]]) -> None:
        """Each job's outcome (``PackedOutcome.to_state()``), in pack order; the checkpoints are no longer
        needed after it."""
        _atomic_torch_save(list(states), self.folder / RESULT_FILE)
        for _, path in self.checkpoints():
            path.unlink(missing_ok=True)

    def load_result(self) -> list[dict[str, Any]] | None:
        """The saved outcome (one state per job), or None when the pack has not finished."""
        path = self.folder / RESULT_FILE
        if not path.is_file():
            return None
        try:
            states = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            log.warning("pack result %s does not load (%s); the pack trains again", path, err)
            return None
        return states


def saved_state(sweep_dir: Path, run_dir: Path, run_config: Any) -> dict[str, Any] | None:
    """The outcome state a finished pack left for this job (same run folder and config), or None."""
    digest = job_digest(run_config)
    for index in sorted((sweep_dir / PACKS_FOLDER).glob(f"*/{INDEX_FILE}")):
        try:
            members = json.loads(index.read_text())["jobs"]
        except (OSError, ValueError, KeyError):
            continue
        wanted = {"run_dir": str(run_dir), "config": digest}
        if wanted not in members:
            continue
        results = _load_result_once(index.parent)
        if results is not None and len(results) == len(members):
            return results[members.index(wanted)]
    return None


_loaded: dict[tuple[str, int], list[dict[str, Any]] | None] = {}


def _load_result_once(folder: Path) -> list[dict[str, Any]] | None:
    """:meth:`PackStore.load_result`, read once per file version (every job of a pack asks for it)."""
    path = folder / RESULT_FILE
    if not path.is_file():
        return None
    key = (str(path), path.stat().st_mtime_ns)
    if key not in _loaded:
        _loaded.clear()  # one pack's outcome in memory at a time
        _loaded[key] = PackStore(folder).load_result()
    return _loaded[key]


def _atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda handle: torch.save(obj, handle), mode="wb")


def store_for(jobs: Sequence[PackedJobInfo]) -> PackStore | None:
    """The on-disk state of the pack made of ``jobs`` (None for jobs without a sweep folder)."""
    if any(job.sweep_dir is None or job.run_dir is None for job in jobs):
        return None
    return PackStore.for_jobs(jobs[0].sweep_dir, [(job.run_dir, job.run_config) for job in jobs])


def saved_outcome(job: PackedJobInfo) -> PackedOutcome | None:
    """What a finished pack trained for this job before (a sweep killed after its pack had trained, while
    the jobs wrote their folders), else None (the job trains, packed or alone, or resumes itself). The
    launcher runs such a job alone with this outcome, whether its folder was started or not."""
    if job.run_config is None or job.sweep_dir is None or job.run_dir is None:
        return None
    state = saved_state(job.sweep_dir, job.run_dir, job.run_config)
    if state is None:
        return None
    log.info("job %s takes its adapter from the pack that trained it before", job.config.hydra.job.num)
    return PackedOutcome.from_state(state)
