"""Validation through the loader: each rule on a crafted row names file, row and field; drop drops just them.

Also the data report (hand-computed) and the tokenizer's chat template requirement.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import datasets
import pytest
from datasets import Dataset

from dpo_lab.assets import TINY_MODEL_DIR
from dpo_lab.config.choices import OnInvalid
from dpo_lab.config.schemas import DataSettings, ModelSettings
from dpo_lab.data.loading import load_preference_data
from dpo_lab.data.report import common_prefix_length, format_report, length_stats, split_report, token_lengths
from dpo_lab.errors import ConfigError, DataError
from dpo_lab.model.loading import load_tokenizer


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hf-datasets-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    return cache


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(ModelSettings(name_or_path=str(TINY_MODEL_DIR)))


def good(i: int) -> dict:
    return {"prompt": f"What is {i} + {i}?", "chosen": f"It is {2 * i}.", "rejected": f"It is {2 * i + 1}."}


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path


# line number (1-based, blank lines counted) -> a crafted bad row, with its field and reason words
BAD_LINES = {
    3: ('{"prompt": "q", "chosen": "", "rejected": "b"}', "'chosen'", "empty response"),
    5: ('{"prompt": "q", "chosen": "a"}', "'rejected'", "missing field 'rejected'"),
    6: (
        '{"prompt": "q", "chosen": "same", "rejected": "same"}',
        "'chosen'",
        "chosen is identical to rejected",
    ),
    8: ('{"prompt": "q", "chosen": "a", "rejected": 7}', "'rejected'", "expected a string, got int"),
    9: ('{"prompt": "q", "chosen": "a", "rejected": "b"', "'(line)'", "not valid JSON"),
    11: ('{"prompt": "q", "chosen": "   ", "rejected": "b"}', "'chosen'", "empty response"),
    12: (
        '{"prompt": " ", "chosen": "a", "rejected": "b"}',
        "'prompt'",
        "the last user message of the prompt is empty",
    ),
}


def crafted_file(tmp_path: Path) -> Path:
    """14 lines: good rows, the bad rows of BAD_LINES, and one blank line (line 4)."""
    lines = []
    for number in range(1, 15):
        if number == 4:
            lines.append("")
        elif number in BAD_LINES:
            lines.append(BAD_LINES[number][0])
        else:
            lines.append(json.dumps(good(number)))
    return write_lines(tmp_path / "pairs.jsonl", lines)


def cfg_for(path: Path, **kw) -> DataSettings:
    return DataSettings(path=str(path), test_split=None, test_size=kw.pop("test_size", 1), **kw)


def test_error_names_file_line_field_problem_and_count(tmp_path: Path) -> None:
    path = crafted_file(tmp_path)
    with pytest.raises(DataError) as info:
        load_preference_data(cfg_for(path), seed=0)
    message = str(info.value)
    lines = message.splitlines()
    assert lines[0] == f"{path} line 3, field 'chosen': empty response (1 other row has this problem)"
    for number, (_, field, words) in BAD_LINES.items():
        if number == 11:  # the second empty response is counted, not listed
            assert f"line {number}," not in message
            continue
        line = next(x for x in lines if f"{path} line {number}," in x)
        assert f"field {field}" in line and words in line
    assert "no other row has this problem" in message
    assert "set data.on_invalid=drop" in lines[-1]
    assert info.value.key == "data.on_invalid"


def test_drop_drops_exactly_the_bad_rows_and_counts_them(tmp_path: Path) -> None:
    path = crafted_file(tmp_path)
    data = load_preference_data(cfg_for(path, on_invalid=OnInvalid.drop, test_size=0.2), seed=0)
    kept = sorted(row["prompt"][0]["content"] for row in [*data.train, *data.eval])
    expected = sorted(good(n)["prompt"] for n in range(1, 15) if n != 4 and n not in BAD_LINES)
    assert kept == expected
    assert data.dropped == {
        "train": {"empty_response": 2, "missing_field": 1, "identical_responses": 1, "non_string_content": 1,
                  "unparseable": 1, "empty_prompt": 1}
    }  # fmt: skip
    assert data.summary()["dropped"] == data.dropped["train"]
    assert data.wandb_summary()["data/dropped/empty_response"] == 2
    assert data.wandb_summary()["data/dropped_rows"] == 7


def test_drop_is_logged_with_counts_and_first_rows(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = crafted_file(tmp_path)
    with caplog.at_level("WARNING", logger="dpo_lab.data.loading"):
        load_preference_data(cfg_for(path, on_invalid=OnInvalid.drop), seed=0)
    text = caplog.text
    assert f"dropped 7 invalid rows of {path} (empty_response=2, missing_field=1" in text
    assert f"{path} line 9, field '(line)': not valid JSON" in text


def test_role_sequence_rule_names_line_and_field(tmp_path: Path) -> None:
    def row(prompt_roles: list[str]) -> str:
        prompt = [{"role": role, "content": f"{role} text"} for role in prompt_roles]
        return json.dumps({"prompt": prompt, "chosen": "yes", "rejected": "no"})

    roles = [["user"], ["system", "user"], ["user", "assistant"], ["user", "system", "user"], ["user"]]
    path = write_lines(tmp_path / "chat.jsonl", [row(r) for r in roles])
    with pytest.raises(DataError) as info:
        load_preference_data(cfg_for(path), seed=0)
    assert str(info.value).splitlines()[0] == (
        f"{path} line 3, field 'prompt': the prompt must end with a user message before the responses; "
        "roles are user, assistant (1 other row has this problem)"
    )
    data = load_preference_data(cfg_for(path, on_invalid=OnInvalid.drop), seed=0)
    assert data.dropped == {"train": {"bad_role_sequence": 2}}
    assert [m["role"] for m in data.train[0]["prompt"]] in (["user"], ["system", "user"])


def test_rows_are_numbered_by_index_outside_json_lines(tmp_path: Path) -> None:
    rows = [good(i) for i in range(6)]
    rows[4] = {**rows[4], "chosen": ""}
    path = tmp_path / "pairs.parquet"
    Dataset.from_list(rows).to_parquet(str(path))
    with pytest.raises(DataError, match=rf"^{path} row 4, field 'chosen': empty response \(no other row"):
        load_preference_data(cfg_for(path), seed=0)


def test_each_split_reports_its_own_file(tmp_path: Path) -> None:
    write_lines(tmp_path / "d" / "train.jsonl", [json.dumps(good(i)) for i in range(4)])
    write_lines(
        tmp_path / "d" / "test.jsonl", [json.dumps(good(0)), json.dumps({**good(1), "rejected": "It is 2."})]
    )
    with pytest.raises(DataError) as info:
        load_preference_data(DataSettings(path=str(tmp_path / "d")), seed=0)
    assert str(info.value).startswith(
        f"{tmp_path / 'd' / 'test.jsonl'} line 2, field 'chosen': chosen is identical"
    )


def test_prompt_too_long_for_max_length(tmp_path: Path, tokenizer) -> None:
    rows = [good(i) for i in range(6)]
    rows[2] = {**rows[2], "prompt": "compound interest " * 40}
    path = write_lines(tmp_path / "pairs.jsonl", [json.dumps(r) for r in rows])
    long_prompt = token_lengths(tokenizer, [{"role": "user", "content": rows[2]["prompt"]}], *[
        {"role": "assistant", "content": rows[2][k]} for k in ("chosen", "rejected")
    ])[0]  # fmt: skip
    max_length = long_prompt  # the prompt alone fills it: no room for a response
    with pytest.raises(DataError) as info:
        load_preference_data(cfg_for(path), seed=0, tokenizer=tokenizer, max_length=max_length)
    assert str(info.value).startswith(
        f"{path} line 3, field 'prompt': the prompt is {long_prompt} tokens with the chat template; "
        f"dpo.max_length={max_length} leaves no room"
    )
    dropping = cfg_for(path, on_invalid=OnInvalid.drop, test_size=2)
    data = load_preference_data(dropping, seed=0, tokenizer=tokenizer, max_length=max_length)
    assert sum(data.dropped_total.values()) == 1 and data.dropped_total == {"prompt_too_long": 1}
    assert len(data.train) + len(data.eval) == 5
    assert rows[2]["prompt"] not in [r["prompt"][0]["content"] for r in [*data.train, *data.eval]]

    data = load_preference_data(cfg_for(path), seed=0, tokenizer=tokenizer, max_length=max_length + 1)
    assert data.dropped == {"train": {}}
    assert data.splits["train"]["truncated_pairs"] + data.splits["eval"]["truncated_pairs"] == 1


def test_prompt_length_is_checked_on_the_rows_used(tmp_path: Path, tokenizer) -> None:
    """Token counting runs after the held-out split and the caps: a long prompt outside them costs nothing."""
    rows = [good(i) for i in range(6)]
    rows[5] = {**rows[5], "prompt": "compound interest " * 40}
    write_lines(tmp_path / "d" / "train.jsonl", [json.dumps(r) for r in rows])
    write_lines(tmp_path / "d" / "test.jsonl", [json.dumps(good(9))])
    capped = DataSettings(path=str(tmp_path / "d"), max_train_samples=5)
    data = load_preference_data(capped, seed=0, tokenizer=tokenizer, max_length=40)
    assert len(data.train) == 5 and data.splits["train"]["prompt_tokens"]["max"] < 40
    with pytest.raises(DataError, match=r"train.jsonl line 6, field 'prompt': the prompt is \d+ tokens"):
        load_preference_data(
            DataSettings(path=str(tmp_path / "d")), seed=0, tokenizer=tokenizer, max_length=40
        )


def test_token_lengths_match_the_chat_template(tokenizer) -> None:
    prompt = [{"role": "user", "content": "What is NPV?"}]
    chosen, rejected = (
        {"role": "assistant", "content": "Net present value."},
        {"role": "assistant", "content": "No."},
    )
    p, c, r = token_lengths(tokenizer, prompt, chosen, rejected)
    full = tokenizer.apply_chat_template([*prompt, chosen], tokenize=True, return_dict=True)["input_ids"]
    gen = tokenizer.apply_chat_template(prompt, tokenize=True, return_dict=True, add_generation_prompt=True)
    assert p == len(gen["input_ids"]) and p + c == len(full)
    assert c > r > 0


def test_common_prefix_length() -> None:
    assert common_prefix_length([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix_length([], [1]) == 0
    assert common_prefix_length([1, 2], [1, 2]) == 2


def test_length_stats_hand_computed() -> None:
    # sorted 1..10: median (5+6)/2 = 5.5; p95 at rank 0.95*9 = 8.55 -> 9 + 0.55*(10-9) = 9.55
    assert length_stats([10, 1, 9, 2, 8, 3, 7, 4, 6, 5]) == pytest.approx(
        {"median": 5.5, "p95": 9.55, "max": 10.0}
    )
    assert length_stats([]) is None


def test_split_report_hand_computed() -> None:
    # pairs (prompt, chosen, rejected): 10+5/7=17, 20+3/1=23, 30+2/9=39 -> 2 exceed max_length 20
    report = split_report([10, 20, 30], [5, 3, 2], [7, 1, 9], max_length=20)
    assert report["rows"] == 3 and report["truncated_pairs"] == 2
    assert report["prompt_tokens"] == pytest.approx({"median": 20.0, "p95": 29.0, "max": 30.0})
    # responses pooled: 1 2 3 5 7 9 -> median 4, p95 at 0.95*5 = 4.75 -> 7 + 0.75*2 = 8.5
    assert report["response_tokens"] == pytest.approx({"median": 4.0, "p95": 8.5, "max": 9.0})
    assert "truncated_pairs" not in split_report([10], [5], [7], max_length=None)


def test_dropping_every_row_is_an_error(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "pairs.jsonl", ['{"prompt": "q", "chosen": "a", "rejected": "a"}'] * 3)
    with pytest.raises(DataError, match=f"no valid train rows left from {path}"):
        load_preference_data(cfg_for(path, on_invalid=OnInvalid.drop), seed=0)


def test_held_out_larger_than_the_data(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "pairs.jsonl", [json.dumps(good(i)) for i in range(3)])
    with pytest.raises(ConfigError, match="cannot hold out 5 of 3 valid rows") as info:
        load_preference_data(cfg_for(path, test_size=5), seed=0)
    assert info.value.key == "data.test_size"


def test_format_report_mentions_rows_drops_and_truncation() -> None:
    summary = {
        "source": "pairs.jsonl", "format": {"train": "hh"}, "dropped": {"empty_response": 4},
        "max_length": 64,
        "splits": {
            "train": {**split_report([10, 20], [5, 60], [7, 1], 64)},
            "eval": {**split_report([30], [2], [3], 64)},
        },
    }  # fmt: skip
    text = format_report(summary)
    assert text.splitlines()[0] == (
        "data: 2 train / 1 held-out pairs from pairs.jsonl (format hh; dropped 4 invalid: empty_response=4)"
    )
    assert "train: prompt tokens median 15 / p95 20 / max 20" in text
    assert "1 pair(s) truncated by dpo.max_length=64" in text


def test_tokenizer_without_chat_template_names_the_key(tmp_path: Path) -> None:
    bare = tmp_path / "tiny-no-template"
    shutil.copytree(TINY_MODEL_DIR, bare)
    (bare / "chat_template.jinja").unlink()
    config = json.loads((bare / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="has no chat template; set model.chat_template") as info:
        load_tokenizer(ModelSettings(name_or_path=str(bare)))
    assert info.value.key == "model.chat_template"
    fixed = load_tokenizer(
        ModelSettings(name_or_path=str(bare), chat_template=str(TINY_MODEL_DIR / "chat_template.jinja"))
    )
    assert fixed.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False).startswith(
        "<|begin_of_text|><|start_header_id|>user"
    )
