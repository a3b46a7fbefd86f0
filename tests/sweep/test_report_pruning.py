"""The sweep report's pruning section on hand-made run folders: the pruned jobs and the step each reached,
the training steps and time spent (a pack's time once) and saved, the flag on a pruned job whose last value
lay inside the eventual best job's interval, and, against the same sweep unpruned (``--compare``), both
sweeps' cost and whether the best job is the same or cannot be told apart from it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from dpo_lab.sweep import report
from dpo_lab.sweep.results import compare_best, compute_of, load_sweep
from tests.sweep.test_report_intervals import make_job, right_on

MAX_STEPS = 8


def job(
    sweep: Path,
    num: int,
    lr: float,
    right: int,
    *,
    pruned_at: int | None = None,
    reported: float = 0.0,
    runtime: float = 8.0,
    pack: str | None = None,
    pruner: str | None = "successive_halving",
) -> Path:
    """A job of a (pruned) sweep: right on ``right`` of the 40 held-out pairs at its last evaluation, pruned
    at ``pruned_at`` (having reported ``reported`` there) or trained to step 8."""
    folder = make_job(
        sweep, num, {"train.learning_rate": lr, "train.max_steps": MAX_STEPS}, right_on(range(right))
    )
    metrics = json.loads((folder / "metrics.json").read_text())
    steps = pruned_at or MAX_STEPS
    metrics.update(global_step=steps, train_runtime_s=runtime)
    if pack is not None:
        metrics["train"].update(pack_id=pack, pack_size=4)
    if pruner is not None:
        last = pruned_at or MAX_STEPS
        metrics["pruning"] = {"pruner": pruner, "study": "s", "storage": "j", "trial": num,
                              "pruned_at_step": pruned_at, "reported_steps": list(range(2, last + 1, 2)),
                              "last_reported": {"step": last, "value": reported}}  # fmt: skip
        if pruned_at is not None:
            metrics["status"] = "pruned"
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


@pytest.fixture
def pruned(tmp_path: Path) -> Path:
    """4 jobs: 0 wins (36 of 40 pairs), 1 completes behind it (20 of 40), 2 is pruned at step 2 far behind
    (4 of 40), 3 is pruned at step 4 level with the winner (34 of 40: inside its interval)."""
    sweep = tmp_path / "pruned"
    job(sweep, 0, 1e-3, 36, reported=0.9)
    job(sweep, 1, 3e-3, 20, reported=0.5)
    job(sweep, 2, 1e-12, 4, pruned_at=2, reported=0.1, runtime=2.0)
    job(sweep, 3, 1e-4, 34, pruned_at=4, reported=0.8, runtime=4.0)
    return sweep


@pytest.fixture
def unpruned(tmp_path: Path) -> Path:
    """The same grid without a pruner: every job to step 8; job 3 (34 of 40) ends second."""
    sweep = tmp_path / "unpruned"
    for num, (lr, right) in enumerate(((1e-3, 36), (3e-3, 20), (1e-12, 4), (1e-4, 34))):
        job(sweep, num, lr, right, runtime=8.0, pruner=None)
    return sweep


def test_the_report_shows_what_pruning_did(pruned: Path) -> None:
    result = report.write_report(pruned)
    with (pruned / "results.csv").open() as f:
        rows = {r["job"]: r for r in csv.DictReader(f)}
    assert [rows[n]["pruned_at_step"] for n in "0123"] == ["", "", "2", "4"]
    assert [rows[n]["status"] for n in "0123"] == ["completed", "completed", "pruned", "pruned"]
    md = (pruned / "results.md").read_text()
    section = md[md.index("## Pruning") :]
    assert "Pruner: `successive_halving`. 2 of 4 jobs pruned, 2 trained to their last step." in section
    # 8 + 8 + 2 + 4 steps taken, of 4 x 8 at full length
    assert (
        "Compute: 22 training steps over 4 jobs, of 32 had every job trained to its last step (1.45x fewer)"
        in md
    )
    assert "; 22.0 s of training." in section
    assert "| `2` | learning_rate=1e-12 | 2 | 8 | 0.1 (0.1) | no |" in section
    assert "| `3` | learning_rate=0.0001 | 4 | 8 | 0.85 (0.8) | **yes** |" in section
    assert "**Pruning may have misjudged `3`**: the last value lies inside" in section
    assert "- `2` (learning_rate=1e-12): pruned at step 2 of 8" in md
    data = json.loads((pruned / "report.json").read_text())["pruning"]
    assert data["flagged"] == ["3"] and data["best"] == "0"
    assert [(p["job"], p["pruned_at_step"], p["within_best_interval"]) for p in data["pruned"]] == [
        ("2", 2, False), ("3", 4, True),
    ]  # fmt: skip
    assert data["compute"] == {"jobs": 4, "steps": 22, "full_steps": 32, "train_s": 22.0, "packs": 0}
    assert data["savings"] == {"steps_vs_full_length": 1.45} and data["unpruned"] is None
    per_job = json.loads((pruned / "report.json").read_text())["per_job"]
    assert per_job["3"]["pruned_at_step"] == 4 and per_job["0"]["pruned_at_step"] is None
    line = "pruning: 2 of 4 jobs pruned, 22 training steps of 32 at full length (1.45x fewer); may have " \
           "misjudged: jobs 3"  # fmt: skip
    assert line in result.summary()


def test_against_the_same_sweep_unpruned(pruned: Path, unpruned: Path, capsys) -> None:
    assert report.main([str(pruned), "--compare", str(unpruned)]) == 0
    out = capsys.readouterr().out
    assert "unpruned: 32 steps (1.45x fewer here), 32 s of training (1.45x less here); best: same job" in out
    md = (pruned / "results.md").read_text()
    assert f"Against the same sweep unpruned (`{unpruned}`): 32 training steps (1.45x fewer here)" in md
    assert "Same answer: the top job here, `0`, has the unpruned sweep's top job's values" in md
    data = json.loads((pruned / "report.json").read_text())["pruning"]
    assert data["unpruned"]["steps"] == 32 and data["unpruned"]["path"] == str(unpruned)
    assert data["savings"] == {"steps_vs_full_length": 1.45, "steps_vs_unpruned": 1.45,
                               "train_time_vs_unpruned": 1.45}  # fmt: skip
    assert data["same_answer"]["verdict"] == "same job" and data["same_answer"]["same_answer"] is True


def test_another_best_is_told_apart_or_not_on_the_shared_pairs(tmp_path: Path, unpruned: Path) -> None:
    """The pruned sweep's best is another job: the same answer if it cannot be told apart from the unpruned
    best on their shared held-out pairs, another answer if it is separated."""
    close, far = tmp_path / "close", tmp_path / "far"
    job(close, 0, 1e-3, 36, pruned_at=2, reported=0.2)  # the unpruned best, pruned here
    job(close, 3, 1e-4, 35)  # 35 of 40 against 36: cannot be told apart
    job(far, 0, 1e-3, 36, pruned_at=2, reported=0.2)
    job(far, 1, 3e-3, 20)  # 20 of 40 against 36: worse
    reference = load_sweep(unpruned)
    near = compare_best(load_sweep(close), reference)
    assert (near.job, near.reference_job, near.same_setting) == ("3", "0", False)
    assert near.verdict == "cannot be told apart" and near.same_answer
    assert near.difference.n == 40 and near.difference.value == pytest.approx(-1 / 40)
    worse = compare_best(load_sweep(far), reference)
    assert worse.verdict == "worse" and not worse.same_answer and worse.difference.high < 0
    report.write_report(far, compare=unpruned)
    md = (far / "results.md").read_text()
    assert "**Another answer**: the top job here, `1`, is worse than the unpruned sweep's top job `0`" in md


def test_a_packs_training_time_counts_once(tmp_path: Path) -> None:
    """The jobs of a pack share the pack's clock: their train_runtime_s is the pack's (a pruned one's ends
    where it stopped), so the sweep's training time takes each pack's longest once."""
    sweep = tmp_path / "packed"
    job(sweep, 0, 1e-3, 36, runtime=30.0, pack="a")
    job(sweep, 1, 3e-3, 20, runtime=30.0, pack="a")
    job(sweep, 2, 1e-12, 4, pruned_at=2, runtime=9.0, pack="a")
    job(sweep, 3, 1e-4, 30, runtime=7.0)  # alone
    compute = compute_of(load_sweep(sweep))
    assert compute.train_s == 37.0 and compute.packs == 1 and compute.steps == 26


def test_no_pruner_no_section(unpruned: Path) -> None:
    result = report.write_report(unpruned)
    assert "## Pruning" not in (unpruned / "results.md").read_text()
    assert "pruning" not in json.loads((unpruned / "report.json").read_text())
    assert "pruning:" not in result.summary()
