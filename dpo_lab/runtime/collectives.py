"""Collectives across the processes of one run (barrier, any, gather) and a digest to compare state dicts
between them; each is a no-op in a single process. Data-parallel training itself belongs to accelerate /
torchrun and the Trainer."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import torch


def initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def wait_for_everyone() -> None:
    """Barrier across the processes of the run (no-op in a single process)."""
    if initialized():
        from accelerate import PartialState

        PartialState().wait_for_everyone()


def any_process(flag: bool) -> bool:
    """True on every process if ``flag`` is true on any process (a collective: all ranks must call it)."""
    if not initialized():
        return flag
    from accelerate import PartialState

    value = torch.tensor([1.0 if flag else 0.0], device=PartialState().device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


def gather(obj: Any) -> list[Any]:
    """``obj`` from every process, in rank order (a collective)."""
    if not initialized():
        return [obj]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the names and fp32 values of a state dict, independent of key order and device."""
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()
