"""Plain TRL baseline: DPO + LoRA on the finance preference data, written the way a user would.

Without --tuned it keeps TRL's defaults (bf16 autocast and gradient checkpointing, wherever it runs);
--tuned turns checkpointing off and trains in fp32, or in bf16 with --bf16. The StepTimes callback and
the token/memory fields of result.json are benchmark instruments (benchmarks/compare.py), measured the
way dpo_lab measures itself. Example::

    python benchmarks/plain_trl_dpo.py --tuned --max-steps 120 --batch-size 8 --lr 5e-4
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch
from datasets import load_dataset
from peft import LoraConfig, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, TrainerCallback
from trl import DPOConfig, DPOTrainer

ASSETS = Path(__file__).resolve().parents[1] / "dpo_lab" / "assets"


def to_messages(row: dict) -> dict:
    """Turn prompt/chosen/rejected strings into conversational messages."""
    return {
        "prompt": [{"role": "user", "content": row["prompt"]}],
        "chosen": [{"role": "assistant", "content": row["chosen"]}],
        "rejected": [{"role": "assistant", "content": row["rejected"]}],
    }


class StepTimes(TrainerCallback):
    """Wall-clock and CPU time at the end of the first and the latest optimizer step."""

    first = last = first_cpu = last_cpu = None
    steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.first, self.first_cpu = self.first or time.time(), self.first_cpu or time.process_time()
        self.last, self.last_cpu, self.steps = time.time(), time.process_time(), self.steps + 1


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
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--max-train-samples", type=int, default=None)
    parser.add_argument("--max-eval-samples", type=int, default=None)
    parser.add_argument("--load-in-4bit", action="store_true", help="QLoRA: nf4 base weights")
    parser.add_argument("--out", default="outputs/plain_trl_dpo")
    parser.add_argument("--report-to", default="none")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--tuned", action="store_true", help="no gradient checkpointing; fp32 unless --bf16")
    parser.add_argument("--bf16", action="store_true", help="with --tuned: bf16 autocast")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    cuda = torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    quant = None
    if args.load_in_4bit:
        quant = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(
        args.model, dtype=torch.bfloat16 if cuda else torch.float32, quantization_config=quant,
        device_map={"": 0} if cuda and quant else None,
    )  # fmt: skip
    if quant:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=not args.tuned)
    files = {"train": f"{args.data}/train.jsonl", "test": f"{args.data}/test.jsonl"}
    raw = load_dataset("json", data_files=files)
    for split, limit in (("train", args.max_train_samples), ("test", args.max_eval_samples)):
        if limit:
            raw[split] = raw[split].select(range(min(limit, len(raw[split]))))
    data = raw.map(to_messages, remove_columns=raw["train"].column_names)

    extra = {"bf16": args.bf16, "gradient_checkpointing": False} if args.tuned else {}
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
        use_cpu=not cuda,
        include_num_input_tokens_seen="non_padding",
        **extra,
    )
    peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                             task_type="CAUSAL_LM")  # fmt: skip
    times = StepTimes()
    trainer = DPOTrainer(
        model=model,
        args=config,
        train_dataset=data["train"],
        eval_dataset=data["test"],
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[times],
    )

    before = trainer.evaluate()
    train_output = trainer.train()
    after = trainer.evaluate()

    runtime = train_output.metrics["train_runtime"]
    tokens = trainer.state.num_input_tokens_seen
    peak = (
        torch.cuda.max_memory_allocated()
        if cuda
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    result = {
        "eval_before": before,
        "eval": after,
        "train_runtime": runtime,
        "train_tokens": tokens,
        "tokens_per_second": tokens / runtime,
        "steps": trainer.state.global_step,
        "first_step_at": times.first,
        "seconds_per_step": (times.last - times.first) / (times.steps - 1) if times.steps > 1 else None,
        "cpu_seconds_per_step": (times.last_cpu - times.first_cpu) / (times.steps - 1)
        if times.steps > 1
        else None,
        "peak_memory_mb": peak / 2**20,
        "bf16": config.bf16,
        "gradient_checkpointing": config.gradient_checkpointing,
        "args": vars(args),
    }
    print(json.dumps({k: result[k] for k in ("train_runtime", "tokens_per_second", "steps")}, indent=2))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "result.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
