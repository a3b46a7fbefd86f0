"""Which jobs of a sweep train together (``hydra/launcher=packed``), and how a packed step runs.

The launcher (``hydra_plugins/dpo_lab_packed_launcher``) hands the composed config of every job of a batch
here. :func:`plan_groups` sorts them into groups that can share one frozen base: every config value that
changes the base model, the batches or the number of steps is the same (:func:`pack_key`). Which keys may
differ inside a pack is declared once, on the schema fields (``differs_in_pack`` in dpo_lab.config.schemas:
beta, the loss, the learning rate and its schedule, clipping, LoRA rank / alpha / dropout / targets...);
anything after training (``eval``, ``logger``, ``objective``) may differ too. The ``seed`` is part of the
key: dpo_lab draws the data order and the held-out split from it, so jobs of different seeds do not see the
same batches. Jobs that fit no group (another app's jobs, DoRA, a trained LoRA bias, a folder started
before, several processes) run one by one as the basic launcher runs them.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from dpo_lab.config.fields import config_key, differs_in_pack, values_where
from dpo_lab.config.schemas import RunConfig
from dpo_lab.runs.layout import RunLayout

log = logging.getLogger(__name__)

AUTO = "auto"
# how a packed step runs its adapters over a micro-batch (hydra.launcher.step; dpo_lab.packed.pack.Pack)
TOGETHER, IN_TURN = "together", "in_turn"
# the groups whose values must be equal inside a pack, except the keys declared ``differs_in_pack``
SHARED_GROUPS = ("model", "data", "dpo", "train", "lora")


@dataclass
class PackedJobInfo:
    """A job of a sweep batch as the packed launcher sees it."""

    index: int  # position in the batch
    config: DictConfig  # the job's composed config, hydra node included
    run_config: RunConfig | None  # None: not a dpo_lab job (or one that does not validate)
    run_dir: Path | None
    why_alone: str | None = None  # why the job cannot be packed (None: it can)
    sweep_dir: Path | None = None  # hydra.sweep.dir (where the packs keep their state)
    saved: Any = None  # the PackedOutcome a pack left for this job before the sweep was stopped


def task_config(sweep_config: DictConfig) -> DictConfig:
    """The job's config as its task function receives it (without the ``hydra`` node)."""
    cfg = copy.deepcopy(sweep_config)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def describe_job(index: int, sweep_config: DictConfig) -> PackedJobInfo:
    """Validate a job's config as dpo_lab's; say why it must run alone if it must."""
    from dpo_lab.config.validation import to_run_config

    cfg = task_config(sweep_config)
    if OmegaConf.get_type(cfg) is not RunConfig:
        return PackedJobInfo(index, sweep_config, None, None, "not a dpo_lab job")
    try:
        run_cfg = to_run_config(cfg)
    except Exception as err:  # the job reports its own error when it runs
        return PackedJobInfo(index, sweep_config, None, None, f"invalid config ({err})")
    hydra = sweep_config.hydra
    sweep_dir = Path(str(hydra.sweep.dir))
    run_dir = sweep_dir / str(hydra.sweep.subdir)
    return PackedJobInfo(index, sweep_config, run_cfg, run_dir, why_alone(run_cfg, run_dir), sweep_dir)


def why_alone(cfg: RunConfig, run_dir: Path) -> str | None:
    """Why a dpo_lab job cannot train in a pack, or None."""
    if cfg.lora.use_dora:
        return "lora.use_dora=true (packing applies plain LoRA only)"
    if cfg.lora.bias != "none":
        return f"lora.bias={cfg.lora.bias} (a trained bias is shared by the base layer)"
    if cfg.resume is not None or RunLayout(run_dir).config.is_file():
        return f"{run_dir} was started before (it resumes or reports as a normal job)"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return "several processes (WORLD_SIZE > 1)"
    return None


def pack_key(cfg: RunConfig) -> str:
    """Every value jobs of one pack must share: each key of the training groups that is not declared
    ``differs_in_pack`` on its schema field, the seed and ``reuse`` (see the module docstring)."""
    shared: dict[str, Any] = {"seed": cfg.seed, "reuse": cfg.reuse}
    for group in SHARED_GROUPS:
        shared.update(values_where(getattr(cfg, group), lambda f: not differs_in_pack(f), f"{group}."))
    return config_key(shared)


