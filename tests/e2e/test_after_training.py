"""After training, on one tiny run: the task evaluation it recorded, generate (files, piped chat),
the adapter folder in plain transformers / PEFT (offline), merge, and pairwise comparison."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

from dpo_lab.config.resolvers import asset_path
from dpo_lab.config.schemas import CheckerSettings, GenerationSettings
from dpo_lab.evaluation.finance import finance_number
from dpo_lab.evaluation.generation import chat_inputs, generate_answers
from dpo_lab.model.base_names import local_base
from tests.helpers import ROOT, run_cli
from tests.helpers.inference import ROWS_BY_PROMPT, TEST_ROWS, cli, env, held_out_messages, read_jsonl

NUM_PROMPTS = 8
SMALL = [
    "logger=none", "train.max_steps=4", "data.max_train_samples=32", "data.max_eval_samples=16",
    f"eval.num_prompts={NUM_PROMPTS}",
]  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tuned_model(adapter: Path) -> PeftModel:
    """The saved adapter on its base, found from the name adapter_config.json gives it (not on the Hub)."""
    base = AutoModelForCausalLM.from_pretrained(local_base(adapter), dtype=torch.float32)
    return PeftModel.from_pretrained(base, str(adapter)).eval()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("trained")
    run = tmp / "run"
    cli([*SMALL, f"hydra.run.dir={run}"], tmp, "dpo_lab.run")
    return run


@pytest.mark.slow
def test_run_records_task_accuracy_and_samples(trained_run: Path) -> None:
    task = json.loads((trained_run / "metrics.json").read_text())["task"]
    assert task["num_prompts"] == NUM_PROMPTS and task["checker"] == "finance_number"
    for name in ("before", "after"):
        records = read_jsonl(trained_run / f"samples_{name}.jsonl")
        assert [r["prompt"] for r in records] == [row["prompt"] for row in TEST_ROWS[:NUM_PROMPTS]]
        for record in records:
            row = ROWS_BY_PROMPT[record["prompt"]]
            assert record["chosen"] == row["chosen"] and record["rejected"] == row["rejected"]
            assert record["ground_truth"] == row["answer"] and record["response"].strip()
            assert record["correct"] == finance_number(record["response"], row, CheckerSettings()).correct
            assert record["conversation"][-1] == {"role": "user", "content": record["prompt"]}
        assert task[f"accuracy_{name}"] == pytest.approx(sum(r["correct"] for r in records) / len(records))
    card = (trained_run / "README.md").read_text()
    assert f"| task/accuracy_after | {task['accuracy_after']:.4g} |" in card
    assert f"| task/accuracy_before | {task['accuracy_before']:.4g} |" in card


@pytest.mark.slow
def test_before_is_the_base_model_and_after_the_adapter(trained_run: Path) -> None:
    """Regenerate the recorded samples independently: base checkpoint alone, and base + saved adapter."""
    adapter = trained_run / "adapter"
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    cfg = GenerationSettings(max_new_tokens=128, batch_size=16)
    messages = held_out_messages(NUM_PROMPTS)
    base = AutoModelForCausalLM.from_pretrained(asset_path("tiny-llama"), dtype=torch.float32)
    tuned = tuned_model(adapter)
    before = [r["response"] for r in read_jsonl(trained_run / "samples_before.jsonl")]
    after = [r["response"] for r in read_jsonl(trained_run / "samples_after.jsonl")]
    assert generate_answers(base, tokenizer, messages, cfg) == before
    assert generate_answers(tuned, tokenizer, messages, cfg) == after
    assert before != after  # four steps already change some answers


@pytest.mark.slow
def test_sampling_is_reproducible_with_a_seed(trained_run: Path) -> None:
    adapter = trained_run / "adapter"
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    tuned = tuned_model(adapter)
    cfg = GenerationSettings(max_new_tokens=40, do_sample=True, temperature=1.0, top_p=1.0, top_k=0)
    messages = held_out_messages(3)
    first = generate_answers(tuned, tokenizer, messages, cfg, seed=3)
    assert generate_answers(tuned, tokenizer, messages, cfg, seed=3) == first
    assert generate_answers(tuned, tokenizer, messages, cfg, seed=4) != first


@pytest.mark.slow
def test_generate_from_prompt_files_is_deterministic(trained_run: Path, tmp_path: Path) -> None:
    prompts = [
        "What is 5% of $1,000?",
        "Sofia's fund returned 11.25% while inflation was 1.75%. Real return?",
    ]
    txt, jsonl = tmp_path / "prompts.txt", tmp_path / "prompts.jsonl"
    txt.write_text(prompts[0] + "\n\n" + prompts[1] + "\n")
    jsonl.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    common = [f"run={trained_run}", "generation.max_new_tokens=48"]
    first = cli(
        [*common, f"prompts_file={txt}", f"output={tmp_path / 'a.jsonl'}"], tmp_path, "dpo_lab.cli.generate"
    )
    second = cli(
        [*common, f"prompts_file={txt}", f"output={tmp_path / 'b.jsonl'}"], tmp_path, "dpo_lab.cli.generate"
    )
    cli(
        [*common, f"prompts_file={jsonl}", f"output={tmp_path / 'c.jsonl'}", "stream=false"],
        tmp_path,
        "dpo_lab.cli.generate",
    )
    a, b, c = (read_jsonl(tmp_path / f"{n}.jsonl") for n in "abc")
    assert [r["prompt"] for r in a] == prompts and all(r["response"] for r in a)
    assert a == b and first.stdout == second.stdout  # greedy + seed: the same answers, streamed the same
    assert [r["response"] for r in c] == [r["response"] for r in a]  # batched without streaming: same answers
    for record in a:
        assert f">>> {record['prompt']}\n{record['response']}" in first.stdout


@pytest.mark.slow
def test_chat_from_piped_stdin(trained_run: Path, tmp_path: Path) -> None:
    question = "What is 10% of $500?"
    stdin = f"{question}\nAnd what is 20% of it?\n/reset\n{question}\n/exit\nnever read\n"
    args = [
        f"run={trained_run}",
        "chat=true",
        "generation.max_new_tokens=48",
        f"output={tmp_path / 'chat.jsonl'}",
    ]
    proc = cli(args, tmp_path, "dpo_lab.cli.generate", stdin=stdin)
    turns = read_jsonl(tmp_path / "chat.jsonl")
    assert [t["user"] for t in turns] == [question, "And what is 20% of it?", question]
    assert [t["turn"] for t in turns] == [0, 1, 2]
    assert turns[0]["assistant"] and turns[0]["assistant"] == turns[2]["assistant"]  # /reset forgot turn 1
    for turn in turns:
        assert turn["assistant"] in proc.stdout
    assert "you>" not in proc.stdout  # no prompt marker when stdin is a pipe


OFFLINE_SCRIPT = r"""
import io, json, re, sys, contextlib
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

