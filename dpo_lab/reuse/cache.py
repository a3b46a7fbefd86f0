"""Not paying twice in a same-process multirun: base model, tokenised data, reference log-probs.

Hydra's basic launcher runs a sweep's jobs one after another in one process. Between jobs that differ only
in what training does with them (beta, learning rate, LoRA rank...), three things come out identical and
are expensive on a real model: loading (and quantizing) the base model, tokenising the preference data, and
the reference model's log-probs (``dpo.precompute_ref_log_probs=true``; the reference is the base model
with the adapter disabled, so it does not depend on the adapter's rank).

:class:`SweepCache` keeps them for the next job under explicit keys built from every config value that
changes them (:func:`model_key`, :func:`tokenized_key`, :func:`ref_log_probs_key`); a job whose key
differs loads or computes afresh. After each job the adapter is taken off the base model and every module
attribute the job changed is put back (:class:`ModelSnapshot`); if anything still differs from the state
right after loading, the model is dropped and the next job loads a fresh one.

The cache lives in the process that made it (:func:`job_cache`), created on first use, never at import.
Launchers that run jobs in other processes (joblib, submitit) therefore share nothing; a forked child
starts with an empty cache of its own.
"""

from __future__ import annotations

import gc
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from dpo_lab.config.fields import changes_of, config_key, values_where
from dpo_lab.config.schemas import DataSettings, ModelSettings, RunConfig
from dpo_lab.data.loading import PreferenceData, load_preference_data
from dpo_lab.data.report import format_report
from dpo_lab.model.loading import load_base_model, load_tokenizer, strip_adapters
from dpo_lab.reuse.snapshot import ModelSnapshot
from dpo_lab.runtime.hardware import device_type
from dpo_lab.runtime.precision import Precision
from dpo_lab.train.trainer import PreparedDatasets

log = logging.getLogger(__name__)


def model_key(model: ModelSettings, precision: Precision, gradient_checkpointing: bool, device: str) -> str:
    """Everything that changes the loaded base model: the fields marked ``base`` (every model.* key, and
    ``train.gradient_checkpointing``, passed here as it is: it prepares the model), the resolved precision and
    the device."""
    return config_key(
        {**_marked(model, "base", "model."), "train.gradient_checkpointing": gradient_checkpointing,
         "precision": precision.value, "device": device}
    )  # fmt: skip


def data_key(data: DataSettings, seed: int) -> str:
    """Everything that changes the loaded preference pairs: the fields marked ``pairs`` (every data.* key,
    and the seed, which draws a carved-off held-out split)."""
    return config_key({**_marked(data, "pairs", "data."), "seed": seed})


def tokenizer_key(model: ModelSettings) -> str:
    """Everything that changes the tokenizer: the model fields marked ``tokenizer`` (where it loads from and
    the chat template installed in it)."""
    return config_key(_marked(model, "tokenizer", "model."))


def tokenized_key(cfg: RunConfig) -> str:
    """Everything that changes TRL's tokenised datasets: the pairs, the tokenizer, and the fields marked
    ``tokenized`` (``dpo.max_length``: examples whose prompt fills it are dropped; ``train.extra``: every
    pass-through trainer option)."""
    return config_key(
        {"pairs": data_key(cfg.data, cfg.seed), "tokenizer": tokenizer_key(cfg.model),
         **_marked(cfg, "tokenized")}
    )  # fmt: skip


def ref_log_probs_key(cfg: RunConfig, precision: Precision, device: str) -> str:
    """Everything that changes the reference log-probs: the tokenised data, the base model, the precision it
    runs in, and the fields marked ``reference`` (the batch sizes that pad the batches). Not beta, the loss,
    the learning rate, the schedule or the LoRA settings: the reference has no adapter."""
    return config_key(
        {"tokenized": tokenized_key(cfg),
         "base": model_key(cfg.model, precision, cfg.train.gradient_checkpointing, device),
         **_marked(cfg, "reference")}
    )  # fmt: skip


def _marked(obj: Any, artefact: str, prefix: str = "") -> dict[str, Any]:
    """The values of the fields of ``obj`` whose declaration says they change ``artefact``."""
    return values_where(obj, lambda f: artefact in changes_of(f), prefix)


