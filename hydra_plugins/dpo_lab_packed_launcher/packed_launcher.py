"""``hydra/launcher=packed``: the jobs of a sweep that can share a frozen base train together.

A thin shell over dpo_lab.packed.launching: Hydra discovers launchers in the ``hydra_plugins`` namespace,
so this module registers the config node, builds each job's config from its overrides as Hydra's basic
launcher does, and runs the batch through :class:`dpo_lab.packed.launching.PackedBatch` when it holds
dpo_lab jobs. A batch of another app's jobs runs exactly as the basic launcher runs it (Hydra's own launcher
test suites run their example apps with this launcher).
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from dpo_lab.packed.launching import PackedBatch
from dpo_lab.packed.plan import AUTO

log = logging.getLogger(__name__)


@dataclass
class PackedLauncherConf:
    """``python -m dpo_lab.run -m hydra/launcher=packed [hydra.launcher.pack_size=4] [sweep overrides]``: the
    sweep's jobs that can share the frozen base train their adapters together, ``pack_size`` at a time, in
    this process; each job then evaluates and writes its own run folder, W&B run and report row as usual
    (docs/packed-sweeps.md)."""

    _target_: str = "hydra_plugins.dpo_lab_packed_launcher.packed_launcher.PackedLauncher"
    # how many jobs train together: a positive integer, or auto (on a GPU as many as fit in the free memory;
    # on a CPU all of a group, up to 8, or what the available memory holds when they step together)
    pack_size: Any = AUTO
    # how a packed step runs the adapters over a micro-batch: together (the batch replicated once per adapter,
    # one forward and backward over all copies: the GPU's way), in_turn (each adapter's forward and backward
    # over the batch, one after another: one copy of the activations at a time), or auto (together on a GPU,
    # in_turn on a CPU)
    step: str = AUTO


# `hydra/launcher=packed` for dpo_lab and for any other Hydra app. No conf/hydra/launcher/packed.yaml beside
# it: a YAML option of the same name would be "validated against ConfigStore schema with the same name",
# which Hydra warns about on every run.
ConfigStore.instance().store(
    group="hydra/launcher", name="packed", node=PackedLauncherConf, provider="dpo_lab"
)


class PackedLauncher(Launcher):
    def __init__(self, pack_size: Any = AUTO, step: str = AUTO) -> None:
        super().__init__()
        self.batch = PackedBatch(pack_size, step)  # checks both values (one line naming the key)
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    @property
    def pack_size(self) -> int | str:
        return self.batch.pack_size

    @property
    def step(self) -> str:
        return self.batch.step

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        assert self.hydra_context is not None and self.config is not None and self.task_function is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info(f"Launching {len(job_overrides)} jobs locally, packed where they can share a base model")
        configs = []
        for idx, overrides in enumerate(job_overrides):
            idx = initial_job_idx + idx
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = idx
                sweep_config.hydra.job.num = idx
            configs.append(sweep_config)
        if not any(_is_dpo_lab_job(cfg) for cfg in configs):
            return [self._run_job(cfg, self.task_function) for cfg in configs]
        return self.batch.run(configs, self.task_function, self._run_job)

    def _run_job(self, sweep_config: DictConfig, task_function: TaskFunction) -> JobReturn:
        assert self.hydra_context is not None and self.config is not None
        ret = run_job(
            hydra_context=self.hydra_context,
            task_function=task_function,
            config=sweep_config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return ret


def _is_dpo_lab_job(sweep_config: DictConfig) -> bool:
    """True for a config whose schema is dpo_lab's."""
    kind = OmegaConf.get_type(sweep_config)
    return kind is not None and kind.__module__.startswith("dpo_lab.")
