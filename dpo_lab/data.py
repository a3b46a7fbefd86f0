"""Load preference data and normalise it to conversational prompt / chosen / rejected messages."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset, load_dataset

from dpo_lab.config import ConfigError, DataConfig

log = logging.getLogger(__name__)

PAIR_COLUMNS = ("prompt", "chosen", "rejected")


@dataclass
class PreferenceData:
    """Train and held-out splits as conversational prompt / chosen / rejected, plus where they came from."""

    train: Dataset
    eval: Dataset
    source: str
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        return f"{self.train._fingerprint}:{self.eval._fingerprint}"


def _split_file(folder: Path, split: str) -> Path:
    for suffix in (".jsonl", ".json", ".jsonl.gz"):
        candidate = folder / f"{split}{suffix}"
        if candidate.is_file():
            return candidate
    raise ConfigError("data.split", f"no file for split {split!r} in {folder}")


def _read_split(cfg: DataConfig, split: str) -> Dataset:
    path = Path(cfg.path).expanduser()
    if not path.exists():
        raise ConfigError("data.path", f"no such file or folder: {cfg.path}")
    file = _split_file(path, split) if path.is_dir() else path
    return load_dataset("json", data_files=str(file), split="train")


def _to_messages(row: dict[str, Any], cfg: DataConfig) -> dict[str, list[dict[str, str]]]:
    cols = cfg.columns
    prompt = [{"role": "user", "content": row[cols.prompt]}]
    if cfg.system_prompt:
        prompt.insert(0, {"role": "system", "content": cfg.system_prompt})
    return {
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": row[cols.chosen]}],
        "rejected": [{"role": "assistant", "content": row[cols.rejected]}],
    }


def _normalise(ds: Dataset, cfg: DataConfig) -> Dataset:
    return ds.map(_to_messages, fn_kwargs={"cfg": cfg}, remove_columns=ds.column_names)


def load_preference_data(cfg: DataConfig, seed: int) -> PreferenceData:
    """Read the train and held-out splits named by the ``data`` group."""
    train = _read_split(cfg, cfg.split)
    if cfg.test_split is not None:
        held_out = _read_split(cfg, cfg.test_split)
    else:
        size = cfg.test_size if cfg.test_size < 1 else int(cfg.test_size)
        parts = train.train_test_split(test_size=size, seed=seed)
        train, held_out = parts["train"], parts["test"]
    if cfg.max_train_samples is not None:
        train = train.select(range(min(cfg.max_train_samples, len(train))))
    if cfg.max_eval_samples is not None:
        held_out = held_out.select(range(min(cfg.max_eval_samples, len(held_out))))
    return PreferenceData(train=_normalise(train, cfg), eval=_normalise(held_out, cfg), source=cfg.path)


def load_held_out_rows(cfg: DataConfig, seed: int) -> Dataset:
    """The held-out split as stored, every source column kept (e.g. the ground truth a task checker
    needs), chosen exactly as :func:`load_preference_data` chooses it."""
    if cfg.test_split is not None:
        return _read_split(cfg, cfg.test_split)
    size = cfg.test_size if cfg.test_size < 1 else int(cfg.test_size)
    return _read_split(cfg, cfg.split).train_test_split(test_size=size, seed=seed)["test"]
