"""A researcher's first hour: the README's own-data example, run exactly as the README gives it, on an
ordinary prompt / chosen / rejected file (no ground-truth column). It must train with the defaults, the task
evaluation falling back to sample generations because the data has nothing to check answers against."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.helpers import ROOT, run_cli

FINANCE_TRAIN = ROOT / "dpo_lab" / "assets" / "finance" / "train.jsonl"
PAIRS = 60  # data.test_size=0.1 holds 6 out
# only what makes it quick: no W&B, two steps (the README's command trains the default tiny model)
QUICK = ["logger=none", "train.max_steps=2"]


def readme_command() -> list[str]:
    """The README's own-data line, as written there."""
    text = (ROOT / "README.md").read_text()
    found = re.search(r"^python -m dpo_lab\.run (data\.path=my_pairs\.jsonl [^\n#]*?)\s*$", text, re.M)
    assert found, "the README no longer shows the own-data example"
    return found.group(1).split()


def write_ordinary_pairs(path: Path) -> None:
    """Pairs as a user has them: prompt, chosen, rejected, nothing else."""
    rows = [json.loads(line) for line in FINANCE_TRAIN.read_text().splitlines()[:PAIRS]]
    path.write_text(
        "".join(json.dumps({k: r[k] for k in ("prompt", "chosen", "rejected")}) + "\n" for r in rows)
    )


@pytest.fixture(scope="module")
def own_data_run(tmp_path_factory) -> tuple[Path, object]:
    """The command run from a fresh folder holding my_pairs.jsonl (its relative path as in the README)."""
    work = tmp_path_factory.mktemp("first-hour")
    write_ordinary_pairs(work / "my_pairs.jsonl")
    proc = run_cli([*readme_command(), *QUICK], work, cwd=work)
    runs = sorted(work.glob("runs/*/*"))
    return (runs[0] if runs else work / "no run folder"), proc


def test_the_readme_command_is_the_one_run() -> None:
    assert readme_command() == ["data.path=my_pairs.jsonl", "data.test_size=0.1"]


def test_own_pairs_without_an_answer_column_train(own_data_run) -> None:
    run, proc = own_data_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["global_step"] == 2
    splits = metrics["data"]["splits"]
    assert (splits["train"]["rows"], splits["eval"]["rows"]) == (54, 6)


def test_the_task_evaluation_falls_back_to_samples(own_data_run) -> None:
    run, proc = own_data_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    task = json.loads((run / "metrics.json").read_text())["task"]
    assert task["checker"] is None and task["num_prompts"] == 6
    assert not any(key.startswith("accuracy_") for key in task), "no checker: no accuracy"
    assert "sample generations only" in (run / "run.log").read_text()  # the log says why
    for phase in ("before", "after"):
        records = [json.loads(x) for x in (run / f"samples_{phase}.jsonl").read_text().splitlines()]
        assert len(records) == 6 and all(r["response"].strip() for r in records)
        assert not any({"correct", "ground_truth"} & r.keys() for r in records), "nothing was checked"
    assert "task accuracy" not in proc.stdout  # the closing table shows no accuracy it did not measure
