"""What successive halving saves on a sweep: a 16-job grid run unpruned and pruned, with Hydra's basic
launcher (Optuna's asynchronous pruner, or dpo_lab's halving sweeper in rounds) and with the packed launcher
(docs/pruning.md, benchmarks/README.md "Pruning").

    python benchmarks/pruning.py                  # the grid as sized below (about 15-25 min, 2 quiet cores)
    python benchmarks/pruning.py --smoke          # 2 x 2 jobs, 2 steps: that it runs (minutes)
    python benchmarks/pruning.py --modes basic,basic_pruned --steps 32 --out FILE.json --keep DIR

The grid: ``dpo.beta`` (0.1, 0.5) x ``train.learning_rate`` (1e-6: too low to move the adapter in 64 steps;
2e-4, 1e-3: the tiny model's range, around its default 5e-4; 2e-2: too high) x ``lora.r`` (4, 16): 16 jobs
on the embedded tiny model and the finance data, ``eval=none`` and ``logger=none`` (the sweep's cost is
training and the held-out evaluations), reference log-probs precomputed once per process.

The pruner, chosen before any run and not tuned on its results: ``prune=successive_halving`` with
``prune.min_resource=4`` and ``prune.reduction_factor=4`` over ``train.max_steps=64`` evaluated every 4 steps:
rungs at steps 4 and 16, and the end (64) is the third; each rung keeps the best quarter. Done synchronously
(the halving sweeper, or the packed launcher: 16 jobs at the first rung keep 4, then 1) it trains
16 x 4 + 4 x 12 + 1 x 48 = 160 steps against 16 x 64 = 1024 unpruned (6.4x fewer): room for the issue's 3x
once ties at a cut, or Optuna's asynchronous halving (the basic sweeper: a job is ranked against the jobs
that reached the rung before it), keep more, and for 2.5x less wall time once each job's fixed costs
(start, the evaluation before training, the final one, saving; a promoted job's restart) are paid.

Five modes, each one ``python -m dpo_lab.run -m`` process on an empty datasets cache of its own:

- ``basic``, ``basic_pruned``: Hydra's basic launcher (jobs one after another in the process, reusing the
  base model and the data), unpruned and with the pruner;
- ``basic_halving``: the same launcher under ``hydra/sweeper=dpo_lab_halving``: the grid in rounds, every job
  to the first rung, the best quarter on from its checkpoint to the next (synchronous halving);
- ``packed``, ``packed_pruned``: ``hydra/launcher=packed`` (``auto``: on a CPU packs of at most 8 jobs
  stepping in turn), unpruned and with the pruner (synchronous halving inside each pack).

Measured for each: wall time, CPU time of the process, the load average before and after, the training steps
(the sum of the jobs' ``global_step``), the training time (``train_runtime_s``, each pack's once), the jobs'
statuses, and the best job (the top completed job by the per-pair held-out objective, with its 95%
interval). Each pruned sweep is held against the unpruned one of the same launcher: steps and wall time
saved, and whether its best is the unpruned best, or cannot be told apart from it on the same held-out pairs
(the paired difference of their per-pair records, ``heldout_pairs_after.jsonl``, keyed by pair id:
``dpo_lab.stats.paired_difference``). The result is written as JSON under ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODES = ("basic", "basic_pruned", "basic_halving", "packed", "packed_pruned")
# each pruned mode against the unpruned sweep of the same launcher
BASELINE = {"basic_pruned": "basic", "basic_halving": "basic", "packed_pruned": "packed"}
# the targets for each launcher
STEPS_TARGET, WALL_TARGET = 3.0, 2.5


@dataclass
class Sizes:
    """Every size the benchmark runs with (command-line options; ``--smoke`` picks the small ones)."""

    betas: list[float] = field(default_factory=lambda: [0.1, 0.5])
    learning_rates: list[float] = field(default_factory=lambda: [1e-6, 2e-4, 1e-3, 2e-2])
    ranks: list[int] = field(default_factory=lambda: [4, 16])
    steps: int = 64
    eval_steps: int = 4
    min_resource: int = 4
    reduction_factor: int = 4
    batch: int = 4
    eval_batch: int = 32
    train: int = 256
    eval: int = 64
    max_length: int = 128
    warmup_steps: float | None = None  # None: the config's (train.warmup_steps, a ratio of the steps)

    @property
    def jobs(self) -> int:
        return len(self.betas) * len(self.learning_rates) * len(self.ranks)


# the integer sizes, one command-line option each (--eval-steps...)
SIZE_OPTIONS = ("steps", "eval_steps", "min_resource", "reduction_factor", "batch", "eval_batch", "train",
                "eval", "max_length")  # fmt: skip
SMOKE = Sizes(betas=[0.1, 0.5], learning_rates=[1e-6, 1e-3], ranks=[4], steps=2, eval_steps=1, min_resource=1,
              reduction_factor=2, batch=2, eval_batch=8, train=8, eval=8, max_length=64,
              warmup_steps=0)  # fmt: skip


def _values(values: list) -> str:
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def sweep_overrides(sizes: Sizes, mode: str, folder: Path) -> list[str]:
    """The ``python -m dpo_lab.run`` arguments of one mode's sweep into ``folder``."""
    args = [
        "-m",
        f"dpo.beta={_values(sizes.betas)}",
        f"train.learning_rate={_values(sizes.learning_rates)}",
        f"lora.r={_values(sizes.ranks)}",
        "logger=none",
        "eval=none",
        f"train.max_steps={sizes.steps}",
        f"train.eval_steps={sizes.eval_steps}",
        f"train.logging_steps={sizes.eval_steps}",
        f"train.per_device_train_batch_size={sizes.batch}",
        f"train.per_device_eval_batch_size={sizes.eval_batch}",
        f"data.max_train_samples={sizes.train}",
        f"data.max_eval_samples={sizes.eval}",
        f"dpo.max_length={sizes.max_length}",
        "dpo.precompute_ref_log_probs=true",
    ]
    if sizes.warmup_steps is not None:  # the smoke test's 2 steps: no step at learning rate 0
        args.append(f"train.warmup_steps={sizes.warmup_steps:g}")
    if mode in BASELINE:
        args += ["prune=successive_halving", f"prune.min_resource={sizes.min_resource}",
                 f"prune.reduction_factor={sizes.reduction_factor}"]  # fmt: skip
    if mode.startswith("packed"):
        args.append("hydra/launcher=packed")
    if mode == "basic_halving":
        args.append("hydra/sweeper=dpo_lab_halving")
    return [*args, f"hydra.sweep.dir={folder}"]


