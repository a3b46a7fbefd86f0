"""Collectives across the processes of one run (barrier, any, gather) and a digest to compare state dicts
between them; each is a no-op in a single process. Data-parallel training itself belongs to accelerate /
torchrun and the Trainer."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where a collective runs: run folders are written before torch loads
    import torch


def initialized() -> bool:
    """A process group exists (none can before torch is imported, so torch is not imported to ask)."""
    if "torch" not in sys.modules:
        return False
    import torch

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
    import torch
    from accelerate import PartialState

    value = torch.tensor([1.0 if flag else 0.0], device=PartialState().device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


def gather(obj: Any) -> list[Any]:
    """``obj`` from every process, in rank order (a collective)."""
    if not initialized():
        return [obj]
    import torch

    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the names and fp32 values of a state dict, independent of key order and device."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()
