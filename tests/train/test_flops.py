"""The FLOP model against hand-computed numbers, and the shapes it reads off a real LoRA model."""

from __future__ import annotations

import math
import time
from types import SimpleNamespace

import pytest
import torch

from dpo_lab.train.flops import (
    ModelShapes,
    TokenCounts,
    backward_flops,
    counts_from_ratios,
    dpo_step_flops,
    forward_flops,
    matmul_flops,
    measure_peak_flops,
    mfu,
    model_shapes,
    packed_flop_report,
    token_ratios,
)
from dpo_lab.train.speed import StepClock, process_started_at, step_timing

# 2 layers, attention width 4, 100 frozen decoder weights, a 30-weight LM head, 10 LoRA weights;
# two sequences of 4 tokens (T = 8, S2 = 4^2 + 4^2 = 32), 3 of them completion tokens.
SHAPES = ModelShapes(n_layers=2, d_attn=4, base_matmul_params=100, lm_head_params=30, lora_params=10)
COUNTS = TokenCounts(tokens=8, completion_tokens=3, sum_sq_lengths=32)


def test_forward_and_backward_terms_by_hand() -> None:
    # forward: base 2*100*8 = 1600, head 2*30*3 = 180, attention 4*2*4*32 = 1024, LoRA 2*10*8 = 160
    assert forward_flops(SHAPES, COUNTS, with_lora=True) == 1600 + 180 + 1024 + 160 == 2964
    assert forward_flops(SHAPES, COUNTS, with_lora=False) == 2804
    # backward: activation grads 1600 + 180, attention 8*2*4*32 = 2048, LoRA act + weight grads 4*10*8 = 320
    assert backward_flops(SHAPES, COUNTS) == 1600 + 180 + 2048 + 320 == 4148


def test_dpo_step_counts_the_reference_forward_unless_precomputed() -> None:
    with_ref = dpo_step_flops(SHAPES, COUNTS, reference_forward=True)
    assert with_ref == {
        "policy_forward": 2964,
        "policy_backward": 4148,
        "reference_forward": 2804,
        "total": 9916,
    }
    without = dpo_step_flops(SHAPES, COUNTS, reference_forward=False)
    assert without["reference_forward"] == 0 and without["total"] == 7112


def test_a_packed_job_owns_its_policy_terms_and_a_share_of_the_one_reference_forward() -> None:
    # a pack of 2: this job's LoRA has 10 weights, the other job's 20; the reference forward runs once
    ratios = {"completion_per_token": 3 / 8, "sum_sq_per_token": 32 / 8}  # COUNTS again from T = 8
    report = packed_flop_report(SHAPES, [10, 20], ratios, tokens=8, seconds=2.0, peak_flops_per_s=1000.0,
                                reference_forward=True)  # fmt: skip
    assert report["train_flops"] == {
        "policy_forward": 2964,
        "policy_backward": 4148,
        "reference_forward": 2804 / 2,
        "total": 2964 + 4148 + 1402,
    }
    # the other job: forward 2804 + 2*20*8 = 3124, backward 1780 + 2048 + 4*20*8 = 4468
    pack = report["pack"]
    assert pack["size"] == 2 and pack["lora_params"] == [10, 20]
    assert pack["train_flops"] == {
        "policy_forward": 2964 + 3124,
        "policy_backward": 4148 + 4468,
        "reference_forward": 2804,
        "total": 17508,
    }
    assert report["mfu"] == pytest.approx(8514 / 2 / 1000) and pack["mfu"] == pytest.approx(17508 / 2 / 1000)
    precomputed = packed_flop_report(SHAPES, [10, 20], ratios, tokens=8, seconds=2.0, peak_flops_per_s=1000.0,
                                     reference_forward=False)  # fmt: skip
    assert (
        precomputed["train_flops"]["reference_forward"]
        == precomputed["pack"]["train_flops"]["reference_forward"]
        == 0
    )


def test_token_ratios_and_truncation_by_hand() -> None:
    # prompt 2, chosen 3, rejected 1: sequences of 5 and 3 tokens, 3 + 1 completion tokens, S2 = 25 + 9
    assert token_ratios([(2, 3, 1)], max_length=None) == {
        "completion_per_token": 4 / 8,
        "sum_sq_per_token": 34 / 8,
    }
    # max_length 4 keeps the start: 4 and 3 tokens, completions 2 and 1, S2 = 16 + 9
    assert token_ratios([(2, 3, 1)], max_length=4) == {
        "completion_per_token": 3 / 7,
        "sum_sq_per_token": 25 / 7,
    }
    counts = counts_from_ratios(70, token_ratios([(2, 3, 1)], max_length=4))
    assert (counts.tokens, counts.completion_tokens, counts.sum_sq_lengths) == (70, 30, 250)


def test_matmul_and_mfu() -> None:
    assert matmul_flops(2, 3, 4) == 48
    assert mfu(1e12, 2.0, 1e12) == 0.5
    assert mfu(1e12, 0.0, 1e12) == 0.0


