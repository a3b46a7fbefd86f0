"""``hydra/sweeper=dpo_lab_optuna``: Optuna's ask-and-tell search over any Hydra launcher, with pruning.

A thin shell over :class:`dpo_lab.sweep.optuna_sweeper.OptunaSearch`: Hydra discovers sweepers in the
``hydra_plugins`` namespace, so this module registers the config node and hands ``setup`` / ``sweep`` on.
Hydra imports every plugin module at start-up, for every command: nothing heavy is imported here, Optuna
loads when a sweep starts. The node's defaults suit any Hydra app; dpo_lab's preset over it is
``conf/hydra/sweeper/dpo_optuna.yaml`` (its search space, ``direction: ${objective.direction}``,
``sampler.seed: ${seed}``).
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class TPESamplerConf:
    """``optuna.samplers.TPESampler``'s settings that people change."""

    # the same seed, command and results propose the same trials; null = a different search each time
    seed: int | None = None
    # random trials before TPE starts modelling the results
    n_startup_trials: int = 10
    # candidates drawn per proposal, the best of them by expected improvement is the trial
    n_ei_candidates: int = 24
    # model the parameters jointly rather than one by one
    multivariate: bool = False
    # trials still running count as bad ones while a batch is asked: n_jobs > 1 trials spread out
    constant_liar: bool = True


@dataclass
class DpoLabOptunaSweeperConf:
    """``python -m dpo_lab.run -m hydra/sweeper=dpo_optuna [hydra.sweeper.n_trials=30] [prune=hyperband]``:
    ``n_trials`` trials of Optuna's TPE sampler, ``n_jobs`` launched at a time through the configured
    launcher, each job told back to the study (completed, failed or pruned) (docs/sweeps.md,
    docs/pruning.md)."""

    _target_: str = "hydra_plugins.dpo_lab_optuna_sweeper.optuna_sweeper.DpoLabOptunaSweeper"
    # minimize | maximize, or a list of them for several objectives (the job returns as many numbers)
    direction: Any = "minimize"
    # an Optuna RDB URL (sqlite:///optuna.db, postgresql://...) or a journal file to keep the study and go on
    # with it later; null = prune.storage where the app has one, else <sweep folder>/optuna.journal
    storage: str | None = None
    # the study's name in the storage; null = the sweep folder's (sweep-<date>_<time>)
    study_name: str | None = None
    # trials in all (added to those a loaded study has already)
    n_trials: int = 20
    # trials asked for and launched at once: 1 lets every result inform the next proposal
    n_jobs: int = 1
    # the share of a batch's jobs that may fail (return no number, raise) before the sweep stops
    max_failure_rate: float = 0.0
    sampler: TPESamplerConf = field(default_factory=TPESamplerConf)
    # key: sweep in Hydra's syntax: choice(4, 8) or 4,8 | range(1, 9, 2) | interval(0.0, 1.0) |
    # tag(log, interval(1e-6, 1e-3)) | int(interval(1, 10)); a plain value is passed to every job as it is
    params: dict[str, str] | None = None


# `hydra/sweeper=dpo_lab_optuna` for any Hydra app; dpo_lab's preset conf/hydra/sweeper/dpo_optuna.yaml
# extends it (a YAML of the same name as this node would be validated against it with a warning each run).
ConfigStore.instance().store(
    group="hydra/sweeper", name="dpo_lab_optuna", node=DpoLabOptunaSweeperConf, provider="dpo_lab"
)


class DpoLabOptunaSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        from dpo_lab.sweep.optuna_sweeper import OptunaSearch  # Optuna loads when a sweep starts

        self.search = OptunaSearch(**settings)  # checks every value (one line naming the key)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.search.setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.launcher = self.search.launcher

    def sweep(self, arguments: list[str]) -> Any:
        return self.search.sweep(arguments)
