"""The one entry point: ``python -m dpo_lab.run [overrides] [-m]`` (or ``dpo-lab``).

Check the command line -> Hydra composes -> typed, validated config -> run_experiment -> exit code.
The phases of a run are in :mod:`dpo_lab.experiment`; the logic lives in the packages. Nothing at module
level here imports torch, trl or transformers: a misspelt key is refused in a fraction of a second, and the
training libraries load inside the job.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from dpo_lab.cli.common import exit_with_config_error
from dpo_lab.config.composition import check_composition
from dpo_lab.config.overrides import check_overrides, dict_overrides_as_force_add
from dpo_lab.config.resolvers import CONF_PATH, register_resolvers
from dpo_lab.config.schemas import RunConfig
from dpo_lab.config.store import register_configs
from dpo_lab.config.user_configs import check_user_config_dirs, make_config_dirs_importable
from dpo_lab.config.validation import to_run_config
from dpo_lab.errors import ConfigError, NonFiniteError
from dpo_lab.packed.discovery import make_packed_launcher_visible
from dpo_lab.runs.failures import check_output_dirs, describe_write_failure
from dpo_lab.runs.job import in_multirun
from dpo_lab.runs.layout import RunLayout
from dpo_lab.runs.lock import RunFolderBusy, hold_run_folder
from dpo_lab.runs.redaction import redact_hydra_outputs
from dpo_lab.runs.result import record_failed_job
from dpo_lab.runtime.processes import (
    agree_on_launch_time,
    drop_log_files_off_main,
    export_submitit_env,
    rank_overrides,
)
from dpo_lab.runtime.quiet import quiet_notices, quiet_progress_bars
from dpo_lab.train.resume import resume_overrides

if TYPE_CHECKING:  # torch, trl and transformers load inside a job, after the command line is checked
    from dpo_lab.packed.handoff import PackedOutcome

log = logging.getLogger("dpo_lab")


@hydra.main(version_base="1.3", config_path=CONF_PATH, config_name="config")
def train(cfg: DictConfig, packed: PackedOutcome | None = None) -> float | None:
    """One Hydra job; returns the objective value for the sweeper (None for a failed job of a sweep).
    ``packed``: what a pack trained for this job, handed over by the packed launcher."""
    register_resolvers()  # a submitit job runs this in a fresh process
    export_submitit_env()
    drop_log_files_off_main()
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    in_sweep = in_multirun()
    redact_hydra_outputs(run_dir, hydra_cfg.output_subdir, Path(hydra_cfg.sweep.dir) if in_sweep else None)
    try:
        run_cfg = typed_run_config(cfg)  # a value out of range is refused before the libraries load
    except ConfigError as err:
        return refuse(err, run_dir, in_sweep)
    from dpo_lab.experiment import run_experiment
    from dpo_lab.train.preemption import Terminated, record_interrupted, terminate_as_interrupt

    quiet_notices()  # a launcher's fresh process (submitit) starts here, not in main()
    quiet_progress_bars()

    try:
        with hold_run_folder(run_dir), terminate_as_interrupt():
            metrics = run_experiment(run_cfg, cfg, run_dir, packed)
    except RunFolderBusy as err:  # another launch's folder: nothing is written into it
        if not in_sweep:
            print(f"dpo_lab: {err}", file=sys.stderr)
            sys.exit(1)
        log.error("job %s not run: %s", hydra_cfg.job.num, err)
        return None
    except Terminated as err:  # SIGTERM outside training: recorded like Ctrl-C, ends a sweep too
        record_interrupted(run_dir, err)
        print(f"dpo_lab: run stopped: {err} (recorded as interrupted in {RunLayout(run_dir).metrics})",
              file=sys.stderr)  # fmt: skip
        sys.exit(err.exit_code)
    except ConfigError as err:  # also raised late, e.g. a tokenizer without a chat template
        return refuse(err, run_dir, in_sweep)
    except Exception as err:
        if not in_sweep and isinstance(err, NonFiniteError):
            print(f"dpo_lab: training stopped: {err}", file=sys.stderr)
            sys.exit(1)
        write_failure = describe_write_failure(err, run_dir)
        if not in_sweep and write_failure is not None:
            print(f"dpo_lab: {write_failure}", file=sys.stderr)
            sys.exit(1)
        if not in_sweep:
            raise
        # one failed job (bad value, NaN, out of memory) must not stop the rest of the sweep
        log.exception("job %s failed; the sweep goes on", hydra_cfg.job.num)
        record_failed_job(run_dir, err)
        return None  # Optuna's sweeper records a trial without a number as failed and goes on
    return metrics["objective"]["value"]


def refuse(err: ConfigError, run_dir: Path, in_sweep: bool) -> None:
    """A config error: one line and exit code 2 for a single run; recorded as a failed job in a sweep."""
    if not in_sweep:
        exit_with_config_error(err)
    record_failed_job(run_dir, err)
    return None


def typed_run_config(cfg: DictConfig) -> RunConfig:
    """The typed, validated config; ``train.extra`` keys checked against trl.DPOConfig and custom losses
    imported with their ``dpo.loss_params`` checked, before any load."""
    run_cfg = to_run_config(cfg)
    if run_cfg.train.extra:  # trl's field list, only when there is something to check against it
        from dpo_lab.train.trainer import check_extra_keys

        check_extra_keys(run_cfg.train.extra)
    if any(":" in name for name in run_cfg.dpo.loss_type):  # your own losses: imported and checked
        from dpo_lab.train.losses import check_losses

        check_losses(run_cfg.dpo)
    return run_cfg


def launch_args(args: list[str]) -> list[str]:
    """``resume=<folder>`` expanded; one launch time for all processes; no Hydra files from other ranks."""
    args = resume_overrides(args)
    agree_on_launch_time(args)
    return [*args, *rank_overrides()]


def main() -> None:
    """Console entry: friendly one-line errors for bad overrides, then Hydra."""
    quiet_notices()
    register_configs()
    register_resolvers()
    make_packed_launcher_visible()
    try:
        sys.argv[1:] = launch_args(sys.argv[1:])
        check_overrides(sys.argv[1:])
        check_user_config_dirs(sys.argv[1:])
        make_config_dirs_importable(sys.argv[1:])
        check_output_dirs(sys.argv[1:])
        sys.argv[1:] = dict_overrides_as_force_add(sys.argv[1:])
        check_composition(sys.argv[1:])
    except ConfigError as err:
        exit_with_config_error(err)
    train()


if __name__ == "__main__":
    main()
