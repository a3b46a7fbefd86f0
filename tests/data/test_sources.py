"""Every source ``data.path`` can name, on small files written here: files, folders, saved sets, hubs."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import datasets
import pytest
from datasets import Dataset, DatasetDict

from dpo_lab.config.choices import DataFormat
from dpo_lab.config.schemas import DataColumns, DataSettings
from dpo_lab.config.validation import to_run_config
from dpo_lab.data.loading import load_preference_data
from dpo_lab.errors import ConfigError, DataError
from tests.helpers import compose_config

ROWS = [
    {"prompt": f"question {i}?", "chosen": f"good answer {i}", "rejected": f"bad answer {i}"}
    for i in range(10)
]
HELD_OUT = [{"prompt": f"held-out {i}?", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(4)]


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep every Arrow cache of these tests under tmp_path."""
    cache = tmp_path / "hf-datasets-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    return cache


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def prompts(ds: Dataset) -> list[str]:
    return [row["prompt"][-1]["content"] for row in ds]


def single_file_cfg(path: Path, **kw) -> DataSettings:
    return DataSettings(path=str(path), test_split=None, test_size=kw.pop("test_size", 2), **kw)


def _write_parquet(path: Path, rows: list[dict]) -> Path:
    Dataset.from_list(rows).to_parquet(str(path))
    return path


def _write_csv(path: Path, rows: list[dict]) -> Path:
    Dataset.from_list(rows).to_csv(str(path), index=False)
    return path


def _write_json_array(path: Path, rows: list[dict]) -> Path:
    path.write_text(json.dumps(rows, indent=2))
    return path


@pytest.mark.parametrize(
    ("name", "writer"),
    [
        ("pairs.jsonl", write_jsonl),
        ("pairs.jsonl.gz", write_jsonl),
        ("pairs.json", write_jsonl),  # JSON lines under a .json name
        ("pairs.json", _write_json_array),
        ("pairs.parquet", _write_parquet),
        ("pairs.csv", _write_csv),
    ],
)
def test_single_file_sources(tmp_path: Path, name: str, writer) -> None:
    path = writer(tmp_path / name, ROWS)
    data = load_preference_data(single_file_cfg(path), seed=0)
    assert len(data.train) == 8 and len(data.eval) == 2
    assert sorted(prompts(data.train) + prompts(data.eval)) == sorted(r["prompt"] for r in ROWS)
    assert data.train.column_names == ["prompt", "chosen", "rejected"]
    assert data.formats == {"train": "standard"}


SHAPED_ROWS = {
    "standard": {"prompt": "q?", "chosen": "yes", "rejected": "no"},
    "conversational": {
        "prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "q?"}],
        "chosen": [{"role": "assistant", "content": "yes"}],
        "rejected": [{"role": "assistant", "content": "no"}],
    },
    "implicit_prompt": {
        "chosen": [{"role": "user", "content": "q?"}, {"role": "assistant", "content": "yes"}],
        "rejected": [{"role": "user", "content": "q?"}, {"role": "assistant", "content": "no"}],
    },
    "hh": {"chosen": "\n\nHuman: q?\n\nAssistant: yes", "rejected": "\n\nHuman: q?\n\nAssistant: no"},
}


@pytest.mark.parametrize("shape", list(SHAPED_ROWS))
@pytest.mark.parametrize("forced", [False, True])
def test_each_shape_loads_from_jsonl(tmp_path: Path, shape: str, forced: bool) -> None:
    path = write_jsonl(tmp_path / "pairs.jsonl", [SHAPED_ROWS[shape]] * 3)
    cfg = single_file_cfg(path, test_size=1, format=DataFormat(shape) if forced else DataFormat.auto)
    data = load_preference_data(cfg, seed=0)
    assert data.formats == {"train": shape}
    row = data.train[0]
    assert row["prompt"][-1] == {"role": "user", "content": "q?"}
    assert row["chosen"] == [{"role": "assistant", "content": "yes"}]
    assert row["rejected"] == [{"role": "assistant", "content": "no"}]


def test_forced_format_that_does_not_fit_fails_per_row(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "pairs.jsonl", [SHAPED_ROWS["standard"]] * 3)
    with pytest.raises(
        DataError, match=r"line 1, field 'chosen': cannot parse the HH transcript.*2 other rows"
    ):
        load_preference_data(single_file_cfg(path, test_size=1, format=DataFormat.hh), seed=0)


