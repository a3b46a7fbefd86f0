"""dpo_lab against the plain TRL script, on the same model, data and hyperparameters, in one session.

``python -m benchmarks.compare [--steps 40] [--repeats 2] [--threads 1] [--sweep]`` (or ``make bench
ARGS="..."``) runs one configuration as separate processes, in rotating order each round (A B C, B C A,
...), through:

* ``dpo_lab``      ``python -m dpo_lab.run ... logger=none`` (its own defaults: precision from the hardware);
* ``trl_defaults`` ``benchmarks/plain_trl_dpo.py``, TRL's defaults (bf16 autocast + gradient checkpointing);
* ``trl_tuned``    the plain script with dpo_lab's precision and no checkpointing (``--tuned [--bf16]``);
* any ``--variant NAME='overrides'``: dpo_lab with extra overrides (to measure one change at a time).

Measured the same way for every side (see dpo_lab/throughput.py for the definitions):

* training tokens/s: non-padding tokens trained on (Trainer's ``num_input_tokens_seen``) over the training
  time (``train_runtime`` without evaluations run inside ``train()``, such as dpo_lab's step-0 one);
* seconds per optimizer step: steady state between the end of step 1 and the end of the last step, in
  wall-clock time and in the process's CPU time (robust to other users of a shared machine);
* time to first step: from just before this harness starts the process to the end of optimizer step 1
  (imports, data, model, tokenisation, any precompute and the evaluation before training);
* peak memory: the process's peak RSS from ``wait4`` on CPU, CUDA max allocated (self-reported) on GPU;
* MFU: one FLOP model (dpo_lab/flops.py) for every side, over a peak measured by a matmul in this
  process before each round, in the training precision;
* the final held-out metrics, so speed is never bought with different results.

``--sweep`` adds the sweep benchmark: 4 jobs (``dpo.beta`` = 0.05, 0.1, 0.2, 0.5) through one
``dpo_lab.run -m`` against 4 separate processes of the tuned plain script, end to end.
Results go to ``benchmarks/results/<name>.json``; a Markdown table is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PLAIN_SCRIPT = ROOT / "benchmarks" / "plain_trl_dpo.py"
BASE_SIDES = ("dpo_lab", "trl_defaults", "trl_tuned")
SWEEP_BETAS = (0.05, 0.1, 0.2, 0.5)
EVAL_KEYS = ("loss", "rewards/accuracies", "rewards/margins")
# (metric, better): "higher" -> ratio = dpo_lab / other, "lower" -> ratio = other / dpo_lab; >1 = dpo_lab wins
COMPARED = {
    "tokens_per_second": "higher",
    "seconds_per_step": "lower",
    "cpu_seconds_per_step": "lower",
    "time_to_first_step_s": "lower",
    "wall_s": "lower",
    "cpu_s": "lower",
    "peak_memory_mb": "lower",
    "mfu": "higher",
}


@dataclass
class Workload:
    """One configuration, expressed for both dpo_lab (overrides) and the plain script (flags)."""

    model: str | None = None  # None = the embedded tiny model
    data: str | None = None  # None = the embedded finance pairs (a folder with train/test jsonl)
    steps: int = 40
    batch_size: int = 8
    learning_rate: float = 5e-4
    beta: float = 0.1
    max_length: int = 1024
    max_train_samples: int | None = None
    max_eval_samples: int | None = 64
    precision: str = "auto"  # dpo_lab's train.precision; the tuned plain script follows what it resolves to
    quantization: str = "none"  # none | nf4
    seed: int = 42

    def dpo_lab_overrides(self) -> list[str]:
        over = [
            f"train.max_steps={self.steps}",
            f"train.per_device_train_batch_size={self.batch_size}",
            f"train.per_device_eval_batch_size={2 * self.batch_size}",
            f"train.learning_rate={self.learning_rate}",
            f"dpo.beta={self.beta}",
            f"dpo.max_length={self.max_length}",
            f"train.precision={self.precision}",
            f"model.quantization={self.quantization}",
            f"seed={self.seed}",
            "logger=none",
            "eval=none",  # no generation after training: the plain script has none
        ]
        if self.model:
            over.append(f"model.name_or_path={self.model}")
        if self.data:
            over.append(f"data.path={self.data}")
        for key in ("max_train_samples", "max_eval_samples"):
            if getattr(self, key) is not None:
                over.append(f"data.{key}={getattr(self, key)}")
        return over

    def plain_flags(self) -> list[str]:
        flags = [
            f"--max-steps={self.steps}",
            f"--batch-size={self.batch_size}",
            f"--lr={self.learning_rate}",
            f"--beta={self.beta}",
            f"--max-length={self.max_length}",
            f"--seed={self.seed}",
        ]
        if self.model:
            flags.append(f"--model={self.model}")
        if self.data:
            flags.append(f"--data={self.data}")
        if self.max_train_samples is not None:
            flags.append(f"--max-train-samples={self.max_train_samples}")
        if self.max_eval_samples is not None:
            flags.append(f"--max-eval-samples={self.max_eval_samples}")
        if self.quantization == "nf4":
            flags.append("--load-in-4bit")
        elif self.quantization != "none":
            raise ValueError(f"the plain script supports quantization none or nf4, not {self.quantization!r}")
        return flags


@dataclass
class Side:
    """A named way of running the workload."""

    name: str
    kind: str  # dpo_lab | plain
    overrides: list[str] = field(default_factory=list)  # dpo_lab: extra overrides
    tuned: bool = False  # plain: --tuned
    bf16: bool = False  # plain: --bf16 (with --tuned)


def resolved_precision(requested: str) -> str:
    """What dpo_lab's ``train.precision`` resolves to on this machine (fp32, bf16 or fp16)."""
    from dpo_lab.runtime.hardware import resolve_precision
    from dpo_lab.runtime.precision import Precision

    return resolve_precision(Precision(requested)).value


