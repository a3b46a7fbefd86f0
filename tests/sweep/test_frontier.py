"""The reward–KL frontier of a sweep (dpo_lab.sweep.frontier, plots.plot_reward_kl_frontier, the report's
section): Spearman's rank correlation by hand (ties averaged) with its permutation p-value, and on
hand-made run folders whose metrics.json carry ``reward_kl``: the plot (a point per job with both error
bars, the base at KL 0), the results.md table and correlations, report.json; nothing of it without
``reward_kl``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure

from dpo_lab.sweep import report
from dpo_lab.sweep.frontier import ranks, spearman, spearman_p

# ----------------------------------------------------------------------------------------------------------
# Spearman by hand


def test_ranks_average_ties() -> None:
    assert ranks([10, 20, 20, 30]) == [1, 2.5, 2.5, 4]
    assert ranks([3.0, 1.0, 2.0]) == [3, 1, 2]
    assert ranks([5, 5, 5]) == [2, 2, 2]


def test_spearman_without_ties_is_one_minus_six_sum_d2() -> None:
    """x ranks 1..5, y ranks 2 1 4 3 5: d = -1 1 -1 1 0, sum d^2 = 4, rho = 1 - 6 * 4 / (5 * 24) = 0.8."""
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)
    assert spearman([0.05, 0.1, 0.5, 1.0], [9.0, 4.0, 1.0, 0.2]) == pytest.approx(-1.0)


def test_spearman_with_a_tie() -> None:
    """Betas 0.05 0.1 0.5 1.0 (ranks 1 2 3 4) against KLs 3 2 2 0.5 (ranks 4 2.5 2.5 1): deviations from the
    mean rank 2.5 are -1.5 -0.5 0.5 1.5 and 1.5 0 0 -1.5, so sxy = -4.5, sxx = 5, syy = 4.5 and
    rho = -4.5 / sqrt(22.5) = -3 / sqrt(10) = -0.9487."""
    assert spearman([0.05, 0.1, 0.5, 1.0], [3.0, 2.0, 2.0, 0.5]) == pytest.approx(-3 / math.sqrt(10))


def test_spearman_matches_scipy() -> None:
    import scipy.stats as stats
    x, y = [0.05, 0.1, 0.2, 0.5, 1.0, 1.0], [4.0, 2.5, 2.5, 1.0, 1.2, 0.3]
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)


def test_spearman_undefined_and_refused() -> None:
    assert spearman([1.0], [2.0]) is None  # one point
    assert spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) is None  # no spread in x
    assert spearman_p([1.0, 1.0], [1.0, 2.0]) is None
    with pytest.raises(ValueError, match="3 x values but 2 y values"):
        spearman([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="finite"):
        spearman([1, 2, math.nan], [1, 2, 3])


def test_permutation_p_by_hand() -> None:
    """Four points in perfect order: 2 of the 24 orderings reach |rho| = 1, p = 1/12. With the tie above,
    |rho| = 3 / sqrt(10) needs rank 4 and rank 1 at the two ends (2 ways) with the two 2.5s between them
    (2 ways): 4 of 24 orderings, p = 1/6."""
    assert spearman_p([1, 2, 3, 4], [8, 6, 4, 2]) == pytest.approx(1 / 12)
    assert spearman_p([0.05, 0.1, 0.5, 1.0], [3.0, 2.0, 2.0, 0.5]) == pytest.approx(1 / 6)
    many = list(range(12))  # above EXACT_UP_TO: sampled orderings, seeded, the observed one counted in
    assert spearman_p(many, many) == spearman_p(many, many) < 0.001


# ----------------------------------------------------------------------------------------------------------
# a sweep with a frontier


def interval(value: float, low: float | None, high: float | None, n: int = 40) -> dict:
    return {"value": value, "low": low, "high": high, "n": n, "method": "percentile bootstrap"}


def reward_kl(reward: float, kl: float, base: float = 0.25) -> dict:
    """metrics.json's reward_kl as the run writes it (intervals of +-0.1 for rewards, +-1 for the KL)."""
    return {
        "reward_name": "sentiment",
        "samples_per_prompt": 4,
        "reward": interval(reward, reward - 0.1, reward + 0.1),
        "kl": interval(kl, kl - 1.0, kl + 1.0),
        "base_reward": interval(base, base - 0.05, base + 0.05),
        "reward_gain": interval(reward - base, reward - base - 0.08, reward - base + 0.08),
    }


