"""What the per-pair held-out records cost: the held-out evaluation of the tiny model with and without the
collector that writes ``heldout_pairs_*.jsonl``, interleaved, in CPU seconds.

    python benchmarks/heldout_records.py [--pairs 200] [--repeats 4] [--out results.json]

Prints each round's CPU seconds, the medians and their ratio (with / without), and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path


def measure(pairs: int, repeats: int) -> dict:
    import torch

    from dpo_lab.config.resolvers import asset_path
    from dpo_lab.config.schemas import DataSettings, DPOSettings, LoraSettings, ModelSettings, TrainSettings
    from dpo_lab.data.loading import load_preference_data
    from dpo_lab.model.loading import build_lora_config, load_base_model, load_tokenizer
    from dpo_lab.runtime.precision import Precision
    from dpo_lab.train.heldout_pairs import HeldOutPairs
    from dpo_lab.train.trainer import build_dpo_args, build_trainer

    torch.set_num_threads(1)
    model_cfg = ModelSettings(name_or_path=asset_path("tiny-llama"))
    tokenizer = load_tokenizer(model_cfg)
    data_cfg = DataSettings(path=asset_path("finance"), max_train_samples=8, max_eval_samples=pairs)
    data = load_preference_data(data_cfg, seed=0, tokenizer=tokenizer, max_length=256)
    model = load_base_model(model_cfg, Precision.fp32, gradient_checkpointing=False)
    with tempfile.TemporaryDirectory() as out:
        train_cfg = TrainSettings(per_device_eval_batch_size=16)
        args = build_dpo_args(DPOSettings(max_length=256), train_cfg, output_dir=Path(out), seed=0,
                              precision=Precision.fp32, device="cpu")  # fmt: skip
        trainer = build_trainer(
            model, tokenizer, args, data.train, data.eval, build_lora_config(LoraSettings(r=4))
        )
        records = HeldOutPairs()
        records.bind(trainer.eval_dataset)
        trainer.add_callback(records)
        seconds: dict[str, list[float]] = {"without": [], "with": []}
        load_before = os.getloadavg()
        for _ in range(repeats):
            for mode in ("without", "with"):
                trainer.pair_observers[:] = [records.observe] if mode == "with" else []
                start = time.process_time()
                trainer.evaluate()
                seconds[mode].append(time.process_time() - start)
    medians = {mode: statistics.median(values) for mode, values in seconds.items()}
    return {
        "pairs": len(data.eval),
        "repeats": repeats,
        "cpu_seconds": seconds,
        "median_cpu_seconds": medians,
        "ratio_with_over_without": medians["with"] / medians["without"],
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--out", type=Path)
    ns = parser.parse_args()
    result = measure(ns.pairs, ns.repeats)
    print(json.dumps(result, indent=1))
    if ns.out:
        ns.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
