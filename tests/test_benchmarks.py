"""The benchmark harness's parsing, medians, ratios and commands (no timing is asserted here)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from benchmarks.compare import (
    ProcessResult,
    Side,
    Workload,
    add_mfu,
    make_sides,
    markdown_table,
    parse_dpo_lab,
    parse_plain,
    parse_variant,
    ratios,
    rotation,
    side_command,
    summarize,
    sweep_commands,
    sweep_summary,
)
from tests.helpers import compose_config

PROC = ProcessResult(
    returncode=0, started_at=1000.0, wall_s=30.0, max_rss_mb=900.0, cpu_s=25.0, log=Path("x.log")
)
EVAL = {"eval_loss": 0.5, "eval_rewards/accuracies": 0.9, "eval_rewards/margins": 0.7}


def _dpo_lab_metrics(tokens_per_second: float) -> dict:
    return {
        "train_tokens": 1000, "train_runtime_s": 1000 / tokens_per_second,
        "tokens_per_second": tokens_per_second,
        "seconds_per_step": 0.5, "cpu_seconds_per_step": 0.4, "first_step_at": 1012.0, "global_step": 10,
        "peak_memory_mb": 800.0,
        "mfu": 0.1, "precision": "bf16", "eval": EVAL, "eval_before": EVAL,
        "flops": {"reference_forward": True, "shapes": {"n_layers": 1, "d_attn": 2, "base_matmul_params": 10,
                  "lm_head_params": 5, "lora_params": 1},
                  "token_ratios": {"completion_per_token": 0.5, "sum_sq_per_token": 4.0}},
    }  # fmt: skip


def _plain_result(tokens_per_second: float) -> dict:
    return {
        "train_tokens": 1000, "train_runtime": 1000 / tokens_per_second,
        "tokens_per_second": tokens_per_second,
        "steps": 10, "first_step_at": 1020.0, "seconds_per_step": 1.0, "cpu_seconds_per_step": 0.8,
        "peak_memory_mb": 850.0, "bf16": True,
        "gradient_checkpointing": True, "eval": EVAL, "eval_before": EVAL,
    }  # fmt: skip


def test_parse_both_sides_the_same_way() -> None:
    ours, plain = parse_dpo_lab(_dpo_lab_metrics(200.0), PROC), parse_plain(_plain_result(100.0), PROC)
    assert ours["time_to_first_step_s"] == 12.0 and plain["time_to_first_step_s"] == 20.0
    assert ours["eval"] == plain["eval"] == {"loss": 0.5, "rewards/accuracies": 0.9, "rewards/margins": 0.7}
    assert plain["precision"] == "bf16" and plain["reference_forward"] is True


def test_medians_ratios_and_table() -> None:
    records = []
    for rnd, (ours, theirs) in enumerate([(200.0, 100.0), (220.0, 90.0), (180.0, 110.0)]):
        a = {"side": "dpo_lab", "round": rnd, "wall_s": 30.0, "peak_memory_mb": 800.0,
             **parse_dpo_lab(_dpo_lab_metrics(ours), PROC)}  # fmt: skip
        b = {"side": "trl_defaults", "round": rnd, "wall_s": 60.0, "peak_memory_mb": 1000.0,
             **parse_plain(_plain_result(theirs), PROC)}  # fmt: skip
        records += [a, b]
    records.append({"side": "trl_defaults", "round": 3, "error": "boom"})
    add_mfu(records, {0: 1e6, 1: 1e6, 2: 1e6})
    summary = summarize(records)
    assert (
        summary["dpo_lab"]["tokens_per_second"] == 200.0
        and summary["trl_defaults"]["tokens_per_second"] == 100.0
    )
    assert summary["trl_defaults"]["runs"] == 3 and summary["trl_defaults"]["failed"] == 1
    r = ratios(summary)["trl_defaults"]
    assert r["tokens_per_second"] == 2.0  # higher is better: ours / theirs
    assert r["wall_s"] == 2.0 and r["seconds_per_step"] == 2.0  # lower is better: theirs / ours
    assert r["cpu_seconds_per_step"] == 2.0
    assert r["peak_memory_mb"] == 1000.0 / 800.0
    assert r["mfu"] == pytest.approx(2.0)  # same FLOPs per token, twice the rate
    table = markdown_table(summary, ratios(summary))
    assert "| dpo_lab | 3 | 200 |" in table and "| trl_defaults | 2.00x | 2.00x | 2.00x |" in table


def test_rotation_alternates_who_goes_first() -> None:
    assert rotation(["a", "b", "c"], 0) == ["a", "b", "c"]
    assert rotation(["a", "b", "c"], 1) == ["b", "c", "a"]
    assert rotation(["a", "b"], 3) == ["b", "a"]


def test_both_sides_get_the_same_configuration() -> None:
    from benchmarks.plain_trl_dpo import parse_args

    work = Workload(steps=7, batch_size=4, max_train_samples=32, max_eval_samples=8, beta=0.2)
    cfg = compose_config(work.dpo_lab_overrides())  # every override is a real key
    assert (cfg.train.max_steps, cfg.train.per_device_train_batch_size, cfg.dpo.beta) == (7, 4, 0.2)
    assert cfg.data.max_train_samples == 32 and cfg.logger.backend == "none"
    sides = make_sides("bf16", {"nogroup": ["train.group_by_length=false"]}, None)
    assert [s.name for s in sides] == ["dpo_lab", "trl_defaults", "trl_tuned", "nogroup"]
    only_tuned = make_sides("fp32", {"pre": ["dpo.precompute_ref_log_probs=true"]}, ["trl_tuned"])
    assert [s.name for s in only_tuned] == ["dpo_lab", "trl_tuned", "pre"] and not only_tuned[1].bf16
    tuned = side_command(next(s for s in sides if s.name == "trl_tuned"), work, Path("/tmp/o"))
    argv = sys.argv
    try:
        sys.argv = ["plain", *tuned[2:]]
        plain = parse_args()
    finally:
        sys.argv = argv
    assert (plain.max_steps, plain.batch_size, plain.beta, plain.lr) == (7, 4, 0.2, cfg.train.learning_rate)
    assert plain.max_train_samples == 32 and plain.tuned and plain.bf16
    assert plain.max_length == cfg.dpo.max_length
    defaults = side_command(Side("trl_defaults", "plain"), work, Path("/tmp/o"))
    assert "--tuned" not in defaults and "--bf16" not in defaults


def test_sweep_commands_and_summary() -> None:
    multirun, plain = sweep_commands(Workload(), Path("/tmp/s"), "fp32")
    assert "-m" in multirun and "dpo.beta=0.05,0.1,0.2,0.5" in multirun
    assert len(plain) == 4 and all("--tuned" in cmd and "--bf16" not in cmd for cmd in plain)
    records = [{"side": "dpo_lab_multirun", "wall_s": w, "cpu_s": w / 2} for w in (40.0, 60.0)]
    records += [{"side": "plain_processes", "wall_s": w, "cpu_s": w} for w in (80.0, 100.0)]
    records.append({"side": "plain_processes", "wall_s": 1.0, "error": "returncode 1"})
    summary = sweep_summary(records)
    assert summary["speedup"] == 90.0 / 50.0 and summary["cpu_speedup"] == 90.0 / 25.0
    assert summary["failed"] == 1


def test_variant_syntax() -> None:
    assert parse_variant("nogroup=train.group_by_length=false dpo.beta=0.2") == (
        "nogroup", ["train.group_by_length=false", "dpo.beta=0.2"],
    )  # fmt: skip
    with pytest.raises(Exception, match="NAME"):
        parse_variant("dpo_lab=x=1")


def test_cpu_isa_limit_reruns_the_harness_with_the_limit_in_its_environment(monkeypatch) -> None:
    import benchmarks.compare as compare

    calls = []
    monkeypatch.setattr(compare.os, "execve", lambda exe, argv, env: calls.append((exe, argv, env)))
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    compare.limit_cpu_isa(None, ["--steps", "3"])
    assert calls == []  # no limit asked for: runs as it is
    compare.limit_cpu_isa("avx2", ["--cpu-isa", "avx2", "--steps", "3"])
    ((exe, argv, env),) = calls
    assert argv == [sys.executable, "-m", "benchmarks.compare", "--cpu-isa", "avx2", "--steps", "3"]
    assert env["ONEDNN_MAX_CPU_ISA"] == "AVX2" and env["ATEN_CPU_CAPABILITY"] == "avx2"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    compare.limit_cpu_isa("avx2", ["--cpu-isa", "avx2"])
    assert len(calls) == 1  # already limited (the re-run itself): no second exec
    with pytest.raises(SystemExit):
        compare.parse_args(["--cpu-isa", "sse"])  # only the limits it knows


def test_pruning_benchmark_commands_and_comparison() -> None:
    """benchmarks/pruning.py: each mode's sweep is the same 16-job grid, the pruned ones with the pruner
    chosen up front, the packed ones through the packed launcher; every override is a real key; the
    comparison divides the unpruned sweep's cost by the pruned one's and checks the issue's targets."""
    from benchmarks.pruning import (
        BASELINE,
        MODES,
        SMOKE,
        Sizes,
        compare,
        parse_args,
        sizes_of,
        sweep_overrides,
    )

    sizes = Sizes()
    assert sizes.jobs == 16 and SMOKE.jobs == 4 and SMOKE.steps == 2
    for mode in MODES:
        args = sweep_overrides(sizes, mode, Path("/tmp/s"))
        assert args[0] == "-m" and args[-1] == "hydra.sweep.dir=/tmp/s"
        assert ("prune=successive_halving" in args) is (mode in BASELINE)
        assert ("hydra/launcher=packed" in args) is mode.startswith("packed")
        assert ("hydra/sweeper=dpo_lab_halving" in args) is (mode == "basic_halving")
        single = [
            a.split("=")[0] + "=" + a.split("=")[1].split(",")[0] for a in args[1:-1] if "hydra/" not in a
        ]
        cfg = compose_config(single)
        assert cfg.train.max_steps == 64 and cfg.train.eval_steps == 4 and cfg.data.max_eval_samples == 64
    pruned = sweep_overrides(sizes, "basic_pruned", Path("/tmp/s"))
    assert {"prune.min_resource=4", "prune.reduction_factor=4", "train.learning_rate=1e-06,0.0002,0.001,0.02",
            "dpo.beta=0.1,0.5", "lora.r=4,16"} <= set(pruned)  # fmt: skip
    assert "train.warmup_steps=0" in sweep_overrides(SMOKE, "basic", Path("/tmp/s"))
    assert sizes_of(parse_args(["--smoke"])) == SMOKE
    custom = sizes_of(parse_args(["--steps", "32", "--ranks", "8", "--learning-rates", "1e-5,1e-3"]))
    assert custom.steps == 32 and custom.ranks == [8] and custom.learning_rates == [1e-5, 1e-3]

    def mode(wall: float, steps: int, same: bool | None = None) -> dict:
        found = {"wall_s": wall, "cpu_s": wall * 2, "sweep": {"steps": steps, "train_s": wall / 2}}
        if same is not None:
            found["same_answer"] = {"same_answer": same, "verdict": "same job" if same else "worse"}
        return found

    result = compare({"basic": mode(600.0, 1024), "basic_pruned": mode(200.0, 256, True),
                      "basic_halving": mode(300.0, 160, True),
                      "packed": mode(500.0, 1024), "packed_pruned": mode(250.0, 512, False)})  # fmt: skip
    assert result["basic_pruned"]["fewer_times"] == {"steps": 4.0, "wall": 3.0, "cpu": 3.0, "train_time": 3.0}
    assert all(result["basic_pruned"]["targets"].values())
    assert result["basic_halving"]["fewer_times"]["steps"] == 6.4  # against the same unpruned sweep
    assert result["basic_halving"]["fewer_times"]["wall"] == 2.0
    assert not result["basic_halving"]["targets"]["wall >= 2.5x less"]
    packed = result["packed_pruned"]
    assert packed["fewer_times"]["steps"] == 2.0 and not any(packed["targets"].values())
    assert compare({"basic": mode(1.0, 1)}) == {}  # no pruned sweep to compare