def make_job(sweep: Path, num: int, beta: float, found: dict | None, status: str = "completed") -> Path:
    """A run folder as a sweep job leaves it: overrides, config.yaml, metrics.json (with ``found`` as its
    reward_kl)."""
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"dpo.beta={beta}"]))
    config = {"objective": {"metric": "rewards/accuracies", "direction": "maximize"}, "dpo": {"beta": beta}}
    (job / "config.yaml").write_text(yaml.safe_dump(config))
    metrics: dict = {"status": status}
    if status == "completed":
        metrics.update({"eval": {"eval_rewards/accuracies": 0.6, "eval_loss": 0.6},
                        "train": {"train_loss": 0.6}, "global_step": 36,
                        "total_runtime_s": 500.0})  # fmt: skip
        if found is not None:
            metrics["reward_kl"] = found
    else:
        metrics["error"] = "RuntimeError: boom"
    (job / "metrics.json").write_text(json.dumps(metrics))
    return job


# beta -> (reward, KL): lower beta, more KL, more reward; betas 0.1 and 0.5 tie on KL (the hand sums above)
POINTS = {0.05: (0.6, 3.0), 0.1: (0.5, 2.0), 0.5: (0.45, 2.0), 1.0: (0.3, 0.5)}


def frontier_sweep(sweep: Path) -> None:
    for num, (beta, (reward, kl)) in enumerate(POINTS.items()):
        make_job(sweep, num, beta, reward_kl(reward, kl))


