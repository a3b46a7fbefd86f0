"""Plain TRL baseline: DPO + LoRA on the finance preference data, written the way a user would.

Example::

    python benchmarks/plain_trl_dpo.py --tuned --max-steps 120 --batch-size 8 --lr 5e-4
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from datasets import load_dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer

ASSETS = Path(__file__).resolve().parents[1] / "dpo_lab" / "assets"


def to_messages(row: dict) -> dict:
    """Turn prompt/chosen/rejected strings into conversational messages."""
    return {
        "prompt": [{"role": "user", "content": row["prompt"]}],
        "chosen": [{"role": "assistant", "content": row["chosen"]}],
        "rejected": [{"role": "assistant", "content": row["rejected"]}],
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=str(ASSETS / "tiny-llama"))
    parser.add_argument("--data", default=str(ASSETS / "finance"))
    parser.add_argument("--max-steps", type=int, default=120)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--out", default="outputs/plain_trl_dpo")
    parser.add_argument("--report-to", default="none")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--tuned", action="store_true", help="fp32 and no gradient checkpointing")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    files = {"train": f"{args.data}/train.jsonl", "test": f"{args.data}/test.jsonl"}
    raw = load_dataset("json", data_files=files)
    data = raw.map(to_messages, remove_columns=raw["train"].column_names)

    extra = {"bf16": False, "gradient_checkpointing": False} if args.tuned else {}
    config = DPOConfig(
        output_dir=args.out,
        max_steps=args.max_steps,
        learning_rate=args.lr,
        beta=args.beta,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=2 * args.batch_size,
        max_length=args.max_length,
        lr_scheduler_type="linear",
        warmup_steps=0.1,
        logging_steps=10,
        save_strategy="no",
        report_to=args.report_to,
        seed=args.seed,
        use_cpu=not torch.cuda.is_available(),
        **extra,
    )
    peft_config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = DPOTrainer(
        model=model,
        args=config,
        train_dataset=data["train"],
        eval_dataset=data["test"],
        processing_class=tokenizer,
        peft_config=peft_config,
    )

    before = trainer.evaluate()
    start = time.perf_counter()
    train_output = trainer.train()
    train_seconds = time.perf_counter() - start
    after = trainer.evaluate()

    keys = ["eval_loss", "eval_rewards/accuracies", "eval_rewards/margins"]
    result = {
        "before": {k: before[k] for k in keys},
        "after": {k: after[k] for k in keys},
        "train_seconds": round(train_seconds, 1),
        "train_runtime": train_output.metrics["train_runtime"],
        "steps": trainer.state.global_step,
        "args": vars(args),
    }
    print(json.dumps(result, indent=2))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "result.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
