"""The reference sentiment experiment (conf/experiment/smollm2_sentiment.yaml, docs/sentiment.md) in
miniature, on the embedded tiny model: the committed pairs script (scripts/make_sentiment_pairs.sh) writes
train / test pairs from the shipped prompts, the experiment trains 2 steps on them and measures reward and
KL(policy || reference) on the held-out prompts: metrics.json carries ``reward_kl`` with its intervals, the
run folder ``reward_kl.jsonl``, and the closing table the reward and KL rows. Under a minute on 2 cores."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from dpo_lab.cli.pairs import file_sha256, read_prompt_rows, row_prompt
from dpo_lab.config.validation import to_run_config
from tests.helpers import ROOT, compose_config, run_cli
from tests.helpers.inference import env, read_jsonl

SCRIPT = ROOT / "scripts" / "make_sentiment_pairs.sh"
SENTIMENT = ROOT / "dpo_lab" / "assets" / "sentiment"
NUM_PROMPTS = 6  # held-out prompts of the reward / KL evaluation
SMALL = [
    "model=tiny", "logger=none", "train.max_steps=2", "train.per_device_train_batch_size=4",
    "eval.num_prompts=2", "eval.generation.max_new_tokens=8",
    f"eval.reward_kl.num_prompts={NUM_PROMPTS}", "eval.reward_kl.samples_per_prompt=2",
    "eval.reward_kl.max_new_tokens=8", "eval.reward_kl.batch_size=4",
]  # fmt: skip


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    """The pairs script on the tiny model: 32 training and 12 held-out prompts, 16 new tokens."""
    out = tmp_path_factory.mktemp("sentiment") / "pairs"
    settings = {"OUT": str(out), "MODEL": "tiny", "MAX_NEW_TOKENS": "16", "TRAIN_PROMPTS": "32",
                "TEST_PROMPTS": "12", "PYTHON": sys.executable}  # fmt: skip
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env={**env(out.parent), **settings},
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("pairs: ") == 2, proc.stdout
    return out


@pytest.mark.slow
def test_the_script_writes_train_and_test_pairs_from_the_shipped_prompts(pairs: Path) -> None:
    train, test = read_jsonl(pairs / "train.jsonl"), read_jsonl(pairs / "test.jsonl")
    assert len(train) >= 8 and len(test) >= NUM_PROMPTS  # a few prompts tie (all 4 samples alike)
    for name, rows, source, prompts in (("train", train, "prompts.jsonl", 32),
                                        ("test", test, "heldout_prompts.jsonl", 12)):  # fmt: skip
        meta = rows[0]["meta"]
        assert meta["prompts"] == source and meta["reward"] == "sentiment"
        assert meta["prompts_sha256"] == file_sha256(SENTIMENT / source)  # no machine path in the rows
        assert (meta["num_samples"], meta["max_new_tokens"], meta["seed"]) == (4, 16, 42)
        assert all(r["chosen_score"] > r["rejected_score"] for r in rows)
        summary = json.loads((pairs / f"{name}.summary.json").read_text())
        assert summary["prompts"] == prompts and summary["rows"] == len(rows)


@pytest.mark.slow
def test_the_experiment_trains_and_measures_reward_and_kl(pairs: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = run_cli(
        ["experiment=smollm2_sentiment", *SMALL, f"data.path={pairs}", f"hydra.run.dir={run}"],
        tmp_path, env=env(tmp_path), timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["global_step"] == 2
    found = metrics["reward_kl"]
    assert found["reward_name"] == "sentiment" and found["samples_per_prompt"] == 2
    for part in ("reward", "kl", "base_reward", "reward_gain"):
        interval = found[part]
        assert interval["n"] == NUM_PROMPTS and "bootstrap" in interval["method"]
        assert interval["low"] <= interval["value"] <= interval["high"], (part, interval)
        assert all(math.isfinite(interval[k]) for k in ("value", "low", "high"))
    assert -1 <= found["reward"]["value"] <= 1 and -1 <= found["base_reward"]["value"] <= 1
    records = read_jsonl(run / "reward_kl.jsonl")
    assert len(records) == NUM_PROMPTS
    assert all(len(r["completions"]) == len(r["kls"]) == len(r["base_rewards"]) == 2 for r in records)
    assert sum(r["kl"] for r in records) / NUM_PROMPTS == pytest.approx(found["kl"]["value"])
    # the closing table: base -> policy reward, 0 -> KL, with their intervals
    lines = proc.stdout.splitlines()
    reward_row = next(line for line in lines if line.startswith("reward (sentiment)"))
    kl_row = next(line for line in lines if line.startswith("KL(policy||ref)"))
    assert f"n={NUM_PROMPTS}" in reward_row and reward_row.count("[") == 2
    assert kl_row.split()[1] == "0" and f"{found['kl']['value']:.3f} [" in kl_row
    card = (run / "README.md").read_text()
    assert "| reward_kl/kl |" in card and "| reward_kl/base_reward |" in card
    assert (run / "samples_after.jsonl").is_file()  # the task evaluation: a few greedy answers, no checker
    assert metrics["task"]["checker"] is None


def test_the_experiment_reads_the_committed_pairs_folder() -> None:
    """Composes before the pairs exist (the path is built from the sentiment asset folder, not resolved as an
    asset of its own); a job then reads train.jsonl and test.jsonl from it."""
    run_cfg = to_run_config(compose_config(["experiment=smollm2_sentiment"]))
    assert Path(run_cfg.data.path) == SENTIMENT / "pairs"
    assert (run_cfg.data.split, run_cfg.data.test_split, run_cfg.data.test_size) == ("train", "test", None)
    assert run_cfg.eval.enabled and run_cfg.eval.checker.name is None
    assert run_cfg.eval.reward_kl.reward == "sentiment"


@pytest.mark.parametrize(("name", "source", "prompts"), [("train", "prompts.jsonl", 320),
                                                         ("test", "heldout_prompts.jsonl", 64)])  # fmt: skip
def test_the_committed_pairs_are_what_the_script_makes(name: str, source: str, prompts: int) -> None:
    """Once generated (scripts/make_sentiment_pairs.sh), every committed row was made with the script's
    settings from the prompt it names, and the summary counts every prompt."""
    file = SENTIMENT / "pairs" / f"{name}.jsonl"
    assert file.is_file(), f"{file.relative_to(ROOT)} is committed: scripts/make_sentiment_pairs.sh makes it"
    rows = read_jsonl(file)
    sources = read_prompt_rows(str(SENTIMENT / source))
    assert rows and len(sources) == prompts
    settings = {"reward": "sentiment", "num_samples": 4, "max_new_tokens": 48, "temperature": 1.0,
                "top_p": 1.0, "top_k": 0, "seed": 42, "batch_size": 32, "system_prompt": None,
                "adapter_run": None}  # fmt: skip
    indices = [row["meta"]["prompt_index"] for row in rows]
    assert indices == sorted(set(indices))
    for row in rows:
        meta = row["meta"]
        assert {k: meta[k] for k in settings} == settings
        assert meta["model"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf") and meta["prompts"] == source
        assert row["prompt"] == row_prompt(sources[meta["prompt_index"]].prompt, None)
        assert row["chosen_score"] > row["rejected_score"]
    summary = json.loads((SENTIMENT / "pairs" / f"{name}.summary.json").read_text())
    assert summary["prompts"] == prompts and summary["rows"] == len(rows)
    assert summary["rows"] + summary["ties_skipped"] == prompts