adapter, card_path = sys.argv[1], sys.argv[2]
blocks = re.findall(r"```python\n(.*?)```", open(card_path).read(), re.S)
printed = []
for block in blocks:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        scope = {}
        exec(block.replace("<path to this folder>", adapter), scope)
    printed.append(out.getvalue())
auto = scope["model"].eval()  # the model the card's snippet loaded
from dpo_lab.model.base_names import local_base
manual = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(local_base(adapter)), adapter).eval()
ids = torch.tensor([[0, 10, 20, 30, 40, 50]])
with torch.no_grad():
    diff = (auto(ids).logits - manual(ids).logits).abs().max().item()
    with auto.disable_adapter():
        adapter_effect = (auto(ids).logits - manual(ids).logits).abs().max().item()
print(json.dumps({"blocks": len(blocks), "printed": printed, "diff": diff, "adapter_effect": adapter_effect,
                  "pipeline_type": type(scope.get("model")).__name__}))
"""


@pytest.mark.slow
def test_adapter_folder_loads_offline_like_the_card_says(trained_run: Path, tmp_path: Path) -> None:
    """Run the model card's quick-start snippets as written (path filled in), with HF_HUB_OFFLINE=1."""
    adapter = trained_run / "adapter"
    proc = subprocess.run(
        [sys.executable, "-c", OFFLINE_SCRIPT, str(adapter), str(adapter / "README.md")],
        cwd=tmp_path, env=env(tmp_path), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert env(tmp_path)["HF_HUB_OFFLINE"] == "1"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # one block: the embedded base is not on the Hub, so the card loads it through dpo_lab's local_base
    assert result["blocks"] == 1 and result["pipeline_type"] == "PeftModelForCausalLM"
    assert result["diff"] < 1e-5 and result["adapter_effect"] > 1e-4  # the adapter is loaded and active
    # the pipeline snippet printed the adapter model's greedy answer to the card's question
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    tuned = tuned_model(adapter)
    question = re.search(r'"content": "([^"]+)"', (adapter / "README.md").read_text()).group(1)
    expected = generate_answers(
        tuned, tokenizer, [[{"role": "user", "content": question}]], GenerationSettings()
    )
    assert result["printed"][0].strip() == expected[0]


@pytest.mark.slow
def test_card_commands_run(trained_run: Path, tmp_path: Path) -> None:
    """The card's dpo_lab commands, as written, with the run folder filled in."""
    card = (trained_run / "adapter" / "README.md").read_text()
    commands = re.search(r"```bash\n(.*?)```", card, re.S).group(1).strip().splitlines()
    assert [c.split()[:2] for c in commands] == [["dpo-lab", "generate"], ["dpo-lab", "merge"]]
    script = "\n".join(c.replace("<run folder>", str(trained_run)) for c in commands)
    proc = subprocess.run(
        ["bash", "-e", "-c", script], cwd=ROOT, env={**env(tmp_path), "PATH": str(Path(sys.executable).parent)
        + ":/usr/bin:/bin"}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.startswith(">>> What is 5% of $1,000?\n")
    assert (trained_run / "merged" / "model.safetensors").is_file()


@pytest.mark.slow
def test_merged_model_matches_the_adapter_model(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "merged"
    proc = cli([f"run={trained_run}", f"out={out}"], tmp_path, "dpo_lab.cli.merge")
    assert proc.stdout.strip() == f"merged model: {out}"
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    card = (out / "README.md").read_text()
    assert (
        yaml.safe_load(card.split("---")[1])["library_name"] == "transformers"
        and "- (base not quantized)" in card
    )
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    tuned = tuned_model(trained_run / "adapter")
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template
    batch = chat_inputs(tokenizer, held_out_messages(4), "cpu")
    with torch.no_grad():
        diff = (merged(**batch).logits - tuned(**batch).logits).abs().max().item()
        with tuned.disable_adapter():
            adapter_effect = (merged(**batch).logits - tuned(**batch).logits).abs().max().item()
    assert diff < 1e-4 and adapter_effect > 1e-3
    cfg = GenerationSettings(max_new_tokens=48)
    assert generate_answers(merged, tokenizer, held_out_messages(2), cfg) == generate_answers(
        tuned, tokenizer, held_out_messages(2), cfg
    )
    again = run_cli(
        [f"run={trained_run}", f"out={out}"], tmp_path, module="dpo_lab.cli.merge", env=env(tmp_path)
    )
    assert again.returncode == 2 and "overwrite=true" in again.stderr


@pytest.mark.slow
def test_compare_with_base_by_the_checker(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp" / "vs-base.jsonl"
    proc = cli(
        [f"a={trained_run}", f"num_prompts={NUM_PROMPTS}", f"out={out}"], tmp_path, "dpo_lab.cli.compare"
    )
    records, summary = read_jsonl(out), json.loads(out.with_suffix(".json").read_text())
    assert (
        len(records) == NUM_PROMPTS
        and summary["num_prompts"] == NUM_PROMPTS
        and summary["judge"] == "checker"
    )
    for record in records:
        row = ROWS_BY_PROMPT[record["prompt"]]
        assert record["ground_truth"] == row["answer"]
        for side in "ab":
            assert record[f"score_{side}"] == float(
                finance_number(record[f"response_{side}"], row, CheckerSettings()).correct
            )
        expected = (
            "a"
            if record["score_a"] > record["score_b"]
            else "b"
            if record["score_b"] > record["score_a"]
            else "tie"
        )
        assert record["winner"] == expected
    wins = {w: sum(r["winner"] == w for r in records) for w in ("a", "b", "tie")}
    assert (summary["wins_a"], summary["wins_b"], summary["ties"]) == (wins["a"], wins["b"], wins["tie"])
    assert summary["win_rate_a"] == pytest.approx((wins["a"] + wins["tie"] / 2) / NUM_PROMPTS)
    assert summary["accuracy_a"] == pytest.approx(sum(r["score_a"] for r in records) / NUM_PROMPTS)
    # B is the base: its answers are the run's recorded "before" samples (same prompts, same batch)
    before = {r["prompt"]: r["response"] for r in read_jsonl(trained_run / "samples_before.jsonl")}
    after = {r["prompt"]: r["response"] for r in read_jsonl(trained_run / "samples_after.jsonl")}
    assert [r["response_b"] for r in records] == [before[r["prompt"]] for r in records]
    assert [r["response_a"] for r in records] == [after[r["prompt"]] for r in records]
    assert f"win rate of A {summary['win_rate_a']:.3f}" in proc.stdout


def _tiny_reward_model(folder: Path) -> None:
    """A randomly initialised one-output Llama reward model with the tiny tokenizer (its chat template)."""
    torch.manual_seed(0)
    config = LlamaConfig.from_pretrained(asset_path("tiny-llama"), num_labels=1)
    LlamaForSequenceClassification(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(asset_path("tiny-llama")).save_pretrained(folder)


@pytest.mark.slow
def test_compare_two_runs_by_a_reward_model(trained_run: Path, tmp_path: Path) -> None:
    rm = tmp_path / "rm"
    _tiny_reward_model(rm)
    out = tmp_path / "vs-self.jsonl"
    args = [
        f"a={trained_run}",
        f"b={trained_run}",
        "judge=reward_model",
        f"reward_model={rm}",
        "num_prompts=3",
    ]
    cli([*args, f"out={out}"], tmp_path, "dpo_lab.cli.compare")
    records, summary = read_jsonl(out), json.loads(out.with_suffix(".json").read_text())
    # the same run on both sides: same answers, same scores, all ties
    assert all(r["response_a"] == r["response_b"] and r["winner"] == "tie" for r in records)
    assert summary["ties"] == 3 and summary["win_rate_a"] == 0.5 and summary["judge"] == f"reward_model:{rm}"
    # each score is the reward model's output on the conversation with that answer
    model = LlamaForSequenceClassification.from_pretrained(rm).eval()
    tokenizer = AutoTokenizer.from_pretrained(rm)
    for record in records:
        messages = [
            {"role": "user", "content": record["prompt"]},
            {"role": "assistant", "content": record["response_a"]},
        ]
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            expected = model(**ids).logits[0, 0].item()
        assert record["score_a"] == pytest.approx(expected, abs=1e-4)
