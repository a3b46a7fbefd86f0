"""What each process of a data-parallel run trained on: micro-batches, pairs and a digest of its final
adapter, gathered on the main process for ``metrics.json``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from dpo_lab.runtime.collectives import gather, initialized, state_digest


class BatchCounter:
    """Counts the micro-batches and preference pairs this process trained on (fed by the trainer)."""

    def __init__(self) -> None:
        self.micro_batches = 0
        self.pairs = 0

    def observe(self, step: int, loss: torch.Tensor, inputs: Mapping[str, Any]) -> None:
        self.micro_batches += 1
        # DPO batches stack the chosen sequences on top of the rejected ones: two rows per pair
        self.pairs += int(inputs["input_ids"].shape[0]) // 2


def rank_report(counter: BatchCounter, adapter_state: Mapping[str, torch.Tensor] | None) -> dict[str, Any]:
    """What each process did in this launch, gathered in rank order (a collective: all ranks call it)."""
    mine = {
        "micro_batches": counter.micro_batches,
        "pairs": counter.pairs,
        "adapter_sha256": state_digest(adapter_state) if adapter_state is not None else None,
    }
    ranks = gather(mine)
    return {
        "world_size": torch.distributed.get_world_size() if initialized() else 1,
        "backend": torch.distributed.get_backend() if initialized() else None,
        "micro_batches_per_rank": [r["micro_batches"] for r in ranks],
        "pairs_per_rank": [r["pairs"] for r in ranks],
        "adapter_sha256_per_rank": [r["adapter_sha256"] for r in ranks],
    }
