"""One forward for K adapters: each LoRA layer applies adapter ``k`` to the rows of copy ``k`` of the batch
only, and each job's TRL loss reads its own rows of the outputs."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import torch
from peft.tuners.lora import Linear as LoraLinear

# the per-token fields of TRL's fused LM head output that its loss and metrics read
_FUSED_FIELDS = ("log_probs", "entropy", "mean_logits", "is_top1", "log_sum_sq_probs")


@contextmanager
def adapters_by_slice(model: torch.nn.Module, names: Sequence[str | None], rows: int) -> Iterator[None]:
    """Inside the block, every LoRA linear layer of ``model`` applies adapter ``names[k]`` to rows
    ``[k*rows, (k+1)*rows)`` of its input only (None: no adapter on that slice, the base alone).

    The base layer runs once over the whole batch; each adapter's update is PEFT's own vanilla LoRA term
    (``lora_B(lora_A(dropout(x))) * scaling``, in the adapter's dtype) on its slice. A layer an adapter does
    not target leaves that slice to the base. Input shape ``[len(names) * rows, ...]``.
    """
    layers = [m for m in model.modules() if isinstance(m, LoraLinear)]
    for layer in layers:
        if any(name in layer.lora_variant for name in names if name is not None):
            raise ValueError("packed training supports plain LoRA only (not DoRA or other LoRA variants)")
        layer.forward = _slice_forward(layer, list(names), rows)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward  # back to the class's forward


def _slice_forward(layer: LoraLinear, names: list[str | None], rows: int):
    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        result = layer.base_layer(x, *args, **kwargs)
        if x.shape[0] != rows * len(names):
            raise ValueError(f"packed batch of {x.shape[0]} rows, expected {len(names)} x {rows}")
        pieces = []
        for k, name in enumerate(names):
            piece = result[k * rows : (k + 1) * rows]
            if name is not None and name in layer.lora_A:
                lora_a, lora_b = layer.lora_A[name], layer.lora_B[name]
                xk = x[k * rows : (k + 1) * rows].to(lora_a.weight.dtype)  # as PEFT casts the input
                delta = lora_b(lora_a(layer.lora_dropout[name](xk))) * layer.scaling[name]
                piece = (piece + delta).to(result.dtype)
            pieces.append(piece)
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=0)

    return forward


class _SliceOfOutputs:
    """Stands in for the model in a job's ``compute_loss``: returns that job's rows of the packed
    forward's outputs (whatever the call's arguments, which are the job's own, unreplicated inputs)."""

    def __init__(self, outputs: Any, start: int, stop: int):
        fields = {}
        for name in _FUSED_FIELDS:
            value = getattr(outputs, name, None)
            fields[name] = value[start:stop] if value is not None else None
        self.outputs = SimpleNamespace(**fields)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.outputs