def run_sweep(args: list[str], cache_dir: Path) -> dict[str, Any]:
    """Run one sweep process: wall and CPU seconds (the process and its children), load before and after."""
    env = {**os.environ, "HF_DATASETS_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled",
           "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    load_before = os.getloadavg()
    cpu_before = _children_cpu()
    started = time.perf_counter()
    command = [sys.executable, "-m", "dpo_lab.run", *args]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    cpu = _children_cpu() - cpu_before
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(args)}\n{proc.stderr[-3000:]}")
    return {
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
    }


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def read_sweep(folder: Path) -> dict[str, Any]:
    """What one sweep folder holds: statuses, steps, training time, the best job and its interval."""
    from dpo_lab.sweep.results import compute_of, load_sweep

    sweep = load_sweep(folder)
    compute = compute_of(sweep)
    statuses: dict[str, int] = {}
    for job in sweep.jobs:
        statuses[job.status] = statuses.get(job.status, 0) + 1
    top = sweep.assessment.jobs.top
    best = None
    if top is not None:
        job = sweep.job(top.name)
        best = {"job": job.name, "params": {k: job.value(k) for k in sweep.swept}, "value": top.value,
                "interval": top.interval.to_dict() if top.interval else None}  # fmt: skip
    return {
        "statuses": statuses,
        "steps": compute.steps,
        "full_steps": compute.full_steps,
        "train_s": round(compute.train_s, 1),
        "packs": compute.packs,
        "pruned_at": {job.name: job.pruned_at_step for job in sweep.jobs if job.pruned_at_step is not None},
        "best": best,
        "objective": {"metric": sweep.objective.metric, "direction": sweep.objective.direction.value},
    }


def same_answer(pruned: Path, unpruned: Path) -> dict[str, Any]:
    """Whether the pruned sweep's best is the unpruned sweep's best (the same swept values) or cannot be told
    apart from it: the paired difference of their per-pair objective over the held-out pairs both share."""
    from dpo_lab.sweep.results import compare_best, load_sweep

    return compare_best(load_sweep(pruned), load_sweep(unpruned)).to_dict()


def _ratio(slow: float | None, fast: float | None) -> float | None:
    return round(slow / fast, 2) if slow and fast else None


