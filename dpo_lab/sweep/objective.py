"""The number a sweep ranks jobs by: one held-out metric and whether higher or lower is better."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from dpo_lab.config.choices import Direction
from dpo_lab.config.schemas import ObjectiveSettings


class NonFiniteMetricError(RuntimeError):
    """Training diverged: a loss or a held-out metric is NaN or infinite (the job is recorded as failed)."""


def objective_value(eval_metrics: Mapping[str, Any], objective: ObjectiveSettings) -> float:
    """``eval_<metric>`` of Trainer.evaluate()'s output; KeyError naming what exists if it is absent."""
    key = f"eval_{objective.metric}"
    if key not in eval_metrics:
        available = sorted(k[5:] for k in eval_metrics if k.startswith("eval_"))
        raise KeyError(f"objective.metric {objective.metric!r} was not reported; held-out: {available}")
    return float(eval_metrics[key])


def check_finite(train_metrics: Mapping[str, Any], eval_metrics: Mapping[str, Any]) -> None:
    """Raise NonFiniteMetricError when the training loss or a held-out metric is NaN / infinite."""
    named = {"train_loss": train_metrics.get("train_loss"), **eval_metrics}
    bad = [k for k, v in named.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise NonFiniteMetricError(f"training diverged: non-finite {', '.join(sorted(bad))}")


def better(a: float, b: float, direction: Direction) -> bool:
    """True when ``a`` is strictly better than ``b`` in ``direction``."""
    return a > b if direction is Direction.maximize else a < b
