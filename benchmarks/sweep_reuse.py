"""What a same-process sweep saves: the 4-job tiny sweep (2 betas x 2 LoRA ranks) run three ways.

    python benchmarks/sweep_reuse.py [--steps 4 --train 32 --eval 16] [--order multirun,packed]
        [--override train.precision=fp32] [--out FILE.json] [--keep DIR]
    python benchmarks/sweep_reuse.py --workload smollm2_beta --order multirun,packed --repeats 1

``--workload``: ``tiny_beta_rank`` (the default, ``sweep=tiny_beta_rank`` shortened by ``--steps``,
``--train``, ``--eval``) or ``smollm2_beta``: the 3-job beta sweep (0.05, 0.1, 0.5) of
``experiment=smollm2_hh_finance`` as committed (``--steps`` etc. are ignored; fetch the model first with
``make smollm2``). ``--keep DIR`` keeps every mode's sweep folder (run folders, ``results.md``, plots).

1. ``separate``: the 4 jobs as 4 ``python -m dpo_lab.run`` processes, one after another (what a shell loop,
   or a launcher that starts a process per job, pays);
2. ``multirun_no_reuse``: one ``python -m dpo_lab.run -m`` (Hydra's basic launcher, one process) with
   ``reuse=false``: saves the process start-up and imports only;
3. ``multirun``: the same with ``reuse=true`` (the default): the base model, tokenised data and reference
   log-probs of job 1 serve jobs 2-4;
4. ``packed``: the same with ``hydra/launcher=packed``: the 4 adapters train together in one packed run over
   one base (dpo_lab.packed.pack), then each job evaluates and writes its folder
   (``--order multirun,packed``). ``packed_together`` and ``packed_in_turn`` set ``hydra.launcher.step``
   (``packed`` leaves it at auto: together on a GPU, in turn on a CPU).
   Peak memory (the sweep process's peak RSS, from the jobs' metrics.json) and the jobs' tokens/s are
   recorded for every mode.

Every mode starts with an empty datasets cache of its own (HF_DATASETS_CACHE), W&B off. The jobs' held-out
metrics must agree between the modes (reuse must not change results); the script checks that. The machine is
shared: the load average before and after each mode is recorded next to the times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# the jobs of each workload as (dpo.beta, lora.r)
WORKLOAD_GRIDS = {
    "tiny_beta_rank": [(beta, r) for beta in (0.1, 0.5) for r in (4, 16)],  # conf/sweep/tiny_beta_rank.yaml
    "smollm2_beta": [(beta, 16) for beta in (0.05, 0.1, 0.5)],  # conf/experiment/smollm2_hh_finance.yaml
}
GRID = WORKLOAD_GRIDS["tiny_beta_rank"]
# hydra/launcher=packed with hydra.launcher.step=auto (together on a GPU, in turn on a CPU), together, in_turn
PACKED_MODES = ("packed", "packed_together", "packed_in_turn")


def common_overrides(steps: int, train: int, eval_: int, workload: str = "tiny_beta_rank") -> list[str]:
    """Every job's overrides (the sweep's grid comes from the workload's sweep config or ``sweep_grid``)."""
    if workload == "smollm2_beta":
        return ["experiment=smollm2_hh_finance", "logger=none"]
    return [
        "sweep=tiny_beta_rank",
        "logger=none",
        f"train.max_steps={steps}",
        "train.eval_steps=0",
        f"data.max_train_samples={train}",
        f"data.max_eval_samples={eval_}",
    ]


def sweep_grid(workload: str) -> list[str]:
    """The multirun overrides that make the workload's grid (none: its sweep config holds it)."""
    if workload == "smollm2_beta":
        return ["dpo.beta=" + ",".join(f"{b:g}" for b, _ in WORKLOAD_GRIDS[workload])]
    return []


