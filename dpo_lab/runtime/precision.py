"""The precision names a config chooses from: the training precision and the dtype of the base weights.

Kept apart from :mod:`dpo_lab.runtime.hardware` (which maps them to torch dtypes and picks ``auto`` from the
device) so that the config layer can name them without importing torch."""

from __future__ import annotations

from enum import Enum


class DType(str, Enum):
    """dtype of the (non-quantized) base weights; ``auto`` follows the training precision."""

    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class Precision(str, Enum):
    """Mixed-precision mode of training; ``auto`` picks bf16 only where the device computes it natively."""

    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"