@pytest.fixture
def figures(monkeypatch) -> dict[str, Figure]:
    """Every figure the report saves, by file name."""
    kept: dict[str, Figure] = {}
    save = Figure.savefig

    def keep(self, path, *args, **kwargs):
        kept[Path(path).name] = self
        return save(self, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return kept


def test_the_frontier_plot_has_a_point_per_job_with_both_error_bars_and_the_base(
    tmp_path: Path, figures
) -> None:
    frontier_sweep(tmp_path)
    result = report.write_report(tmp_path)
    png = tmp_path / "plots" / "reward_kl_frontier.png"
    assert png in result.files and png.read_bytes()[:4] == b"\x89PNG"
    ax = figures["reward_kl_frontier.png"].axes[0]
    containers = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    jobs = next(c for c in containers if c.has_xerr)
    base = next(c for c in containers if not c.has_xerr)
    xs, ys = (list(v) for v in jobs.lines[0].get_data())
    assert xs == [0.5, 2.0, 2.0, 3.0] and ys == [0.3, 0.5, 0.45, 0.6]  # sorted by KL (stable on the tie)
    segments = [tuple(s.ravel().tolist()) for col in jobs.lines[2] for s in col.get_segments()]  # x0 y0 x1 y1
    horizontal = sorted(s for s in segments if s[1] == s[3])
    vertical = sorted(s for s in segments if s[0] == s[2])
    assert horizontal[0] == pytest.approx((-0.5, 0.3, 1.5, 0.3))  # KL 0.5 +- 1
    assert vertical[0] == pytest.approx((0.5, 0.2, 0.5, 0.4))  # reward 0.3 +- 0.1
    assert len(horizontal) == len(vertical) == 4
    assert list(base.lines[0].get_data()[0]) == [0.0] and list(base.lines[0].get_data()[1]) == [0.25]
    (bar,) = [s for col in base.lines[2] for s in col.get_segments()]
    assert bar.ravel().tolist() == pytest.approx([0.0, 0.2, 0.0, 0.3])
    assert sorted(t.get_text() for t in ax.texts) == ["beta=0.05", "beta=0.1", "beta=0.5", "beta=1"]
    line = next(ln for ln in ax.get_lines() if list(ln.get_xdata()) == [0.5, 2.0, 2.0, 3.0])
    assert list(line.get_ydata()) == [0.3, 0.5, 0.45, 0.6]
    labels = ax.get_legend_handles_labels()[1]
    assert "base, KL 0 (from job 0; the jobs share it)" in labels
    assert "KL(policy || reference)" in ax.get_xlabel() and "sentiment" in ax.get_ylabel()


def test_results_md_has_the_table_and_the_correlations(tmp_path: Path) -> None:
    frontier_sweep(tmp_path)
    report.write_report(tmp_path)
    md = (tmp_path / "results.md").read_text()
    assert "## Reward–KL frontier" in md
    assert "The base (adapter off, KL 0) is `0`'s: the jobs share the base" in md
    assert "| job | beta | reward | KL(policy ‖ ref) | reward gain over base | n |" in md
    assert "| base (adapter off) | - | 0.250 [0.200, 0.300] | 0 | - | 40 |" in md
    assert "| `0` | 0.05 | 0.600 [0.500, 0.700] | 3.000 [2.000, 4.000] | 0.350 [0.270, 0.430] | 40 |" in md
    assert "| `3` | 1 | 0.300 [0.200, 0.400] | 0.500 [-0.500, 1.500] | 0.050 [-0.030, 0.130] | 40 |" in md
    # hand sums in test_spearman_with_a_tie: -3 / sqrt(10) = -0.949; KL against reward: +0.949; p = 1/6
    assert "beta vs KL: rho = -0.949 (n=4, permutation p = 0.167)" in md
    assert "KL vs reward: rho = 0.949 (n=4, permutation p = 0.167)" in md
    assert "![reward_kl_frontier](plots/reward_kl_frontier.png)" in md
    assert md.index("## Reward–KL frontier") < md.index("## Plots")


def test_report_json_carries_the_frontier(tmp_path: Path) -> None:
    frontier_sweep(tmp_path)
    report.write_report(tmp_path)
    frontier = json.loads((tmp_path / "report.json").read_text())["frontier"]
    assert frontier["reward_name"] == "sentiment"
    assert frontier["base"]["job"] == "0" and frontier["base"]["shared"] is True
    assert frontier["base"]["value"] == 0.25 and frontier["base"]["n"] == 40
    assert [p["job"] for p in frontier["points"]] == ["0", "1", "2", "3"]
    first = frontier["points"][0]
    assert first["params"] == {"dpo.beta": 0.05}
    assert first["reward"]["value"] == 0.6 and first["kl"] == interval(3.0, 2.0, 4.0)
    assert first["reward_gain"]["value"] == pytest.approx(0.35)
    by_pair = {(c["x"], c["y"]): c for c in frontier["correlations"]}
    assert set(by_pair) == {("dpo.beta", "kl"), ("kl", "reward")}
    assert by_pair["dpo.beta", "kl"]["rho"] == pytest.approx(-3 / math.sqrt(10))
    assert by_pair["kl", "reward"]["rho"] == pytest.approx(3 / math.sqrt(10))
    assert by_pair["dpo.beta", "kl"]["n"] == 4 and by_pair["dpo.beta", "kl"]["p"] == pytest.approx(1 / 6)


def test_jobs_without_a_point_are_left_out_and_a_differing_base_is_said(tmp_path: Path) -> None:
    make_job(tmp_path, 0, 0.05, reward_kl(0.6, 3.0, base=0.25))
    make_job(tmp_path, 1, 0.1, None, status="failed")
    make_job(tmp_path, 2, 0.5, None)  # completed, evaluated without eval.reward_kl
    make_job(tmp_path, 3, 1.0, reward_kl(0.3, 0.5, base=0.3))
    report.write_report(tmp_path)
    frontier = json.loads((tmp_path / "report.json").read_text())["frontier"]
    assert [p["job"] for p in frontier["points"]] == ["0", "3"]
    assert frontier["base"]["shared"] is False and frontier["base"]["spread"] == [0.25, 0.3]
    md = (tmp_path / "results.md").read_text()
    assert "the jobs' base rewards differ (0.250 to 0.300" in md
    assert "beta vs KL: rho = -1.000 (n=2, permutation p = 1)" in md


def test_nothing_of_the_frontier_without_reward_kl(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    for num, beta in enumerate((0.05, 0.1)):
        make_job(sweep, num, beta, None)
    result = report.write_report(sweep)
    assert sorted(p.name for p in (sweep / "plots").iterdir()) == [
        "curves.png",
        "rewards_accuracies_vs_dpo.beta.png",
    ]
    assert all("frontier" not in f.name for f in result.files)
    md = (sweep / "results.md").read_text()
    assert "Reward–KL" not in md and "Spearman" not in md and "reward_kl" not in md
    assert "frontier" not in json.loads((sweep / "report.json").read_text())
