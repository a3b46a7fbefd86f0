"""The sweep report's intervals and verdict on hand-made run folders with per-pair records
(heldout_pairs_after.jsonl): a clear winner is named; jobs that overlap are reported as tied and none is
named; a non-finite objective is never best; paired differences use only shared pairs; seeds are grouped;
report.json carries it all; the plots get error bars; the notebook shows it."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import yaml
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure

from dpo_lab.runs.layout import RunLayout
from dpo_lab.sweep import report
from tests.helpers import ROOT

N = 40  # held-out pairs


def pid(i: int) -> str:
    return f"{i:016x}"


def record(pair: str, margin: float, loss: float | None = 0.5) -> dict:
    """One line of heldout_pairs_after.jsonl, as dpo_lab writes it."""
    correct = 1.0 if margin > 0 else 0.5 if margin == 0 else 0.0
    return {"pair_id": pair, "chosen_reward": margin, "rejected_reward": 0.0, "margin": margin,
            "correct": correct, "loss": loss, "policy_chosen_logp": -1.0, "policy_rejected_logp": -2.0,
            "reference_chosen_logp": -1.0, "reference_rejected_logp": -2.0}  # fmt: skip


def right_on(indices, n: int = N, ids=None) -> list[dict]:
    """Records where the pairs at ``indices`` are ranked right (margin 1) and the others wrong (-1)."""
    ids = ids or [pid(i) for i in range(n)]
    chosen = set(indices)
    return [record(p, 1.0 if i in chosen else -1.0) for i, p in enumerate(ids)]


def make_job(sweep: Path, num: int, values: dict, records: list[dict] | None, *, status: str = "completed",
             accuracy: float | None = None, metric: str = "rewards/accuracies") -> Path:  # fmt: skip
    """A run folder as run.py leaves it: overrides, config.yaml, metrics.json and the per-pair records.
    The reported accuracy defaults to the mean of the records' correctness."""
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"{k}={v}" for k, v in values.items()]))
    config: dict = {"objective": {"metric": metric, "direction": "maximize"}}
    for key, value in values.items():
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    (job / "config.yaml").write_text(yaml.safe_dump(config))
    metrics: dict = {"status": status}
    if status == "completed":
        if accuracy is None and records:
            accuracy = sum(r["correct"] for r in records) / len(records)
        margins = sum(r["margin"] for r in records) / len(records) if records else 0.0
        metrics.update({"eval": {"eval_rewards/accuracies": accuracy, "eval_rewards/margins": margins,
                                 "eval_loss": 0.6}, "train": {"train_loss": 0.6}, "global_step": 2,
                        "total_runtime_s": 10.0})  # fmt: skip
    else:
        metrics["error"] = "RuntimeError: boom"
    (job / "metrics.json").write_text(json.dumps(metrics))
    if records is not None:
        lines = [json.dumps(r) for r in records]
        RunLayout(job).heldout_pairs("after").write_text("\n".join(lines) + "\n")
    return job


def summary(sweep: Path) -> dict:
    return json.loads((sweep / "report.json").read_text())


def test_a_clear_winner_is_named_with_its_interval(tmp_path: Path) -> None:
    make_job(tmp_path, 0, {"dpo.beta": 0.1}, right_on(range(36)))  # 36 / 40
    make_job(tmp_path, 1, {"dpo.beta": 0.5}, right_on(range(12)))  # 12 / 40, wrong on everything 0 gets wrong
    result = report.write_report(tmp_path)
    assert result.best is not None and result.best.name == "0"
    md = (tmp_path / "results.md").read_text()
    assert "**Best job: `0` (beta=0.1), eval/rewards/accuracies = 0.9**" in md
    assert "Separated at 95% from every other job" in md
    assert "per pair 0.900 [" in md and "n=40" in md
    data = summary(tmp_path)
    assert data["verdict"]["best"] == "0" and data["verdict"]["tied_with_best"] == []
    assert data["best"]["job"] == "0" and data["best"]["interval"]["n"] == N
    low, high = data["best"]["interval"]["low"], data["best"]["interval"]["high"]
    assert low < 0.9 < high <= 1.0
    difference = data["per_job"]["1"]["difference_to_top"]
    assert difference["value"] == pytest.approx(12 / 40 - 36 / 40) and difference["high"] < 0
    assert data["per_job"]["1"]["separated_from_top"] is True
    assert "best job 0 (beta=0.1): eval/rewards/accuracies = 0.9000 (per pair 0.900 [" in result.summary()


