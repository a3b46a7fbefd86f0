"""The sweep cache hands a job the pairs (and TRL's tokenisation, and the reference log-probs) of an
earlier job only when every input that changes them is the same: the data group, the seed (it draws a
carved-off held-out split), the tokenizer and dpo.max_length. The loops go over the schemas' fields."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import datasets
import pytest

from dpo_lab.config.choices import DataFormat, OnInvalid, Quantization
from dpo_lab.config.resolvers import asset_path
from dpo_lab.config.schemas import DataColumns, DataSettings, ModelSettings, RunConfig
from dpo_lab.data.loading import load_preference_data
from dpo_lab.model.loading import load_tokenizer
from dpo_lab.reuse import cache as reuse
from dpo_lab.reuse.cache import SweepCache, ref_log_probs_key, tokenized_key
from dpo_lab.runtime.precision import DType, Precision

# another value for every field of the data group (the loader is not called with them: only keys are)
DATA_CHANGES: dict[str, Any] = {
    "path": "/other/pairs.jsonl",
    "data_dir": "harmless-base",
    "split": "validation",
    "test_split": "dev",
    "test_size": 0.3,
    "format": DataFormat.conversational,
    "columns.prompt": "question",
    "columns.chosen": "good",
    "columns.rejected": "bad",
    "on_invalid": OnInvalid.drop,
    "max_train_samples": 9,
    "max_eval_samples": 3,
    "system_prompt": "be brief",
}
# the model fields that change the tokenizer and so the token counts of the data checks
TOKENIZER_CHANGES: dict[str, Any] = {
    "name_or_path": "/other/model",
    "revision": "abc123",
    "gguf_file": "other.Q8_0.gguf",  # a GGUF file carries its own tokenizer
    "chat_template": "{{ messages }}",
    "trust_remote_code": True,
}
# model fields that change the model but not its tokenizer: the pairs are reused across them, and why
NOT_IN_DATA_KEY: dict[str, tuple[Any, str]] = {
    "quantization": (Quantization.nf4, "how the weights are stored; the tokenizer is the same"),
    "dtype": (DType.bfloat16, "the weights' dtype; the tokenizer is the same"),
    "attn_implementation": ("eager", "the attention kernel; the tokenizer is the same"),
    "license": ("mit", "the model card's licence only; the tokenizer is the same"),
}


def _leaf_fields(schema: type, prefix: str = "") -> list[str]:
    names = []
    for f in dataclasses.fields(schema):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            names += _leaf_fields(type(default), f"{prefix}{f.name}.")
        else:
            names.append(prefix + f.name)
    return names


def _data(changes: dict[str, Any] | None = None) -> DataSettings:
    cfg = DataSettings(path=asset_path("finance"), max_train_samples=8, max_eval_samples=4)
    columns = DataColumns()
    for key, value in (changes or {}).items():
        if key.startswith("columns."):
            columns = dataclasses.replace(columns, **{key.split(".", 1)[1]: value})
        else:
            cfg = dataclasses.replace(cfg, **{key: value})
    return dataclasses.replace(cfg, columns=columns)


def _model(**changes: Any) -> ModelSettings:
    return dataclasses.replace(ModelSettings(name_or_path=asset_path("tiny-llama")), **changes)


# (description, data, seed, max_length, model) of a job that must not get the first job's pairs
def _other_jobs() -> list[tuple[str, DataSettings, int, int, ModelSettings]]:
    jobs = [(f"data.{k}", _data({k: v}), 1, 128, _model()) for k, v in DATA_CHANGES.items()]
    jobs += [(f"model.{k}", _data(), 1, 128, _model(**{k: v})) for k, v in TOKENIZER_CHANGES.items()]
    return [*jobs, ("seed", _data(), 2, 128, _model()), ("dpo.max_length", _data(), 1, 64, _model())]


def _field(cfg: DataSettings, key: str) -> Any:
    value: Any = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def test_change_tables_cover_every_field() -> None:
    assert set(DATA_CHANGES) == set(_leaf_fields(DataSettings)), "give every data field another value"
    model_fields = {f.name for f in dataclasses.fields(ModelSettings)}
    assert set(TOKENIZER_CHANGES) | set(NOT_IN_DATA_KEY) == model_fields, "say where a new model field goes"
    for key, value in DATA_CHANGES.items():
        assert value != _field(_data(), key), f"data.{key}: not a change"


def test_preference_data_is_reused_only_when_every_input_is_the_same(monkeypatch) -> None:
    """The loader is replaced, not run: each job that differs in one input must load its own pairs."""

    def record(cfg: DataSettings, seed: int, tokenizer: Any, max_length: int | None = None) -> object:
        return object()  # a new object per load: a reused one is the same object

    monkeypatch.setattr(reuse, "load_preference_data", record)
    cache = SweepCache()
    for description, data, seed, max_length, model in _other_jobs():
        cache.start_job()
        first = cache.preference_data(_data(), 1, None, 128, _model())
        cache.start_job()
        other = cache.preference_data(data, seed, None, max_length, model)
        assert other is not first and not cache.last_job["data"], (
            f"a job with another {description} got stale pairs"
        )
    for name, (changed, _why) in NOT_IN_DATA_KEY.items():
        assert changed != getattr(_model(), name)
        cache.start_job()
        first = cache.preference_data(_data(), 1, None, 128, _model())
        cache.start_job()
        again = cache.preference_data(_data(), 1, None, 128, _model(**{name: changed}))
        assert again is first and cache.last_job["data"], f"model.{name} should not reload the pairs"


def test_tokenized_and_reference_keys_change_with_every_data_input() -> None:
    """TRL's tokenised datasets and the reference log-probs are keyed on the same inputs (and more)."""
    base = RunConfig(model=_model(), data=_data(), seed=1)
    base.dpo.max_length = 128
    tokenized, ref = tokenized_key(base), ref_log_probs_key(base, Precision.fp32, "cpu")
    for description, data, seed, max_length, model in _other_jobs():
        cfg = dataclasses.replace(base, data=data, seed=seed, model=model)
        cfg.dpo = dataclasses.replace(base.dpo, max_length=max_length)
        assert tokenized_key(cfg) != tokenized, f"tokenised data reused across {description}"
        assert ref_log_probs_key(cfg, Precision.fp32, "cpu") != ref, (
            f"reference log-probs reused across {description}"
        )


@pytest.fixture
def datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hf-datasets-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    return cache


def test_a_seed_sweep_with_a_carved_split_does_not_reuse_job_1s_split(datasets_cache: Path) -> None:
    """The real loader: job 2 (seed 2) gets the held-out split seed 2 carves, not job 1's."""
    data = DataSettings(path=asset_path("finance"), test_split=None, test_size=0.25, max_eval_samples=8)
    model = _model()
    tokenizer = load_tokenizer(model)
    cache = SweepCache()
    cache.start_job()
    job1 = cache.preference_data(data, 1, tokenizer, 128, model)
    cache.start_job()
    job2 = cache.preference_data(data, 2, tokenizer, 128, model)
    assert not cache.last_job["data"]
    fresh = load_preference_data(data, 2, tokenizer, max_length=128)
    assert job2.eval["prompt"] == fresh.eval["prompt"] != job1.eval["prompt"]
    cache.start_job()
    assert cache.preference_data(data, 2, tokenizer, 128, model) is job2 and cache.last_job["data"]
