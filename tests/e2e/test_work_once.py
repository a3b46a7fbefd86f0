"""Work a run used to do twice is done once: TRL trains on the token ids dpo_lab made while checking the
pairs (no second tokenisation), the task evaluation takes the held-out rows kept when the data was loaded
(no second read of the source), and the held-out "after" metrics are the Trainer's own evaluation at its
last step (no second evaluation)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import trl

from dpo_lab.config.validation import to_run_config
from dpo_lab.data import loading as data_module
from dpo_lab.data.loading import ID_COLUMNS, PAIR_COLUMNS, load_preference_data
from dpo_lab.evaluation import prompts as task_eval
from dpo_lab.model.loading import build_lora_config, load_base_model, load_tokenizer
from dpo_lab.runtime.precision import Precision
from dpo_lab.train.trainer import build_dpo_args, build_trainer
from tests.helpers import compose_config, run_cli

SMALL = ["data.max_train_samples=24", "data.max_eval_samples=8", "dpo.max_length=160"]


def _loaded(overrides: list[str] | None = None):
    cfg = to_run_config(compose_config([*SMALL, *(overrides or [])]))
    tokenizer = load_tokenizer(cfg.model)
    return cfg, tokenizer, load_preference_data(cfg.data, cfg.seed, tokenizer, cfg.dpo.max_length)


def test_trl_trains_on_the_ids_dpo_lab_made(tmp_path, monkeypatch) -> None:
    cfg, tokenizer, data = _loaded()
    assert set(ID_COLUMNS) <= set(data.train.column_names)
    args = build_dpo_args(cfg.dpo, cfg.train, output_dir=tmp_path, seed=cfg.seed, precision=Precision.fp32,
                          device="cpu")  # fmt: skip
    # what TRL's own preparation makes of the same pairs
    by_trl = trl.DPOTrainer._prepare_dataset(
        SimpleNamespace(_tokenizer=tokenizer), data.train.select_columns(list(PAIR_COLUMNS)), tokenizer, args,
        "train",
    )  # fmt: skip
    calls: list[str] = []
    original = trl.DPOTrainer._prepare_dataset

    def counted(self, dataset, processing_class, args, dataset_name):
        calls.append(dataset_name)
        return original(self, dataset, processing_class, args, dataset_name)

    monkeypatch.setattr(trl.DPOTrainer, "_prepare_dataset", counted)
    model = load_base_model(cfg.model, Precision.fp32, gradient_checkpointing=False)
    trainer = build_trainer(model, tokenizer, args, data.train, data.eval, build_lora_config(cfg.lora))
    assert calls == []  # TRL tokenised nothing
    for column in ID_COLUMNS:
        assert trainer.train_dataset[column] == by_trl[column], column
    assert len(trainer.eval_dataset) == len(data.eval)


def test_task_prompts_take_the_rows_kept_at_loading(monkeypatch) -> None:
    for split in ([], ["data.test_split=null", "data.test_size=8"]):  # a test file, or carved off train
        cfg, _, data = _loaded(split)
        again = task_eval.load_task_prompts(cfg.eval, cfg.data, data.eval)  # reads the source again

        def no_second_read(*args, **kwargs):
            raise AssertionError("the held-out split was read from its source a second time")

        monkeypatch.setattr(data_module, "read_split", no_second_read)
        monkeypatch.setattr(task_eval, "load_held_out_rows", no_second_read)
        once = task_eval.load_task_prompts(cfg.eval, cfg.data, data.eval, data.held_out_rows)
        monkeypatch.undo()
        assert once == again and len(once) == min(cfg.eval.num_prompts, len(data.eval)) == 8
        assert all(p.row["answer"] is not None for p in once)


@pytest.mark.slow
def test_held_out_after_is_the_last_steps_evaluation(tmp_path) -> None:
    """With eval_steps dividing max_steps the Trainer evaluates at the last step: that evaluation is the
    "after" of metrics.json, and no second one follows (one eval record at the last step, not two)."""
    run_dir = tmp_path / "run"
    args = [f"hydra.run.dir={run_dir}", "logger.backend=none", "eval.enabled=false", "train.max_steps=4",
            "train.eval_steps=2", "train.logging_steps=2", *SMALL]  # fmt: skip
    proc = run_cli(args, tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    history = [json.loads(line) for line in (run_dir / "log_history.jsonl").read_text().splitlines()]
    evals = [r for r in history if "eval_loss" in r]
    assert [r["step"] for r in evals] == [0, 2, 4]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["eval"]["eval_loss"] == evals[-1]["eval_loss"]
    assert metrics["eval"]["eval_rewards/accuracies"] == evals[-1]["eval_rewards/accuracies"]
    assert metrics["eval_before"]["eval_loss"] == evals[0]["eval_loss"]