def test_measured_peak_is_a_rate() -> None:
    peak = measure_peak_flops("cpu", torch.float32, size=64, repeats=2, warmup=1)
    assert math.isfinite(peak) and peak > 0


def test_shapes_of_the_tiny_model_with_lora() -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from dpo_lab.config.resolvers import asset_path

    model = AutoModelForCausalLM.from_pretrained(asset_path("tiny-llama"))
    peft_model = get_peft_model(model, LoraConfig(r=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    shapes = model_shapes(peft_model)
    # hidden 192, 4 heads x 48, MLP 512, 4 layers, vocab 2112 (config.json of the embedded model)
    per_layer = 4 * 192 * 192 + 3 * 192 * 512
    lora_per_layer = 4 * 16 * (192 + 192) + 3 * 16 * (192 + 512)
    assert shapes == ModelShapes(n_layers=4, d_attn=192, base_matmul_params=4 * per_layer,
                                 lm_head_params=2112 * 192, lora_params=4 * lora_per_layer)  # fmt: skip
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert shapes.lora_params == trainable


def test_step_timing_and_process_start() -> None:
    clock = StepClock()
    for _ in range(3):
        clock.on_step_end(None, None, None)
    clock.first_step_at, clock.last_step_at = 100.0, 104.0
    clock.first_step_cpu, clock.last_step_cpu = 1.0, 2.0
    assert step_timing(clock, started_at=90.0) == {
        "first_step_at": 100.0, "time_to_first_step_s": 10.0,
        "seconds_per_step": 2.0, "cpu_seconds_per_step": 0.5,
    }  # fmt: skip
    assert step_timing(StepClock(), started_at=90.0)["seconds_per_step"] is None
    clock.on_evaluate(None, None, None, metrics={"eval_runtime": 9.0})  # before training: not counted
    clock.on_train_begin(None, SimpleNamespace(num_input_tokens_seen=0), None)
    clock.on_evaluate(None, None, None, metrics={"eval_runtime": 2.0, "eval_loss": 0.7})
    clock.on_train_end(None, None, None)
    clock.on_evaluate(None, None, None, metrics={"eval_runtime": 5.0})  # after training: not counted
    assert clock.eval_seconds_in_train == 2.0
    started = process_started_at()
    if started is None:
        pytest.skip("no /proc on this platform")
    assert time.time() - 24 * 3600 < started <= time.time()


def test_first_job_starts_at_process_start_and_later_jobs_at_their_call(monkeypatch) -> None:
    import dpo_lab.train.speed as throughput

    monkeypatch.setattr(throughput, "_first_job_started", False)
    monkeypatch.setattr(throughput, "process_started_at", lambda: time.time() - 50.0)
    first = throughput.job_started_at()
    assert time.time() - 51.0 < first < time.time() - 49.0  # imports and Hydra count for the first job
    second = throughput.job_started_at()
    assert time.time() - 1.0 < second <= time.time()  # a later job of a same-process sweep: its own start


def test_a_resumed_attempt_counts_only_its_own_tokens() -> None:
    clock = StepClock()
    clock.on_train_begin(None, SimpleNamespace(num_input_tokens_seen=600), None)  # restored from a checkpoint
    assert clock.tokens_at_start == 600
    fresh = StepClock()
    fresh.on_train_begin(None, SimpleNamespace(num_input_tokens_seen=0), None)
    assert fresh.tokens_at_start == 0


def test_the_peak_is_measured_once_per_machine_and_kept(tmp_path, monkeypatch) -> None:
    """MFU divides by a peak measured once and kept (a per-run measurement swung 20x between the jobs of one
    sweep on a loaded machine), or by a nominal peak the user states."""
    from dpo_lab.train import flops

    calls = []
    monkeypatch.setenv(flops.CACHE_ENV, str(tmp_path))
    monkeypatch.delenv(flops.PEAK_ENV, raising=False)
    monkeypatch.setattr(flops, "measure_peak_flops", lambda *a, **k: calls.append(a) or 1.5e11)
    first, source = flops.machine_peak("cpu", torch.bfloat16)
    assert first == 1.5e11 and source.startswith("measured once on this machine") and len(calls) == 1
    monkeypatch.setattr(flops, "measure_peak_flops", lambda *a, **k: calls.append(a) or 9.0e9)  # a loaded run
    again, _ = flops.machine_peak("cpu", torch.bfloat16)
    assert again == 1.5e11 and len(calls) == 1  # kept: not measured again
    assert flops.machine_peak("cpu", torch.float32)[0] == 9.0e9 and len(calls) == 2  # another dtype
    monkeypatch.setenv(flops.PEAK_ENV, "2e12")
    assert flops.machine_peak("cpu", torch.bfloat16) == (2e12, f"nominal (${flops.PEAK_ENV})")