@dataclass
class SweepCache:
    """What one process keeps between the jobs of a sweep (see the module docstring).

    ``enabled=False`` gives a cache that loads everything and keeps nothing (single runs, ``reuse=false``).
    ``last_job`` says what the current job took from earlier jobs; ``stats`` counts over the process.
    """

    enabled: bool = True
    pid: int = field(default_factory=os.getpid)
    model: PreTrainedModel | None = None
    model_key: str | None = None
    snapshot: ModelSnapshot | None = None
    data: dict[str, PreferenceData] = field(default_factory=dict)
    tokenized: dict[str, dict] = field(default_factory=dict)
    ref_log_probs: dict[str, dict] = field(default_factory=dict)
    last_job: dict[str, bool] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=lambda: {"model_loads": 0, "model_reuses": 0})
    _lent: PreparedDatasets | None = None

    def start_job(self) -> None:
        self.last_job = {"model": False, "data": False, "tokenized": False, "ref_log_probs": False}
        self._lent = None

    def preference_data(
        self,
        cfg: DataSettings,
        seed: int,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int,
        model: ModelSettings,
    ) -> PreferenceData:
        """The validated pairs (their checks count tokens, so the tokenizer and max_length are in the key)."""
        key = config_key(
            {"pairs": data_key(cfg, seed), "tokenizer": tokenizer_key(model), "max_length": max_length}
        )
        if self.enabled and key in self.data:
            self.last_job["data"] = True
            return self.data[key]
        data = load_preference_data(cfg, seed, tokenizer, max_length=max_length)
        if self.enabled:
            self.data = {key: data}  # keep one: a sweep over data settings would otherwise pile them up
        return data

    def job_inputs(self, cfg: RunConfig) -> tuple[PreTrainedTokenizerBase, PreferenceData]:
        """A job's tokenizer and checked preference pairs (the pairs from an earlier job when their key
        matches), the data report logged: what a run alone and a pack both start from."""
        tokenizer = load_tokenizer(cfg.model)
        data = self.preference_data(cfg.data, cfg.seed, tokenizer, cfg.dpo.max_length, cfg.model)
        log.info("%s", format_report(data.summary()))
        return tokenizer, data

    def base_model(
        self, cfg: ModelSettings, precision: Precision, gradient_checkpointing: bool
    ) -> PreTrainedModel:
        """The cached base model when its key matches (adapter-free, as loaded), else a fresh load."""
        key = model_key(cfg, precision, gradient_checkpointing, device_type())
        if self.enabled and self.model is not None and self.model_key == key:
            self.stats["model_reuses"] += 1
            self.last_job["model"] = True
            log.info("reusing the base model loaded by an earlier job of this sweep")
            return self.model
        self.drop_model()
        model = load_base_model(cfg, precision, gradient_checkpointing)
        self.stats["model_loads"] += 1
        if self.enabled:
            self.model, self.model_key, self.snapshot = model, key, ModelSnapshot.capture(model)
        return model

    def prepared_datasets(self, cfg: RunConfig, precision: Precision) -> PreparedDatasets | None:
        """Slots for TRL's tokenised datasets and reference log-probs, filled by an earlier job when the keys
        match; the trainer fills empty ones for the next job. None when the cache is off."""
        if not self.enabled:
            return None
        tokenized = self.tokenized.setdefault(tokenized_key(cfg), {})
        ref = self.ref_log_probs.setdefault(ref_log_probs_key(cfg, precision, device_type()), {})
        self._lent = PreparedDatasets(tokenized=tokenized, with_ref_log_probs=ref)
        self.last_job["tokenized"] = bool(tokenized)
        self.last_job["ref_log_probs"] = bool(ref) and cfg.dpo.precompute_ref_log_probs
        return self._lent

    def end_job(self) -> None:
        """Take the job's adapter off the cached model and undo its changes; drop the model if that fails."""
        self._lent = None
        if self.model is None:
            return
        try:
            unwrapped = strip_adapters(self.model)
            self.snapshot.restore(self.model)
            left = self.snapshot.differences(self.model)
        except Exception as err:  # never hand a half-restored model to the next job
            left = [f"{type(err).__name__}: {err}"]
        if left:
            log.warning("base model not reusable after this job (%s); the next job loads it afresh", left)
            self.drop_model()
        else:
            log.info("adapter removed (%d layers); base model kept for the next job", unwrapped)
        gc.collect()

    def drop_model(self) -> None:
        if self.model is None:
            return  # nothing held: skip the collection (0.4 s on CPU at start-up)
        self.model, self.model_key, self.snapshot = None, None, None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


_process_cache: SweepCache | None = None


def job_cache(reuse: bool, in_sweep: bool) -> SweepCache:
    """The cache for the job about to start: this process's shared one in a same-process multirun with
    ``reuse=true``, else a throwaway that keeps nothing. A cache made by another process (before a fork)
    is never used."""
    global _process_cache
    if not (reuse and in_sweep):
        cache = SweepCache(enabled=False)
    else:
        if _process_cache is None or _process_cache.pid != os.getpid():
            _process_cache = SweepCache()
        cache = _process_cache
    cache.start_job()
    return cache


def clear_process_cache() -> None:
    """Forget everything this process kept (frees the base model)."""
    global _process_cache
    if _process_cache is not None:
        _process_cache.drop_model()
    _process_cache = None