def test_overlapping_jobs_are_tied_and_no_best_is_named(tmp_path: Path) -> None:
    """Jobs 0 and 1 agree on 36 pairs; 0 alone is right on 3, 1 alone on 1: a difference of 2 / 40 = 0.05
    with a 10% discordance. Connor's formula by hand: (1.959964 * sqrt(0.1) + 0.841621 * sqrt(0.1 - 0.0025))^2
    / 0.0025 = 311.6 -> 312 pairs would separate a difference of that size."""
    both = list(range(20))
    make_job(tmp_path, 0, {"dpo.beta": 0.1}, right_on([*both, 20, 21, 22]))  # 23 / 40
    make_job(tmp_path, 1, {"dpo.beta": 0.5}, right_on([*both, 23]))  # 21 / 40
    result = report.write_report(tmp_path)
    assert result.best is None and result.top is not None and result.top.name == "0"
    md = (tmp_path / "results.md").read_text()
    assert "Best job" not in md and "(best)" not in md
    assert "**No best job at 95%: `0` (beta=0.1) is top by held-out `rewards/accuracies`" in md
    assert "- `1` (beta=0.5): difference -0.050 [" in md
    assert "about 312 held-out pairs (the sweep has 40)" in md and "more seeds" in md
    data = summary(tmp_path)
    assert data["best"] is None and data["top"]["job"] == "0"
    assert data["verdict"]["best"] is None and data["verdict"]["tied_with_best"] == ["1"]
    assert data["verdict"]["pairs_needed"] == {"1": 312} and data["verdict"]["held_out_pairs"] == N
    difference = data["per_job"]["1"]["difference_to_top"]
    assert difference["low"] < 0 < difference["high"] and data["per_job"]["1"]["separated_from_top"] is False
    rows = {r["job"]: r for r in result.table}
    assert not rows["0"]["best"] and not rows["1"]["best"]
    assert "no best job at 95%: top job 0 (beta=0.1)" in result.summary()
    assert "cannot be told apart from jobs 1" in result.summary()


def test_equal_jobs_tie_even_when_trl_reports_the_first_one_higher(tmp_path: Path) -> None:
    """The same per-pair results: a difference of exactly 0; more pairs would not separate them."""
    make_job(tmp_path, 0, {"dpo.beta": 0.1}, right_on(range(30)), accuracy=0.8)
    make_job(tmp_path, 1, {"dpo.beta": 0.5}, right_on(range(30)), accuracy=0.7)
    report.write_report(tmp_path)
    data = summary(tmp_path)
    assert data["verdict"]["best"] is None and data["verdict"]["tied_with_best"] == ["1"]
    assert data["verdict"]["pairs_needed"] == {"1": None}
    assert (
        "no difference on the shared pairs: more pairs would not separate them"
        in (tmp_path / "results.md").read_text()
    )


def test_a_non_finite_objective_is_never_best(tmp_path: Path) -> None:
    """Job 1 reports an infinite accuracy (it would win by value), job 2 a NaN margin on one pair (and is
    right on every other): both are treated as failed; job 0, the only finite one, is best."""
    make_job(tmp_path, 0, {"dpo.beta": 0.1}, right_on(range(10)))
    make_job(tmp_path, 1, {"dpo.beta": 0.2}, right_on(range(40)), accuracy=math.inf)
    nan_pair = right_on(range(40))
    nan_pair[5] = {**nan_pair[5], "margin": math.nan, "correct": 0.0}
    make_job(tmp_path, 2, {"dpo.beta": 0.3}, nan_pair, accuracy=39 / 40)
    result = report.write_report(tmp_path)
    assert result.best is not None and result.best.name == "0"
    data = summary(tmp_path)
    assert data["verdict"]["best"] == "0" and set(data["per_job"]) == {"0", "1", "2"}
    assert data["per_job"]["1"]["non_finite"] == "held-out rewards/accuracies = inf"
    assert "non-finite" in data["per_job"]["2"]["non_finite"] and pid(5) in data["per_job"]["2"]["non_finite"]
    assert data["per_job"]["1"]["interval"] is None and data["per_job"]["1"]["value"] is None
    md = (tmp_path / "results.md").read_text()
    assert "- `1` (beta=0.2): completed, non-finite objective, treated as failed" in md
    assert "- `2` (beta=0.3): completed, non-finite objective, treated as failed" in md


