"""What a same-process sweep saves: the 4-job tiny sweep (2 betas x 2 LoRA ranks) run three ways.

    python benchmarks/sweep_reuse.py [--steps 4 --train 32 --eval 16] [--out FILE.json]

1. ``separate``: the 4 jobs as 4 ``python -m dpo_lab.run`` processes, one after another (what a shell loop,
   or a launcher that starts a process per job, pays);
2. ``multirun_no_reuse``: one ``python -m dpo_lab.run -m`` (Hydra's basic launcher, one process) with
   ``reuse=false``: saves the process start-up and imports only;
3. ``multirun``: the same with ``reuse=true`` (the default): the base model, tokenised data and reference
   log-probs of job 1 serve jobs 2-4.

Every mode starts with an empty datasets cache of its own (HF_DATASETS_CACHE), W&B off. The jobs' held-out
metrics must agree between the modes (reuse must not change results); the script checks that. The machine is
shared: the load average before and after each mode is recorded next to the times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
GRID = [(beta, r) for beta in (0.1, 0.5) for r in (4, 16)]  # conf/sweep/tiny_beta_rank.yaml


def common_overrides(steps: int, train: int, eval_: int) -> list[str]:
    return [
        "sweep=tiny_beta_rank",
        "logger=none",
        f"train.max_steps={steps}",
        "train.eval_steps=0",
        f"data.max_train_samples={train}",
        f"data.max_eval_samples={eval_}",
    ]


def run(argv: list[str], cache_dir: Path) -> float:
    env = {
        **os.environ,
        "HF_DATASETS_CACHE": str(cache_dir),
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        "TOKENIZERS_PARALLELISM": "false",
    }
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "dpo_lab.run", *argv], cwd=ROOT, env=env, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(argv)}\n{proc.stderr[-3000:]}")
    return elapsed


def job_results(folder: Path) -> dict[str, dict]:
    """``beta=..,r=..`` -> final held-out metrics and what the job reused, from its run folder."""
    out = {}
    for metrics_file in sorted(folder.glob("*/metrics.json")):
        metrics = json.loads(metrics_file.read_text())
        config = yaml.safe_load((metrics_file.parent / "config.yaml").read_text())
        out[f"beta={config['dpo']['beta']:g},r={config['lora']['r']}"] = {
            "eval_loss": metrics["eval"]["eval_loss"],
            "eval_rewards/accuracies": metrics["eval"]["eval_rewards/accuracies"],
            "reused": metrics.get("reused"),
        }
    return out


def measure(work: Path, overrides: list[str]) -> dict:
    modes: dict[str, dict] = {}

    def timed(name: str, action) -> None:
        load_before = os.getloadavg()
        seconds = action(work / name)
        modes[name] = {
            "seconds": round(seconds, 1),
            "load_before": [round(x, 2) for x in load_before],
            "load_after": [round(x, 2) for x in os.getloadavg()],
            "jobs": job_results(work / name / "runs"),
        }
        print(f"{name}: {seconds:.1f} s (load {load_before[0]:.2f} -> {os.getloadavg()[0]:.2f})", flush=True)

    def separate(folder: Path) -> float:
        return sum(
            run(
                [*overrides, f"dpo.beta={b}", f"lora.r={r}", f"hydra.run.dir={folder / 'runs' / str(i)}"],
                folder / "hf-cache",
            )
            for i, (b, r) in enumerate(GRID)
        )

    def multirun(reuse: bool):
        def action(folder: Path) -> float:
            return run(
                ["-m", *overrides, f"reuse={str(reuse).lower()}", f"hydra.sweep.dir={folder / 'runs'}"],
                folder / "hf-cache",
            )

        return action

    timed("separate", separate)
    timed("multirun_no_reuse", multirun(False))
    timed("multirun", multirun(True))
    return modes


def check_same_results(modes: dict[str, dict]) -> list[str]:
    """Differences in held-out metrics between modes (empty: reuse changed nothing)."""
    problems = []
    reference = modes["separate"]["jobs"]
    for name, mode in modes.items():
        if set(mode["jobs"]) != set(reference):
            problems.append(f"{name}: jobs {sorted(mode['jobs'])} != {sorted(reference)}")
            continue
        for job, values in mode["jobs"].items():
            for key in ("eval_loss", "eval_rewards/accuracies"):
                if abs(values[key] - reference[job][key]) > 1e-4:
                    problems.append(f"{name} {job} {key}: {values[key]} vs separate {reference[job][key]}")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="train.max_steps of every job")
    parser.add_argument("--train", type=int, default=32, help="data.max_train_samples")
    parser.add_argument("--eval", type=int, default=16, help="data.max_eval_samples")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sweep_reuse.json")
    args = parser.parse_args()
    overrides = common_overrides(args.steps, args.train, args.eval)
    with tempfile.TemporaryDirectory(prefix="sweep-reuse-") as tmp:
        modes = measure(Path(tmp), overrides)
    problems = check_same_results(modes)
    separate, reuse, no_reuse = (modes[m]["seconds"] for m in ("separate", "multirun", "multirun_no_reuse"))
    result = {
        "command": " ".join(["python", "benchmarks/sweep_reuse.py", *sys.argv[1:]]),
        "job_overrides": overrides,
        "grid": [f"dpo.beta={b} lora.r={r}" for b, r in GRID],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "modes": modes,
        "ratio_separate_over_multirun": round(separate / reuse, 2),
        "ratio_separate_over_multirun_no_reuse": round(separate / no_reuse, 2),
        "ratio_multirun_no_reuse_over_multirun": round(no_reuse / reuse, 2),
        "same_results": not problems,
        "differences": problems,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(
        f"separate processes {separate:.1f} s, one process without reuse {no_reuse:.1f} s, "
        f"one process with reuse {reuse:.1f} s: {separate / reuse:.2f}x faster than separate processes"
    )
    verdict = (
        "DIFFERENT RESULTS:\n" + "\n".join(problems)
        if problems
        else "held-out metrics identical across modes"
    )
    print(verdict)
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
