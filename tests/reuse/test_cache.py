"""Reuse across the jobs of a same-process sweep: clean base weights, tokenised data, reference log-probs."""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys

import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer

from dpo_lab.config.choices import Quantization
from dpo_lab.config.resolvers import asset_path
from dpo_lab.config.schemas import DataSettings, DPOSettings, ModelSettings, RunConfig, TrainSettings
from dpo_lab.model.loading import build_lora_config, load_base_model, load_tokenizer
from dpo_lab.reuse.cache import (
    ModelSnapshot,
    SweepCache,
    clear_process_cache,
    job_cache,
    model_key,
    ref_log_probs_key,
    tokenized_key,
)
from dpo_lab.runtime.precision import DType, Precision  # fmt: skip
from dpo_lab.train.trainer import build_dpo_args, build_trainer
from tests.helpers import ROOT


def _cfg(**changes) -> RunConfig:
    cfg = RunConfig(
        model=ModelSettings(name_or_path=asset_path("tiny-llama")),
        data=DataSettings(path=asset_path("finance"), max_train_samples=8, max_eval_samples=4),
        dpo=DPOSettings(max_length=128, precompute_ref_log_probs=True),
        train=TrainSettings(
            learning_rate=5e-2,
            per_device_train_batch_size=2,
            per_device_eval_batch_size=4,
            max_steps=2,
            logging_steps=1,
            precision=Precision.fp32,
        ),  # fmt: skip
    )
    for group, values in changes.items():
        setattr(cfg, group, dataclasses.replace(getattr(cfg, group), **values))
    return cfg


def _job(cache: SweepCache, cfg: RunConfig, out) -> tuple[torch.nn.Module, object]:
    """One job as run.py runs it: model and data from the cache, a fresh adapter, train, end the job."""
    cache.start_job()
    tokenizer = load_tokenizer(cfg.model)
    data = cache.preference_data(cfg.data, cfg.seed, tokenizer, cfg.dpo.max_length, cfg.model)
    model = cache.base_model(cfg.model, Precision.fp32, False)
    args = build_dpo_args(cfg.dpo, cfg.train, output_dir=out, seed=cfg.seed, precision=Precision.fp32,
                          device="cpu")  # fmt: skip
    prepared = cache.prepared_datasets(cfg, Precision.fp32)
    trainer = build_trainer(model, tokenizer, args, data.train, data.eval,
                            build_lora_config(cfg.lora), prepared=prepared)  # fmt: skip
    lora_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    moved = [n for n in lora_before if not torch.equal(after[n], lora_before[n])]
    assert moved, "the adapter did not train, so this test would prove nothing"
    cache.end_job()
    return model, trainer


@pytest.mark.slow
def test_job_two_starts_from_clean_base_weights_and_reuses_data_and_ref_log_probs(tmp_path) -> None:
    cache = SweepCache()
    first_cfg = _cfg()
    model_1, trainer_1 = _job(cache, first_cfg, tmp_path / "1")
    assert cache.last_job == {"model": False, "data": False, "tokenized": False, "ref_log_probs": False}
    computed_1 = dict(trainer_1._prepared.computed)
    assert computed_1 == {"tokenized": 2, "ref_log_probs": 2}  # train + eval, each once

    # job 2 of the sweep: other beta, rank and learning rate; it must get the same, clean base model
    second = _cfg(dpo={"beta": 0.5}, lora={"r": 8}, train={"learning_rate": 1e-2})
    cache.start_job()
    reused = cache.base_model(second.model, Precision.fp32, False)
    assert reused is model_1 and cache.last_job["model"]
    fresh = load_base_model(second.model, Precision.fp32, gradient_checkpointing=False)
    assert not any(isinstance(m, BaseTunerLayer) for m in reused.modules())
    reused_state, fresh_state = reused.state_dict(), fresh.state_dict()
    assert reused_state.keys() == fresh_state.keys()
    for name, tensor in fresh_state.items():
        assert torch.equal(reused_state[name], tensor), f"base tensor {name} differs from a fresh load"
    assert ModelSnapshot.capture(reused).differences(fresh) == []  # hooks, flags, patched forward, config
    assert [type(m) for m in reused.modules()] == [type(m) for m in fresh.modules()]
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    with torch.no_grad():
        assert torch.equal(reused(input_ids=ids).logits, fresh(input_ids=ids).logits)

    # ... and TRL's tokenised data and reference log-probs from job 1, without recomputing them
    _, trainer_2 = _job(cache, second, tmp_path / "2")
    assert cache.last_job == {"model": True, "data": True, "tokenized": True, "ref_log_probs": True}
    assert trainer_2._prepared.computed == {"tokenized": 0, "ref_log_probs": 0}
    assert trainer_2.beta == 0.5 and trainer_2.model.peft_config["default"].r == 8

    # the reused reference log-probs are the ones a fresh trainer computes for job 2
    fresh_trainer = build_trainer(fresh, load_tokenizer(second.model), trainer_2.args, *_datasets(second),
                                  build_lora_config(second.lora))  # fmt: skip
    for split in ("train_dataset", "eval_dataset"):
        mine, theirs = getattr(trainer_2, split), getattr(fresh_trainer, split)
        assert mine["chosen_ids"] == theirs["chosen_ids"] and mine["rejected_ids"] == theirs["rejected_ids"]
        for column in ("ref_chosen_logps", "ref_rejected_logps"):
            # NaN in the same rows: the training pairs max_steps never draws are computed by neither
            assert mine[column] == pytest.approx(theirs[column], abs=1e-5, nan_ok=True), (split, column)
            assert not all(math.isnan(v) for v in mine[column]), (split, column)
    assert cache.stats == {"model_loads": 1, "model_reuses": 2}


