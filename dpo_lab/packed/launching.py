"""A sweep batch run the packed way: group the jobs that can share a base, train each group's adapters in one
pack, then run every job through its task function with its outcome handed over explicitly.

``hydra_plugins/dpo_lab_packed_launcher`` is the Hydra-facing shell: it builds each job's config from the
overrides, as Hydra's basic launcher does, and hands the batch here with a function that runs one job
(Hydra's ``run_job``). Jobs run in this process, one after another, each with its own run folder, logs and
return value; jobs that fit no group (another app's, DoRA, a started folder...) run exactly as the basic
launcher runs them.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from dpo_lab.packed.plan import PackedJobInfo, check_pack_size, check_step, describe_job, plan_groups

if TYPE_CHECKING:  # trl loads with the handoff; a batch of another app's jobs never needs it
    from dpo_lab.packed.handoff import PackedOutcome

log = logging.getLogger(__name__)

# runs one job: (its sweep config, the task function to call with the job's config) -> Hydra's JobReturn
RunJob = Callable[[DictConfig, Callable[[DictConfig], Any]], Any]


class PackedBatch:
    """One batch of jobs, grouped and run (see the module docstring)."""

    def __init__(self, pack_size: Any, step: str):
        self.pack_size = check_pack_size(pack_size)
        self.step = check_step(step)

    def run(self, configs: Sequence[DictConfig], task_function: Callable, run_job: RunJob) -> list[Any]:
        """Every job's JobReturn, in batch order."""
        jobs = [self._describe(position, cfg) for position, cfg in enumerate(configs)]
        returns: list[Any] = [None] * len(configs)
        for group in plan_groups(jobs, self.pack_size, self.step):
            outcomes = self._train_together(group) if len(group) > 1 else [self._saved(group[0])]
            for job, outcome in zip(group, outcomes, strict=True):
                task = task_function if outcome is None else functools.partial(task_function, packed=outcome)
                returns[job.index] = run_job(job.config, task)
        return returns

    def _describe(self, position: int, cfg: DictConfig) -> PackedJobInfo:
        from dpo_lab.packed.store import saved_outcome

        HydraConfig.instance().set_config(cfg)  # as run_job does: a config may read ${hydra:...}
        job = describe_job(position, cfg)
        job.saved = saved_outcome(job)
        if job.saved is not None:  # a pack trained it before the sweep was stopped: it trains no more
            job.why_alone = "a pack trained it before (its outcome is in the sweep folder's .packs/)"
        if job.why_alone and job.run_config is not None:
            log.info("job #%s runs alone: %s", cfg.hydra.job.num, job.why_alone)
        return job

    def _saved(self, job: PackedJobInfo) -> PackedOutcome | None:
        return job.saved

    def _train_together(self, group: list[PackedJobInfo]) -> list[PackedOutcome | None]:
        from dpo_lab.packed.group import train_group

        HydraConfig.instance().set_config(group[0].config)
        log.info("training jobs %s together in one pack", [job.config.hydra.job.num for job in group])
        try:
            return train_group(group, self.step)
        except Exception:  # the jobs still run, one by one, and report their own errors
            log.exception("packed training failed; its jobs train one by one")
            return [None] * len(group)
