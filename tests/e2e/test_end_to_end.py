"""Tier 3: the CLI on the embedded default, end to end, asserting real learning and a complete run folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from dpo_lab.model.base_names import local_base
from tests.helpers import run_cli

ARTIFACTS = [
    "config.yaml", ".hydra/config.yaml", "metrics.json", "README.md", "run.log", "wandb_run.json",
    "heldout_pairs_before.jsonl", "heldout_pairs_after.jsonl",
    "adapter/adapter_config.json", "adapter/adapter_model.safetensors", "adapter/README.md",
    "adapter/tokenizer.json", "adapter/tokenizer_config.json",
]  # fmt: skip


@pytest.fixture(scope="module")
def default_run(tmp_path_factory) -> Path:
    """The README's main job, exactly: no overrides but the run folder."""
    tmp = tmp_path_factory.mktemp("default")
    run = tmp / "run"
    proc = run_cli([f"hydra.run.dir={run}"], tmp)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "rewards/accuracies" in proc.stdout and "run folder:" in proc.stdout
    (tmp / "console.json").write_text(json.dumps({"stdout": proc.stdout, "stderr": proc.stderr}))
    return run


@pytest.mark.slow
def test_console_shows_a_progress_bar_and_the_table_not_raw_logs(default_run: Path) -> None:
    console = json.loads((default_run.parent / "console.json").read_text())
    out, err = console["stdout"], console["stderr"]
    assert "{'loss'" not in out and "'learning_rate'" not in out, "raw Trainer log dicts on stdout"
    assert "held-out metric" in out, out[-2000:]
    assert "\nphases: set-up " in out and " s, training " in out  # the time of each phase
    assert "training: 100%" in err and "120/120" in err, err[-2000:]
    # no deprecation warnings from dpo_lab's own use of transformers / TRL arguments
    assert "`gradient_checkpointing` is deprecated" not in err


@pytest.mark.slow
def test_default_run_learns(default_run: Path) -> None:
    metrics = json.loads((default_run / "metrics.json").read_text())
    before, after = metrics["eval_before"], metrics["eval"]
    assert metrics["status"] == "completed"
    assert after["eval_rewards/accuracies"] >= 0.85
    assert after["eval_rewards/margins"] > 0.5
    assert after["eval_loss"] < before["eval_loss"] - 0.3
    assert before["eval_rewards/margins"] == pytest.approx(0.0, abs=1e-6)  # policy == reference at step 0
    assert metrics["tokens_per_second"] > 0 and metrics["peak_memory_mb"] > 0


@pytest.mark.slow
def test_held_out_numbers_carry_their_interval_and_chance_reads_as_chance(default_run: Path) -> None:
    """Per-pair records from the evaluations the Trainer ran; their means are TRL's held-out metrics; every
    held-out number gets a 95% interval and n; "before" (policy == reference, every margin 0) reads 0.5."""
    metrics = json.loads((default_run / "metrics.json").read_text())
    pairs = {
        phase: [
            json.loads(line)
            for line in (default_run / f"heldout_pairs_{phase}.jsonl").read_text().splitlines()
        ]
        for phase in ("before", "after")
    }
    n = len(pairs["after"])
    assert n == len(pairs["before"]) > 10
    assert [r["pair_id"] for r in pairs["before"]] == [r["pair_id"] for r in pairs["after"]]
    assert len({r["pair_id"] for r in pairs["after"]}) == n
    after, before = metrics["eval"], metrics["eval_before"]
    mean = lambda rows, key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
    # TRL's held-out rewards metrics are means of per-batch means (a short last batch weighs as much as a full
    # one); the per-pair records give the same numbers batched that way, and the exact means over pairs
    size = yaml.safe_load((default_run / "config.yaml").read_text())["train"]["per_device_eval_batch_size"]
    batches = [pairs["after"][i : i + size] for i in range(0, n, size)]
    by_batch = lambda key: sum(mean(b, key) for b in batches) / len(batches)  # noqa: E731
    assert by_batch("margin") == pytest.approx(after["eval_rewards/margins"], abs=1e-4)
    strict = [{"won": float(r["margin"] > 0)} for r in pairs["after"]]  # TRL counts a win only
    batches_won = [strict[i : i + size] for i in range(0, n, size)]
    assert sum(mean(b, "won") for b in batches_won) / len(batches_won) == pytest.approx(
        after["eval_rewards/accuracies"], abs=1e-6
    )
    assert {r["correct"] for r in pairs["before"]} == {0.5} and before["eval_rewards/accuracies"] == 0.0
    heldout = metrics["heldout"]
    assert heldout["before"]["reward_accuracy"] == {**heldout["before"]["reward_accuracy"], "value": 0.5,
                                                     "low": 0.5, "high": 0.5, "n": n}  # fmt: skip
    found = heldout["after"]["reward_accuracy"]
    assert (
        found["n"] == n and found["low"] <= found["value"] <= found["high"] and found["low"] < found["high"]
    )
    assert found["value"] == pytest.approx(mean(pairs["after"], "correct"))
    assert heldout["after"]["loss"]["value"] == pytest.approx(after["eval_loss"], abs=1e-4)
    assert metrics["objective"]["interval"] == found
    console = json.loads((default_run.parent / "console.json").read_text())["stdout"]
    assert f"0.500 [0.500, 0.500], n={n}" in console  # the closing table shows chance as chance


