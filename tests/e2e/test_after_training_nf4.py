"""A QLoRA (nf4) tiny run tracked in offline W&B: task accuracy and sample tables land in W&B, and the
4-bit base is dequantized for merging into a standalone model that loads and generates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from dpo_lab.cli.generate import load_model
from dpo_lab.config.choices import Quantization
from dpo_lab.config.commands import GenerateConfig
from dpo_lab.config.resolvers import asset_path
from dpo_lab.config.schemas import GenerationSettings
from dpo_lab.evaluation.generation import chat_inputs, generate_answers
from dpo_lab.model.loading import bnb_config
from dpo_lab.runs.folder import read_run
from dpo_lab.runtime.hardware import device_type, resolve_precision
from dpo_lab.runtime.precision import Precision
from tests.helpers import wandb_summary
from tests.helpers.inference import cli, held_out_messages, read_jsonl

NUM_PROMPTS = 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def nf4_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("nf4")
    run = tmp / "run"
    args = [
        "model.quantization=nf4", "logger=wandb", "logger.wandb.mode=offline", "train.max_steps=4",
        "data.max_train_samples=32", "data.max_eval_samples=16", f"eval.num_prompts={NUM_PROMPTS}",
        f"hydra.run.dir={run}",
    ]  # fmt: skip
    cli(args, tmp, "dpo_lab.run")
    return run


@pytest.mark.slow
def test_task_accuracy_and_sample_tables_in_wandb(nf4_run: Path) -> None:
    task = json.loads((nf4_run / "metrics.json").read_text())["task"]
    summary = wandb_summary(nf4_run)["summary"]
    assert summary["task/accuracy_before"] == pytest.approx(task["accuracy_before"])
    assert summary["task/accuracy_after"] == pytest.approx(task["accuracy_after"])
    for name in ("before", "after"):
        table = summary[f"samples/{name}"]
        assert table["_type"] == "table-file" and table["nrows"] == NUM_PROMPTS
        logged = json.loads(
            next((nf4_run / "wandb").glob(f"offline-run-*/files/{table['path']}")).read_text()
        )
        assert logged["columns"][:2] == ["prompt", "response"]
        records = read_jsonl(nf4_run / f"samples_{name}.jsonl")
        assert [row[1] for row in logged["data"]] == [r["response"] for r in records]


@pytest.mark.slow
def test_merged_nf4_run_loads_and_generates(nf4_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "merged"
    cli([f"run={nf4_run}", f"out={out}"], tmp_path, "dpo_lab.cli.merge")
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    card = (out / "README.md").read_text()
    assert (
        "**Dequantized base.**" in card
        and "dequantized to `float32`" in card
        and "| dequantized from | nf4 |" in card
    )

    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    answers = generate_answers(merged, tokenizer, held_out_messages(2), GenerationSettings(max_new_tokens=32))
    assert all(answers) and all(a.strip() for a in answers)

    # the merged weights reproduce the adapter on the 4-bit base (up to 4-bit compute rounding)
    precision = resolve_precision(Precision.auto, device_type())
    base = AutoModelForCausalLM.from_pretrained(
        asset_path("tiny-llama"),
        dtype=torch.float32,
        quantization_config=bnb_config(Quantization.nf4, precision),
    )
    qlora = PeftModel.from_pretrained(base, nf4_run / "adapter").eval()
    full = AutoModelForCausalLM.from_pretrained(asset_path("tiny-llama"), dtype=torch.float32).eval()
    batch = chat_inputs(tokenizer, held_out_messages(2), "cpu")
    with torch.no_grad():
        reference = qlora(**batch).logits.float()
        to_merged = (merged(**batch).logits - reference).abs().max().item()
        to_full_base = (full(**batch).logits - reference).abs().max().item()
    assert to_merged < 0.5 and to_merged < to_full_base / 4, (to_merged, to_full_base)


@pytest.mark.slow
def test_generate_loads_the_run_in_nf4(nf4_run: Path, tmp_path: Path) -> None:
    proc = cli(
        [f"run={nf4_run}", "prompt=What is 5% of 200?", "generation.max_new_tokens=24"],
        tmp_path,
        "dpo_lab.cli.generate",
    )
    assert proc.stdout.startswith(">>> What is 5% of 200?\n") and len(proc.stdout.splitlines()[1]) > 0
    assert "quantization=nf4" in proc.stderr


@pytest.mark.slow
def test_generate_quantization_override(nf4_run: Path) -> None:
    """quantization=none loads the same run's base unquantized (e.g. to chat on a machine with room)."""
    import bitsandbytes as bnb

    run = read_run(str(nf4_run))
    as_trained, _ = load_model(GenerateConfig(run=str(nf4_run), prompt="x"), run)
    full, _ = load_model(GenerateConfig(run=str(nf4_run), prompt="x", quantization=Quantization.none), run)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in as_trained.modules())
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in full.modules())