def test_only_non_finite_jobs_means_no_best(tmp_path: Path) -> None:
    make_job(tmp_path, 0, {"dpo.beta": 0.1}, right_on(range(40)), accuracy=math.nan)
    make_job(tmp_path, 1, {"dpo.beta": 0.2}, None, accuracy=math.inf)
    result = report.write_report(tmp_path)
    assert result.best is None and result.top is None
    assert summary(tmp_path)["verdict"]["best"] is None
    assert (
        "No completed job has a finite objective value: no best job." in (tmp_path / "results.md").read_text()
    )


def test_the_paired_difference_uses_only_shared_pairs(tmp_path: Path) -> None:
    """Job 1 was evaluated on 30 of job 0's pairs and 10 others (all right). On the 30 shared pairs job 0 is
    right on 25 and job 1 on 15: the difference is 15/30 - 25/30 over n = 30, whatever the other pairs say."""
    ids_0 = [pid(i) for i in range(40)]
    ids_1 = [pid(i) for i in range(30)] + [f"other{i:011d}" for i in range(10)]
    make_job(tmp_path, 0, {"dpo.beta": 0.1}, right_on(range(25), ids=ids_0))
    make_job(tmp_path, 1, {"dpo.beta": 0.5}, right_on([*range(15), *range(30, 40)], ids=ids_1))
    report.write_report(tmp_path)
    data = summary(tmp_path)
    assert data["top"]["job"] == "0"  # 25/40 each over their own pairs: the first one wins the tie
    difference = data["per_job"]["1"]["difference_to_top"]
    assert difference["n"] == 30 and difference["value"] == pytest.approx(15 / 30 - 25 / 30)
    assert data["per_job"]["1"]["interval"]["n"] == 40  # its own interval keeps all its pairs


def test_jobs_without_per_pair_records_fall_back_or_stay_open(tmp_path: Path) -> None:
    """No job with per-pair records: the top one by value, as before, saying so. One job with them and one
    without: they cannot be compared, so no best is named."""
    old = tmp_path / "old"
    make_job(old, 0, {"dpo.beta": 0.1}, None, accuracy=0.6)
    make_job(old, 1, {"dpo.beta": 0.5}, None, accuracy=0.7)
    assert report.write_report(old).best.name == "1"
    md = (old / "results.md").read_text()
    assert "**Best job: `1` (beta=0.5), eval/rewards/accuracies = 0.7**" in md
    assert "No per-pair records: ranked by the held-out value alone, with no interval" in md
    assert summary(old)["verdict"]["mode"] == "value" and summary(old)["verdict"]["best"] == "1"
    mixed = tmp_path / "mixed"
    make_job(mixed, 0, {"dpo.beta": 0.1}, right_on(range(38)))
    make_job(mixed, 1, {"dpo.beta": 0.5}, None, accuracy=0.2)
    report.write_report(mixed)
    data = summary(mixed)
    assert data["verdict"]["best"] is None and data["verdict"]["tied_with_best"] == ["1"]
    assert data["per_job"]["1"]["why"] == "no per-pair records"


