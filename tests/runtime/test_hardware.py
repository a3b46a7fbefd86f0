"""Precision follows the hardware: bf16 only where it is computed natively."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from dpo_lab.runtime.hardware import cpu_has_native_bf16, resolve_dtype, resolve_precision
from dpo_lab.runtime.precision import DType, Precision


def test_cpu_bf16_needs_avx512_bf16_or_amx() -> None:
    assert not cpu_has_native_bf16(frozenset({"avx2", "fma"}), onednn=True)
    assert cpu_has_native_bf16(frozenset({"avx2", "avx512_bf16"}), onednn=True)
    assert cpu_has_native_bf16(frozenset({"amx_bf16"}), onednn=True)
    # the instructions are there but torch's oneDNN may not use them
    assert not cpu_has_native_bf16(frozenset({"avx512_bf16"}), onednn=False)


def test_auto_precision_follows_a_onednn_isa_limit() -> None:
    """With oneDNN held to AVX2, bf16 is a slow reference loop even on a bf16 CPU: auto picks fp32."""
    code = (
        "from dpo_lab.runtime.precision import Precision\n"
        "from dpo_lab.runtime.hardware import onednn_bf16_enabled, resolve_precision\n"
        "print(onednn_bf16_enabled(), resolve_precision(Precision.auto, 'cpu').value)"
    )
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "fp32"]


def test_explicit_precision_is_kept() -> None:
    for p in (Precision.fp32, Precision.bf16, Precision.fp16):
        assert resolve_precision(p, "cpu") is p


def test_auto_precision_on_cpu_matches_flags(monkeypatch) -> None:
    monkeypatch.setattr("dpo_lab.runtime.hardware.cpu_has_native_bf16", lambda flags=None: False)
    assert resolve_precision(Precision.auto, "cpu") is Precision.fp32
    monkeypatch.setattr("dpo_lab.runtime.hardware.cpu_has_native_bf16", lambda flags=None: True)
    assert resolve_precision(Precision.auto, "cpu") is Precision.bf16


def test_dtype_auto_keeps_fp32_base_on_cpu_and_follows_precision_on_cuda() -> None:
    assert resolve_dtype(DType.auto, Precision.bf16, "cpu") is torch.float32
    assert resolve_dtype(DType.auto, Precision.bf16, "cuda") is torch.bfloat16
    assert resolve_dtype(DType.auto, Precision.fp16, "cuda") is torch.float16
    assert resolve_dtype(DType.bfloat16, Precision.fp32, "cpu") is torch.bfloat16


_FAULTS_SCRIPT = """
import json, resource, torch
from dpo_lab.runtime.hardware import keep_freed_memory

def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        torch.empty(16 * 2**20, dtype=torch.float32).fill_(1.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

released = faults()
assert keep_freed_memory(True) is True
faults()  # the heap grows once
kept = faults()
print(json.dumps({"released": released, "kept": kept, "pages": 16 * 2**20 * 4 // resource.getpagesize()}))
"""


def test_kept_freed_memory_stops_the_page_faults_of_reallocated_tensors() -> None:
    """A 64 MiB tensor allocated, touched and freed 10 times: with glibc's defaults each one is a fresh mmap
    that page-faults all of its 16,384 pages in again; with keep_freed_memory(True) the heap keeps it, and
    the pages are faulted in once. (Linux with glibc, as on every machine this project runs on.) Measured
    in a fresh process: in this one, earlier tests (a training with the setting on) leave a heap whose free
    space can serve a block without faults."""
    import json

    proc = subprocess.run(
        [sys.executable, "-c", _FAULTS_SCRIPT], capture_output=True, text=True, timeout=120, check=True
    )
    counts = json.loads(proc.stdout.strip().splitlines()[-1])
    released, kept, pages = counts["released"], counts["kept"], counts["pages"]
    assert released >= 9 * pages, f"{released} faults for 10 fresh 64 MiB blocks"
    # reused: not the ~10 x 16,384 faults of fresh blocks. Usually 0; a machine whose kernel reclaims idle
    # pages on its own (DAMON's kdamond runs on these VMs) can take back a kept block between two touches,
    # which costs a block's faults again (seen once: 2 blocks). A no-op keep_freed_memory gives ~10 blocks.
    assert kept <= 3 * pages, f"{kept} faults: the freed blocks were not reused ({released} without)"


def test_keep_freed_memory_false_changes_nothing_it_did_not_change(monkeypatch) -> None:
    """keep_freed_memory(False) in a process that never turned it on leaves glibc alone; after True it puts
    glibc's defaults back."""
    from dpo_lab.runtime import hardware

    monkeypatch.setattr(hardware, "_malloc_kept", False)
    assert hardware.keep_freed_memory(False) is False
    try:
        assert hardware.keep_freed_memory(True) is True and hardware._malloc_kept
    finally:
        assert hardware.keep_freed_memory(False) is False
    assert not hardware._malloc_kept
