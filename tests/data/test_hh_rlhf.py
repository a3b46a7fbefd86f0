"""The real Anthropic HH-RLHF data that ships (the first 1,200 rows of the harmless-base test split): every
row parses; the preset loads it."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import datasets
import pytest

from dpo_lab.config.choices import DataFormat, OnInvalid
from dpo_lab.config.schemas import DataColumns, DataSettings
from dpo_lab.config.validation import to_run_config
from dpo_lab.data.formats import Pair, Reason, RowProblem, normalise_record
from dpo_lab.data.loading import load_preference_data
from dpo_lab.errors import DataError
from tests.helpers import HH_DATA, compose_config, require_hh_data


@pytest.fixture(autouse=True)
def _hh_file() -> None:
    require_hh_data()


HH_ROWS = 1200  # of the split's 2,312 (dpo_lab/assets/hh_rlhf/SOURCE.json)
# rows whose chosen transcript ends with an empty "Assistant:" turn: parsed, then refused as empty responses
EMPTY_CHOSEN_LINES = [87, 517, 926, 1104]


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hf-datasets-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    return cache


def hh_lines() -> list[str]:
    with gzip.open(HH_DATA, "rt", encoding="utf-8") as f:
        return f.readlines()


def test_every_row_parses_into_a_conversational_pair() -> None:
    results = {
        n: normalise_record(json.loads(line), DataFormat.hh, DataColumns())
        for n, line in enumerate(hh_lines(), 1)
    }
    assert len(results) == HH_ROWS
    problems = {n: r for n, r in results.items() if isinstance(r, RowProblem)}
    assert not [n for n, p in problems.items() if p.reason == Reason.unparseable]
    assert problems == {
        n: RowProblem(Reason.empty_response, "chosen", "empty response") for n in EMPTY_CHOSEN_LINES
    }
    pairs = [r for r in results.values() if isinstance(r, Pair)]
    for pair in pairs:
        roles = [m["role"] for m in pair.prompt]
        assert roles == ["user", "assistant"] * (len(roles) // 2) + ["user"]
        assert pair.chosen["role"] == pair.rejected["role"] == "assistant"
        assert pair.chosen["content"] and pair.rejected["content"]
        assert all(m["content"] == m["content"].strip() for m in pair.prompt)
    multi_turn = sum(len(p.prompt) > 1 for p in pairs)
    assert multi_turn == 843  # rows whose prompt holds earlier turns of the conversation


def test_first_row_in_detail() -> None:
    pair = normalise_record(json.loads(hh_lines()[0]), DataFormat.hh, DataColumns())
    assert isinstance(pair, Pair)
    assert pair.prompt[0] == {"role": "user", "content": "what are some pranks with a pen i can do?"}
    assert pair.prompt[-1] == {
        "role": "user",
        "content": "okay some of these do not have anything to do with pens",
    }
    assert len(pair.prompt) == 5
    assert pair.chosen["content"].startswith("No, sorry!  All of these involve a pen")
    assert pair.rejected["content"].startswith("There are lots of funny things you can do with pens")


def test_loader_reports_the_empty_responses_by_line_number() -> None:
    cfg = DataSettings(path=str(HH_DATA), test_split=None, test_size=0.1)
    with pytest.raises(DataError) as info:
        load_preference_data(cfg, seed=0)
    assert str(info.value).splitlines()[0] == (
        f"{HH_DATA} line 87, field 'chosen': empty response (3 other rows have this problem)"
    )


def test_hh_preset_on_the_shared_file_drops_and_counts() -> None:
    run_cfg = to_run_config(
        compose_config(["data=hh_rlhf", f"data.path={HH_DATA}", "data.test_split=null", "data.test_size=0.1"])
    )
    assert run_cfg.data.format is DataFormat.hh and run_cfg.data.on_invalid is OnInvalid.drop
    data = load_preference_data(run_cfg.data, seed=0)
    assert data.dropped == {"train": {"empty_response": 4}}
    assert len(data.train) + len(data.eval) == HH_ROWS - 4
    assert len(data.eval) == round(0.1 * (HH_ROWS - 4))


def test_hh_preset_reads_the_shipped_slice_and_carves_its_held_out_pairs() -> None:
    run_cfg = to_run_config(compose_config(["data=hh_rlhf"]))
    assert Path(run_cfg.data.path) == HH_DATA and Path(run_cfg.data.path).is_file()
    assert (run_cfg.data.test_split, run_cfg.data.test_size) == (None, 0.1)
    data = load_preference_data(run_cfg.data, seed=0)
    assert len(data.train) + len(data.eval) == HH_ROWS - 4 and len(data.eval) == round(0.1 * (HH_ROWS - 4))


def test_the_hub_is_one_override_away() -> None:
    overrides = ["data=hh_rlhf", "data.path=Anthropic/hh-rlhf", "data.data_dir=harmless-base",
                 "data.test_split=test", "data.test_size=null"]  # fmt: skip
    run_cfg = to_run_config(compose_config(overrides))
    assert (run_cfg.data.path, run_cfg.data.data_dir) == ("Anthropic/hh-rlhf", "harmless-base")
    assert (run_cfg.data.split, run_cfg.data.test_split) == ("train", "test")


def test_an_unparseable_transcript_is_reported_by_line(tmp_path: Path) -> None:
    lines = hh_lines()[:5]
    broken = json.loads(lines[3])
    broken["rejected"] = broken["rejected"].replace("\n\nHuman:", "\n\nPerson:", 1)  # no opening Human turn
    lines[3] = json.dumps(broken) + "\n"
    path = tmp_path / "hh-small.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(lines)
    with pytest.raises(DataError) as info:
        load_preference_data(DataSettings(path=str(path), test_split=None, test_size=1), seed=0)
    assert str(info.value).startswith(
        f"{path} line 4, field 'rejected': cannot parse the HH transcript: "
        "does not start with a 'Human:' turn"
    )
