"""The model card: a Hugging Face adapter card (YAML front matter + usage + what was trained, how)."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

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
        _table(metrics) + "\n",
        "## Framework versions\n",
        _table(framework_versions()) + "\n",
    ]
    return "\n".join(sections)


def write_model_card(path: Path, text: str) -> None:
    path.write_text(text)