def run(argv: list[str], cache_dir: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process and its children) of one ``python -m dpo_lab.run``."""
    env = {
        **os.environ,
        "HF_DATASETS_CACHE": str(cache_dir),
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        "TOKENIZERS_PARALLELISM": "false",
    }
    cpu_before = _children_cpu()
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "dpo_lab.run", *argv], cwd=ROOT, env=env, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(argv)}\n{proc.stderr[-3000:]}")
    return elapsed, _children_cpu() - cpu_before


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def job_results(folder: Path) -> dict[str, dict]:
    """``beta=..,r=..`` -> final held-out metrics and what the job reused, from its run folder."""
    out = {}
    for metrics_file in sorted(folder.glob("*/metrics.json")):
        metrics = json.loads(metrics_file.read_text())
        config = yaml.safe_load((metrics_file.parent / "config.yaml").read_text())
        out[f"beta={config['dpo']['beta']:g},r={config['lora']['r']}"] = {
            "eval_loss": metrics["eval"]["eval_loss"],
            "eval_rewards/accuracies": metrics["eval"]["eval_rewards/accuracies"],
            "job_seconds": round(metrics["total_runtime_s"], 1),
            "reused": metrics.get("reused"),
            "tokens_per_second": round(metrics.get("tokens_per_second", 0.0), 1),
            "peak_memory_mb": round(metrics.get("peak_memory_mb", 0.0), 1),
            "pack_size": metrics.get("train", {}).get("pack_size", 1),
            "pack_step": metrics.get("train", {}).get("pack_step"),
        }
    return out


def measure(
    work: Path,
    overrides: list[str],
    order: list[str],
    repeats: int,
    partial: Path,
    grid: list[tuple[float, int]] = GRID,
    sweep: list[str] = (),
) -> dict:
    """Run each mode ``repeats`` times, each run on an empty datasets cache: wall and CPU seconds (min and
    median over the repeats), the load average around each run, the jobs' results. ``grid``: the jobs
    (``separate`` runs them one by one); ``sweep``: the multirun overrides that make the same grid."""

    def separate(folder: Path) -> tuple[float, float]:
        times = [
            run(
                [*overrides, f"dpo.beta={b}", f"lora.r={r}", f"hydra.run.dir={folder / 'runs' / str(i)}"],
                folder / "hf-cache",
            )
            for i, (b, r) in enumerate(grid)
        ]
        return sum(t[0] for t in times), sum(t[1] for t in times)

    def multirun(reuse: bool):
        def action(folder: Path) -> tuple[float, float]:
            return run(
                [
                    "-m",
                    *overrides,
                    *sweep,
                    f"reuse={str(reuse).lower()}",
                    f"hydra.sweep.dir={folder / 'runs'}",
                ],  # fmt: skip
                folder / "hf-cache",
            )

        return action

    def packed(step: str):
        def action(folder: Path) -> tuple[float, float]:
            return run(
                [
                    "-m",
                    *overrides,
                    *sweep,
                    "hydra/launcher=packed",
                    f"hydra.launcher.step={step}",
                    f"hydra.sweep.dir={folder / 'runs'}",
                ],  # fmt: skip
                folder / "hf-cache",
            )

        return action

    actions = {
        "separate": separate,
        "multirun_no_reuse": multirun(False),
        "multirun": multirun(True),
        "packed": packed("auto"),
        "packed_together": packed("together"),
        "packed_in_turn": packed("in_turn"),
    }
    modes: dict[str, dict] = {name: {"runs": []} for name in order}
    for rep in range(repeats):  # interleaved, so a burst of load elsewhere hits every mode alike
        for name in order:
            load_before = os.getloadavg()
            wall, cpu = actions[name](work / f"{name}-{rep}")
            load_after = os.getloadavg()
            modes[name]["runs"].append(
                {
                    "wall_s": round(wall, 1),
                    "cpu_s": round(cpu, 1),
                    "load_before": [round(x, 2) for x in load_before],
                    "load_after": [round(x, 2) for x in load_after],
                    "jobs": job_results(work / f"{name}-{rep}" / "runs"),
                }
            )
            jobs = modes[name]["runs"][-1]["jobs"].values()
            modes[name]["runs"][-1]["peak_memory_mb"] = max((j["peak_memory_mb"] for j in jobs), default=0.0)
            modes[name]["runs"][-1]["tokens_per_second_per_job"] = round(
                sum(j["tokens_per_second"] for j in jobs) / max(len(jobs), 1), 1
            )
            load = f"load {load_before[0]:.2f} -> {load_after[0]:.2f}"
            print(f"{name} #{rep}: {wall:.1f} s wall, {cpu:.1f} s CPU ({load})", flush=True)
            partial.write_text(json.dumps(modes, indent=2))  # kept if a later run fails
    for mode in modes.values():
        for unit in ("wall_s", "cpu_s", "peak_memory_mb", "tokens_per_second_per_job"):
            values = [run[unit] for run in mode["runs"]]
            mode[unit] = {"min": min(values), "median": statistics.median(values)}
    return modes


def check_same_results(modes: dict[str, dict]) -> list[str]:
    """Differences in held-out metrics between modes and repeats (empty: reuse changed nothing)."""
    problems = []
    first = "separate" if "separate" in modes else next(iter(modes))
    reference = modes[first]["runs"][0]["jobs"]
    for name, mode in modes.items():
        for rep, run_ in enumerate(mode["runs"]):
            if set(run_["jobs"]) != set(reference):
                problems.append(f"{name} #{rep}: jobs {sorted(run_['jobs'])} != {sorted(reference)}")
                continue
            for job, values in run_["jobs"].items():
                for key in ("eval_loss", "eval_rewards/accuracies"):
                    if abs(values[key] - reference[job][key]) > 1e-4:
                        problems.append(f"{name} #{rep} {job} {key}: {values[key]} vs {reference[job][key]}")
    return problems


def summarize(
    modes: dict[str, dict], overrides: list[str], problems: list[str], grid: list[tuple[float, int]] = GRID
) -> dict:
    """The JSON result: command, machine, every run, and the ratios of min and median times."""

    def ratio(slow: str, fast: str, unit: str, stat: str) -> float:
        return round(modes[slow][unit][stat] / modes[fast][unit][stat], 2)

    pairs = [
        pair
        for pair in (
            ("separate", "multirun"),
            ("separate", "multirun_no_reuse"),
            ("multirun_no_reuse", "multirun"),
            *(("multirun", name) for name in PACKED_MODES),
            ("separate", "packed"),
        )
        if all(name in modes for name in pair)
    ]
    memory = {  # each packed sweep's peak over one-job-at-a-time's
        f"{name}/multirun (peak_memory_mb {stat})": ratio(name, "multirun", "peak_memory_mb", stat)
        for name in PACKED_MODES
        if name in modes and "multirun" in modes
        for stat in ("min", "median")
    }
    return {
        "command": " ".join(["python", "benchmarks/sweep_reuse.py", *sys.argv[1:]]),
        "job_overrides": overrides,
        "grid": [f"dpo.beta={b} lora.r={r}" for b, r in grid],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "modes": modes,
        "ratios": {
            f"{slow}/{fast} ({unit} {stat})": ratio(slow, fast, unit, stat)
            for slow, fast in pairs
            for unit in ("wall_s", "cpu_s")
            for stat in ("min", "median")
        },
        "memory_ratios": memory,
        "load_average_note": "2 shared cores; load_before/load_after per run: compare ratios within a round",
        "same_results": not problems,
        "differences": problems,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="train.max_steps of every job")
    parser.add_argument("--train", type=int, default=32, help="data.max_train_samples")
    parser.add_argument("--eval", type=int, default=16, help="data.max_eval_samples")
    parser.add_argument("--order", default="separate,multirun_no_reuse,multirun", help="modes, in run order")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each mode (min and median reported)")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        help="extra override for every job, e.g. train.precision=fp32",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sweep_reuse.json")
    parser.add_argument("--workload", choices=sorted(WORKLOAD_GRIDS), default="tiny_beta_rank")
    parser.add_argument("--keep", type=Path, help="keep every mode's sweep folder under this folder")
    args = parser.parse_args()
    overrides = [*common_overrides(args.steps, args.train, args.eval, args.workload), *args.override]
    grid = WORKLOAD_GRIDS[args.workload]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_suffix(".partial.json")
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sweep-reuse-", dir=args.keep) as tmp:
        order, sweep = args.order.split(","), sweep_grid(args.workload)
        modes = measure(Path(tmp), overrides, order, args.repeats, partial, grid, sweep)
        if args.keep is not None:  # out of the temporary folder before it is removed
            for mode_folder in Path(tmp).iterdir():
                mode_folder.rename(args.keep / mode_folder.name)
    problems = check_same_results(modes)

    result = summarize(modes, overrides, problems, grid)
    args.out.write_text(json.dumps(result, indent=2))
    partial.unlink()
    for key, value in {**result["ratios"], **result["memory_ratios"]}.items():
        print(f"{key}: {value}")
    print(
        "DIFFERENT RESULTS:\n" + "\n".join(problems)
        if problems
        else "held-out metrics identical across modes"
    )
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
