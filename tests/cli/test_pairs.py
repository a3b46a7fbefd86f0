"""``dpo-lab pairs``: preference pairs sampled from the embedded tiny model and ranked by a reward; rows and
summary written, deterministic for a seed, resumable after a kill mid-write, ties skipped and counted, a
reward of your own by module:function, the rows train, and bad command lines refused in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from dpo_lab.cli import pairs
from dpo_lab.config.commands import PairsConfig
from dpo_lab.config.resolvers import asset_path, register_resolvers
from dpo_lab.config.schemas import DataSettings
from dpo_lab.config.store import register_configs
from dpo_lab.config.validation import typed_config
from dpo_lab.data.loading import load_preference_data
from dpo_lab.errors import ConfigError
from dpo_lab.evaluation.rewards import sentiment
from tests.helpers import CONF, ROOT, run_cli
from tests.helpers.inference import env

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = [
    "Write a short review of the movie The Long Night.",
    "The film Harbour Lights was",
    "What did you think of the movie Paper Moon?",
    "Tell me about the film Quiet Streets.",
    "Describe the movie Red Canyon in two sentences.",
    "My opinion of the film Glass Garden is that",
]
FAST = ["model=tiny", "max_new_tokens=8", "num_samples=3", "batch_size=2"]


def length_reward(prompt: str, completion: str, row=None) -> float:
    """A reward of a user's own: the completion's length in characters (rarely ties)."""
    return float(len(completion))


def distinct_reward(prompt: str, completion: str, row=None) -> float:
    """Ties only for completions of the same length and the same characters (almost never)."""
    return len(completion) + sum(map(ord, completion)) / 1e6


def constant_reward(prompt: str, completion: str, row=None) -> float:
    """Every completion alike: every prompt ties."""
    return 0.5


def row_reward(prompt: str, completion: str, row=None) -> float:
    """Reads the prompts file's row: its weight times the completion's length."""
    assert row is not None
    return row["weight"] * len(completion)


@pytest.fixture
def prompts_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n\n")
    return path


def config(overrides: list[str]) -> PairsConfig:
    register_configs()
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return typed_config(compose(config_name="pairs", overrides=overrides), PairsConfig)


def make(prompts: Path, out: Path, *extra: str) -> dict:
    return pairs.make_pairs(config([f"prompts={prompts}", f"out={out}", *FAST, *extra]))


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ----------------------------------------------------------------------------------------------------------
# pure parts


def test_preference_row_is_best_against_worst() -> None:
    row = pairs.preference_row("p", ["a", "bb", "c"], [0.1, 0.9, -0.3], {"seed": 1, "prompt_index": 4})
    assert row == {
        "prompt": "p", "chosen": "bb", "rejected": "c", "chosen_score": 0.9, "rejected_score": -0.3,
        "scores": [0.1, 0.9, -0.3], "meta": {"seed": 1, "prompt_index": 4},
    }  # fmt: skip
    # the first of equal scores wins either way
    assert pairs.preference_row("p", ["a", "b", "c", "d"], [1, 0, 1, 0], {})["chosen"] == "a"
    assert pairs.preference_row("p", ["a", "b", "c", "d"], [1, 0, 1, 0], {})["rejected"] == "b"


def test_preference_row_skips_ties_and_never_pairs_an_empty_completion() -> None:
    assert pairs.preference_row("p", ["a", "b"], [0.3, 0.3], {}) is None
    # "" scores lowest but is no training response: rejected is the worst non-empty one
    row = pairs.preference_row("p", ["a", "", "c"], [0.9, -1.0, 0.2], {})
    assert (row["chosen"], row["rejected"], row["scores"]) == ("a", "c", [0.9, -1.0, 0.2])
    assert pairs.preference_row("p", ["a", " "], [0.9, -1.0], {}) is None  # one non-empty sample: no pair


def test_row_prompt_is_standard_unless_messages_or_a_system_prompt() -> None:
    assert pairs.row_prompt("hi", None) == "hi"
    assert pairs.row_prompt("hi", "Be kind.") == [
        {"role": "system", "content": "Be kind."}, {"role": "user", "content": "hi"}
    ]  # fmt: skip
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}]
    assert pairs.row_prompt(messages, "Be kind.") == messages  # it has its own system message
    assert pairs.prompt_text(messages) == "hi"


def test_read_prompt_rows_keeps_jsonl_rows_for_the_reward(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    messages = [{"role": "user", "content": "two"}]
    path.write_text(
        json.dumps({"prompt": "one", "answer": 1}) + "\n\n" + json.dumps({"prompt": messages}) + "\n"
    )
    rows = pairs.read_prompt_rows(str(path))
    assert [r.prompt for r in rows] == ["one", messages]
    assert rows[0].row == {"prompt": "one", "answer": 1}
    path.write_text(json.dumps({"text": "one"}) + "\n")
    with pytest.raises(ConfigError) as info:
        pairs.read_prompt_rows(str(path))
    assert info.value.key == "prompt_field" and f"{path}:1" in str(info.value)
    with pytest.raises(ConfigError, match="no such file") as info:
        pairs.read_prompt_rows(str(tmp_path / "none.txt"))
    assert info.value.key == "prompts"


def test_read_existing_drops_a_half_written_last_line(tmp_path: Path) -> None:
    out = tmp_path / "pairs.jsonl"
    whole = json.dumps({"prompt": "p", "meta": {"prompt_index": 0}}) + "\n"
    out.write_text(whole + '{"prompt": "q", "me')
    existing = pairs.read_existing(out)
    assert [r["prompt"] for r in existing.rows] == ["p"] and existing.dropped_partial_line
    assert existing.next_prompt == 1
    assert out.read_text() == whole  # truncated on disk, so the next append starts a fresh line
    out.write_text(whole + "not json\n")
    with pytest.raises(ConfigError, match=r"pairs.jsonl:2 is not a row written by dpo-lab pairs") as info:
        pairs.read_existing(out)
    assert info.value.key == "out"
    assert pairs.read_existing(tmp_path / "absent.jsonl").next_prompt == 0


def test_summarize_counts_ties_and_the_scores_of_the_rows() -> None:
    meta = {"seed": 1}
    rows = [
        {
            "scores": [1.0, 0.0],
            "chosen_score": 1.0,
            "rejected_score": 0.0,
            "meta": {**meta, "prompt_index": 0},
        },
        {
            "scores": [3.0, 0.0],
            "chosen_score": 3.0,
            "rejected_score": 0.0,
            "meta": {**meta, "prompt_index": 2},
        },
    ]
    summary = pairs.summarize(rows, 4, {"seconds": 2.0, "tokens_per_second": 10.0}, resumed_at=1)
    assert (summary["rows"], summary["ties_skipped"], summary["resumed_at_prompt"]) == (2, 2, 1)
    # scores 1, 0, 3, 0: mean 1.0, sample SD sqrt(((0)^2 + 1 + 4 + 1) / 3) = sqrt(2)
    assert summary["scores"] == {"mean": 1.0, "sd": pytest.approx(2**0.5), "n": 4}
    assert (summary["chosen_score_mean"], summary["rejected_score_mean"]) == (2.0, 0.0)
    assert summary["meta"] == meta
    assert pairs.summary_path(Path("/x/pairs.jsonl")) == Path("/x/pairs.summary.json")


def test_the_shipped_sentiment_prompts_are_what_the_script_builds(tmp_path: Path) -> None:
    script = ROOT / "scripts" / "build_sentiment_prompts.py"
    subprocess.run([sys.executable, str(script), "--out", str(tmp_path)], check=True, capture_output=True)
    shipped = Path(asset_path("sentiment"))
    for name in ("prompts.jsonl", "heldout_prompts.jsonl"):
        assert (tmp_path / name).read_text() == (shipped / name).read_text(), f"rebuild {name} with {script}"
    train = pairs.read_prompt_rows(str(shipped / "prompts.jsonl"))
    heldout = pairs.read_prompt_rows(str(shipped / "heldout_prompts.jsonl"))
    assert (len(train), len(heldout)) == (320, 64)
    assert all(isinstance(p.prompt, list) and p.prompt[-1]["role"] == "user" for p in train + heldout)
    assert not {p.row["title"] for p in train} & {p.row["title"] for p in heldout}
    assert {p.row["kind"] for p in train} == {"continue", "review", "describe"}


# ----------------------------------------------------------------------------------------------------------
# on the tiny model


def test_rows_and_summary_are_written_and_load_as_training_data(prompts_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "pairs.jsonl"
    summary = make(prompts_file, out, "reward=sentiment")
    rows = read_rows(out)
    assert summary == json.loads(pairs.summary_path(out).read_text())
    assert summary["rows"] == len(rows) > 0 and summary["rows"] + summary["ties_skipped"] == len(PROMPTS)
    assert summary["new_tokens"] > 0 and summary["tokens_per_second"] > 0
    indices = [r["meta"]["prompt_index"] for r in rows]
    assert indices == sorted(set(indices))
    for row in rows:
        assert row["prompt"] == PROMPTS[row["meta"]["prompt_index"]]
        assert len(row["scores"]) == 3 and row["chosen_score"] > row["rejected_score"]
        assert row["chosen_score"] == max(row["scores"]) and row["rejected_score"] == min(row["scores"])
        assert sentiment("", row["chosen"]) == row["chosen_score"]
        assert {k: row["meta"][k] for k in ("temperature", "top_p", "top_k", "num_samples", "seed")} == {
            "temperature": 1.0, "top_p": 1.0, "top_k": 0, "num_samples": 3, "seed": 42
        }  # fmt: skip
        assert row["meta"]["model"].endswith("tiny-llama") and row["meta"]["adapter_run"] is None
    data = load_preference_data(DataSettings(path=str(out), test_size=1), seed=0)
    assert data.formats == {"train": "standard"} and len(data.train) + len(data.eval) == len(rows)


def test_same_seed_same_rows_other_seed_other_rows(prompts_file: Path, tmp_path: Path) -> None:
    reward = f"reward={__name__}:length_reward"
    first = make(prompts_file, tmp_path / "a.jsonl", reward)
    make(prompts_file, tmp_path / "b.jsonl", reward)
    make(prompts_file, tmp_path / "c.jsonl", reward, "seed=7")
    a, b, c = (read_rows(tmp_path / f"{name}.jsonl") for name in "abc")
    assert a == b and first["rows"] == len(a)
    assert [r["chosen"] for r in a] != [r["chosen"] for r in c]
    for row in a:  # the user's reward by module:function scored them
        assert row["chosen_score"] == len(row["chosen"]) and row["meta"]["reward"].endswith(":length_reward")


def test_ties_are_skipped_and_counted(prompts_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "pairs.jsonl"
    summary = make(prompts_file, out, f"reward={__name__}:constant_reward")
    assert out.read_text() == "" and summary["rows"] == 0 and summary["ties_skipped"] == len(PROMPTS)
    assert pairs.summary_line(summary, out).startswith(f"pairs: 0 rows in {out} (6 of 6 prompts skipped")


def test_the_reward_reads_the_jsonl_row_and_a_system_prompt_makes_messages(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p, "weight": -1}) + "\n" for p in PROMPTS[:2]))
    out = tmp_path / "pairs.jsonl"
    make(prompts, out, f"reward={__name__}:row_reward", "system_prompt=You review films.")
    for row in read_rows(out):
        assert row["chosen_score"] == -len(row["chosen"])
        assert row["prompt"][0] == {"role": "system", "content": "You review films."}
        assert row["meta"]["system_prompt"] == "You review films."


def test_a_killed_run_resumes_to_the_rows_of_an_uninterrupted_one(prompts_file: Path, tmp_path: Path) -> None:
    args = [f"prompts={prompts_file}", f"reward={__name__}:distinct_reward", *FAST]
    whole = tmp_path / "whole.jsonl"
    pairs.make_pairs(config([*args, f"out={whole}"]))
    expected = read_rows(whole)
    first_batch = [r for r in expected if r["meta"]["prompt_index"] < 2]
    assert len(first_batch) == 2 and len(expected) > 3, expected  # distinct_reward leaves no tie here

    out = tmp_path / "killed.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.helpers.inject_pairs_kill", *args, f"out={out}"],
        cwd=ROOT, env={**env(tmp_path), "DPO_LAB_TEST_PAIRS_KILL": "1"}, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert not out.read_bytes().endswith(b"\n")  # killed half-way through batch 2's first row
    assert whole.read_text().splitlines()[2].startswith(out.read_text().split("\n")[-1])
    assert pairs.read_existing(out).rows == first_batch  # the half line is dropped

    summary = pairs.make_pairs(config([*args, f"out={out}"]))
    assert read_rows(out) == expected  # every prompt once, the same samples
    assert summary["resumed_at_prompt"] == 2 and summary["rows"] == len(expected)
    again = pairs.make_pairs(config([*args, f"out={out}"]))  # a finished file: nothing more to do
    assert read_rows(out) == expected and again["new_tokens"] == 0


def test_a_rerun_with_other_settings_is_refused(prompts_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "pairs.jsonl"
    make(prompts_file, out, f"reward={__name__}:length_reward", "max_prompts=2")
    before = out.read_text()
    with pytest.raises(ConfigError, match=r"other settings \(temperature: 1.0 there, 0.7 now\)") as info:
        make(prompts_file, out, f"reward={__name__}:length_reward", "temperature=0.7")
    assert info.value.key == "out" and out.read_text() == before
    # more prompts with the same settings: the file grows
    make(prompts_file, out, f"reward={__name__}:length_reward", "max_prompts=3")
    assert out.read_text().startswith(before) and len(read_rows(out)) == 3


@pytest.mark.slow
def test_the_pairs_train_and_a_run_samples_the_next_round(prompts_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "pairs.jsonl"
    written = make(prompts_file, out, f"reward={__name__}:length_reward")["rows"]
    run = tmp_path / "run"
    proc = run_cli(
        [f"data.path={out}", "data.test_size=2", "train.max_steps=2", "logger=none", "eval=none",
         "train.per_device_train_batch_size=2", "train.eval_before_training=false", f"hydra.run.dir={run}"],
        tmp_path, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["data"]["splits"]["train"]["rows"] == written - 2
    # round two: the run's adapter samples (its base and tokenizer with it)
    second = tmp_path / "round2.jsonl"
    summary = pairs.make_pairs(
        config([f"prompts={prompts_file}", f"out={second}", f"run={run}", "max_new_tokens=8", "num_samples=3",
                f"reward={__name__}:length_reward"])
    )  # fmt: skip
    rows = read_rows(second)
    assert summary["rows"] == len(rows) > 0
    assert rows[0]["meta"]["adapter_run"] == str(run.resolve()) and rows[0]["meta"]["model"].endswith(
        "tiny-llama"
    )


# ----------------------------------------------------------------------------------------------------------
# the command line


def call_main(args: list[str], capsys, monkeypatch) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["dpo-lab pairs", *args])
    capsys.readouterr()
    code: int | str | None = 0
    try:
        pairs.main()
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return (code if isinstance(code, int) else 1), captured.out, captured.err


BAD = [
    ("neither run nor model", [], "run: give run=<run folder> or model=<model option>, not neither"),
    ("both run and model", ["model=tiny", "run=/r"], "run: give run=<run folder> or model=<model option>"),
    ("one sample", ["model=tiny", "num_samples=1"], "num_samples: must be an integer >= 2"),
    ("unknown model option", ["model=tinyy"], "model: no option 'tinyy'; the model options are:"),
    ("a model key without an option", ["model.dtype=bfloat16"], "model.dtype: model.* keys go into a model"),
    ("a bad model value", ["model=tiny", "model.quantization=nf5"], "model.quantization: must be one of"),
    ("misspelt key", ["model=tiny", "num_sample=3"], "num_sample: no such key (did you mean num_samples?)"),
    ("wrong type", ["model=tiny", "temperature=hot"], "temperature: must be a number"),
    ("not jsonl", ["model=tiny", "out={tmp}/pairs.json"], "out: must name a .jsonl file"),
    ("unknown reward", ["model=tiny", "reward=happiness"], "reward: unknown reward 'happiness'; registered:"),
    ("no prompts file", ["model=tiny", "prompts={tmp}/none.txt"], "prompts: no such file"),
    ("finance without answers", ["model=tiny", "reward=finance"], "reward: finance needs each prompt's"),
]


@pytest.mark.parametrize(("args", "says"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_a_bad_command_line_is_one_line_exit_2(
    args, says, prompts_file, tmp_path, capsys, monkeypatch
) -> None:
    base = [f"prompts={prompts_file}", f"out={tmp_path}/pairs.jsonl", "reward=sentiment"]
    given = {a.split("=", 1)[0] for a in args}
    args = [a for a in base if a.split("=", 1)[0] not in given] + [a.format(tmp=tmp_path) for a in args]
    code, out, err = call_main(args, capsys, monkeypatch)
    lines = err.splitlines()
    assert code == 2 and out == "", err
    assert len(lines) == 1 and lines[0].startswith(f"dpo_lab: invalid config: {says}"), err
    assert not (tmp_path / "pairs.jsonl").exists()


def test_the_command_prints_one_summary_line(prompts_file, tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "pairs.jsonl"
    args = [
        f"prompts={prompts_file}",
        f"out={out}",
        f"reward={__name__}:length_reward",
        *FAST,
        "max_prompts=2",
    ]
    code, stdout, err = call_main(args, capsys, monkeypatch)
    assert code == 0, err
    assert stdout.splitlines() == [pairs.summary_line(json.loads(pairs.summary_path(out).read_text()), out)]
    assert "sampling" in err and "Loading weights" not in err
