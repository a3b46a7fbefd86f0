"""Each shape feeds a real DPOTrainer (tiny model, two steps); the CLI reports data errors and drop counts.

The shapes run in one process through the real modules (config composition, data, model, trainer) to save
start-up time; one CLI run checks what run.py makes of the data (log, metrics.json, W&B summary).
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import datasets
import pytest
import torch
from datasets import Dataset

from dpo_lab.config.schemas import RunConfig
from dpo_lab.config.validation import to_run_config
from dpo_lab.data.loading import load_preference_data
from dpo_lab.data.report import token_lengths
from dpo_lab.model.loading import build_lora_config, load_base_model, load_tokenizer
from dpo_lab.runtime.hardware import device_type, resolve_precision
from dpo_lab.train.trainer import build_dpo_args, build_trainer
from tests.helpers import cli_env, compose_config, require_hh_data, run_cli, wandb_summary

TRAIN_OVERRIDES = [
    "logger=none", "train.max_steps=2", "data.max_train_samples=8", "data.max_eval_samples=8",
    "train.eval_before_training=false", "train.precision=fp32", "train.per_device_train_batch_size=4",
]  # fmt: skip


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hf-datasets-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    return cache


def _pairs(n: int) -> list[tuple[str, str, str]]:
    return [
        (f"What is {i} plus {i}?", f"{i} plus {i} is {2 * i}.", f"{i} plus {i} is {2 * i + 1}.")
        for i in range(n)
    ]


def write_standard(folder: Path) -> list[str]:
    rows = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in _pairs(12)]
    (folder / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return [f"data.path={folder / 'pairs.jsonl'}"]


def write_conversational(folder: Path) -> list[str]:
    rows = [
        {
            "prompt": [
                {"role": "system", "content": "You are a careful accountant."},
                {"role": "user", "content": "Let's do sums."},
                {"role": "assistant", "content": "Sure, ask away."},
                {"role": "user", "content": p},
            ],
            "chosen": [{"role": "assistant", "content": c}],
            "rejected": [{"role": "assistant", "content": r}],
        }
        for p, c, r in _pairs(12)
    ]
    Dataset.from_list(rows).to_parquet(str(folder / "pairs.parquet"))
    return [f"data.path={folder / 'pairs.parquet'}"]


def write_implicit(folder: Path) -> list[str]:
    def conversation(p: str, answer: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": p}, {"role": "assistant", "content": answer}]  # fmt: skip

    rows = [{"chosen": conversation(p, c), "rejected": conversation(p, r)} for p, c, r in _pairs(12)]
    (folder / "pairs.json").write_text(json.dumps(rows))  # a JSON array
    return [f"data.path={folder / 'pairs.json'}"]


def short_hh_rows(n: int) -> list[dict[str, str]]:
    """The ``n`` shortest valid rows of the real HH file (keeps the CPU runs short)."""
    with gzip.open(require_hh_data(), "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    valid = [r for r in rows if not r["chosen"].rstrip().endswith("Assistant:")]  # 4 have an empty response
    return sorted(valid, key=lambda r: len(r["chosen"]) + len(r["rejected"]))[:n]


def write_hh(folder: Path) -> list[str]:
    """Short rows of the real HH file as .jsonl.gz, loaded through the HH preset."""
    with gzip.open(folder / "hh.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in short_hh_rows(12))
    return ["data=hh_rlhf", f"data.path={folder / 'hh.jsonl.gz'}"]


def write_mapped_csv(folder: Path) -> list[str]:
    rows = [{"question": p, "good": c, "bad": r, "topic": "sums"} for p, c, r in _pairs(12)]
    Dataset.from_list(rows).to_csv(str(folder / "pairs.csv"), index=False)
    return [f"data.path={folder / 'pairs.csv'}", "data.columns.prompt=question", "data.columns.chosen=good",
            "data.columns.rejected=bad"]  # fmt: skip


SHAPES = {
    "standard": write_standard,
    "conversational": write_conversational,
    "implicit_prompt": write_implicit,
    "hh": write_hh,
    "standard-mapped-csv": write_mapped_csv,
}


@pytest.mark.slow
@pytest.mark.parametrize("shape", list(SHAPES))
def test_each_shape_trains_two_steps(shape: str, tmp_path: Path) -> None:
    overrides = [*TRAIN_OVERRIDES, *SHAPES[shape](tmp_path), "data.test_split=null", "data.test_size=4"]
    run_cfg: RunConfig = to_run_config(compose_config(overrides))
    tokenizer = load_tokenizer(run_cfg.model)
    data = load_preference_data(run_cfg.data, run_cfg.seed, tokenizer, max_length=run_cfg.dpo.max_length)
    assert data.formats["train"] == shape.split("-")[0]
    assert (len(data.train), len(data.eval)) == (8, 4)

    device = device_type()
    precision = resolve_precision(run_cfg.train.precision, device)
    model = load_base_model(run_cfg.model, precision, run_cfg.train.gradient_checkpointing)
    args = build_dpo_args(run_cfg.dpo, run_cfg.train, output_dir=tmp_path / "out", seed=run_cfg.seed,
                          precision=precision, device=device)  # fmt: skip
    trainer = build_trainer(model, tokenizer, args, data.train, data.eval, build_lora_config(run_cfg.lora))

    # TRL tokenised exactly the pairs dpo_lab normalised, to the lengths dpo_lab counted for its report
    tokenised = trainer.train_dataset
    assert len(tokenised) == len(data.train)
    for row, ids in zip(data.train, tokenised, strict=True):
        counted = token_lengths(tokenizer, row["prompt"], row["chosen"][0], row["rejected"][0])
        assert counted == (len(ids["prompt_ids"]), len(ids["chosen_ids"]), len(ids["rejected_ids"]))

    lora_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    result = trainer.train()
    assert trainer.state.global_step == 2
    assert math.isfinite(result.metrics["train_loss"])
    lora_after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(lora_before[n], lora_after[n].detach()) for n in lora_before), (
        "LoRA did not move"
    )


def _crafted_hh_file(folder: Path) -> Path:
    """20 short HH rows; line 3 gets an empty chosen response and line 7 a Human turn at the end."""
    rows = short_hh_rows(20)
    rows[2]["chosen"] = rows[2]["chosen"].rsplit("\n\nAssistant:", 1)[0] + "\n\nAssistant: "
    rows[6]["rejected"] += "\n\nHuman: and then?"
    path = folder / "hh.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_cli_invalid_rows_exit_2_with_file_line_and_field(tmp_path: Path) -> None:
    path = _crafted_hh_file(tmp_path)
    run_dir = tmp_path / "run"
    args = ["logger=none", "data=hh_rlhf", f"data.path={path}", "data.test_split=null", "data.test_size=4",
            "data.on_invalid=error", f"hydra.run.dir={run_dir}"]  # fmt: skip
    proc = run_cli(args, tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    err = proc.stderr.splitlines()
    first = next(i for i, line in enumerate(err) if line.startswith("dpo_lab: invalid data:"))
    assert err[first] == (
        f"dpo_lab: invalid data: {path} line 3, field 'chosen': empty response "
        "(no other row has this problem)"
    )
    assert (
        err[first + 1].strip().startswith(f"{path} line 7, field 'rejected': cannot parse the HH transcript")
    )
    assert not (run_dir / "metrics.json").exists()


@pytest.mark.slow
def test_cli_drop_reports_counts_in_log_metrics_and_wandb(tmp_path: Path) -> None:
    path = _crafted_hh_file(tmp_path)
    run_dir = tmp_path / "run"
    env = cli_env(tmp_path)
    env["HF_DATASETS_CACHE"] = str(tmp_path / "hf-datasets-cache")
    overrides = [o for o in TRAIN_OVERRIDES if o != "logger=none"]
    args = [*overrides, "logger=wandb", "logger.wandb.mode=offline", "data=hh_rlhf", f"data.path={path}",
            "data.test_split=null", "data.test_size=4", f"hydra.run.dir={run_dir}"]  # fmt: skip
    proc = run_cli(args, tmp_path, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]

    log = (run_dir / "run.log").read_text() if (run_dir / "run.log").exists() else proc.stderr
    assert f"dropped 2 invalid rows of {path} (empty_response=1, unparseable=1)" in log
    assert "data: 8 train / 4 held-out pairs" in log and "format hh; dropped 2 invalid" in log
    assert "train: prompt tokens median" in log

    data = json.loads((run_dir / "metrics.json").read_text())["data"]
    assert data["dropped"] == {"empty_response": 1, "unparseable": 1}
    assert data["format"] == {"train": "hh"}
    assert data["splits"]["train"]["rows"] == 8 and data["splits"]["eval"]["rows"] == 4
    assert (
        data["splits"]["train"]["prompt_tokens"]["max"]
        >= data["splits"]["train"]["prompt_tokens"]["median"]
        > 0
    )

    summary = wandb_summary(run_dir)["summary"]
    assert summary["data/dropped/empty_response"] == 1 and summary["data/dropped/unparseable"] == 1
    assert summary["data/dropped_rows"] == 2
    assert (summary["data/train/rows"], summary["data/eval/rows"]) == (8, 4)
    assert summary["data/train/prompt_tokens_max"] == data["splits"]["train"]["prompt_tokens"]["max"]


@pytest.mark.slow
def test_a_second_job_reuses_every_cached_step(tmp_path: Path, datasets_cache: Path) -> None:
    """Job 2 on unchanged data (fresh tokenizer and model objects) writes no Arrow file: neither dpo_lab's
    reading, normalising and token counting nor TRL's tokenisation runs again."""
    data_overrides = [*write_conversational(tmp_path), "data.test_split=null", "data.test_size=4"]
    run_cfg: RunConfig = to_run_config(compose_config([*TRAIN_OVERRIDES, *data_overrides]))
    precision = resolve_precision(run_cfg.train.precision, device_type())

    def build_job():
        tokenizer = load_tokenizer(run_cfg.model)
        data = load_preference_data(run_cfg.data, run_cfg.seed, tokenizer, max_length=run_cfg.dpo.max_length)
        model = load_base_model(run_cfg.model, precision, gradient_checkpointing=False)
        args = build_dpo_args(run_cfg.dpo, run_cfg.train, output_dir=tmp_path / "out", seed=run_cfg.seed,
                              precision=precision, device=device_type())  # fmt: skip
        return build_trainer(model, tokenizer, args, data.train, data.eval, build_lora_config(run_cfg.lora))

    first = build_job()
    files = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.arrow"))
    assert any("cache-" in p.name for p in files), "maps should write cache files next to the source"
    second = build_job()
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.arrow")) == files
    assert second.train_dataset._fingerprint == first.train_dataset._fingerprint
    assert second.eval_dataset._fingerprint == first.eval_dataset._fingerprint
