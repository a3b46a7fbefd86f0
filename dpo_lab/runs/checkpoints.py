"""Training checkpoints: what makes one complete, finding the newest complete one, and keeping a few.

The Trainer writes ``checkpoints/checkpoint-<step>/`` file by file (adapter, optimizer, scheduler, RNG
state, trainer state); a process killed half way leaves a folder that looks like a checkpoint but cannot be
resumed from. A checkpoint is therefore *complete* only when it holds :data:`MARKER`, which
:class:`CheckpointCallback` writes last, after every process has finished writing and the files are
flushed to disk. The marker lists every file with its size; a checkpoint is loaded only if the marker
parses, names the folder's own step, every listed file is there with its recorded size, and the listed
files include each part a resume needs (:data:`REQUIRED_PARTS`). Anything else is skipped, and removed
before a resumed run writes new checkpoints.

The marker also records a sha256 digest of every file. Sizes are what rotation and the guard check (cheap);
the checkpoint a run resumes from is also read back and compared with its digests (:func:`corruption`), so
a file overwritten in place (same size, other bytes) sends the run back to the previous intact checkpoint
instead of failing inside the Trainer's loader.

Rotation (``train.save_total_limit``) is done here too, after the marker, counting only complete checkpoints:
the Trainer's own rotation runs before a new checkpoint is known to be complete and could delete the last
good one.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from dpo_lab.runs.atomic import atomic_write_text, fsync_tree
from dpo_lab.runtime.processes import is_main_process

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


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def mark_complete(path: Path, step: int) -> None:
    """Flush the checkpoint's files to disk, then write :data:`MARKER` (atomically) as its last file."""
    files = _listed_files(path)
    missing = missing_parts(sorted({name.split("/", 1)[0] for name in files}))
    if missing:
        raise RuntimeError(f"checkpoint {path} was saved without {', '.join(missing)}: it cannot be resumed")
    fsync_tree(path)
    digests = {name: file_sha256(path / name) for name in files}
    atomic_write_text(path / MARKER, json.dumps({"step": step, "files": files, "sha256": digests}, indent=1))


def corruption(checkpoint: Checkpoint) -> str | None:
    """Why a complete ``checkpoint``'s files do not hold what was written (a digest differs), or None.

    Markers written before digests were recorded have none: their safetensors headers are parsed instead."""
    try:
        record = json.loads((checkpoint.path / MARKER).read_text())
        digests = record.get("sha256")
        if isinstance(digests, dict):
            for name, digest in digests.items():
                if file_sha256(checkpoint.path / name) != digest:
                    return f"{name} does not hold the bytes that were written (sha256 differs: corrupt)"
            return None
    except OSError as err:  # e.g. removed meanwhile by the main process
        return f"unreadable ({err})"
    for name in record["files"]:
        if name.endswith(".safetensors"):
            file = checkpoint.path / name
            try:
                with open(file, "rb") as handle:
                    header = int.from_bytes(handle.read(8), "little")
                    if header > file.stat().st_size - 8:
                        raise ValueError(f"header of {header} bytes")
                    json.loads(handle.read(header))
            except (ValueError, OSError) as err:
                return f"{name} is not a readable safetensors file ({type(err).__name__}: corrupt)"
    return None


def newest_intact(folder: Path) -> tuple[Checkpoint | None, list[tuple[Checkpoint, str]]]:
    """The newest checkpoint that is complete and intact, and the newer ones passed over, with why."""
    skipped = []
    for checkpoint in reversed(list_checkpoints(folder)):
        reason = incompleteness(checkpoint) or corruption(checkpoint)
        if reason is None:
            return checkpoint, skipped
        skipped.append((checkpoint, reason))
    return None, skipped


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


def discard(folder: Path, skipped: list[tuple[Checkpoint, str]]) -> None:
    """Log each checkpoint passed over and why; the main process deletes them (a resumed run writes its
    own checkpoints of those steps) and any other incomplete one."""
    for checkpoint, reason in skipped:
        log.warning("skipping checkpoint %s: %s", checkpoint.path, reason)
    if not is_main_process():
        return
    for checkpoint, _ in skipped:
        if checkpoint.path.exists() and incompleteness(checkpoint) is None:  # complete but corrupt
            log.warning("removing corrupt checkpoint %s", checkpoint.path)
            shutil.rmtree(checkpoint.path)
    remove_incomplete(folder)