@pytest.mark.slow
def test_run_folder_is_complete(default_run: Path) -> None:
    for name in ARTIFACTS:
        assert (default_run / name).is_file(), name
    card = (default_run / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "peft" and front["pipeline_tag"] == "text-generation"
    assert {"dpo", "lora", "transformers", "trl"} <= set(front["tags"])
    # the embedded base is not on the Hub (base_model takes only a hub id): the card names it portably
    assert (
        "base_model" not in front
        and "`package:dpo_lab/assets/tiny-llama`, not on the Hugging Face Hub" in card
    )
    assert front["license"] == "apache-2.0" and front["datasets"] == ["dpo_lab embedded finance"]
    metrics = json.loads((default_run / "metrics.json").read_text())
    found = {
        r.metric_type: r.metric_value for r in ModelCard.load(default_run / "README.md").data.eval_results
    }
    after = metrics["heldout"]["after"]
    assert found == {
        "reward_accuracy": round(after["reward_accuracy"]["value"], 6),
        "reward_margin": round(after["margin"]["value"], 6),
        "dpo_loss": round(after["loss"]["value"], 6),
    }
    pairs = metrics["data"]["splits"]
    assert f"{pairs['train']['rows']} training pairs; {pairs['eval']['rows']} held-out pairs" in card
    assert "dpo.beta" in card and "eval/rewards/accuracies" in card and "| trl |" in card
    resolved = yaml.safe_load((default_run / "config.yaml").read_text())
    assert resolved["dpo"]["beta"] == 0.1 and "${" not in (default_run / "config.yaml").read_text()


@pytest.mark.slow
def test_adapter_loads_with_peft_and_changed_only_lora(default_run: Path) -> None:
    adapter = default_run / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "package:dpo_lab/assets/tiny-llama"  # no path of this machine
    base_path = local_base(adapter)
    weights = load_file(adapter / "adapter_model.safetensors")
    assert weights and all("lora_" in name for name in weights), "only LoRA tensors are saved"
    assert any(name.endswith("lora_B.weight") and w.abs().sum() > 0 for name, w in weights.items())

    base = AutoModelForCausalLM.from_pretrained(base_path)
    reference = {n: p.clone() for n, p in base.named_parameters()}
    model = PeftModel.from_pretrained(base, str(adapter))
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        tuned = model(ids).logits
        with model.disable_adapter():
            plain = model(ids).logits
    assert not torch.allclose(tuned, plain), "the adapter must change the model's outputs"
    for name, param in model.get_base_model().named_parameters():
        if "lora_" not in name:
            key = name.replace(".base_layer", "")
            assert torch.equal(param, reference[key]), name


@pytest.mark.slow
def test_wandb_run_has_config_and_metrics(default_run: Path) -> None:
    import subprocess
    import sys

    run_info = json.loads((default_run / "wandb_run.json").read_text())
    run_files = list((default_run / "wandb").glob(f"offline-run-*-{run_info['id']}"))
    assert len(run_files) == 1
    wandb_cli = Path(sys.executable).with_name("wandb")
    out = subprocess.run([str(wandb_cli), "leet", "inspect", "--summary", "--json", str(run_files[0])],
                         capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
    summary = json.loads(out.stdout)
    assert summary["state"] == "finished" and summary["exit_code"] == 0
    assert summary["config"]["dpo"]["beta"] == 0.1 and summary["config"]["lora"]["r"] == 16
    metrics = json.loads((default_run / "metrics.json").read_text())
    assert summary["summary"]["eval/rewards/accuracies"] == pytest.approx(
        metrics["eval"]["eval_rewards/accuracies"]
    )


@pytest.mark.slow
def test_qlora_nf4_trains_on_cpu(tmp_path) -> None:
    run = tmp_path / "run"
    proc = run_cli([f"hydra.run.dir={run}", "model.quantization=nf4", "logger=none", "train.max_steps=3",
                    "data.max_train_samples=24", "data.max_eval_samples=8"], tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == 3
    assert metrics["eval"]["eval_loss"] != pytest.approx(metrics["eval_before"]["eval_loss"])
    assert "qlora" in (run / "README.md").read_text()
    assert not (run / "wandb").exists(), "logger=none writes no W&B files"
