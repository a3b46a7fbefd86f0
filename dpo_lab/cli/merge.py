"""``dpo-lab merge run=<run folder> [out=<folder>] [dtype=...] [overwrite=true]``

Folds the run's LoRA adapter into its base weights and saves a standalone model (weights, config,
generation config, tokenizer with its chat template, model card) that loads with AutoModelForCausalLM.
A 4-bit / 8-bit base is dequantized first, and the card says so.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from dpo_lab.cli.common import exit_with_config_error, run_entry_point, setup_logging
from dpo_lab.config.commands import MergeConfig
from dpo_lab.config.resolvers import CONF_PATH
from dpo_lab.config.validation import typed_config
from dpo_lab.errors import ConfigError
from dpo_lab.evaluation.generation import chat_inputs
from dpo_lab.model.loading import load_tokenizer, merge_adapter
from dpo_lab.runs.card import card_base, render_merged_card
from dpo_lab.runs.folder import read_run
from dpo_lab.runs.layout import CARD_FILE
from dpo_lab.runtime.hardware import torch_dtype

log = logging.getLogger("dpo_lab.cli.merge")

PROBE = [{"role": "user", "content": "What is the future value of $1,000 at 5% for 3 years?"}]


def output_folder(cfg: MergeConfig, run_path: Path, base_model: str | None = None) -> Path:
    """Where the merged model goes; ConfigError if that folder already holds files (unless overwrite), or
    if it is a folder the merge reads or the run owns (even with overwrite): the run folder itself, one of
    its own entries (adapter/, checkpoints/, .hydra/...; ``merged/`` is the default output), or the local
    base model."""
    out = Path(cfg.out).expanduser().resolve() if cfg.out else run_path / "merged"
    base = Path(base_model).expanduser().resolve() if base_model else None
    is_base = out == base and out.is_dir()
    overwritten = run_owned(out, run_path) or ("the run's base model" if is_base else None)
    if overwritten:
        raise ConfigError("out", f"{out} is {overwritten}: the merge would overwrite it; give another folder")
    if out.exists() and not out.is_dir():
        raise ConfigError("out", f"{out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not cfg.overwrite:
        raise ConfigError("out", f"{out} already holds files; pass overwrite=true or another out=<folder>")
    return out


def run_owned(out: Path, run_path: Path) -> str | None:
    """What of the run folder ``out`` would overwrite (the folder itself or one of its entries), or None."""
    if out == run_path:
        return "the run folder itself"
    if run_path not in out.parents:
        return None
    entry = out.relative_to(run_path).parts[0]
    if entry != "merged" and (run_path / entry).exists():
        return f"inside the run's own {entry}"
    return None


def merge(cfg: MergeConfig) -> Path:
    """Merge, save and describe; returns the merged model's folder."""
    run = read_run(cfg.run)
    out = output_folder(cfg, run.path, run.model.name_or_path)
    saved = dataclasses.replace(
        run.model, name_or_path=str(run.adapter_dir), gguf_file=None, revision=None, chat_template=None
    )
    tokenizer = load_tokenizer(saved)
    probe = chat_inputs(tokenizer, [PROBE], "cpu")["input_ids"]
    merged = merge_adapter(run.model, run.adapter_dir, run.precision, torch_dtype(cfg.dtype), probe)
    out.mkdir(parents=True, exist_ok=True)
    merged.model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    card = render_merged_card(
        base=card_base(run.model),
        adapter=str(run.adapter_dir),
        dtype=str(merged.dtype).removeprefix("torch."),
        dequantized_from=merged.dequantized_from,
        max_logit_diff=merged.max_logit_diff,
    )
    (out / CARD_FILE).write_text(card)
    return out


@hydra.main(version_base="1.3", config_path=CONF_PATH, config_name="merge")
def _hydra_main(cfg: DictConfig) -> None:
    setup_logging()
    try:
        out = merge(typed_config(cfg, MergeConfig))
    except ConfigError as err:
        exit_with_config_error(err)
    print(f"merged model: {out}", file=sys.stdout)


def main() -> None:
    run_entry_point(_hydra_main, MergeConfig)


if __name__ == "__main__":
    main()