def plan_groups(
    jobs: Sequence[PackedJobInfo], pack_size: int | str, step: str = AUTO
) -> list[list[PackedJobInfo]]:
    """The batch's jobs in groups, in the order of each group's first job: a group of several jobs trains
    packed, a group of one runs alone. ``pack_size`` caps a group (``auto``: see :func:`auto_pack_size`);
    ``step`` is the launcher's ``step`` (:func:`packed_step`)."""
    by_key: dict[str, list[PackedJobInfo]] = {}
    order: list[list[PackedJobInfo]] = []
    for job in jobs:
        if job.why_alone is not None or job.run_config is None:
            order.append([job])
            continue
        key = pack_key(job.run_config)
        if key not in by_key:
            by_key[key] = []
            order.append(by_key[key])
        by_key[key].append(job)
    groups = []
    for group in order:
        size = auto_pack_size(group, step) if pack_size == AUTO else int(pack_size)
        groups.extend(group[i : i + size] for i in range(0, len(group), max(size, 1)))
    return groups


# activations kept for the backward, per token and hidden unit of each layer, in bytes, with one packed copy
# (a rough count: attention and MLP inputs, norms, LoRA inputs). On a CPU the count is measured: a pack of 3
# SmolLM2 jobs (batch 4 pairs, max_length 256: 2,048 tokens x 576 x 30 layers) peaked at ~6 GB a copy.
_ACTIVATION_BYTES_PER_TOKEN_UNIT = {"cuda": 40, "cpu": 170}
_AUTO_CPU_LIMIT = 8


STEPS = (TOGETHER, IN_TURN, AUTO)


def check_pack_size(value: Any) -> int | str:
    """``hydra.launcher.pack_size``: a positive integer or ``auto`` (ValueError naming the key otherwise)."""
    if value == AUTO:
        return AUTO
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"hydra.launcher.pack_size: expected a positive integer or 'auto', got {value!r}")
    return value


def check_step(value: Any) -> str:
    """``hydra.launcher.step``: together, in_turn or auto (ValueError naming the key otherwise)."""
    if value not in STEPS:
        raise ValueError(f"hydra.launcher.step: expected one of {', '.join(STEPS)}, got {value!r}")
    return value


def packed_step(step: str, device: str) -> str:
    """``hydra.launcher.step`` resolved: ``together`` (the batch replicated once per adapter, one forward and
    backward for all) or ``in_turn`` (each adapter's forward and backward over the batch in turn: one copy
    of the activations at a time). ``auto``: together on a GPU, in turn on a CPU, where the matmuls are
    already compute-bound and K copies only add memory traffic (docs/packed-sweeps.md)."""
    if check_step(step) == AUTO:
        return TOGETHER if device == "cuda" else IN_TURN
    return step


def auto_pack_size(group: Sequence[PackedJobInfo], step: str = AUTO) -> int:
    """How many jobs of ``group`` train together. In turn (:func:`packed_step`), one copy of the activations
    at a time: the whole group (at most 8 on a CPU). Together: as many copies of the batch's activations as
    fit in 80% of the free memory (the GPU's, or on a CPU the machine's available memory, and at most 8
    there), at least 1."""
    if not group or group[0].run_config is None:
        return 1
    cfg = group[0].run_config
    device = device_type()
    limit = len(group) if device == "cuda" else min(len(group), _AUTO_CPU_LIMIT)
    if packed_step(step, device) == IN_TURN:
        return limit
    free = _cuda_free_memory() if device == "cuda" else available_memory()
    if free is None:  # no /proc/meminfo: the CPU limit alone
        return limit
    shape = _model_shape(cfg)
    tokens = 2 * cfg.train.per_device_train_batch_size * cfg.dpo.max_length
    per_copy = tokens * shape["hidden"] * shape["layers"] * _ACTIVATION_BYTES_PER_TOKEN_UNIT[device]
    return max(1, min(limit, int(0.8 * free // max(per_copy, 1))))


def device_type() -> str:
    """The device jobs train on (dpo_lab.runtime.hardware; imported here, not at module load: Hydra imports
    every launcher plugin when it starts, and a command line is checked before torch loads)."""
    from dpo_lab.runtime.hardware import device_type as detect

    return detect()


def _cuda_free_memory() -> int:
    import torch

    return int(torch.cuda.mem_get_info()[0])


def available_memory() -> int | None:
    """The machine's available memory in bytes (Linux ``MemAvailable``), or None where it is not known."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _model_shape(cfg: RunConfig) -> dict[str, int]:
    from transformers import AutoConfig

    from dpo_lab.model.source import loadable

    source = loadable(cfg.model)  # a GGUF base: its converted plain folder
    config = AutoConfig.from_pretrained(source.name_or_path, revision=source.revision)
    text = config.get_text_config()
    return {"hidden": int(text.hidden_size), "layers": int(text.num_hidden_layers)}
