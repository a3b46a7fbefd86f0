"""``hydra/launcher=packed``: the jobs of a sweep that can share a frozen base train together.

Hydra discovers this launcher in the ``hydra_plugins`` namespace package. Like Hydra's basic launcher it runs
every job in this process, one after another, each with its own run folder, logs and return value. Before
that, dpo_lab jobs that can share a base model (dpo_lab.packed.plan) are grouped, ``pack_size`` at a
time, and each group's adapters are trained in one packed run (dpo_lab.packed.pack); each job then runs as
usual, taking its trained adapter from the pack instead of training again. Jobs of other apps, and dpo_lab
jobs that fit no group, run exactly as the basic launcher runs them. dpo_lab is imported only when a job is
dpo_lab's.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)

AUTO = "auto"


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


# `hydra/launcher=packed` for dpo_lab and for any other Hydra app (Hydra's launcher test suites run their own
# example apps with it). No conf/hydra/launcher/packed.yaml beside it: a YAML option of the same name would be
# "validated against ConfigStore schema with the same name", which Hydra warns about on every run.
ConfigStore.instance().store(
    group="hydra/launcher", name="packed", node=PackedLauncherConf, provider="dpo_lab"
)


def check_pack_size(value: Any) -> int | str:
    """``hydra.launcher.pack_size``: a positive integer or ``auto``."""
    if value == AUTO:
        return AUTO
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"hydra.launcher.pack_size: expected a positive integer or 'auto', got {value!r}")
    return value


STEPS = ("together", "in_turn", AUTO)


def check_step(value: Any) -> str:
    """``hydra.launcher.step``: together, in_turn or auto."""
    if value not in STEPS:
        raise ValueError(f"hydra.launcher.step: expected one of {', '.join(STEPS)}, got {value!r}")
    return value


class PackedLauncher(Launcher):
    def __init__(self, pack_size: Any = AUTO, step: str = AUTO) -> None:
        super().__init__()
        self.pack_size = check_pack_size(pack_size)
        self.step = check_step(step)
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None
        self._described: dict[int, Any] = {}
        self._shares: dict[int, Any] = {}  # position -> what a pack trained for the job before

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

        runs: list[JobReturn | None] = [None] * len(configs)
        for group in self._groups(configs):
            trained = self._train_together(group, configs) if len(group) > 1 else [self._saved(group[0])]
            for position, share in zip(group, trained, strict=True):
                runs[position] = self._run_one(configs[position], share)
        return [run for run in runs if run is not None]

    def _groups(self, configs: list[DictConfig]) -> list[list[int]]:
        """Positions of the jobs in run order, grouped: dpo_lab jobs that can share a base together."""
        self._described, self._shares = {}, {}
        if not any(_is_dpo_lab_job(cfg) for cfg in configs):
            return [[i] for i in range(len(configs))]
        from dpo_lab.packed.plan import describe_job, plan_groups, saved_share

        described = []
        for position, cfg in enumerate(configs):
            HydraConfig.instance().set_config(cfg)  # as run_job does: a config may read ${hydra:...}
            job = describe_job(position, cfg)
            share = saved_share(job)
            if share is not None:  # a pack trained it before the sweep was stopped: it trains no more
                self._shares[position] = share
                job.why_alone = "a pack trained it before (its outcome is in the sweep folder's .packs/)"
            if job.why_alone and job.run_config is not None:
                log.info(f"job #{cfg.hydra.job.num} runs alone: {job.why_alone}")
            described.append(job)
        self._described = {job.index: job for job in described}
        groups = plan_groups(described, self.pack_size, self.step)
        return [[job.index for job in group] for group in groups]

    def _train_together(self, group: list[int], configs: list[DictConfig]) -> list[Any]:
        assert self.config is not None
        from dpo_lab.packed.group import train_group

        jobs = [self._described[position] for position in group]
        HydraConfig.instance().set_config(configs[group[0]])
        log.info(f"training jobs {[configs[p].hydra.job.num for p in group]} together in one pack")
        try:
            return train_group(jobs, self.step)
        except Exception:  # the jobs still run, one by one, and report their own errors
            log.exception("packed training failed; its jobs train one by one")
            return [None] * len(group)
        finally:
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)

    def _saved(self, position: int) -> Any:
        """A lone dpo_lab job's share of a pack that trained it before the sweep was stopped, or None."""
        return self._shares.get(position)

    def _run_one(self, sweep_config: DictConfig, share: Any) -> JobReturn:
        assert self.hydra_context is not None and self.task_function is not None and self.config is not None
        if share is None:
            ret = self._run_job(sweep_config)
        else:
            from dpo_lab.packed.handoff import lend

            with lend(share):
                ret = self._run_job(sweep_config)
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return ret

    def _run_job(self, sweep_config: DictConfig) -> JobReturn:
        return run_job(
            hydra_context=self.hydra_context,
            task_function=self.task_function,
            config=sweep_config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )


def _is_dpo_lab_job(sweep_config: DictConfig) -> bool:
    """True for a config whose schema is dpo_lab's (checked without importing dpo_lab)."""
    kind = OmegaConf.get_type(sweep_config)
    return kind is not None and kind.__module__.startswith("dpo_lab.")
