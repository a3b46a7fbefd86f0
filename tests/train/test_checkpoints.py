"""Checkpoint completeness, rotation, atomic writes and resume planning (no training)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import TrainerControl, TrainerState, TrainingArguments

from dpo_lab.config.validation import to_run_config
from dpo_lab.errors import ConfigError, NonFiniteError
from dpo_lab.runs.atomic import atomic_write_text, partial_path, replace_dir
from dpo_lab.runs.checkpoints import (
    MARKER,
    REQUIRED_PARTS,
    Checkpoint,
    corruption,
    incompleteness,
    latest_complete,
    list_checkpoints,
    mark_complete,
    missing_parts,
    remove_incomplete,
    rotate,
)
from dpo_lab.runs.history import read_history
from dpo_lab.train.checkpoints import CheckpointCallback
from dpo_lab.train.resume import (
    check_same_config,
    first_difference,
    plan_resume,
    resume_overrides,
    save_run_config,
)
from tests.helpers import compose_config

PARTS = {
    "trainer_state.json": '{"global_step": 1}',
    "adapter_model.safetensors": "w" * 64,  # replaced by a real safetensors file of two small tensors
    "optimizer.pt": "o" * 128,
    "scheduler.pt": "s",
    "rng_state.pth": "r" * 16,
    "adapter_config.json": "{}",
}


def fake_checkpoint(
    folder: Path,
    step: int,
    complete: bool = True,
    skip: str | None = None,
    weight: float = 0.5,
    losses: list[float] | None = None,
) -> Path:
    """A checkpoint folder with every part; its adapter's tensors hold ``weight``, its log history the
    training ``losses`` of steps 1, 2, ..."""
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    for name, text in PARTS.items():
        if name != skip:
            (path / name).write_text(text)
    if skip != "adapter_model.safetensors":
        tensors = {"lora_A": torch.full((2, 3), weight), "lora_B": torch.zeros(3, 2)}
        save_file(tensors, str(path / "adapter_model.safetensors"))
    if losses is not None:
        history = [{"step": i + 1, "loss": loss} for i, loss in enumerate(losses)]
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": history}))
    if complete:
        mark_complete(path, step)
    return path


def overwrite_with_garbage(file: Path) -> None:
    """The same number of bytes, none of them the ones that were written."""
    file.write_bytes(bytes((b + 1) % 256 for b in file.read_bytes()))


def test_marked_checkpoint_is_complete(tmp_path: Path) -> None:
    path = fake_checkpoint(tmp_path, 4)
    assert incompleteness(Checkpoint(4, path)) is None
    record = json.loads((path / MARKER).read_text())
    assert record["step"] == 4 and record["files"]["optimizer.pt"] == 128


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda p: (p / MARKER).unlink(), "no dpo_lab_checkpoint.json"),
        (lambda p: (p / MARKER).write_text('{"step": 4, "fil'), "unreadable"),
        (lambda p: (p / "optimizer.pt").write_text("o" * 10), "optimizer.pt has 10 bytes, 128 were written"),
        (lambda p: (p / "rng_state.pth").unlink(), "rng_state.pth is missing"),
        (lambda p: os.replace(p, p.with_name("checkpoint-5")), "is for step 4, not 5"),
    ],
)
def test_damaged_checkpoint_is_incomplete(tmp_path: Path, damage, reason: str) -> None:
    path = fake_checkpoint(tmp_path, 4)
    damage(path)
    [checkpoint] = list_checkpoints(tmp_path)
    found = incompleteness(checkpoint)
    assert found is not None and reason in found


def test_marker_refused_without_optimizer_state(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="without optimizer state"):
        fake_checkpoint(tmp_path, 2, skip="optimizer.pt")
    assert not (tmp_path / "checkpoint-2" / MARKER).exists()


# the file of the fake checkpoint that stands for each part a resume needs
PART_FILES = {
    "trainer state": "trainer_state.json",
    "adapter weights": "adapter_model.safetensors",
    "optimizer state": "optimizer.pt",
    "scheduler state": "scheduler.pt",
    "RNG state": "rng_state.pth",
}


def test_the_part_table_is_the_one_checkpoints_require() -> None:
    assert set(PART_FILES) == set(REQUIRED_PARTS)


@pytest.mark.parametrize("part", sorted(PART_FILES))
def test_every_part_is_required_to_mark_a_checkpoint_complete(tmp_path: Path, part: str) -> None:
    with pytest.raises(RuntimeError, match=f"without {part}"):
        fake_checkpoint(tmp_path, 2, skip=PART_FILES[part])
    assert not (tmp_path / "checkpoint-2" / MARKER).exists()


@pytest.mark.parametrize("part", sorted(PART_FILES))
def test_a_marker_that_lists_no_file_of_a_part_is_not_complete(tmp_path: Path, part: str) -> None:
    """A marker written by an older or foreign save that left a part out: every listed file is there with
    its size, and still the checkpoint cannot be resumed from."""
    path = fake_checkpoint(tmp_path, 4)
    record = json.loads((path / MARKER).read_text())
    (path / PART_FILES[part]).unlink()
    del record["files"][PART_FILES[part]]
    (path / MARKER).write_text(json.dumps(record))
    reason = incompleteness(Checkpoint(4, path))
    assert reason == f"it holds no {part}"
    assert latest_complete(tmp_path) is None


@pytest.mark.parametrize("part", sorted(PART_FILES))
def test_a_listed_file_of_any_part_removed_later_makes_it_incomplete(tmp_path: Path, part: str) -> None:
    path = fake_checkpoint(tmp_path, 4)
    (path / PART_FILES[part]).unlink()
    assert incompleteness(Checkpoint(4, path)) == f"{PART_FILES[part]} is missing"


PLAIN = ["trainer_state.json", "adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth"]
EVERY_PART = ["trainer state", "adapter weights", "optimizer state", "scheduler state", "RNG state"]


@pytest.mark.parametrize(
    ("names", "missing"),
    [
        (PLAIN, []),  # plain / DDP
        # FSDP: sharded weights and optimizer folders, one RNG file per rank; older .bin weights
        ([PLAIN[0], "pytorch_model_fsdp_0", "optimizer_0", PLAIN[3], "rng_state_0.pth"], []),
        ([PLAIN[0], "adapter_model.bin", "optimizer.bin", PLAIN[3], "rng_state_1.pth"], []),
        # DeepSpeed keeps weights and optimizer state in global_step<N>/
        ([*PLAIN[:2], "global_step4", *PLAIN[3:]], []),
        # near misses name no part
        (["trainer_state.jsonl", "adapter_config.json", "optimizer.pth", "scheduler.pth", "rng_state.pt"],
         EVERY_PART),
        (["training_args.bin", "adapter_model.safetensors.tmp", "my_optimizer.pt", "rng_state_0.pt"],
         EVERY_PART),
        ([], EVERY_PART),
        # one part left out at a time
        *[([n for n in PLAIN if n != PLAIN[i]], [EVERY_PART[i]]) for i in range(len(PLAIN))],
    ],
)  # fmt: skip
def test_missing_parts_knows_each_launchers_file_names(names: list[str], missing: list[str]) -> None:
    assert missing_parts(names) == missing


def test_latest_complete_skips_half_written_newer_ones(tmp_path: Path) -> None:
    fake_checkpoint(tmp_path, 2)
    fake_checkpoint(tmp_path, 10)
    fake_checkpoint(tmp_path, 12, complete=False)  # killed while saving
    (tmp_path / "checkpoint-x").mkdir()  # not a checkpoint name
    assert [c.step for c in list_checkpoints(tmp_path)] == [2, 10, 12]  # numeric order, not text order
    assert latest_complete(tmp_path) == Checkpoint(10, tmp_path / "checkpoint-10")
    assert remove_incomplete(tmp_path) == [tmp_path / "checkpoint-12"]
    assert [c.step for c in list_checkpoints(tmp_path)] == [2, 10]


def test_no_checkpoint_means_fresh_start(tmp_path: Path) -> None:
    assert latest_complete(tmp_path / "checkpoints") is None
    fake_checkpoint(tmp_path / "checkpoints", 3, complete=False)
    assert latest_complete(tmp_path / "checkpoints") is None


def test_rotation_counts_only_complete_checkpoints(tmp_path: Path) -> None:
    for step in (2, 4, 6):
        fake_checkpoint(tmp_path, step)
    fake_checkpoint(tmp_path, 5, complete=False)
    deleted = rotate(tmp_path, keep=1, protect=str(tmp_path / "checkpoint-2"))
    assert sorted(deleted) == [tmp_path / "checkpoint-4", tmp_path / "checkpoint-5"]
    assert [c.step for c in list_checkpoints(tmp_path)] == [2, 6]


def test_rotation_never_deletes_the_newest_complete_one(tmp_path: Path) -> None:
    fake_checkpoint(tmp_path, 2)
    fake_checkpoint(tmp_path, 4, complete=False)  # being written: newer than the newest complete one
    assert rotate(tmp_path, keep=1) == []
    assert [c.step for c in list_checkpoints(tmp_path)] == [2, 4]


@pytest.mark.parametrize("keep", [2, 3])
def test_rotation_keeps_the_newest_n(tmp_path: Path, keep: int) -> None:
    steps = [2, 4, 10, 12, 100]  # text order (10, 100, 12, 2, 4) differs from step order
    for step in steps:
        fake_checkpoint(tmp_path, step)
    deleted = rotate(tmp_path, keep=keep)
    assert [c.step for c in list_checkpoints(tmp_path)] == steps[-keep:]
    assert sorted(deleted) == sorted(tmp_path / f"checkpoint-{step}" for step in steps[:-keep])


def test_checkpoint_callback_marks_each_save_and_keeps_save_total_limit_newest(tmp_path: Path) -> None:
    callback = CheckpointCallback(save_total_limit=3)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    for step in range(1, 7):
        fake_checkpoint(tmp_path, step, complete=False)  # as the Trainer leaves it before on_save
        callback.on_save(args, TrainerState(global_step=step), TrainerControl())
    assert [c.step for c in list_checkpoints(tmp_path)] == [4, 5, 6]
    assert all(incompleteness(c) is None for c in list_checkpoints(tmp_path))


@pytest.mark.parametrize("weight", [float("nan"), float("inf"), float("-inf")])
def test_a_checkpoint_over_non_finite_weights_is_never_marked_complete(tmp_path: Path, weight: float) -> None:
    """A step whose loss and gradients were finite can still leave non-finite weights (an update that
    overflows): the save stops the run, naming the last good checkpoint, and leaves no marker."""
    callback = CheckpointCallback(save_total_limit=3)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    fake_checkpoint(tmp_path, 2, complete=False)
    callback.on_save(args, TrainerState(global_step=2), TrainerControl())
    fake_checkpoint(tmp_path, 4, complete=False, weight=weight)
    with pytest.raises(
        NonFiniteError,
        match=r"\(lora_A\) at step 4; .*checkpoint-4 is not marked complete.*Last good checkpoint: .*-2",
    ):
        callback.on_save(args, TrainerState(global_step=4), TrainerControl())
    assert latest_complete(tmp_path).step == 2 and not (tmp_path / "checkpoint-4" / MARKER).exists()


def test_atomic_write_replaces_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_replace_dir_swaps_whole_folders(tmp_path: Path) -> None:
    dest = tmp_path / "adapter"
    dest.mkdir()
    (dest / "stale.bin").write_text("old")
    tmp = partial_path(dest)
    tmp.mkdir()
    (tmp / "adapter_model.safetensors").write_text("new")
    replace_dir(tmp, dest)
    assert sorted(p.name for p in dest.iterdir()) == ["adapter_model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def _run_folder(tmp_path: Path, overrides: list[str]) -> Path:
    folder = tmp_path / "run"
    folder.mkdir()
    save_run_config(folder, {"seed": 1}, overrides)
    save_run_config(folder, {"seed": 1}, ["lora.r=4"])  # a later launch does not change the record
    return folder


def test_resume_option_reuses_the_folder_and_its_overrides(tmp_path: Path) -> None:
    folder = _run_folder(tmp_path, ["train.max_steps=12", "logger=none", f"resume={tmp_path}/older"])
    args = resume_overrides([f"resume={folder}", "hydra.job.chdir=false"])
    assert args == [
        "train.max_steps=12",
        "logger=none",
        "hydra.job.chdir=false",
        f"hydra.run.dir={folder}",
        f"resume={folder}",
    ]
    assert resume_overrides(["lora.r=8"]) == ["lora.r=8"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-m"], "cannot be combined with --multirun"),
        (["hydra.run.dir=/elsewhere"], "hydra.run.dir names another folder"),
    ],
)
def test_resume_option_conflicts(tmp_path: Path, extra: list[str], message: str) -> None:
    folder = _run_folder(tmp_path, [])
    with pytest.raises(ConfigError, match=message) as info:
        resume_overrides([f"resume={folder}", *extra])
    assert info.value.key == "resume"


def test_resume_option_needs_a_run_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a dpo_lab run folder"):
        resume_overrides([f"resume={tmp_path}"])


def test_first_difference_names_the_key() -> None:
    old = {"train": {"max_steps": 8, "extra": {}}, "seed": 1, "resume": None}
    assert first_difference(old, {**old, "resume": "/x"}) is None
    assert first_difference(old, {**old, "train": {"max_steps": 9, "extra": {}}}) == "train.max_steps"
    assert first_difference(old, {**old, "lora": {}}) == "lora"


def test_resumed_config_must_match_the_stored_one(tmp_path: Path) -> None:
    cfg = compose_config(["train.max_steps=8"])
    from omegaconf import OmegaConf

    resolved = OmegaConf.to_container(cfg, resolve=True)
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(resolved))
    check_same_config(tmp_path, resolved)  # same config: fine
    changed = OmegaConf.to_container(compose_config(["train.max_steps=9"]), resolve=True)
    with pytest.raises(ConfigError, match="differs from the config") as info:
        check_same_config(tmp_path, changed)
    assert info.value.key == "train.max_steps"


def test_completed_run_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "adapter").mkdir()
    (tmp_path / "metrics.json").write_text(json.dumps({"status": "completed", "eval": {}}))
    fake_checkpoint(tmp_path / "checkpoints", 4)
    plan = plan_resume(tmp_path, {"seed": 1})
    assert plan.completed == {"status": "completed", "eval": {}} and plan.checkpoint is None


def test_plan_resumes_from_newest_complete_and_clears_the_rest(tmp_path: Path) -> None:
    fake_checkpoint(tmp_path / "checkpoints", 4)
    fake_checkpoint(tmp_path / "checkpoints", 8, complete=False)
    plan = plan_resume(tmp_path, {"seed": 1})
    assert plan.checkpoint == Checkpoint(4, tmp_path / "checkpoints" / "checkpoint-4")
    assert not (tmp_path / "checkpoints" / "checkpoint-8").exists()


def test_save_steps_must_be_a_multiple_of_logging_steps() -> None:
    with pytest.raises(ConfigError) as info:
        to_run_config(compose_config(["train.save_steps=25", "train.logging_steps=10"]))
    assert info.value.key == "train.save_steps" and "multiple of train.logging_steps (10)" in str(info.value)
    to_run_config(compose_config(["train.save_steps=20", "train.logging_steps=10"]))


def test_resume_key_defaults_to_a_new_run() -> None:
    assert to_run_config(compose_config()).resume is None


def test_newest_checkpoint_overwritten_with_same_size_garbage_falls_back(tmp_path: Path, caplog) -> None:
    fake_checkpoint(tmp_path / "checkpoints", 4)
    newest = fake_checkpoint(tmp_path / "checkpoints", 8)
    overwrite_with_garbage(newest / "adapter_model.safetensors")
    assert incompleteness(Checkpoint(8, newest)) is None  # every size matches: the marker's sizes cannot tell

    plan = plan_resume(tmp_path, {"seed": 1})

    assert plan.checkpoint == Checkpoint(4, tmp_path / "checkpoints" / "checkpoint-4")
    assert f"skipping checkpoint {newest}: adapter_model.safetensors does not hold the bytes that were " \
           "written (sha256 differs: corrupt)" in caplog.messages  # fmt: skip
    assert f"removing corrupt checkpoint {newest}" in caplog.messages
    assert not newest.exists(), "a resumed run writes its own checkpoint-8; the corrupt one must not linger"


def test_checkpoint_marked_before_digests_is_checked_by_its_header(tmp_path: Path) -> None:
    path = fake_checkpoint(tmp_path, 4)
    record = json.loads((path / MARKER).read_text())
    (path / MARKER).write_text(json.dumps({"step": 4, "files": record["files"]}))  # an older marker
    assert corruption(Checkpoint(4, path)) is None
    overwrite_with_garbage(path / "adapter_model.safetensors")
    assert "adapter_model.safetensors is not a readable safetensors file" in corruption(Checkpoint(4, path))


def _failed_before_training(tmp_path: Path) -> Path:
    """What a run that failed on its data leaves: its config, overrides and failure, no checkpoint."""
    folder = tmp_path / "run"
    folder.mkdir()
    save_run_config(folder, {"seed": 1, "data": {"path": "empty.jsonl"}}, ["data.path=empty.jsonl"])
    (folder / "metrics.json").write_text(json.dumps({"status": "failed", "error": "DataError: no rows"}))
    (folder / "log_history.jsonl").write_text('{"step": 0, "eval_loss": 0.69}\n')
    return folder


def test_folder_that_failed_before_training_starts_again_with_a_new_config(tmp_path: Path) -> None:
    folder = _failed_before_training(tmp_path)
    fixed = {"seed": 1, "data": {"path": "good.jsonl"}}

    plan = plan_resume(folder, fixed)  # no checkpoint, no result: nothing to keep, so no refusal

    assert plan.checkpoint is None and plan.completed is None
    assert not (folder / "log_history.jsonl").exists(), (
        "the new start's history must not follow the old one's"
    )
    save_run_config(folder, fixed, ["data.path=good.jsonl"], fresh=True)
    assert resume_overrides([f"resume={folder}"])[0] == "data.path=good.jsonl"  # resume= repeats the new one
    check_same_config(folder, fixed)


def test_folder_with_a_checkpoint_still_refuses_a_new_config(tmp_path: Path) -> None:
    folder = _failed_before_training(tmp_path)
    fake_checkpoint(folder / "checkpoints", 2)
    with pytest.raises(ConfigError, match="differs from the config") as info:
        plan_resume(folder, {"seed": 1, "data": {"path": "good.jsonl"}})
    assert info.value.key == "data.path"
    assert (folder / "checkpoints" / "checkpoint-2").exists()


def test_resumed_history_is_the_checkpoints_own(tmp_path: Path) -> None:
    fake_checkpoint(tmp_path / "checkpoints", 2, losses=[0.69, 0.61])
    # the killed attempt had logged steps 3 and 4 after checkpoint-2 (and its final eval)
    rows = [
        {"step": 1, "loss": 0.69},
        {"step": 2, "loss": 0.61},
        {"step": 3, "loss": 0.5},
        {"step": 4, "x": 1},
    ]
    (tmp_path / "log_history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    plan_resume(tmp_path, {"seed": 1})
    assert read_history(tmp_path) == rows[:2]


@pytest.mark.parametrize(
    ("status", "adapter", "finished"),
    [("completed", True, True), ("pruned", True, True), ("failed", True, False), ("running", True, False),
     ("completed", False, False)],
)  # fmt: skip
def test_a_run_is_over_when_it_completed_or_was_pruned_and_its_adapter_is_saved(
    tmp_path: Path, status: str, adapter: bool, finished: bool
) -> None:
    """A rerun leaves a finished folder as it is (a pruned job is not trained to its end); a failed or
    running one, or one whose adapter is missing, is trained again."""
    from dpo_lab.runs.layout import RunLayout
    from dpo_lab.train.resume import completed_result

    layout = RunLayout(tmp_path)
    layout.metrics.write_text(json.dumps({"status": status}))
    if adapter:
        layout.adapter.mkdir()
    assert (completed_result(tmp_path) is not None) is finished


def _old_marker(path: Path) -> None:
    """Rewrite the marker as markers were written before digests were recorded."""
    record = json.loads((path / MARKER).read_text())
    (path / MARKER).write_text(json.dumps({"step": record["step"], "files": record["files"]}))


@pytest.mark.parametrize(("claimed", "readable"), [(0, True), (1, False), (-1, True)])
def test_an_old_markers_safetensors_header_at_the_edge_of_the_file(tmp_path: Path, claimed, readable) -> None:
    """The header may fill the file exactly (no tensor bytes: still readable); one byte more than the file
    holds is a torn file."""
    path = fake_checkpoint(tmp_path, 4)
    header = b'{"__metadata__":{"a":"b"}} '  # 27 bytes of JSON (trailing space allowed)
    length = len(header) + claimed
    (path / "adapter_model.safetensors").write_bytes(length.to_bytes(8, "little") + header)
    mark_complete(path, 4)
    _old_marker(path)
    found = corruption(Checkpoint(4, path))
    if readable:
        assert found is None
    else:
        assert found == "adapter_model.safetensors is not a readable safetensors file (ValueError: corrupt)"


def test_parts_saved_as_folders_make_a_complete_checkpoint(tmp_path: Path) -> None:
    """FSDP and DeepSpeed save a part as a folder of files: the marker lists the files inside it, and the
    folder provides the part."""
    path = fake_checkpoint(tmp_path, 4, complete=False, skip="optimizer.pt")
    (path / "optimizer_0").mkdir()
    (path / "optimizer_0" / "__0_0.distcp").write_bytes(b"o" * 32)
    mark_complete(path, 4)
    record = json.loads((path / MARKER).read_text())
    assert record["files"]["optimizer_0/__0_0.distcp"] == 32 and "optimizer_0" not in record["files"]
    assert incompleteness(Checkpoint(4, path)) is None


def test_every_missing_part_is_named(tmp_path: Path) -> None:
    path = fake_checkpoint(tmp_path, 2, complete=False, skip="optimizer.pt")
    (path / "scheduler.pt").unlink()
    with pytest.raises(RuntimeError) as info:
        mark_complete(path, 2)
    assert str(info.value) == (
        f"checkpoint {path} was saved without optimizer state, scheduler state: it cannot be resumed"
    )
    (path / MARKER).write_text(json.dumps({"step": 2, "files": {"trainer_state.json": 0}}))
    (path / "trainer_state.json").write_text("")
    assert incompleteness(Checkpoint(2, path)) == (
        "it holds no adapter weights, optimizer state, scheduler state, RNG state"
    )


def test_what_is_skipped_removed_or_rotated_is_logged(tmp_path: Path, caplog) -> None:
    caplog.set_level("INFO", logger="dpo_lab.runs.checkpoints")
    for step in (2, 4):
        fake_checkpoint(tmp_path, step)
    half = fake_checkpoint(tmp_path, 6, complete=False)
    assert latest_complete(tmp_path).step == 4
    assert f"skipping checkpoint {half}: no {MARKER} (the save did not finish)" in caplog.messages
    remove_incomplete(tmp_path)
    assert f"removing incomplete checkpoint {half}: no {MARKER} (the save did not finish)" in caplog.messages
    rotate(tmp_path, keep=1)
    oldest = tmp_path / "checkpoint-2"
    assert f"deleting old checkpoint {oldest} (train.save_total_limit=1)" in caplog.messages