def test_margins_have_per_pair_intervals_other_metrics_do_not(tmp_path: Path) -> None:
    make_job(tmp_path, 0, {"dpo.beta": 0.1}, right_on(range(10)))
    make_job(tmp_path, 1, {"dpo.beta": 0.5}, right_on(range(30)))
    for job in ("0", "1"):
        metrics = json.loads((tmp_path / job / "metrics.json").read_text())
        metrics["eval"]["eval_logps/chosen"] = -1.0 - int(job)
        (tmp_path / job / "metrics.json").write_text(json.dumps(metrics))
    result = report.write_report(tmp_path, metric="rewards/margins")
    data = summary(tmp_path)
    assert data["verdict"]["mode"] == "intervals" and result.best is not None and result.best.name == "1"
    assert data["per_job"]["1"]["interval"]["value"] == pytest.approx((30 - 10) / 40)  # the mean margin
    result = report.write_report(tmp_path, metric="logps/chosen")
    assert (
        result.best is not None
        and result.best.name == "0"
        and summary(tmp_path)["verdict"]["mode"] == "value"
    )
    assert "No per-pair interval for `logps/chosen`" in (tmp_path / "results.md").read_text()


def test_per_pair_loss_missing_falls_back_to_the_value(tmp_path: Path) -> None:
    make_job(tmp_path, 0, {"dpo.beta": 0.1}, [{**r, "loss": None} for r in right_on(range(20))])
    make_job(tmp_path, 1, {"dpo.beta": 0.5}, [{**r, "loss": None} for r in right_on(range(30))])
    report.write_report(tmp_path, metric="loss")
    data = summary(tmp_path)
    assert (
        data["verdict"]["mode"] == "value" and data["per_job"]["0"]["note"] == "per-pair `loss` not recorded"
    )


def _seed_sweep(sweep: Path, scores: dict[float, list[int]]) -> None:
    """Jobs over beta x seed; ``scores[beta]`` the number of right pairs (of 10) per seed."""
    num = 0
    for seed in range(3):
        for beta, rights in scores.items():
            make_job(sweep, num, {"dpo.beta": beta, "seed": seed}, right_on(range(rights[seed]), n=10))
            num += 1


def test_seeds_are_grouped_with_their_mean_and_interval(tmp_path: Path) -> None:
    """beta=0.1 over seeds 0,1,2: 6, 7, 8 of 10 right: mean 0.7, t interval 0.7 +- 4.302653 * 0.1 / sqrt(3)
    = [0.452, 0.948]. beta=0.5: 1, 2, 3 of 10: mean 0.2. Seed-averaged per pair, beta=0.1 beats beta=0.5
    on pairs 1..7 (see right_on), and over seeds by 0.5 +- 4.302653 * sqrt(0.02 / 3) = [0.149, 0.851]:
    separated both ways, so the setting beta=0.1 is named best."""
    _seed_sweep(tmp_path, {0.1: [6, 7, 8], 0.5: [1, 2, 3]})
    result = report.write_report(tmp_path)
    data = summary(tmp_path)
    assert data["verdict"]["unit"] == "setting" and data["verdict"]["best"] == "beta=0.1"
    assert data["verdict"]["best_jobs"] == ["0", "2", "4"]
    groups = {g["setting"]: g for g in data["seed_groups"]}
    assert set(groups) == {"beta=0.1", "beta=0.5"} and groups["beta=0.1"]["seeds"] == [0, 1, 2]
    mean = groups["beta=0.1"]["mean_over_seeds"]
    assert mean["value"] == pytest.approx(0.7) and mean["n"] == 3
    assert mean["low"] == pytest.approx(0.451586, abs=1e-5) and mean["high"] == pytest.approx(
        0.948414, abs=1e-5
    )
    assert groups["beta=0.1"]["per_pair"]["n"] == 10 and groups["beta=0.1"]["per_pair"][
        "value"
    ] == pytest.approx(0.7)
    over_seeds = groups["beta=0.5"]["seed_difference_to_top"]
    assert over_seeds["value"] == pytest.approx(-0.5)
    assert over_seeds["low"] == pytest.approx(-0.851, abs=1e-3) and over_seeds["high"] == pytest.approx(
        -0.149, abs=1e-3
    )
    assert all(data["per_job"][j]["setting"] == "beta=0.1" for j in ("0", "2", "4"))
    md = (tmp_path / "results.md").read_text()
    assert (
        "## Seeds: replication" in md
        and "| beta=0.1 | `0`, `2`, `4` | 0, 1, 2 | 0.700 [0.452, 0.948], n=3 |" in md
    )
    assert (
        "**Best setting: beta=0.1 (jobs `0`, `2`, `4`), eval/rewards/accuracies = 0.7 (mean over 3 seeds)**"
        in md
    )
    assert [r["job"] for r in result.table if r["best"]] == ["0", "2", "4"]
    assert "best setting beta=0.1 (jobs 0, 2, 4)" in result.summary()