@pytest.mark.slow
def test_pruning_benchmark_smoke_runs(tmp_path) -> None:
    """``python benchmarks/pruning.py --smoke``: the five sweeps of a 2 x 2 grid, 2 steps each, read back and
    compared (about a minute on 2 quiet cores)."""
    import json
    import subprocess

    from tests.helpers import ROOT

    out = tmp_path / "pruning_smoke.json"
    proc = subprocess.run([sys.executable, "benchmarks/pruning.py", "--smoke", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert list(result["modes"]) == ["basic", "basic_pruned", "basic_halving", "packed", "packed_pruned"]
    for name, found in result["modes"].items():
        assert sum(found["sweep"]["statuses"].values()) == 4, name
        assert found["wall_s"] > 0 and found["sweep"]["best"] is not None
        assert found["sweep"]["steps"] <= 8 and len(found["load_before"]) == 3
    assert result["modes"]["packed"]["sweep"]["packs"] == 1
    assert set(result["comparison"]) == {"basic_pruned", "basic_halving", "packed_pruned"}
    for mode in result["comparison"]:
        assert result["comparison"][mode]["answer"] is not None


@pytest.mark.slow
def test_heldout_records_benchmark_runs(tmp_path) -> None:
    """``python benchmarks/heldout_records.py``: both modes evaluate the same pairs and are timed, the ratio
    is theirs."""
    import json
    import subprocess

    from tests.helpers import ROOT

    out = tmp_path / "records.json"
    command = [sys.executable, "benchmarks/heldout_records.py", "--pairs", "8", "--repeats", "2"]
    command += ["--out", str(out)]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["pairs"] == 8 and result["repeats"] == 2
    assert all(len(v) == 2 and min(v) > 0 for v in result["cpu_seconds"].values())
    medians = result["median_cpu_seconds"]
    assert result["ratio_with_over_without"] == pytest.approx(medians["with"] / medians["without"])
