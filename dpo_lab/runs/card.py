"""The model card: a Hugging Face adapter card (YAML front matter + usage + what was trained, how)."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from dpo_lab.assets import ASSETS_DIR

_PACKAGES = ("dpo_lab", "trl", "transformers", "peft", "torch", "datasets", "bitsandbytes", "accelerate")


def framework_versions() -> dict[str, str]:
    """Installed versions of the libraries that shape a run's result."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def display_name(name_or_path: str) -> str:
    """A model or dataset as a reader can use it: a hub id as it is, ``dpo_lab embedded <name>`` for what
    ships inside the package, else the file's or folder's own name; never a path of the machine that ran."""
    path = Path(name_or_path).expanduser()
    if not path.is_absolute() and not path.exists():
        return name_or_path  # a hub id such as meta-llama/Llama-3.1-8B-Instruct
    resolved = path.resolve()
    if resolved.is_relative_to(ASSETS_DIR):
        return f"dpo_lab embedded {resolved.relative_to(ASSETS_DIR).parts[0]}"
    return resolved.name


def card_hyperparameters(run_cfg: Any, precision: str) -> dict[str, Any]:
    """The card's hyperparameter table: what a reader needs to reproduce or compare the run."""
    dpo, lora, train = run_cfg.dpo, run_cfg.lora, run_cfg.train
    weights = dpo.loss_weights
    return {
        "dpo.beta": dpo.beta, "dpo.loss_type": ",".join(dpo.loss_type),
        "dpo.loss_weights": "-" if weights is None else ",".join(f"{w:g}" for w in weights),
        "dpo.label_smoothing": dpo.label_smoothing, "dpo.max_length": dpo.max_length,
        "lora.r": lora.r, "lora.alpha": lora.alpha, "lora.dropout": lora.dropout,
        "lora.target_modules": ",".join(lora.target_modules), "lora.bias": lora.bias,
        "lora.use_rslora": lora.use_rslora, "lora.use_dora": lora.use_dora,
        "model.quantization": run_cfg.model.quantization.value,
        "train.learning_rate": train.learning_rate,
        "train.per_device_train_batch_size": train.per_device_train_batch_size,
        "train.gradient_accumulation_steps": train.gradient_accumulation_steps,
        "train.max_steps": train.max_steps, "train.num_train_epochs": train.num_train_epochs,
        "precision": precision, "seed": run_cfg.seed,
    }  # fmt: skip


def _table(rows: Mapping[str, Any]) -> str:
    lines = ["| key | value |", "|---|---|"]
    lines += [f"| {key} | {_fmt(value)} |" for key, value in rows.items()]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def render_model_card(
    *,
    base_model: str,
    dataset: str,
    hyperparameters: Mapping[str, Any],
    metrics: Mapping[str, Any],
    quantization: str,
    notes: str = "",
) -> str:
    """Markdown text of the adapter's README.md."""
    front = {
        "base_model": base_model,
        "library_name": "peft",
        "pipeline_tag": "text-generation",
        "tags": ["dpo", "lora", "transformers", "trl", "dpo_lab"]
        + (["qlora"] if quantization != "none" else []),
        "datasets": [dataset],
    }
    quick_start = (
        "```python\n"
        "from transformers import pipeline\n\n"
        'generator = pipeline("text-generation", model="<path to this folder>")\n'
        'messages = [{"role": "user", "content": "What is the future value of $1,000 at 5% for 3 years?"}]\n'
        'print(generator(messages, max_new_tokens=128, return_full_text=False)[0]["generated_text"])\n'
        "```\n\n"
        "or with PEFT directly:\n\n"
        "```python\n"
        "from peft import AutoPeftModelForCausalLM\n\n"
        'model = AutoPeftModelForCausalLM.from_pretrained("<path to this folder>")\n'
        "```\n\n"
        "or with dpo_lab, from the run folder that holds this one (chat, prompt files, a merged copy):\n\n"
        "```bash\n"
        "dpo-lab generate run=<run folder> 'prompt=\"What is 5% of $1,000?\"'\n"
        "dpo-lab merge run=<run folder>\n"
        "```\n"
    )
    sections = [
        "---\n" + yaml.safe_dump(front, sort_keys=False) + "---\n",
        "# DPO LoRA adapter\n",
        f"A LoRA adapter for `{base_model}` trained with Direct Preference Optimization (TRL's DPOTrainer) "
        f"by dpo_lab. The reference model was the base model with the adapter disabled.{notes}\n",
        "## Quick start\n",
        quick_start,
        "## Training data\n",
        f"`{dataset}`\n",
        "## Hyperparameters\n",
        _table(hyperparameters) + "\n",
        "## Results\n",
        _table(metrics)
        + "\n"
        + (_TASK_NOTE if any(k.startswith("task/") for k in metrics) else "")
        + (_REWARD_KL_NOTE if any(k.startswith("reward_kl/") for k in metrics) else ""),
        "## Framework versions\n",
        _table(framework_versions()) + "\n",
    ]
    return "\n".join(sections)