def test_seeds_that_overlap_leave_the_setting_open_and_ask_for_more_seeds(tmp_path: Path) -> None:
    """beta=0.1: 5, 8, 6 of 10 (mean 0.633); beta=0.5: 7, 4, 6 (mean 0.567): the seeds overlap."""
    _seed_sweep(tmp_path, {0.1: [5, 8, 6], 0.5: [7, 4, 6]})
    report.write_report(tmp_path)
    data = summary(tmp_path)
    assert data["verdict"]["best"] is None and data["verdict"]["tied_with_best"] == ["beta=0.5"]
    assert data["verdict"]["seeds_needed"]["beta=0.5"] >= 4
    md = (tmp_path / "results.md").read_text()
    assert "**No best setting at 95%: beta=0.1 (jobs" in md and "seeds per setting" in md


def test_plots_get_error_bars_from_the_intervals(tmp_path: Path, monkeypatch) -> None:
    figures: dict[str, Figure] = {}
    save = Figure.savefig

    def keep(self, path, *args, **kwargs):
        figures[Path(path).name] = self
        return save(self, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    make_job(tmp_path, 0, {"dpo.beta": 0.1, "lora.r": 4}, right_on(range(36)))
    make_job(tmp_path, 1, {"dpo.beta": 0.5, "lora.r": 8}, right_on(range(12)))
    make_job(tmp_path, 2, {"dpo.beta": 0.9, "lora.r": 16}, None, status="failed")
    report.write_report(tmp_path)
    names = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert names == ["curves.png", "rewards_accuracies_vs_dpo.beta.png", "rewards_accuracies_vs_lora.r.png"]
    assert all((tmp_path / "plots" / n).read_bytes()[:4] == b"\x89PNG" for n in names)
    per_job = summary(tmp_path)["per_job"]
    ax = figures["rewards_accuracies_vs_dpo.beta.png"].axes[0]
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer) and c.has_yerr]
    segments = sorted(
        tuple(float(v) for point in s for v in point) for c in bars for s in c.lines[2][0].get_segments()
    )
    expected = sorted((beta, per_job[j]["interval"]["low"], beta, per_job[j]["interval"]["high"])
                      for j, beta in (("0", 0.1), ("1", 0.5)))  # fmt: skip
    assert len(segments) == 2
    for got, want in zip(segments, expected, strict=True):
        assert got == pytest.approx(want)
    assert "95% interval over held-out pairs" in ax.get_title()
    labels = ax.get_legend_handles_labels()[1]
    assert "best (job 0)" in labels and "failed (1)" in labels


def test_notebook_shows_the_intervals(tmp_path: Path) -> None:
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    sweep = tmp_path / "sweep"
    both = list(range(20))
    make_job(sweep, 0, {"dpo.beta": 0.1}, right_on([*both, 20, 21, 22]))
    make_job(sweep, 1, {"dpo.beta": 0.5}, right_on([*both, 23]))
    notebook = nbformat.read(ROOT / "notebooks" / "sweep_analysis.ipynb", as_version=4)
    old = os.environ.get("DPO_LAB_SWEEP_DIR")
    os.environ["DPO_LAB_SWEEP_DIR"] = str(sweep)  # the kernel inherits this process's environment
    try:
        client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                         resources={"metadata": {"path": str(ROOT)}})  # fmt: skip
        client.execute()
    finally:
        os.environ.pop("DPO_LAB_SWEEP_DIR") if old is None else os.environ.__setitem__(
            "DPO_LAB_SWEEP_DIR", old
        )
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = json.dumps([o.get("text", "") or o.get("data", {}).get("text/markdown", "") or
                       o.get("data", {}).get("text/plain", "") for o in outputs])  # fmt: skip
    assert "No best job at 95%" in text and "312" in text
    assert "0.575 [" in text  # job 0's per-pair interval: 23 / 40
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2  # metric vs beta, and the curves
