"""``hydra/sweeper=dpo_lab_halving``: a grid run in rounds of synchronous successive halving, through any
Hydra launcher but the packed one (which halves inside its packs).

A thin shell over :class:`dpo_lab.sweep.halving.HalvingSearch`: Hydra discovers sweepers in the
``hydra_plugins`` namespace, so this module registers the config node and hands ``setup`` / ``sweep`` on.
Hydra imports every plugin module at start-up, for every command: nothing heavy is imported here.
"""

from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class DpoLabHalvingSweeperConf:
    """``python -m dpo_lab.run -m hydra/sweeper=dpo_lab_halving prune=successive_halving dpo.beta=0.1,0.5``:
    every job of the grid trains to the first rung, the best 1/``prune.reduction_factor`` go on to the next,
    and so on to ``train.max_steps`` (docs/pruning.md)."""

    _target_: str = "hydra_plugins.dpo_lab_halving_sweeper.halving_sweeper.DpoLabHalvingSweeper"
    # key: values in Hydra's sweep syntax (a,b | choice(a, b) | range(1, 9, 2)), as for the basic sweeper;
    # the command line's come after these
    params: dict[str, str] | None = None


ConfigStore.instance().store(
    group="hydra/sweeper", name="dpo_lab_halving", node=DpoLabHalvingSweeperConf, provider="dpo_lab"
)


class DpoLabHalvingSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        from dpo_lab.sweep.halving import HalvingSearch

        self.search = HalvingSearch(**settings)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.search.setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.launcher = self.search.launcher

    def sweep(self, arguments: list[str]) -> Any:
        return self.search.sweep(arguments)
