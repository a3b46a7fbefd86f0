"""Precision follows the hardware: bf16 only where it is computed natively."""

from __future__ import annotations

import torch

from dpo_lab.config import DType, Precision
from dpo_lab.hardware import cpu_has_native_bf16, resolve_dtype, resolve_precision


def test_cpu_bf16_needs_avx512_bf16_or_amx() -> None:
    assert not cpu_has_native_bf16(frozenset({"avx2", "fma"}))
    assert cpu_has_native_bf16(frozenset({"avx2", "avx512_bf16"}))
    assert cpu_has_native_bf16(frozenset({"amx_bf16"}))


def test_explicit_precision_is_kept() -> None:
    for p in (Precision.fp32, Precision.bf16, Precision.fp16):
        assert resolve_precision(p, "cpu") is p


def test_auto_precision_on_cpu_matches_flags(monkeypatch) -> None:
    monkeypatch.setattr("dpo_lab.hardware.cpu_has_native_bf16", lambda flags=None: False)
    assert resolve_precision(Precision.auto, "cpu") is Precision.fp32
    monkeypatch.setattr("dpo_lab.hardware.cpu_has_native_bf16", lambda flags=None: True)
    assert resolve_precision(Precision.auto, "cpu") is Precision.bf16


def test_dtype_auto_keeps_fp32_base_on_cpu_and_follows_precision_on_cuda() -> None:
    assert resolve_dtype(DType.auto, Precision.bf16, "cpu") is torch.float32
    assert resolve_dtype(DType.auto, Precision.bf16, "cuda") is torch.bfloat16
    assert resolve_dtype(DType.auto, Precision.fp16, "cuda") is torch.float16
    assert resolve_dtype(DType.bfloat16, Precision.fp32, "cpu") is torch.bfloat16