def test_held_out_is_carved_deterministically_with_the_seed(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "pairs.jsonl", ROWS)
    a = load_preference_data(single_file_cfg(path, test_size=0.3), seed=1)
    b = load_preference_data(single_file_cfg(path, test_size=0.3), seed=1)
    c = load_preference_data(single_file_cfg(path, test_size=0.3), seed=2)
    assert len(a.eval) == 3 and len(a.train) == 7
    assert prompts(a.eval) == prompts(b.eval) and prompts(a.train) == prompts(b.train)
    assert prompts(a.eval) != prompts(c.eval)


def test_folder_of_split_files(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "d" / "train.jsonl", ROWS)
    _write_parquet(tmp_path / "d" / "test.parquet", HELD_OUT)
    data = load_preference_data(DataSettings(path=str(tmp_path / "d")), seed=0)
    assert prompts(data.train) == [r["prompt"] for r in ROWS]
    assert prompts(data.eval) == [r["prompt"] for r in HELD_OUT]


def test_split_to_file_mapping_by_file_name(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "d" / "pairs_v2.jsonl.gz", ROWS)
    _write_csv(tmp_path / "d" / "holdout.csv", HELD_OUT)
    cfg = DataSettings(path=str(tmp_path / "d"), split="pairs_v2.jsonl.gz", test_split="holdout.csv")
    data = load_preference_data(cfg, seed=0)
    assert (len(data.train), len(data.eval)) == (10, 4)


def test_missing_split_file_names_the_key(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "d" / "train.jsonl", ROWS)
    with pytest.raises(ConfigError) as info:
        load_preference_data(DataSettings(path=str(tmp_path / "d"), test_split="validation"), seed=0)
    assert info.value.key == "data.test_split"
    assert "validation" in str(info.value)


def test_saved_dataset_dict(tmp_path: Path) -> None:
    DatasetDict({"train": Dataset.from_list(ROWS), "test": Dataset.from_list(HELD_OUT)}).save_to_disk(
        str(tmp_path / "saved")
    )
    data = load_preference_data(DataSettings(path=str(tmp_path / "saved")), seed=0)
    assert (len(data.train), len(data.eval)) == (10, 4)
    with pytest.raises(ConfigError, match="no split 'dev'.*it has: train, test") as info:
        load_preference_data(DataSettings(path=str(tmp_path / "saved"), test_split="dev"), seed=0)
    assert info.value.key == "data.test_split"


def test_saved_single_dataset_is_one_split(tmp_path: Path) -> None:
    Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "saved"))
    data = load_preference_data(single_file_cfg(tmp_path / "saved"), seed=0)
    assert (len(data.train), len(data.eval)) == (8, 2)
    with pytest.raises(ConfigError) as info:
        load_preference_data(DataSettings(path=str(tmp_path / "saved")), seed=0)
    assert info.value.key == "data.test_split"


def hub_layout(root: Path) -> Path:
    """A local copy of a hub repository laid out like Anthropic/hh-rlhf: <subset>/<split>-*.jsonl.gz."""
    hh = [
        {"chosen": f"\n\nHuman: q{i}\n\nAssistant: yes", "rejected": f"\n\nHuman: q{i}\n\nAssistant: no"}
        for i in range(6)
    ]
    for subset, n in (("harmless-base", 6), ("helpful-base", 3)):
        write_jsonl(root / subset / "train-00000-of-00001.jsonl.gz", hh[:n])
        write_jsonl(root / subset / "test-00000-of-00001.jsonl.gz", hh[:2])
    return root


def test_hub_layout_goes_through_load_dataset_with_data_dir(tmp_path: Path) -> None:
    repo = hub_layout(tmp_path / "hh-rlhf")
    data = load_preference_data(DataSettings(path=str(repo), data_dir="harmless-base"), seed=0)
    assert (len(data.train), len(data.eval)) == (6, 2)
    assert data.formats == {"train": "hh", "eval": "hh"}
    everything = load_preference_data(DataSettings(path=str(repo)), seed=0)
    assert (len(everything.train), len(everything.eval)) == (9, 4)


def test_hub_layout_unknown_split(tmp_path: Path) -> None:
    repo = hub_layout(tmp_path / "hh-rlhf")
    with pytest.raises(ConfigError, match="Unknown split") as info:
        load_preference_data(DataSettings(path=str(repo), test_split="validation"), seed=0)
    assert info.value.key == "data.test_split"


