"""Which process this is, and one launch time and run folder for all processes of a launch.

Read from the launcher's environment (``RANK``, ``WORLD_SIZE``, torchrun's agent store), so it works before
any process group exists and without importing torch at module load: the config layer names run folders
with :func:`launch_time` and the command line is checked before torch is imported.

- Hydra resolves ``${now:...}`` in every process separately, so two ranks started a few microseconds apart
  would pick two run folders. :func:`agree_on_launch_time` lets the processes of one torchrun / accelerate
  launch agree on one start time through the launcher's own key-value store
  (``TORCHELASTIC_USE_AGENT_STORE``), before Hydra starts; ``conf/config.yaml`` names the run folder after it
  with ``${dpo_lab_launch_time:...}``.
  The first process to reach the store decides; an elastic restart of the same launch gets the same time,
  hence the same folder, and resumes there. Other launchers must pass an explicit ``hydra.run.dir``.
- :func:`check_same_run_dir` verifies at run time that every process really resolved the same folder.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
from typing import TYPE_CHECKING

from dpo_lab.errors import ConfigError

if (
    TYPE_CHECKING
):  # torch is imported where a store is opened: the config layer checks a command line without it
    import torch

LAUNCH_TIME_ENV = "DPO_LAB_LAUNCH_TIME"
_STORE_TIMEOUT = dt.timedelta(seconds=120)


def rank() -> int:
    """Global rank from the launcher's environment (valid before any process group exists)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return rank() == 0


def launcher_store() -> torch.distributed.Store | None:
    """A client of the key-value store that torchrun's agent (also behind ``accelerate launch``) serves."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    from torch.distributed import TCPStore

    return TCPStore(
        host_name=os.environ["MASTER_ADDR"],
        port=int(os.environ["MASTER_PORT"]),
        is_master=False,
        timeout=_STORE_TIMEOUT,
    )


def _shared_value(store: torch.distributed.Store, key: str, candidate: str) -> str:
    """The first value any process offered for ``key`` (``candidate`` if this process is first)."""
    return store.compare_set(key, "", candidate).decode()


def agree_on_launch_time(args: list[str]) -> None:
    """Put one launch time, shared by all processes of this launch, into ``DPO_LAB_LAUNCH_TIME``.

    Raises ConfigError when several processes were started by a launcher without a shared store and no
    explicit ``hydra.run.dir`` says where the run goes.
    """
    if world_size() <= 1 or LAUNCH_TIME_ENV in os.environ:
        return
    store = launcher_store()
    if store is None:
        if not any(a.startswith("hydra.run.dir=") for a in args):
            raise ConfigError(
                "hydra.run.dir",
                f"{world_size()} processes were started without torchrun / accelerate launch, so they cannot "
                "agree on a timestamped run folder; pass hydra.run.dir=<one folder for all of them>",
            )
        return
    key = f"dpo_lab/{os.environ.get('TORCHELASTIC_RUN_ID', 'none')}/launch_time"
    os.environ[LAUNCH_TIME_ENV] = _shared_value(store, key, dt.datetime.now().isoformat())


@functools.cache
def _process_start() -> dt.datetime:
    return dt.datetime.now()


def launch_time() -> dt.datetime:
    """The time this launch started: shared by every process of a multi-process launch."""
    shared = os.environ.get(LAUNCH_TIME_ENV)
    return dt.datetime.fromisoformat(shared) if shared else _process_start()


def check_same_run_dir(run_dir: str) -> None:
    """Raise ConfigError unless every process of this launch resolved the same run folder."""
    if world_size() <= 1:
        return
    store = launcher_store()
    if store is None:
        return
    key = f"dpo_lab/{os.environ.get('TORCHELASTIC_RUN_ID', 'none')}/{launch_time().isoformat()}/run_dir"
    first = _shared_value(store, key, run_dir)
    if first != run_dir:
        raise ConfigError(
            "hydra.run.dir",
            f"process {rank()} resolved {run_dir} but another process resolved {first}; name the folder "
            "with ${dpo_lab_launch_time:...} instead of ${now:...}, or pass a fixed path",
        )


def export_submitit_env() -> None:
    """In a submitit job with several tasks (``hydra.launcher.tasks_per_node > 1``), set the variables
    torch.distributed reads (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) from the job's."""
    if "SUBMITIT_EXECUTOR" not in os.environ or "RANK" in os.environ:
        return
    from submitit import JobEnvironment
    from submitit.helpers import TorchDistributedEnvironment

    if JobEnvironment().num_tasks > 1:
        # every task keeps seeing all GPUs of the node; accelerate picks cuda:LOCAL_RANK
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def drop_log_files_off_main() -> None:
    """On processes other than the main one, stop writing log files (Hydra's run.log): stdout only.

    ``rank_overrides`` does this before Hydra starts under torchrun / accelerate; the tasks of a submitit
    job get their Hydra set-up from the launcher, so it is undone here, at the start of the job."""
    if is_main_process():
        return
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
        root.removeHandler(handler)
        handler.close()


def rank_overrides() -> list[str]:
    """Hydra overrides for processes other than the main one: they write nothing into the run folder."""
    if is_main_process():
        return []
    return ["hydra.output_subdir=null", "hydra/job_logging=stdout"]
