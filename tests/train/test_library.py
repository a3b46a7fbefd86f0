"""dpo_lab.train.library against the installed trl / transformers / peft: every private name it reaches
still exists with the signature it assumes and behaves as it assumes; and no other module of dpo_lab
reaches one of them (the range in pyproject.toml is the range this file passes on)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import torch
import transformers
import trl

from dpo_lab.train import library

ROOT = Path(__file__).resolve().parents[2]
OWNERS = {"trl.DPOTrainer": trl.DPOTrainer, "transformers.Trainer": transformers.Trainer,
          "transformers.PreTrainedModel": transformers.PreTrainedModel}  # fmt: skip

# the parameters each private method is called with (after self), as the library calls it
SIGNATURES = {
    "_prepare_dataset": ["dataset", "processing_class", "args", "dataset_name"],
    "_precompute_ref_logps": ["dataset", "name", "batch_size"],
    "_save": ["output_dir", "state_dict"],
    "_get_train_sampler": ["train_dataset"],
    "_get_eval_sampler": ["eval_dataset"],
    "_prepare_inputs": ["inputs"],
    "_track_num_input_tokens": ["inputs"],
}
# private attributes (set in __init__ or train()), not methods
ATTRIBUTES = {"_metrics", "_total_train_tokens", "_initial_num_input_tokens_seen", "_tr_loss",
              "_is_accelerate_prepared"}  # fmt: skip


def test_every_private_name_is_a_method_with_the_assumed_signature_or_a_known_attribute() -> None:
    assert {name for _, name in library.PRIVATE_NAMES} == set(SIGNATURES) | ATTRIBUTES
    for owner, name in library.PRIVATE_NAMES:
        if name in ATTRIBUTES:
            continue
        method = getattr(OWNERS[owner], name, None)
        assert callable(method), f"{owner}.{name} is gone"
        params = [p for p in inspect.signature(method).parameters if p != "self"]
        assert params[: len(SIGNATURES[name])] == SIGNATURES[name], f"{owner}.{name}{params}"


def test_the_attributes_the_library_reads_are_where_it_reads_them(tiny_trainer) -> None:
    trainer = tiny_trainer
    assert set(library.pending_metrics(trainer, "train")) == set()  # nothing collected yet
    assert library.logged_train_tokens(trainer) == 0
    batch = next(iter(trainer.get_train_dataloader()))
    inputs = library.prepare_inputs(trainer, batch)
    assert all(v.device.type == trainer.args.device.type for v in inputs.values() if torch.is_tensor(v))
    trainer.model.train()
    trainer.compute_loss(trainer.model, inputs)
    metrics = library.pending_metrics(trainer, "train")
    assert {"rewards/chosen", "rewards/accuracies", "logps/chosen", "num_tokens"} <= set(metrics)
    tokens = library.logged_train_tokens(trainer)
    assert tokens == int(inputs["attention_mask"].sum())  # TRL counts the batch's non-padding tokens
    library.set_logged_train_tokens(trainer, 7)
    assert trainer._total_train_tokens == 7
    library.set_pending_metrics(trainer, "train", {"loss": [1.0]})
    assert dict(trainer._metrics["train"]) == {"loss": [1.0]}
    before = trainer.state.num_input_tokens_seen
    library.count_input_tokens(trainer, inputs)
    assert trainer.state.num_input_tokens_seen > before
    library.start_input_token_count(trainer, 5)
    assert trainer._initial_num_input_tokens_seen == 5
    library.mark_accelerate_prepared(trainer.model)
    assert trainer.model._is_accelerate_prepared is True
    assert trainer.unlogged_loss() is None  # outside train()


def test_train_keeps_its_running_loss_where_unlogged_loss_reads_it(tiny_trainer) -> None:
    seen = []

    class Peek(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            seen.append(tiny_trainer.unlogged_loss())

    tiny_trainer.add_callback(Peek())
    tiny_trainer.args.max_steps = 1
    tiny_trainer.train()
    assert seen and seen[0] is not None and seen[0] > 0


def test_no_other_module_reaches_a_private_name_of_the_libraries() -> None:
    names = {name for _, name in library.PRIVATE_NAMES}
    pattern = re.compile(r"\.(" + "|".join(sorted(names)) + r")\b")
    offenders = []
    for path in sorted((ROOT / "dpo_lab").rglob("*.py")):
        if path.name == "library.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


@pytest.fixture
def tiny_trainer(tmp_path):
    from dpo_lab.config.resolvers import asset_path
    from dpo_lab.config.schemas import DataSettings, DPOSettings, LoraSettings, ModelSettings, TrainSettings
    from dpo_lab.data.loading import load_preference_data
    from dpo_lab.model.loading import build_lora_config, load_base_model, load_tokenizer
    from dpo_lab.runtime.precision import Precision
    from dpo_lab.train.trainer import build_dpo_args, build_trainer

    model_cfg = ModelSettings(name_or_path=asset_path("tiny-llama"))
    data = load_preference_data(
        DataSettings(path=asset_path("finance"), max_train_samples=8, max_eval_samples=4), seed=0
    )
    tokenizer = load_tokenizer(model_cfg)
    model = load_base_model(model_cfg, Precision.fp32, gradient_checkpointing=False)
    args = build_dpo_args(
        DPOSettings(max_length=128), TrainSettings(per_device_train_batch_size=2, logging_steps=1),
        output_dir=tmp_path, seed=0, precision=Precision.fp32, device="cpu",
    )  # fmt: skip
    return build_trainer(model, tokenizer, args, data.train, data.eval, build_lora_config(LoraSettings(r=2)))
