"""``python -m dpo_lab.merge run=<run folder> [out=<folder>] [dtype=...] [overwrite=true]``

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
import torch
from omegaconf import DictConfig

from dpo_lab.card import render_merged_card
from dpo_lab.cli import exit_with_config_error, run_entry_point, setup_logging, typed_config
from dpo_lab.config import ConfigError, DType, MergeConfig
from dpo_lab.generation import chat_inputs
from dpo_lab.model import load_tokenizer, merge_adapter
from dpo_lab.model_source import model_name
from dpo_lab.resolvers import CONF_DIR
from dpo_lab.run_folder import read_run

log = logging.getLogger("dpo_lab.merge")

_DTYPES = {DType.float32: torch.float32, DType.bfloat16: torch.bfloat16, DType.float16: torch.float16}
PROBE = [{"role": "user", "content": "What is the future value of $1,000 at 5% for 3 years?"}]


def output_folder(cfg: MergeConfig, run_path: Path) -> Path:
    """Where the merged model goes; ConfigError if that folder already holds files (unless overwrite)."""
    out = Path(cfg.out).expanduser().resolve() if cfg.out else run_path / "merged"
    if out.exists() and not out.is_dir():
        raise ConfigError("out", f"{out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not cfg.overwrite:
        raise ConfigError("out", f"{out} already holds files; pass overwrite=true or another out=<folder>")
    return out


def merge(cfg: MergeConfig) -> Path:
    """Merge, save and describe; returns the merged model's folder."""
    run = read_run(cfg.run)
    out = output_folder(cfg, run.path)
    saved = dataclasses.replace(
        run.model, name_or_path=str(run.adapter_dir), gguf_file=None, revision=None, chat_template=None
    )
    tokenizer = load_tokenizer(saved)
    probe = chat_inputs(tokenizer, [PROBE], "cpu")["input_ids"]
    merged = merge_adapter(run.model, run.adapter_dir, run.precision, _DTYPES.get(cfg.dtype), probe)
    out.mkdir(parents=True, exist_ok=True)
    merged.model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    card = render_merged_card(
        base_model=model_name(run.model),
        adapter=str(run.adapter_dir),
        dtype=str(merged.dtype).removeprefix("torch."),
        dequantized_from=merged.dequantized_from,
        max_logit_diff=merged.max_logit_diff,
    )
    (out / "README.md").write_text(card)
    return out


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="merge")
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
