"""The GPU check: dpo_lab against the plain TRL script on a lent CUDA GPU, in one call of a few minutes.

Run it through ``benchmarks/gpu_check.sh`` (which installs the carried wheels first). For each model
(the embedded tiny model, and a randomly initialised Llama-shaped model of about 1B parameters built
here from a LlamaConfig, with the tiny model's tokenizer) and each weight format (bf16, nf4 QLoRA) it
runs dpo_lab and the tuned plain script (``--with-defaults``: TRL's defaults too) on the finance pairs,
and writes one JSON with tokens/s, seconds per step, MFU (FLOP model over a measured bf16 matmul peak),
peak CUDA memory, the held-out metrics and the card's name.

``--packed-sweep`` adds, for each (model, weight format), the 4-job beta sweep (``dpo.beta`` = 0.05, 0.1,
0.2, 0.5) through one ``dpo_lab.run -m`` with the basic launcher and again with ``hydra/launcher=packed``:
end-to-end wall time, the sweep process's peak memory, the jobs' tokens/s and the packed/sequential ratios.

``--dry-run`` runs the same pipeline on CPU with a small "large" model and 2 steps (a check of the
script itself, not a benchmark).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.compare import (
    SWEEP_BETAS,
    Side,
    Workload,
    add_mfu,
    bench_env,
    environment,
    markdown_table,
    measure_round_peak,
    ratios,
    run_process,
    run_side,
    summarize,
    sweep_commands,
)
from dpo_lab.config.resolvers import asset_path

# Llama-3.2-1B's shape with a 32k vocabulary: 16 layers, width 2048, GQA 32/8 heads, MLP 8192 (~1.04B params)
LARGE = {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
         "num_key_value_heads": 8, "vocab_size": 32000}  # fmt: skip
DRY_RUN_LARGE = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
                 "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 4096}  # fmt: skip


def build_random_llama(out_dir: Path, shape: dict[str, int], device: str) -> int:
    """Save a randomly initialised bf16 LlamaForCausalLM of ``shape`` with the tiny model's tokenizer.

    Returns its parameter count. The tokenizer's ids (< 2112) all fall inside the larger vocabulary.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(asset_path("tiny-llama"))
    config = LlamaConfig(
        **shape,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return n_params


def run_config(model: str | None, quantization: str, workload: Workload, sides: list[Side], work: Path,
               env: dict[str, str], peak: float, timeout_s: float) -> dict[str, Any]:  # fmt: skip
    """One (model, weight format): every side once; summary, ratios and the table."""
    load = Workload(**{**asdict(workload), "model": model, "quantization": quantization})
    records = []
    for side in sides:
        started = time.perf_counter()
        rec = run_side(side, load, work, env, timeout_s)
        rec["round"] = 0
        records.append(rec)
        status = rec.get("error", "").strip().splitlines()[-1:] or [
            f"{rec.get('tokens_per_second', 0):.0f} tok/s"
        ]
        print(f"  {side.name}: {time.perf_counter() - started:.0f} s, {status[0]}", flush=True)
    add_mfu(records, {0: peak})
    summary = summarize(records)
    return {"workload": asdict(load), "records": records, "summary": summary, "ratios": ratios(summary),
            "table": markdown_table(summary, ratios(summary))}  # fmt: skip


def packed_sweep(model: str | None, quantization: str, workload: Workload, work: Path, env: dict[str, str],
                 timeout_s: float) -> dict[str, Any]:  # fmt: skip
    """The 4-job beta sweep sequential (basic launcher, same-process reuse), then packed."""
    load = Workload(**{**asdict(workload), "model": model, "quantization": quantization})
    out: dict[str, Any] = {"workload": asdict(load)}
    for name, extra in (("sequential", []), ("packed", ["hydra/launcher=packed"])):
        folder = Path(tempfile.mkdtemp(prefix=f"sweep-{name}-", dir=work))
        multirun, _ = sweep_commands(load, folder, load.precision, extra)
        started, load_before = time.perf_counter(), os.getloadavg()
        proc = run_process(multirun, env, folder / "dpo_lab.log", timeout_s)
        jobs = [json.loads(p.read_text()) for p in sorted((folder / "dpo_lab").glob("[0-9]*/metrics.json"))]
        done = [j for j in jobs if j.get("status") == "completed"]
        out[name] = {
            "returncode": proc.returncode,
            "wall_s": time.perf_counter() - started,
            "cpu_s": proc.cpu_s,
            "max_rss_mb": proc.max_rss_mb,
            "peak_memory_mb": max((j.get("peak_memory_mb", 0.0) for j in done), default=None),
            "tokens_per_second_per_job": [j.get("tokens_per_second") for j in done],
            "pack_size": [j.get("train", {}).get("pack_size", 1) for j in done],
            "pack_step": [j.get("train", {}).get("pack_step") for j in done],  # auto: together on a GPU
            "eval_loss": [j.get("eval", {}).get("eval_loss") for j in done],
            "jobs_completed": len(done),
            "load_before": load_before,
        }
        if proc.returncode != 0 or len(done) != len(SWEEP_BETAS):
            out[name]["error"] = f"returncode {proc.returncode}, {len(done)} jobs completed; logs in {folder}"
        print(f"  {name} sweep: {out[name]['wall_s']:.0f} s, {len(done)} jobs completed", flush=True)
    seq, packed = out["sequential"], out["packed"]
    if "error" not in seq and "error" not in packed:
        out["speedup_wall"] = seq["wall_s"] / packed["wall_s"]
        if seq["peak_memory_mb"] and packed["peak_memory_mb"]:
            out["peak_memory_ratio"] = packed["peak_memory_mb"] / seq["peak_memory_mb"]
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results"), help="folder for the JSON")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-eval-samples", type=int, default=32)
    p.add_argument(
        "--models", nargs="*", default=["tiny", "llama-1b-random"], choices=["tiny", "llama-1b-random"]
    )
    p.add_argument("--quantizations", nargs="*", default=["none", "nf4"], choices=["none", "nf4"])
    p.add_argument(
        "--with-defaults", action="store_true", help="also run the plain script with TRL's defaults"
    )
    p.add_argument(
        "--packed-sweep", action="store_true", help="also the 4-job sweep, sequential against packed"
    )
    p.add_argument("--timeout", type=float, default=300, help="seconds per process before it is killed")
    p.add_argument(
        "--dry-run", action="store_true", help="CPU, a small 'large' model, 2 steps: checks the script"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    import torch

    args = parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        raise SystemExit("gpu_check: no CUDA device visible (use --dry-run to check the script on CPU)")
    steps = 2 if args.dry_run else args.steps
    workload = Workload(steps=steps, batch_size=args.batch_size, max_eval_samples=args.max_eval_samples,
                        max_train_samples=None if cuda else 32, precision="bf16")  # fmt: skip
    sides = [Side("dpo_lab", "dpo_lab"), Side("trl_tuned", "plain", tuned=True, bf16=True)]
    if args.with_defaults:
        sides.insert(1, Side("trl_defaults", "plain"))
    work = Path(tempfile.mkdtemp(prefix="dpo_lab-gpu-check-"))
    env = bench_env(threads=None)
    card = torch.cuda.get_device_name(0) if cuda else "cpu (dry run)"
    report: dict[str, Any] = {"environment": environment(None), "card": card, "steps": steps, "results": {}}
    peak = measure_round_peak("bf16", None)
    report["peak_bf16_matmul_flops_per_s"] = peak
    print(f"{report['card']}: measured bf16 matmul peak {peak / 1e12:.1f} TFLOP/s", flush=True)
    models: dict[str, str | None] = {}
    for name in args.models:
        if name == "tiny":
            models[name] = None
        else:
            folder = work / name
            started = time.perf_counter()
            n = build_random_llama(
                folder, DRY_RUN_LARGE if args.dry_run else LARGE, "cuda" if cuda else "cpu"
            )
            report[f"{name}_params"] = n
            print(
                f"built {name}: {n / 1e9:.2f}B parameters in {time.perf_counter() - started:.0f} s",
                flush=True,
            )
            models[name] = str(folder)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # a CPU dry run is no GPU result: it never takes the name the README table comes from
    path = out / ("gpu_check-dry-run.json" if args.dry_run else "gpu_check.json")
    for name, folder in models.items():
        for quant in args.quantizations:
            key = f"{name}/{'bf16' if quant == 'none' else quant}"
            print(f"{key}:", flush=True)
            report["results"][key] = run_config(folder, quant, workload, sides, work, env, peak, args.timeout)
            if args.packed_sweep:
                report.setdefault("packed_sweeps", {})[key] = packed_sweep(
                    folder, quant, workload, work, env, 4 * args.timeout
                )
            path.write_text(json.dumps(report, indent=2, default=str))  # keep what finished if time runs out
    report["environment"]["load_at_end"] = os.getloadavg()
    path.write_text(json.dumps(report, indent=2, default=str))
    for key, result in report["results"].items():
        print(f"\n### {key} ({report['card']})\n{result['table']}")
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
