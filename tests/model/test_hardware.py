"""Precision follows the hardware: bf16 only where it is computed natively."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from dpo_lab.config.schemas import DType, Precision
from dpo_lab.model.hardware import cpu_has_native_bf16, resolve_dtype, resolve_precision


def test_cpu_bf16_needs_avx512_bf16_or_amx() -> None:
    assert not cpu_has_native_bf16(frozenset({"avx2", "fma"}), onednn=True)
    assert cpu_has_native_bf16(frozenset({"avx2", "avx512_bf16"}), onednn=True)
    assert cpu_has_native_bf16(frozenset({"amx_bf16"}), onednn=True)
    # the instructions are there but torch's oneDNN may not use them
    assert not cpu_has_native_bf16(frozenset({"avx512_bf16"}), onednn=False)


def test_auto_precision_follows_a_onednn_isa_limit() -> None:
    """With oneDNN held to AVX2, bf16 is a slow reference loop even on a bf16 CPU: auto picks fp32."""
    code = (
        "from dpo_lab.config.schemas import Precision\n"
        "from dpo_lab.model.hardware import onednn_bf16_enabled, resolve_precision\n"
        "print(onednn_bf16_enabled(), resolve_precision(Precision.auto, 'cpu').value)"
    )
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "fp32"]


def test_explicit_precision_is_kept() -> None:
    for p in (Precision.fp32, Precision.bf16, Precision.fp16):
        assert resolve_precision(p, "cpu") is p


def test_auto_precision_on_cpu_matches_flags(monkeypatch) -> None:
    monkeypatch.setattr("dpo_lab.model.hardware.cpu_has_native_bf16", lambda flags=None: False)
    assert resolve_precision(Precision.auto, "cpu") is Precision.fp32
    monkeypatch.setattr("dpo_lab.model.hardware.cpu_has_native_bf16", lambda flags=None: True)
    assert resolve_precision(Precision.auto, "cpu") is Precision.bf16


def test_dtype_auto_keeps_fp32_base_on_cpu_and_follows_precision_on_cuda() -> None:
    assert resolve_dtype(DType.auto, Precision.bf16, "cpu") is torch.float32
    assert resolve_dtype(DType.auto, Precision.bf16, "cuda") is torch.bfloat16
    assert resolve_dtype(DType.auto, Precision.fp16, "cuda") is torch.float16
    assert resolve_dtype(DType.bfloat16, Precision.fp32, "cpu") is torch.bfloat16