def test_unreachable_hub_id_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(
        ConfigError, match="no such file or folder, and datasets cannot load 'nobody/no-such-set'"
    ) as info:
        load_preference_data(DataSettings(path="nobody/no-such-set"), seed=0)
    assert info.value.key == "data.path"


@pytest.mark.parametrize("path", ["missing/train.jsonl", "./nowhere", "/no/such/dir"])
def test_missing_local_path(path: str) -> None:
    with pytest.raises(ConfigError, match="no such file or folder") as info:
        load_preference_data(DataSettings(path=path), seed=0)
    assert info.value.key == "data.path"


def test_single_file_with_a_test_split_is_refused(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "pairs.jsonl", ROWS)
    with pytest.raises(ConfigError, match="holds a single split; set data.test_split=null") as info:
        load_preference_data(DataSettings(path=str(path)), seed=0)
    assert info.value.key == "data.test_split"


def test_unsupported_file_type(tmp_path: Path) -> None:
    path = tmp_path / "pairs.txt"
    path.write_text("hello")
    with pytest.raises(ConfigError, match="not a supported data file") as info:
        load_preference_data(single_file_cfg(path), seed=0)
    assert info.value.key == "data.path"


def test_data_dir_on_a_file_is_refused(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "pairs.jsonl", ROWS)
    with pytest.raises(ConfigError) as info:
        load_preference_data(single_file_cfg(path, data_dir="x"), seed=0)
    assert info.value.key == "data.data_dir"


def test_corrupt_gzip_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl.gz"
    path.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=f"cannot read {path}"):
        load_preference_data(single_file_cfg(path), seed=0)


def test_missing_column_of_a_table_names_the_columns_key(tmp_path: Path) -> None:
    path = _write_parquet(tmp_path / "pairs.parquet", [{"question": r["prompt"], **r} for r in ROWS])
    cfg = single_file_cfg(path, format=DataFormat.standard, columns=DataColumns(prompt="query"))
    with pytest.raises(ConfigError, match="has no column 'query'") as info:
        load_preference_data(cfg, seed=0)
    assert info.value.key == "data.columns.prompt"


def test_undetectable_shape_lists_the_fields(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"question": "q", "good": "a", "bad": "b"}] * 4)
    with pytest.raises(DataError, match="fields: bad, good, question") as info:
        load_preference_data(single_file_cfg(path), seed=0)
    assert info.value.key == "data.format"
    cfg = single_file_cfg(path, columns=DataColumns(prompt="question", chosen="good", rejected="bad"))
    data = load_preference_data(cfg, seed=0)
    assert data.formats == {"train": "standard"}


def test_sample_caps(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "d" / "train.jsonl", ROWS)
    write_jsonl(tmp_path / "d" / "test.jsonl", HELD_OUT)
    cfg = DataSettings(path=str(tmp_path / "d"), max_train_samples=3, max_eval_samples=50)
    data = load_preference_data(cfg, seed=0)
    assert prompts(data.train) == [r["prompt"] for r in ROWS[:3]]
    assert len(data.eval) == 4


def test_unchanged_data_is_read_and_normalised_once(tmp_path: Path, datasets_cache: Path) -> None:
    """The second load finds every Arrow file of the first in the cache: same fingerprints, no new files."""
    path = write_jsonl(tmp_path / "pairs.jsonl", ROWS)
    first = load_preference_data(single_file_cfg(path), seed=0)
    files = sorted(datasets_cache.rglob("*.arrow"))
    assert files, "the JSON rows and their normalised form should be cached as Arrow files"
    second = load_preference_data(single_file_cfg(path), seed=0)
    assert second.fingerprint == first.fingerprint
    assert sorted(datasets_cache.rglob("*.arrow")) == files
    assert {f["filename"] for f in second.train.cache_files} == {
        f["filename"] for f in first.train.cache_files
    }
    # an edited file is read again
    write_jsonl(path, ROWS[:9])
    third = load_preference_data(single_file_cfg(path), seed=0)
    assert third.fingerprint != first.fingerprint and len(third.train) + len(third.eval) == 9


def test_test_split_and_test_size_together_are_refused() -> None:
    with pytest.raises(ConfigError, match="set data.test_split=null to carve test_size") as info:
        to_run_config(compose_config(["data.test_size=0.1"]))
    assert info.value.key == "data.test_size"
    assert to_run_config(compose_config(["data.test_size=0.1", "data.test_split=null"])).data.test_size == 0.1
