"""A base checkpoint saved already in 4-bit (config.json carries quantization_config, like
unsloth/meta-llama-3.1-8b-instruct-bnb-4bit), here the tiny model saved in nf4: the quantization is read
from the checkpoint, a contradicting model.quantization is refused with one line, and train, resume, merge
and generate work on it."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from dpo_lab.config.choices import Quantization
from dpo_lab.config.resolvers import asset_path
from dpo_lab.config.schemas import ModelSettings
from dpo_lab.model.loading import bnb_config
from dpo_lab.model.source import check_source, stored_quantization
from dpo_lab.runtime.precision import Precision
from tests.helpers import run_cli
from tests.helpers.inference import cli, env
from tests.helpers.long_runs import TRAIN, start_cli, wait_for_checkpoint


@pytest.fixture(scope="module")
def nf4_checkpoint(tmp_path_factory) -> Path:
    """The embedded tiny model quantized by bitsandbytes and saved in nf4, with its tokenizer."""
    out = tmp_path_factory.mktemp("stored") / "tiny-nf4"
    model = AutoModelForCausalLM.from_pretrained(
        asset_path("tiny-llama"),
        dtype=torch.float32,
        quantization_config=bnb_config(Quantization.nf4, Precision.fp32),
    )
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(asset_path("tiny-llama")).save_pretrained(str(out))
    stored = json.loads((out / "config.json").read_text())["quantization_config"]
    assert stored["bnb_4bit_quant_type"] == "nf4"
    return out


def test_stored_quantization_is_read_from_the_checkpoint(nf4_checkpoint: Path) -> None:
    assert stored_quantization(str(nf4_checkpoint)) is Quantization.nf4
    assert stored_quantization(asset_path("tiny-llama")) is Quantization.none
    check_source(ModelSettings(name_or_path=str(nf4_checkpoint), quantization=Quantization.nf4))


def test_contradicting_quantization_is_refused_with_one_line(nf4_checkpoint: Path, tmp_path: Path) -> None:
    args = [f"model.name_or_path={nf4_checkpoint}", "model.quantization=none", "logger=none",
            f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    proc = run_cli(args, tmp_path, env=env(tmp_path))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [
        f"dpo_lab: invalid config: model.quantization: {nf4_checkpoint} is stored in nf4 "
        "(quantization_config in its config.json), not none; set model.quantization=nf4"
    ]


@pytest.mark.slow
def test_train_resume_merge_generate_on_a_base_stored_in_nf4(nf4_checkpoint: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = [*TRAIN, f"model.name_or_path={nf4_checkpoint}", "model.quantization=nf4", "logger=none",
            f"hydra.run.dir={run_dir}"]  # fmt: skip
    proc = start_cli(args, tmp_path, env=env(tmp_path))
    wait_for_checkpoint(run_dir, 4, proc, timeout=600)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (run_dir / "adapter").exists(), "the run finished before it was killed"
    cli(args, tmp_path, "dpo_lab.run")  # resumes
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["resumed_from_step"] == 4
    card = (run_dir / "README.md").read_text()
    assert "qlora" in yaml.safe_load(card.split("---")[1])["tags"] and "| model.quantization | nf4 |" in card

    out = tmp_path / "merged"
    cli([f"run={run_dir}", f"out={out}"], tmp_path, "dpo_lab.cli.merge")
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert "| dequantized from | nf4 |" in (out / "README.md").read_text()
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert not any("4bit" in type(m).__name__ for m in merged.modules())

    answer = cli([f"run={run_dir}", "prompt=What is 5% of 200?", "generation.max_new_tokens=16"], tmp_path,
                 "dpo_lab.cli.generate")  # fmt: skip
    assert answer.stdout.startswith(">>> What is 5% of 200?\n") and answer.stdout.splitlines()[1].strip()
    assert "quantization=nf4" in answer.stderr
