"""What the machine computes well: the device, and which training precision follows from it."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

import torch

from dpo_lab.runtime.precision import DType, Precision

# The one table from config names to torch dtypes.
_TORCH_DTYPES = {DType.float32: torch.float32, DType.bfloat16: torch.bfloat16, DType.float16: torch.float16}
_PRECISION_DTYPES = {
    Precision.fp32: torch.float32,
    Precision.bf16: torch.bfloat16,
    Precision.fp16: torch.float16,
}


def torch_dtype(dtype: DType) -> torch.dtype | None:
    """The torch dtype of ``model.dtype`` / ``merge dtype`` (None for ``auto``: the caller decides)."""
    return _TORCH_DTYPES.get(dtype)


def compute_dtype(precision: Precision) -> torch.dtype:
    """The dtype matmuls run in for a resolved training precision (``auto`` resolved first)."""
    return _PRECISION_DTYPES.get(precision, torch.float32)


def device_type() -> str:
    """``cuda`` when a CUDA device is visible, else ``cpu`` (MPS is left to transformers' own choice)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@functools.cache
def cpu_flags() -> frozenset[str]:
    """CPU feature flags from /proc/cpuinfo (Linux); empty where that file does not exist."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return frozenset()
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def onednn_bf16_enabled() -> bool:
    """Whether this torch build runs CPU bf16 matmuls through oneDNN's bf16 kernels in this process.

    False when oneDNN is missing or limited below AVX512 (``ONEDNN_MAX_CPU_ISA=AVX2``): bf16 then falls
    back to a reference loop (measured here: 1 GFLOP/s against 65 in fp32 on one core).
    """
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without the op
        return False


def cpu_has_native_bf16(flags: frozenset[str] | None = None, onednn: bool | None = None) -> bool:
    """True for x86 CPUs with AVX512-BF16 or AMX-BF16 that torch's oneDNN kernels use: a bf16 matmul is
    faster than fp32 there (about 2.7x on one core of this machine's EPYC).

    On AVX2-only CPUs bf16 is emulated and far slower than fp32, so it must not be chosen there; the same
    holds where the CPU has the instructions but oneDNN is kept from them (``ONEDNN_MAX_CPU_ISA``).
    """
    flags = cpu_flags() if flags is None else flags
    onednn = onednn_bf16_enabled() if onednn is None else onednn
    return bool({"avx512_bf16", "amx_bf16"} & flags) and onednn


def resolve_precision(requested: Precision, device: str | None = None) -> Precision:
    """Turn ``auto`` into the fastest precision the device computes natively; leave explicit choices."""
    if requested is not Precision.auto:
        return requested
    device = device or device_type()
    if device == "cuda":
        return Precision.bf16 if torch.cuda.is_bf16_supported() else Precision.fp16
    if device == "cpu" and cpu_has_native_bf16():
        return Precision.bf16
    return Precision.fp32


def resolve_dtype(dtype: DType, precision: Precision, device: str | None = None) -> torch.dtype:
    """dtype for the frozen base weights: explicit, or following the precision (fp32 base on CPU).

    On CPU, keeping the frozen weights in fp32 and running matmuls under bf16 autocast is as fast as
    bf16 weights and avoids bf16 rounding in the reference log-probs.
    """
    if dtype is not DType.auto:
        return _TORCH_DTYPES[dtype]
    device = device or device_type()
    if device == "cuda" and precision is Precision.bf16:
        return torch.bfloat16
    if device == "cuda" and precision is Precision.fp16:
        return torch.float16
    return torch.float32


def describe() -> dict[str, str]:
    """A short description of the hardware for the run's config and model card."""
    info = {"device": device_type(), "torch": torch.__version__, "platform": platform.platform()}
    if info["device"] == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = str(torch.cuda.device_count())
    else:
        info["cpu_threads"] = str(torch.get_num_threads())
        info["cpu_native_bf16"] = str(cpu_has_native_bf16())
    return info


# glibc's mallopt() parameters (malloc.h) and their defaults
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_GLIBC_DEFAULTS = {_M_TRIM_THRESHOLD: 128 * 1024, _M_MMAP_MAX: 65536}
# -1 reaches glibc as SIZE_MAX (mallopt takes an int, the threshold is a size_t): the heap is never trimmed
_KEEP = {_M_TRIM_THRESHOLD: -1, _M_MMAP_MAX: 0}
_malloc_kept = False


def keep_freed_memory(keep: bool) -> bool:
    """``keep_freed_memory``: let glibc's malloc keep the CPU memory torch frees, for the next step to reuse.

    By default glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh ``mmap``
    and unmaps it on free, and returns the top of its heap to the OS beyond 128 KiB; a training step that
    allocates and frees the same large activations each time then page-faults all of them in again, every
    step. ``keep=True`` serves large blocks from the heap (``M_MMAP_MAX=0``) and never trims it
    (``M_TRIM_THRESHOLD`` at SIZE_MAX; a cap of 2 GiB still let a pack's freed activations be trimmed and
    faulted in again): the process's resident memory stays at its peak, the faults stop.
    Measured on a packed step of 3 SmolLM2 adapters on 2 CPU cores: 38.6 -> 26.8 s, system time 107 -> 32 s
    (docs/packed-sweeps.md). ``keep=False`` puts glibc's defaults back if this process changed them, and
    changes nothing otherwise. CUDA memory is torch's own caching allocator and is not affected.

    Returns whether the setting is in effect (False where the C library is not glibc).
    """
    global _malloc_kept
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if not keep and not _malloc_kept:
        return False
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    for param, value in (_KEEP if keep else _GLIBC_DEFAULTS).items():
        if libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)) != 1:
            return False
    _malloc_kept = keep
    return keep


def prepare(requested: Precision, keep_freed: bool) -> tuple[str, Precision]:
    """The hardware set-up every job starts with (a run alone and a pack alike): the malloc setting
    (``keep_freed_memory``), the device, and the training precision resolved for it."""
    keep_freed_memory(keep_freed)
    device = device_type()
    return device, resolve_precision(requested, device)