def _datasets(cfg: RunConfig):
    from dpo_lab.data.loading import load_preference_data

    data = load_preference_data(cfg.data, cfg.seed)
    return data.train, data.eval


def test_a_job_that_differs_in_what_it_loads_gets_nothing_stale() -> None:
    base = _cfg()
    ref = ref_log_probs_key(base, Precision.fp32, "cpu")
    tok = tokenized_key(base)
    # beta, the loss, learning rate, schedule and LoRA settings do not change the reference log-probs
    same = _cfg(dpo={"beta": 0.5, "loss_type": ["ipo"]}, lora={"r": 4, "alpha": 8},
                train={"learning_rate": 1e-5, "max_steps": 9, "warmup_steps": 0.2})  # fmt: skip
    assert ref_log_probs_key(same, Precision.fp32, "cpu") == ref and tokenized_key(same) == tok
    # everything that changes them gives another key
    for changes in [
        {"model": {"name_or_path": "/other/model"}},
        {"model": {"dtype": DType.bfloat16}},
        {"model": {"quantization": Quantization.nf4}},
        {"model": {"revision": "abc123"}},
        {"model": {"attn_implementation": "eager"}},
        {"model": {"chat_template": "{{ messages }}"}},
        {"dpo": {"max_length": 64}},
        {"data": {"max_train_samples": 9}},
        {"data": {"system_prompt": "be brief"}},
        {"train": {"per_device_eval_batch_size": 2}},
        {"train": {"extra": {"ld_alpha": 0.5}}},
    ]:
        assert ref_log_probs_key(_cfg(**changes), Precision.fp32, "cpu") != ref, changes
    assert ref_log_probs_key(base, Precision.bf16, "cpu") != ref
    assert ref_log_probs_key(base, Precision.fp32, "cuda") != ref
    assert tokenized_key(_cfg(dpo={"max_length": 64})) != tok
    assert tokenized_key(_cfg(model={"chat_template": "{{ messages }}"})) != tok
    key = model_key(base.model, Precision.fp32, False, "cpu")
    assert model_key(base.model, Precision.fp32, True, "cpu") != key
    assert model_key(dataclasses.replace(base.model, quantization=Quantization.int8), Precision.fp32, False,
                     "cpu") != key  # fmt: skip


def test_cache_is_per_process_and_off_outside_sweeps(tmp_path) -> None:
    assert not job_cache(reuse=True, in_sweep=False).enabled
    assert not job_cache(reuse=False, in_sweep=True).enabled
    shared = job_cache(reuse=True, in_sweep=True)
    assert shared.enabled and job_cache(reuse=True, in_sweep=True) is shared
    # a forked child (as some launchers make) must not use its parent's cache
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read)
        child = job_cache(reuse=True, in_sweep=True)
        os.write(write, b"same" if child is shared or child.pid != os.getpid() else b"own")
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    assert os.read(read, 10) == b"own"
    # a new process starts with nothing cached (joblib / submitit workers); the child writes its answer to a
    # file of its own, so what libraries print at import (e.g. transformers under WANDB_MODE=offline) in the
    # caller's environment cannot mix into it
    answer = tmp_path / "child_cache_is_none.txt"
    code = (
        "import sys; from dpo_lab.reuse import cache; "
        "open(sys.argv[1], 'w').write(str(cache._process_cache is None))"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(answer)], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert answer.read_text() == "True"
    clear_process_cache()
    assert job_cache(reuse=True, in_sweep=True) is not shared
    clear_process_cache()