_TASK_NOTE = (
    "\n`task/accuracy_before` / `task/accuracy_after`: share of held-out prompts whose generated answer the "
    "task checker scored correct, answered by the base model (adapter disabled) and with this adapter; "
    "the answers are in `samples_before.jsonl` / `samples_after.jsonl` of the run folder.\n"
)

_REWARD_KL_NOTE = (
    "\n`reward_kl/*`: plain samples (temperature 1) of held-out prompts scored by the run's reward "
    "(`eval.reward_kl.reward`), as the mean with its 95% bootstrap interval over the prompts and n prompts: "
    "`reward` of this adapter's samples, `base_reward` of the base model's (adapter disabled, the same "
    "draws), `reward_gain` their paired difference per prompt, and `kl` the Monte-Carlo estimate of "
    "KL(policy || base) per completion in nats (the base is the DPO reference); per prompt in "
    "`reward_kl.jsonl` of the run folder.\n"
)


def write_model_card(path: Path, text: str) -> None:
    path.write_text(text)


def render_merged_card(
    *,
    base_model: str,
    adapter: str,
    dtype: str,
    dequantized_from: str | None,
    max_logit_diff: float,
) -> str:
    """Markdown text of a merged model's README.md: what it is, how it loads, how it was made."""
    front = {
        "base_model": base_model,
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["dpo", "lora", "merged", "transformers", "dpo_lab"],
    }
    quick_start = (
        "```python\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        'model = AutoModelForCausalLM.from_pretrained("<path to this folder>")\n'
        'tokenizer = AutoTokenizer.from_pretrained("<path to this folder>")\n'
        'messages = [{"role": "user", "content": "What is the future value of $1,000 at 5% for 3 years?"}]\n'
        'inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", '
        "return_dict=True)\n"
        "output = model.generate(**inputs, max_new_tokens=128)\n"
        'print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))\n'
        "```\n"
    )
    if dequantized_from is None:
        how = f"The LoRA update was added to the `{dtype}` base weights (`merge_and_unload`)."
    else:
        how = (
            f"**Dequantized base.** The adapter was trained on the base stored in {dequantized_from} "
            f"(bitsandbytes). Before merging, those {dequantized_from} weights were dequantized to `{dtype}` "
            "and the LoRA update was added to them, so these weights are "
            f"dequantize({dequantized_from} base) + update: not the original full-precision checkpoint "
            "plus the update. They are stored unquantized; pass a `quantization_config` when loading to "
            "quantize them again."
        )
    made = {
        "adapter": adapter,
        "base model": base_model,
        "dtype": dtype,
        "dequantized from": dequantized_from or "- (base not quantized)",
        "max abs logit difference to the adapter model (probe prompt)": max_logit_diff,
    }
    sections = [
        "---\n" + yaml.safe_dump(front, sort_keys=False) + "---\n",
        "# DPO model (LoRA adapter merged)\n",
        f"`{base_model}` with a LoRA adapter trained by dpo_lab (Direct Preference Optimization) folded into "
        "its weights: a standalone model, no PEFT needed.\n",
        "## Quick start\n",
        quick_start,
        "## How it was made\n",
        how + "\n",
        _table(made) + "\n",
        "## Framework versions\n",
        _table(framework_versions()) + "\n",
    ]
    return "\n".join(sections)
