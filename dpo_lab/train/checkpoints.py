"""Training checkpoints: what makes one complete, finding the newest complete one, and keeping a few.

The Trainer writes ``checkpoints/checkpoint-<step>/`` file by file (adapter, optimizer, scheduler, RNG
state, trainer state); a process killed half way leaves a folder that looks like a checkpoint but cannot be
resumed from. A checkpoint is therefore *complete* only when it holds :data:`MARKER`, which
:class:`CheckpointCallback` writes last, after every process has finished writing and the files are
flushed to disk. The marker lists every file with its size; a checkpoint is loaded only if the marker
parses, names the folder's own step, every listed file is there with its recorded size, and the listed
files include each part a resume needs (:data:`REQUIRED_PARTS`). Anything else is skipped, and removed
before a resumed run writes new checkpoints.

Rotation (``train.save_total_limit``) is done here too, after the marker, counting only complete checkpoints:
the Trainer's own rotation runs before a new checkpoint is known to be complete and could delete the last
good one.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from transformers import TrainerCallback

from dpo_lab.runs.atomic import atomic_write_text, fsync_tree
from dpo_lab.train.distributed import is_main_process, wait_for_everyone

log = logging.getLogger(__name__)

MARKER = "dpo_lab_checkpoint.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")

# Each part a resume needs, as the file (or folder) names transformers uses for it: plain / DDP, FSDP,
# DeepSpeed. A checkpoint whose marker lacks one of them is not complete.
REQUIRED_PARTS: dict[str, tuple[str, ...]] = {
    "trainer state": ("trainer_state.json",),
    "adapter weights": ("adapter_model.safetensors", "adapter_model.bin", "pytorch_model_fsdp*"),
    "optimizer state": ("optimizer.pt", "optimizer.bin", "optimizer_*", "global_step*"),
    "scheduler state": ("scheduler.pt",),
    "RNG state": ("rng_state.pth", "rng_state_*.pth"),
}


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: Path


def list_checkpoints(folder: Path) -> list[Checkpoint]:
    """Every ``checkpoint-<step>`` folder under ``folder``, complete or not, oldest step first."""
    if not folder.is_dir():
        return []
    found = []
    for child in folder.iterdir():
        match = _NAME.match(child.name)
        if match and child.is_dir():
            found.append(Checkpoint(int(match.group(1)), child))
    return sorted(found, key=lambda c: c.step)


def _listed_files(path: Path) -> dict[str, int]:
    """Relative path -> size of every file under ``path`` except the marker."""
    files = {}
    for file in sorted(path.rglob("*")):
        if file.is_file() and file.name != MARKER:
            files[file.relative_to(path).as_posix()] = file.stat().st_size
    return files


def missing_parts(names: list[str]) -> list[str]:
    """The parts of :data:`REQUIRED_PARTS` that none of ``names`` (top-level names) provides."""
    return [
        part
        for part, patterns in REQUIRED_PARTS.items()
        if not any(fnmatch.fnmatch(name, pattern) for name in names for pattern in patterns)
    ]


def incompleteness(checkpoint: Checkpoint) -> str | None:
    """Why ``checkpoint`` cannot be resumed from, or None when it is complete."""
    marker = checkpoint.path / MARKER
    if not marker.is_file():
        return f"no {MARKER} (the save did not finish)"
    try:
        record = json.loads(marker.read_text())
        step, files = int(record["step"]), dict(record["files"])
    except (ValueError, KeyError, TypeError) as err:
        return f"unreadable {MARKER}: {err}"
    if step != checkpoint.step:
        return f"{MARKER} is for step {step}, not {checkpoint.step}"
    for name, size in files.items():
        file = checkpoint.path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} has {file.stat().st_size} bytes, {size} were written"
    missing = missing_parts(sorted({name.split("/", 1)[0] for name in files}))
    if missing:
        return f"it holds no {', '.join(missing)}"
    return None


def latest_complete(folder: Path) -> Checkpoint | None:
    """The complete checkpoint with the highest step under ``folder``; skipped ones are logged."""
    for checkpoint in reversed(list_checkpoints(folder)):
        reason = incompleteness(checkpoint)
        if reason is None:
            return checkpoint
        log.warning("skipping checkpoint %s: %s", checkpoint.path, reason)
    return None


def mark_complete(path: Path, step: int) -> None:
    """Flush the checkpoint's files to disk, then write :data:`MARKER` (atomically) as its last file."""
    files = _listed_files(path)
    missing = missing_parts(sorted({name.split("/", 1)[0] for name in files}))
    if missing:
        raise RuntimeError(f"checkpoint {path} was saved without {', '.join(missing)}: it cannot be resumed")
    fsync_tree(path)
    atomic_write_text(path / MARKER, json.dumps({"step": step, "files": files}, indent=1))


def remove_incomplete(folder: Path) -> list[Path]:
    """Delete every checkpoint under ``folder`` that is not complete (left by a killed run)."""
    removed = []
    for checkpoint in list_checkpoints(folder):
        reason = incompleteness(checkpoint)
        if reason is not None:
            log.warning("removing incomplete checkpoint %s: %s", checkpoint.path, reason)
            shutil.rmtree(checkpoint.path)
            removed.append(checkpoint.path)
    return removed


def rotate(folder: Path, keep: int, protect: str | None = None) -> list[Path]:
    """Keep the ``keep`` newest complete checkpoints (and ``protect``, e.g. the best one); delete the rest
    and any incomplete checkpoint older than the newest complete one."""
    checkpoints = list_checkpoints(folder)
    complete = [c for c in checkpoints if incompleteness(c) is None]
    if not complete:
        return []
    kept = {c.path for c in complete[-keep:]}
    if protect:
        kept.add(Path(protect))
    newest = complete[-1].step
    doomed = [c.path for c in checkpoints if c.path not in kept and c.step < newest]
    for path in doomed:
        log.info("deleting old checkpoint %s (train.save_total_limit=%d)", path, keep)
        shutil.rmtree(path)
    return doomed


class CheckpointCallback(TrainerCallback):
    """After each save: wait for all processes, mark the checkpoint complete, rotate old ones."""

    def __init__(self, save_total_limit: int):
        self.save_total_limit = save_total_limit

    def on_save(self, args, state, control, **kwargs):
        wait_for_everyone()  # every rank has written its part (e.g. its RNG state)
        if is_main_process():
            folder = Path(args.output_dir)
            mark_complete(folder / f"checkpoint-{state.global_step}", state.global_step)
            rotate(folder, self.save_total_limit, protect=state.best_model_checkpoint)
        wait_for_everyone()  # nobody reads the folder while it changes
        return control


def resume_checkpoint(folder: Path) -> Checkpoint | None:
    """The checkpoint a (re)started run continues from; the main process removes incomplete leftovers."""
    checkpoint = latest_complete(folder)
    if is_main_process():
        remove_incomplete(folder)
    return checkpoint