def make_sides(precision: str, variants: dict[str, list[str]], only: list[str] | None) -> list[Side]:
    """dpo_lab, the plain sides (only those in ``only``, when given) and the requested dpo_lab variants."""
    plain = [Side("trl_defaults", "plain"), Side("trl_tuned", "plain", tuned=True, bf16=precision == "bf16")]
    if only:
        plain = [s for s in plain if s.name in only]
    variants_ = [Side(name, "dpo_lab", overrides=over) for name, over in variants.items()]
    return [Side("dpo_lab", "dpo_lab"), *plain, *variants_]


def side_command(side: Side, workload: Workload, out_dir: Path) -> list[str]:
    """The command line that runs ``workload`` as ``side``, writing its results under ``out_dir``."""
    if side.kind == "dpo_lab":
        return [sys.executable, "-m", "dpo_lab.run", *workload.dpo_lab_overrides(), *side.overrides,
                f"hydra.run.dir={out_dir}"]  # fmt: skip
    flags = [*workload.plain_flags(), f"--out={out_dir}"]
    if side.tuned:
        flags.append("--tuned")
        if side.bf16:
            flags.append("--bf16")
    return [sys.executable, str(PLAIN_SCRIPT), *flags]


# --cpu-isa NAME -> the environment that holds oneDNN and ATen to that instruction set
CPU_ISA_LIMITS = {"avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}}


def limit_cpu_isa(name: str | None, argv: list[str]) -> None:
    """Re-run this harness with the ISA limit in its environment (it must be set before torch starts), so
    the resolved precision, the peak matmul and every child process see the same, limited CPU."""
    if not name:
        return
    limit = CPU_ISA_LIMITS[name]
    if all(os.environ.get(k) == v for k, v in limit.items()):
        return
    env = {**os.environ, **limit}
    os.execve(sys.executable, [sys.executable, "-m", "benchmarks.compare", *argv], env)


def bench_env(threads: int | None) -> dict[str, str]:
    """The same environment for every side: offline, quiet, and optionally a fixed number of CPU threads."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               WANDB_MODE="disabled", TQDM_DISABLE="1")  # fmt: skip
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


@dataclass
class ProcessResult:
    returncode: int
    started_at: float  # Unix time just before the process was started
    wall_s: float
    max_rss_mb: float  # peak resident set size of the process (wait4)
    cpu_s: float  # user + system CPU time of the process (wait4)
    log: Path


def run_process(cmd: list[str], env: dict[str, str], log: Path, timeout_s: float) -> ProcessResult:
    """Run ``cmd`` from the repo root, output to ``log``; its peak RSS comes from ``os.wait4``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        started_at = time.time()
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - start > timeout_s:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    cpu = usage.ru_utime + usage.ru_stime
    return ProcessResult(proc.returncode, started_at, wall, usage.ru_maxrss / 1024, cpu, log)


def _eval(metrics: dict[str, Any]) -> dict[str, float]:
    return {key: metrics.get(f"eval_{key}") for key in EVAL_KEYS}


def parse_dpo_lab(metrics: dict[str, Any], proc: ProcessResult) -> dict[str, Any]:
    """A benchmark record from dpo_lab's metrics.json."""
    flops = metrics.get("flops", {})
    return {
        "tokens": metrics["train_tokens"],
        "train_runtime_s": metrics["train_runtime_s"],
        "training_s": metrics.get("training_seconds", metrics["train_runtime_s"]),
        "tokens_per_second": metrics["tokens_per_second"],
        "seconds_per_step": metrics.get("seconds_per_step"),
        "cpu_seconds_per_step": metrics.get("cpu_seconds_per_step"),
        "time_to_first_step_s": _since(metrics.get("first_step_at"), proc.started_at),
        "steps": metrics["global_step"],
        "self_reported_peak_memory_mb": metrics["peak_memory_mb"],
        "self_reported_mfu": metrics.get("mfu"),
        "reference_forward": flops.get("reference_forward", True),
        "flop_inputs": {"shapes": flops.get("shapes"), "token_ratios": flops.get("token_ratios")},
        "precision": metrics["precision"],
        "eval": _eval(metrics["eval"]),
        "eval_before": _eval(metrics["eval_before"]),
    }


def parse_plain(result: dict[str, Any], proc: ProcessResult) -> dict[str, Any]:
    """A benchmark record from the plain script's result.json."""
    return {
        "tokens": result["train_tokens"],
        "train_runtime_s": result["train_runtime"],
        "training_s": result["train_runtime"],  # it evaluates before and after train(), never inside
        "tokens_per_second": result["tokens_per_second"],
        "seconds_per_step": result.get("seconds_per_step"),
        "cpu_seconds_per_step": result.get("cpu_seconds_per_step"),
        "time_to_first_step_s": _since(result.get("first_step_at"), proc.started_at),
        "steps": result["steps"],
        "self_reported_peak_memory_mb": result["peak_memory_mb"],
        "reference_forward": True,
        "precision": "bf16" if result["bf16"] else "fp32",
        "gradient_checkpointing": result["gradient_checkpointing"],
        "eval": _eval(result["eval"]),
        "eval_before": _eval(result["eval_before"]),
    }


def _since(at: float | None, started_at: float) -> float | None:
    return at - started_at if at is not None else None


def run_side(side: Side, workload: Workload, work: Path, env: dict[str, str], timeout_s: float) -> dict:
    """Run one side once; its record (timings, memory, eval metrics) or the error and the log's tail."""
    out_dir = Path(tempfile.mkdtemp(prefix=f"{side.name}-", dir=work))
    proc = run_process(side_command(side, workload, out_dir), env, out_dir / "process.log", timeout_s)
    record: dict[str, Any] = {"side": side.name, "wall_s": proc.wall_s, "max_rss_mb": proc.max_rss_mb,
                              "cpu_s": proc.cpu_s, "returncode": proc.returncode,
                              "load_before": os.getloadavg()}  # fmt: skip
    result_file = out_dir / ("metrics.json" if side.kind == "dpo_lab" else "result.json")
    if proc.returncode != 0 or not result_file.exists():
        record["error"] = proc.log.read_text(errors="replace")[-3000:]
        return record
    parse = parse_dpo_lab if side.kind == "dpo_lab" else parse_plain
    record.update(parse(json.loads(result_file.read_text()), proc))
    # CPU: the OS's peak RSS for every side alike; CUDA: the process's own max allocated
    record["peak_memory_mb"] = record["self_reported_peak_memory_mb"] if _cuda() else proc.max_rss_mb
    return record


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def rotation(names: list[str], round_index: int) -> list[str]:
    """Round r runs the sides starting at index r (A B C, B C A, C A B, ...): drift hits every side alike."""
    k = round_index % len(names)
    return names[k:] + names[:k]


def add_mfu(records: list[dict], peak_by_round: dict[int, float]) -> None:
    """MFU for every record from one FLOP model and the round's measured peak (needs a dpo_lab record)."""
    from dpo_lab.train.flops import ModelShapes, counts_from_ratios, dpo_step_flops, mfu

    inputs = next((r["flop_inputs"] for r in records if r.get("flop_inputs", {}).get("shapes")), None)
    if inputs is None:
        return
    shapes = ModelShapes(**inputs["shapes"])
    for rec in records:
        if "error" in rec:
            continue
        counts = counts_from_ratios(rec["tokens"], inputs["token_ratios"])
        flops = dpo_step_flops(shapes, counts, reference_forward=rec["reference_forward"])["total"]
        rec["train_flops"] = flops
        seconds = rec.get("training_s", rec["train_runtime_s"])
        rec["mfu"] = mfu(flops, seconds, peak_by_round.get(rec["round"], 0.0))


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(records: list[dict]) -> dict[str, dict[str, Any]]:
    """Per side: the median of every compared metric and of the final held-out metrics, and the run count."""
    summary: dict[str, dict[str, Any]] = {}
    for side in dict.fromkeys(r["side"] for r in records):
        ok = [r for r in records if r["side"] == side and "error" not in r]
        row: dict[str, Any] = {
            "runs": len(ok),
            "failed": sum(r["side"] == side and "error" in r for r in records),
        }
        for metric in COMPARED:
            row[metric] = _median([r.get(metric) for r in ok])
        for key in EVAL_KEYS:
            row[f"eval_{key}"] = _median([r["eval"][key] for r in ok])
        summary[side] = row
    return summary


def ratios(summary: dict[str, dict[str, Any]], base: str = "dpo_lab") -> dict[str, dict[str, float | None]]:
    """For every other side, base-vs-side ratios oriented so that > 1 means ``base`` is better."""
    out: dict[str, dict[str, float | None]] = {}
    ours = summary.get(base, {})
    for side, row in summary.items():
        if side == base:
            continue
        out[side] = {}
        for metric, better in COMPARED.items():
            a, b = ours.get(metric), row.get(metric)
            if not a or not b:
                out[side][metric] = None
            else:
                out[side][metric] = a / b if better == "higher" else b / a
    return out


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 10**digits else f"{value:.{digits}g}"
    return str(value)


SUMMARY_COLUMNS = {
    "runs": "runs", "tokens_per_second": "tokens/s", "seconds_per_step": "s/step",
    "cpu_seconds_per_step": "CPU s/step", "time_to_first_step_s": "first step s", "wall_s": "wall s",
    "cpu_s": "process CPU s",
    "peak_memory_mb": "peak MB", "mfu": "MFU", "eval_loss": "eval loss",
    "eval_rewards/accuracies": "eval acc", "eval_rewards/margins": "eval margin",
}  # fmt: skip
RATIO_COLUMNS = {
    "tokens_per_second": "tokens/s", "seconds_per_step": "s/step", "cpu_seconds_per_step": "CPU s/step",
    "time_to_first_step_s": "first step", "wall_s": "wall", "cpu_s": "process CPU",
    "peak_memory_mb": "memory ours/theirs",
    "mfu": "MFU",
}  # fmt: skip


def markdown_table(summary: dict[str, dict[str, Any]], ratio: dict[str, dict[str, float | None]]) -> str:
    """Medians per side, and dpo_lab's advantage (x) over each other side (memory: ours / theirs)."""
    lines = [_row(["side", *SUMMARY_COLUMNS.values()]), "|" + "---|" * (len(SUMMARY_COLUMNS) + 1)]
    for side, row in summary.items():
        cells = [_pct(row.get(k)) if k == "mfu" else row.get(k) for k in SUMMARY_COLUMNS]
        lines.append(_row([side, *(_fmt(c) for c in cells)]))
    if ratio:
        lines += ["", _row(["dpo_lab vs", *RATIO_COLUMNS.values()]), "|" + "---|" * (len(RATIO_COLUMNS) + 1)]
        for side, r in ratio.items():
            cells = [
                r.get(k) if k != "peak_memory_mb" or r.get(k) is None else 1 / r[k] for k in RATIO_COLUMNS
            ]
            lines.append(_row([side, *(_x(c) for c in cells)]))
    return "\n".join(lines)


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _pct(value: float | None) -> str | None:
    return None if value is None else f"{100 * value:.2f}%"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


# --- the sweep benchmark ------------------------------------------------------------------------------


def sweep_commands(
    workload: Workload, out_dir: Path, precision: str, extra: list[str] | None = None
) -> tuple[list[str], list[list[str]]]:
    """(one dpo_lab multirun over SWEEP_BETAS with ``extra`` overrides, the 4 plain tuned processes)."""
    betas = ",".join(str(b) for b in SWEEP_BETAS)
    overrides = [o for o in workload.dpo_lab_overrides() if not o.startswith("dpo.beta=")] + list(extra or [])
    multirun = [sys.executable, "-m", "dpo_lab.run", "-m", f"dpo.beta={betas}", *overrides,
                f"hydra.sweep.dir={out_dir / 'dpo_lab'}"]  # fmt: skip
    plain = []
    for i, beta in enumerate(SWEEP_BETAS):
        flags = [f for f in workload.plain_flags() if not f.startswith("--beta=")]
        flags += [f"--beta={beta}", f"--out={out_dir / 'plain' / str(i)}", "--tuned"]
        plain.append(
            [sys.executable, str(PLAIN_SCRIPT), *flags, *(["--bf16"] if precision == "bf16" else [])]
        )
    return multirun, plain


def run_sweep_round(workload: Workload, work: Path, env: dict, precision: str, order: list[str],
                    timeout_s: float, extra: list[str] | None = None) -> list[dict]:  # fmt: skip
    """One round of the sweep benchmark: dpo_lab's multirun and the 4 plain processes, in ``order``."""
    out_dir = Path(tempfile.mkdtemp(prefix="sweep-", dir=work))
    multirun, plain = sweep_commands(workload, out_dir, precision, extra)
    records = []
    for name in order:
        rec: dict[str, Any] = {"side": name, "load_before": os.getloadavg()}
        start = time.perf_counter()
        if name == "dpo_lab_multirun":
            proc = run_process(multirun, env, out_dir / "dpo_lab.log", timeout_s)
            rec["returncode"], rec["max_rss_mb"], rec["cpu_s"] = proc.returncode, proc.max_rss_mb, proc.cpu_s
            jobs = sorted((out_dir / "dpo_lab").glob("[0-9]*/metrics.json"))
            rec["jobs"] = [_job_summary(json.loads(p.read_text())) for p in jobs]
        else:
            procs = [
                run_process(cmd, env, out_dir / f"plain-{i}.log", timeout_s) for i, cmd in enumerate(plain)
            ]
            rec["returncode"] = max(p.returncode for p in procs)
            rec["max_rss_mb"] = max(p.max_rss_mb for p in procs)
            rec["cpu_s"] = sum(p.cpu_s for p in procs)
            results = [out_dir / "plain" / str(i) / "result.json" for i in range(len(plain))]
            rec["jobs"] = [_job_summary(json.loads(p.read_text())) for p in results if p.exists()]
        rec["wall_s"] = time.perf_counter() - start
        if rec["returncode"] != 0 or len(rec["jobs"]) != len(SWEEP_BETAS):
            rec["error"] = (
                f"returncode {rec['returncode']}, {len(rec['jobs'])} jobs finished; logs in {out_dir}"
            )
        records.append(rec)
    return records


def _job_summary(metrics: dict[str, Any]) -> dict[str, Any]:
    runtime = metrics.get("train_runtime_s", metrics.get("train_runtime"))
    return {"train_runtime_s": runtime, "eval": _eval(metrics.get("eval", {}))}


def sweep_summary(records: list[dict]) -> dict[str, Any]:
    """Median end-to-end wall and CPU time per side, and the multirun's speed-up in each."""
    out: dict[str, Any] = {"failed": sum("error" in r for r in records)}
    for metric, name in (("wall_s", "speedup"), ("cpu_s", "cpu_speedup")):
        medians = {side: _median([r.get(metric) for r in records if r["side"] == side and "error" not in r])
                   for side in ("dpo_lab_multirun", "plain_processes")}  # fmt: skip
        a, b = medians["dpo_lab_multirun"], medians["plain_processes"]
        out[f"median_{metric}"] = medians
        out[name] = b / a if a and b else None
    return out


# --- the command line --------------------------------------------------------------------------------


def environment(threads: int | None) -> dict[str, Any]:
    """What the numbers were measured on."""
    import torch

    from dpo_lab.runtime.hardware import cpu_has_native_bf16

    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "threads": threads or "torch default",
        "cpu_native_bf16": cpu_has_native_bf16(),
        "cpu_isa_limit": {k: os.environ[k] for k in CPU_ISA_LIMITS["avx2"] if k in os.environ},
        "load_at_start": os.getloadavg(),
        "uptime": _uptime(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    else:
        info["cpu"] = _cpu_model()
    return info


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def measure_round_peak(precision: str, threads: int | None) -> float:
    """The device's matmul peak now, in the training precision, with the benchmark's thread count."""
    import torch

    from dpo_lab.train.flops import measure_peak_flops

    if threads:
        torch.set_num_threads(threads)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    return measure_peak_flops("cuda" if torch.cuda.is_available() else "cpu", dtype)


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``NAME=override override ...`` -> (NAME, [overrides])."""
    name, sep, overrides = text.partition("=")
    if not sep or not name or name in BASE_SIDES:
        raise argparse.ArgumentTypeError(f"--variant needs NAME='override ...' with a new NAME, got {text!r}")
    return name, shlex.split(overrides)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=40, help="optimizer steps per run")
    p.add_argument("--repeats", type=int, default=2, help="rounds; every side runs once per round")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-train-samples", type=int, default=None)
    p.add_argument("--max-eval-samples", type=int, default=64)
    p.add_argument("--precision", default="auto", help="dpo_lab's train.precision (auto, fp32, bf16)")
    p.add_argument("--quantization", default="none", choices=("none", "nf4"))
    p.add_argument("--model", default=None, help="model folder (default: the embedded tiny model)")
    p.add_argument(
        "--threads", type=int, default=None, help="OMP/MKL threads for every process (default: torch's)"
    )
    p.add_argument(
        "--sides", nargs="*", default=None, help="plain sides to run (trl_defaults, trl_tuned; default both)"
    )
    p.add_argument(
        "--variant",
        action="append",
        type=parse_variant,
        default=[],
        help="NAME='overrides': an extra dpo_lab side, e.g. nogroup='train.group_by_length=false'",
    )
    p.add_argument(
        "--cpu-isa",
        choices=sorted(CPU_ISA_LIMITS),
        default=None,
        help="hold torch's CPU kernels to an older instruction set for every process (ONEDNN_MAX_CPU_ISA, "
        "ATEN_CPU_CAPABILITY): avx2 measures what an AVX2-only CPU sees, where bf16 is emulated",
    )
    p.add_argument("--no-compare", action="store_true", help="skip the one-configuration comparison")
    p.add_argument("--sweep", action="store_true", help="also run the 4-job sweep benchmark")
    p.add_argument("--sweep-steps", type=int, default=16)
    p.add_argument("--sweep-train-samples", type=int, default=64)
    p.add_argument("--sweep-eval-samples", type=int, default=32)
    p.add_argument("--sweep-overrides", type=shlex.split, default=[], help="extra overrides for the multirun")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per process before it is killed")
    p.add_argument("--name", default=None, help="results file name (default: compare-<time>)")
    p.add_argument("--keep", action="store_true", help="keep the run folders (printed at the end)")
    p.add_argument("--table", type=Path, default=None, help="only print the tables of a results JSON")
    return p.parse_args(argv)


def print_tables(report: dict[str, Any]) -> None:
    """The Markdown tables of a results report (comparison and sweep)."""
    if report.get("records"):  # recomputed, so that files written before a column was added print too
        summary = summarize(report["records"])
        print(markdown_table(summary, ratios(summary)))
    if "sweep" in report:
        s = sweep_summary(report["sweep"]["records"])
        print(f"\n| sweep of {len(SWEEP_BETAS)} jobs | median wall s | median CPU s |\n|---|---|---|")
        for side, wall in s["median_wall_s"].items():
            print(f"| {side} | {_fmt(wall)} | {_fmt(s.get('median_cpu_s', {}).get(side))} |")
        print(f"| multirun speed-up | {_x(s['speedup'])} | {_x(s.get('cpu_speedup'))} |")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    limit_cpu_isa(args.cpu_isa, sys.argv[1:] if argv is None else argv)
    if args.table:
        print_tables(json.loads(args.table.read_text()))
        return
    precision = resolved_precision(args.precision)
    workload = Workload(model=args.model, steps=args.steps, batch_size=args.batch_size,
                        max_train_samples=args.max_train_samples, max_eval_samples=args.max_eval_samples,
                        precision=args.precision, quantization=args.quantization)  # fmt: skip
    sides = make_sides(precision, dict(args.variant), args.sides)
    env = bench_env(args.threads)
    work = Path(tempfile.mkdtemp(prefix="dpo_lab-bench-"))
    report: dict[str, Any] = {"environment": environment(args.threads), "resolved_precision": precision,
                              "workload": asdict(workload), "sides": [asdict(s) for s in sides]}  # fmt: skip
    records: list[dict] = []
    peaks: dict[int, float] = {}
    for rnd in range(0 if args.no_compare else args.repeats):
        peaks[rnd] = measure_round_peak(precision, args.threads)
        for name in rotation([s.name for s in sides], rnd):
            side = next(s for s in sides if s.name == name)
            rec = run_side(side, workload, work, env, args.timeout)
            rec["round"] = rnd
            records.append(rec)
            print(f"round {rnd} {name}: {_progress(rec)}", flush=True)
    add_mfu(records, peaks)
    report.update(records=records, peak_flops_per_s_by_round=peaks)
    if records:
        report["summary"] = summarize(records)
        report["ratios"] = ratios(report["summary"])
    if args.sweep:
        sweep_load = Workload(**{**asdict(workload), "steps": args.sweep_steps,
                                 "max_train_samples": args.sweep_train_samples,
                                 "max_eval_samples": args.sweep_eval_samples})  # fmt: skip
        sweep_records = []
        for rnd in range(args.repeats):
            order = rotation(["dpo_lab_multirun", "plain_processes"], rnd)
            for rec in run_sweep_round(
                sweep_load, work, env, precision, order, args.timeout, args.sweep_overrides
            ):
                rec["round"] = rnd
                sweep_records.append(rec)
                print(
                    f"sweep round {rnd} {rec['side']}: {rec['wall_s']:.1f} s {rec.get('error', '')}",
                    flush=True,
                )
        report["sweep"] = {"workload": asdict(sweep_load), "overrides": args.sweep_overrides,
                           "records": sweep_records,
                           "summary": sweep_summary(sweep_records)}  # fmt: skip
    report["environment"]["load_at_end"] = os.getloadavg()
    report["environment"]["uptime_at_end"] = _uptime()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{args.name or 'compare-' + time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    print_tables(report)
    print(f"\nresults: {path}")
    if args.keep:
        print(f"run folders: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


def _progress(rec: dict) -> str:
    if "error" in rec:
        return "FAILED: " + rec["error"].strip().splitlines()[-1] if rec["error"].strip() else "FAILED"
    return (f"{rec['tokens_per_second']:.0f} tokens/s, {_fmt(rec['seconds_per_step'])} s/step "
            f"({_fmt(rec['cpu_seconds_per_step'])} CPU), first step "
            f"{_fmt(rec['time_to_first_step_s'])} s, wall {rec['wall_s']:.1f} s, "
            f"{rec['peak_memory_mb']:.0f} MB, "
            f"eval loss {_fmt(rec['eval']['loss'], 4)}")  # fmt: skip


if __name__ == "__main__":
    main()
