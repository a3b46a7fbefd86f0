"""One packed group: the jobs' adapters trained together over one base, then the task answers of every job
generated in the pack; each job's outcome is handed to its own run (dpo_lab.packed.handoff). With a pruner
(``prune=...``) each job's Optuna trial is opened here, the pack reports to it and stops the jobs that lose
(dpo_lab.sweep.pruning.PackPruning), and the trial is handed over with the job's outcome."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from dpo_lab.packed.plan import AUTO, IN_TURN, PackedJobInfo, packed_step
from dpo_lab.packed.store import store_for
from dpo_lab.runs.layout import RunLayout

log = logging.getLogger(__name__)


def train_group(jobs: Sequence[PackedJobInfo], step: str = AUTO) -> list[Any]:
    """Train the adapters of ``jobs`` (one pack key) together, each packed step run as ``step`` says
    (:func:`packed_step`); one PackedOutcome per job, in order.

    The pack starts as each job alone starts (dpo_lab.experiment): the same hardware set-up, the tokenizer,
    pairs and base model from this process's cache (dpo_lab.reuse), each job's own trl.DPOConfig; so the
    jobs' own runs afterwards load none of them again.
    """
    from dpo_lab.packed.handoff import PackedOutcome
    from dpo_lab.reuse.cache import job_cache

    first = jobs[0].run_config
    assert first is not None
    store = store_for(jobs)
    finished = store.load_result() if store is not None else None
    if finished is not None and len(finished) == len(jobs):
        log.info("the pack of jobs %s trained before: its jobs take their adapters from %s",
                 [job.index for job in jobs], store.folder)  # fmt: skip
        return [PackedOutcome.from_state(state) for state in finished]
    cache = job_cache(first.reuse, True)
    try:
        return _train(jobs, step, store, cache)
    finally:
        cache.end_job()


def _train(jobs: Sequence[PackedJobInfo], step: str, store: Any, cache: Any) -> list[Any]:
    from dpo_lab.model.loading import build_lora_config
    from dpo_lab.packed.pack import PackJob, build_pack, unpack
    from dpo_lab.runtime.hardware import prepare as prepare_hardware
    from dpo_lab.train.preemption import Preemption
    from dpo_lab.train.trainer import build_dpo_args

    first = jobs[0].run_config
    started = time.perf_counter()
    device, precision = prepare_hardware(first.train.precision, first.keep_freed_memory)
    tokenizer, data = cache.job_inputs(first)
    model = cache.base_model(first.model, precision, first.train.gradient_checkpointing)
    pack_jobs = []
    for job in jobs:
        cfg = job.run_config
        output = RunLayout(job.run_dir).checkpoints
        args = build_dpo_args(cfg.dpo, cfg.train, output_dir=output, seed=cfg.seed, precision=precision,
                              device=device)  # fmt: skip
        pack_jobs.append(PackJob(args=args, lora=build_lora_config(cfg.lora), dpo=cfg.dpo))
    in_turn = packed_step(step, device) == IN_TURN
    prepared = cache.prepared_datasets(first, precision)
    pack = build_pack(model, tokenizer, pack_jobs, data.train, data.eval, prepared, in_turn=in_turn)
    pruning = open_pack_pruning(jobs)
    built = time.perf_counter()
    with Preemption().armed() as preemption:
        results = pack.train(store, first.train.save_steps, preemption, pruning=pruning)
    trained = time.perf_counter()
    for index, result in enumerate(results):
        if result.metrics and store is not None:  # in metrics.json's "train": which pack shared this clock
            result.metrics["pack_id"] = store.folder.name
        if pruning is not None:
            result.pruning = pruning.handoff(index)
    _generate_together(pack, jobs, tokenizer, data, results)
    unpack(model)
    if store is not None:
        store.save_result([result.to_state() for result in results])
    log.info(
        "packed %d jobs (%s): %.1f s to build, %.1f s training, %.1f s generating the task answers",
        len(jobs), pack.step_name, built - started, trained - built, time.perf_counter() - trained,
    )  # fmt: skip
    return results


def open_pack_pruning(jobs: Sequence[PackedJobInfo]) -> Any:
    """The pack's pruning (dpo_lab.sweep.pruning.PackPruning) with each job's trial, opened as the job alone
    opens it (the sweeper's, or one asked for the job's run folder: a restarted pack goes on with the same);
    None when no job has a pruner (optuna loads only then)."""
    if all(job.run_config.prune.pruner.value == "none" for job in jobs):
        return None
    from omegaconf import OmegaConf

    from dpo_lab.sweep.pruning import PackedTrial, PackPruning, open_trial

    packed = []
    for job in jobs:
        cfg = job.run_config
        overrides = list(OmegaConf.select(job.config, "hydra.overrides.task", default=None) or [])
        trial = open_trial(cfg.prune, job.sweep_dir, cfg.objective, run_dir=job.run_dir, overrides=overrides)
        packed.append(None if trial is None else PackedTrial(trial, cfg.objective.metric, cfg.prune))
    return PackPruning(packed)


def _generate_together(
    pack: Any, jobs: Sequence[PackedJobInfo], tokenizer: Any, data: Any, results: list
) -> None:
    """The task evaluation's answers of every job, generated in the pack, when the jobs ask for the same
    greedy evaluation (sampled answers would draw other random numbers than the job alone: those jobs
    generate their own)."""
    from dpo_lab.evaluation.prompts import load_task_prompts

    first = jobs[0].run_config
    if not first.eval.enabled or first.eval.generation.do_sample:
        return
    if any(job.run_config.eval != first.eval for job in jobs):
        return
    prompts = load_task_prompts(first.eval, first.data, data.eval)
    if not prompts:
        return
    conversations = [p.messages for p in prompts]
    started = time.perf_counter()
    before, after = pack.generate(tokenizer, conversations, first.eval.generation, first.seed)
    seconds = time.perf_counter() - started
    for member, result in zip(pack.members, results, strict=True):
        if member.name in after:
            result.task_answers = {"conversations": conversations, "before": before,
                                   "after": after[member.name], "generation_s": seconds}  # fmt: skip