def compare(modes: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """For each launcher with both sweeps: how many times fewer steps, less wall, CPU and training time the
    pruned sweep took, whether its answer is the same, and whether the issue's targets are met."""
    out = {}
    for mode, baseline in BASELINE.items():
        full, pruned = modes.get(baseline), modes.get(mode)
        if full is None or pruned is None:
            continue
        ratios = {
            "steps": _ratio(full["sweep"]["steps"], pruned["sweep"]["steps"]),
            "wall": _ratio(full["wall_s"], pruned["wall_s"]),
            "cpu": _ratio(full["cpu_s"], pruned["cpu_s"]),
            "train_time": _ratio(full["sweep"]["train_s"], pruned["sweep"]["train_s"]),
        }
        answer = pruned.get("same_answer") or {}
        out[mode] = {
            "fewer_times": ratios,
            "same_answer": answer.get("same_answer"),
            "answer": answer.get("verdict"),
            "targets": {
                f"steps >= {STEPS_TARGET}x fewer": (ratios["steps"] or 0) >= STEPS_TARGET,
                f"wall >= {WALL_TARGET}x less": (ratios["wall"] or 0) >= WALL_TARGET,
                "best is the unpruned best or cannot be told apart": bool(answer.get("same_answer")),
            },
        }  # fmt: skip
    return out


def measure(
    work: Path, sizes: Sizes, modes: list[str], partial: Path | None = None
) -> dict[str, dict[str, Any]]:
    """Run each mode once, in order, each on an empty datasets cache; read each sweep back."""
    results: dict[str, dict[str, Any]] = {}
    for mode in modes:
        folder = work / mode
        run = run_sweep(sweep_overrides(sizes, mode, folder / "runs"), folder / "hf-cache")
        run["sweep"] = read_sweep(folder / "runs")
        full = folder.parent / BASELINE.get(mode, mode) / "runs"
        if mode in BASELINE and full.is_dir():
            run["same_answer"] = same_answer(folder / "runs", full)
        results[mode] = run
        load = f"load {run['load_before'][0]} -> {run['load_after'][0]}"
        print(f"{mode}: {run['wall_s']} s wall, {run['cpu_s']} s CPU, {run['sweep']['steps']} steps, "
              f"{run['sweep']['statuses']} ({load})", flush=True)  # fmt: skip
        if partial is not None:
            partial.write_text(json.dumps(results, indent=2, default=str))
    for mode, run in results.items():  # a pruned sweep measured before its unpruned one
        full = work / BASELINE.get(mode, mode) / "runs"
        if mode in BASELINE and "same_answer" not in run and full.is_dir():
            run["same_answer"] = same_answer(work / mode / "runs", full)
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = Sizes()
    parser.add_argument("--smoke", action="store_true", help="2 x 2 jobs, 2 steps: check that it runs")
    parser.add_argument("--modes", default=",".join(MODES), help=f"modes in run order ({', '.join(MODES)})")
    parser.add_argument("--betas", default=_values(defaults.betas), help="dpo.beta values")
    parser.add_argument(
        "--learning-rates", default=_values(defaults.learning_rates), help="train.learning_rate values"
    )
    parser.add_argument("--ranks", default=_values(defaults.ranks), help="lora.r values")
    for name in SIZE_OPTIONS:
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    parser.add_argument("--out", type=Path, help="default: benchmarks/results/pruning[_smoke].json")
    parser.add_argument("--keep", type=Path, help="keep every mode's sweep folder under this folder")
    return parser.parse_args(argv)


def sizes_of(args: argparse.Namespace) -> Sizes:
    if args.smoke:
        return SMOKE
    return Sizes(
        betas=[float(v) for v in args.betas.split(",")],
        learning_rates=[float(v) for v in args.learning_rates.split(",")],
        ranks=[int(v) for v in args.ranks.split(",")],
        **{k: getattr(args, k) for k in SIZE_OPTIONS},
    )  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    sizes = sizes_of(args)
    modes = [m for m in args.modes.split(",") if m]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise SystemExit(f"--modes: unknown {unknown}; choose from {', '.join(MODES)}")
    out = args.out or ROOT / "benchmarks" / "results" / (
        "pruning_smoke.json" if args.smoke else "pruning.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial.json")
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pruning-", dir=args.keep) as tmp:
        results = measure(Path(tmp), sizes, modes, partial)
        if args.keep is not None:  # out of the temporary folder before it is removed
            for folder in Path(tmp).iterdir():
                folder.rename(args.keep / folder.name)
    result = {
        "command": " ".join(["python", "benchmarks/pruning.py", *(sys.argv[1:] if argv is None else argv)]),
        "sizes": {**asdict(sizes), "jobs": sizes.jobs},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "total_wall_s": round(time.perf_counter() - started, 1),
        "modes": results,
        "comparison": compare(results),
        "load_average_note": "load_before / load_after per mode: compare ratios within one run of the script",
    }
    out.write_text(json.dumps(result, indent=2, default=str))
    partial.unlink(missing_ok=True)
    for mode, found in result["comparison"].items():
        print(f"{mode}: {found['fewer_times']}; answer: {found['answer']}; targets: {found['targets']}")
    print(f"written {out}")
    return result


if __name__ == "__main__":
    main()
