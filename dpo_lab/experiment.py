"""One experiment, as the phases of a run: start the job, data, tracking, build, train and evaluate, task
evaluation, collect the result, save. Each phase is a short function; the logic lives in the packages.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from transformers import set_seed

from dpo_lab.config.schemas import ObjectiveSettings, RunConfig, TaskEvalSettings
from dpo_lab.evaluation.prompts import load_task_prompts, resolve_checker
from dpo_lab.evaluation.task import evaluate_task
from dpo_lab.model.loading import adapter_state_dict, build_lora_config, check_lora_targets
from dpo_lab.model.source import check_source
from dpo_lab.packed.handoff import PackedOutcome, finish_as_trained
from dpo_lab.reuse.cache import SweepCache, job_cache
from dpo_lab.runs.atomic import atomic_write_jsonl, write_final_artifacts
from dpo_lab.runs.card import (
    card_base,
    card_data,
    card_hyperparameters,
    framework_versions,
    render_model_card,
)
from dpo_lab.runs.job import in_multirun, run_identity, task_overrides
from dpo_lab.runs.layout import RunLayout
from dpo_lab.runs.provenance import git_state
from dpo_lab.runs.result import RunResult, record_failure
from dpo_lab.runtime.hardware import describe
from dpo_lab.runtime.hardware import prepare as prepare_hardware
from dpo_lab.runtime.precision import Precision
from dpo_lab.runtime.processes import check_same_run_dir, is_main_process
from dpo_lab.sweep.objective import check_finite, objective_value
from dpo_lab.track.base import Tracker, start_tracker
from dpo_lab.track.callbacks import LogHistoryCallback, MetricsCallback
from dpo_lab.track.console import ProgressBar
from dpo_lab.train.before_eval import HeldOutBefore
from dpo_lab.train.checkpoints import CheckpointCallback
from dpo_lab.train.final_eval import HeldOutAfter
from dpo_lab.train.guards import NonFiniteGuard
from dpo_lab.train.heldout_pairs import AFTER, TRL_NAMES, HeldOutPairs, heldout_summary, read_pairs
from dpo_lab.train.preemption import Preemption
from dpo_lab.train.ranks import BatchCounter, rank_report
from dpo_lab.train.resume import ResumePlan, plan_resume, save_run_config
from dpo_lab.train.speed import StepClock, job_started_at, peak_memory_mb, speed_metrics
from dpo_lab.train.trainer import build_dpo_args, build_trainer

log = logging.getLogger("dpo_lab")


@dataclass
class Job:
    """What every phase of one run reads: its typed config, folder, hardware choices and resume plan."""

    cfg: RunConfig
    raw: DictConfig
    layout: RunLayout
    resolved: dict[str, Any]
    started: float
    device: str
    precision: Precision
    plan: ResumePlan
    packed: PackedOutcome | None = None  # what a pack trained for this job (a packed sweep), else None


@dataclass
class JobData:
    tokenizer: Any
    cache: SweepCache
    data: Any  # PreferenceData
    task_prompts: list
    task_eval: TaskEvalSettings  # eval with its checker made concrete (auto: from what the data holds)


@dataclass
class Training:
    """The trainer and the callbacks whose state the later phases read."""

    guard: NonFiniteGuard
    preemption: Preemption
    batches: BatchCounter
    before_eval: HeldOutBefore
    pairs: HeldOutPairs  # the held-out evaluations per pair (heldout_pairs_before / _after.jsonl)
    after_eval: HeldOutAfter = field(default_factory=HeldOutAfter)
    progress: ProgressBar = field(default_factory=ProgressBar)
    clock: StepClock = field(default_factory=StepClock)
    trainer: Any = None
    pruning: Any = None  # the job's Optuna trial when prune.pruner is set (dpo_lab.sweep.pruning)


def run_experiment(
    run_cfg: RunConfig, cfg: DictConfig, run_dir: Path, packed: PackedOutcome | None = None
) -> dict[str, Any]:
    """Train and evaluate one run into ``run_dir``; returns its ``metrics.json`` record. ``packed``: the
    outcome of the pack that trained this job's adapter (a job of a packed sweep), taken instead of
    training."""
    job = start_job(run_cfg, cfg, run_dir, packed)
    if job.plan.completed is not None:
        return job.plan.completed
    data = load_data(job)
    tracker, name = start_tracking(job, data)
    training = prepare_training(job)
    try:
        build(job, data, tracker, training, name)
        marks = [("set-up", time.time())]
        train_out, before, after = train_and_evaluate(job, training, tracker)
        marks.append(("training", time.time()))
        task = evaluate_after_training(job, data, tracker, training)
        marks.append(("task answers", time.time()))
        reward_kl = evaluate_reward_kl(job, data, tracker, training)
        marks.append(("reward / KL", time.time()))
        result = collect_result(job, data, training, train_out, before, after, task, reward_kl)
        result.metrics["phases_s"] = phase_seconds(job.started, marks, before, after)
        save(job, data, training, tracker, result)
    except BaseException as err:
        training.progress.close()
        if not training.preemption.stopped_training:  # a preempted run exits on purpose, its checkpoint saved
            record_failure(run_dir, err, tracker)
            if training.pruning is not None:
                training.pruning.finish(None)
        raise
    finally:
        data.cache.end_job()
    tracker.finish(exit_code=0)
    if training.pruning is not None:
        training.pruning.finish(result.metrics["objective"]["value"])
    if is_main_process():
        print(result.closing_table(run_dir))
    return result.metrics


def start_job(run_cfg: RunConfig, cfg: DictConfig, run_dir: Path, packed: PackedOutcome | None) -> Job:
    """Seed, hardware, and what the folder holds already (resume, or a completed run); saves config.yaml."""
    started = job_started_at()  # process start for the first job, so imports and Hydra count
    check_source(run_cfg.model)  # an unfetched or contradicting base stops here, before anything loads
    device, precision = prepare_hardware(run_cfg.train.precision, run_cfg.keep_freed_memory)
    set_seed(run_cfg.seed)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    check_same_run_dir(str(run_dir))
    plan = plan_resume(run_dir, resolved)
    job = Job(run_cfg, cfg, RunLayout(run_dir), resolved, started, device, precision, plan, packed)
    if plan.completed is None:
        if is_main_process():
            save_run_config(run_dir, resolved, task_overrides(), fresh=plan.checkpoint is None)
        log.info("run folder %s; device %s, precision %s", run_dir, device, precision.value)
    return job


def load_data(job: Job) -> JobData:
    """Tokenizer, the checked preference pairs (from the sweep cache when an earlier job loaded them) and
    the task-evaluation prompts."""
    cfg = job.cfg
    check_lora_targets(cfg.model, cfg.lora)
    cache = job_cache(cfg.reuse, in_multirun())  # what earlier jobs of a same-process sweep loaded
    tokenizer, data = cache.job_inputs(cfg)
    task_eval = resolve_checker(cfg.eval, data.held_out_rows, cfg.data)
    task_prompts = load_task_prompts(task_eval, cfg.data, data.eval, data.held_out_rows)
    return JobData(tokenizer, cache, data, task_prompts, task_eval)


def start_tracking(job: Job, data: JobData) -> tuple[Tracker, str]:
    """The W&B run (or none), with the resolved config and what the run ran on; and the run's name."""
    name, group, tags = run_identity(job.raw, job.layout.root)
    logger = dataclasses.replace(job.cfg.logger, tags=[*job.cfg.logger.tags, *tags])
    meta = {
        **describe(),
        "precision": job.precision.value,
        "dataset_fingerprint": data.data.fingerprint,
        "git": git_state(Path(__file__).parent),
        "versions": framework_versions(),
    }
    tracker = start_tracker(
        logger, layout=job.layout, config={**job.resolved, "meta": meta}, name=name, group=group
    )
    return tracker, name


def prepare_training(job: Job) -> Training:
    """The guards and bookkeeping callbacks, before anything that can fail is loaded."""
    return Training(
        guard=NonFiniteGuard(job.layout.checkpoints),
        preemption=Preemption(),
        batches=BatchCounter(),
        before_eval=HeldOutBefore(
            job.layout.root, job.cfg.train.eval_before_training, resuming=job.plan.checkpoint is not None
        ),
        pairs=HeldOutPairs(job.layout.root),
        pruning=open_pruning(job),
    )


def build(job: Job, data: JobData, tracker: Tracker, training: Training, name: str) -> None:
    """Base model (from the process cache when possible), trl.DPOConfig, the DPOTrainer and its callbacks."""
    cfg = job.cfg
    model = data.cache.base_model(cfg.model, job.precision, cfg.train.gradient_checkpointing)
    args = build_dpo_args(
        cfg.dpo,
        cfg.train,
        output_dir=job.layout.checkpoints,
        seed=cfg.seed,
        precision=job.precision,
        device=job.device,
        run_name=name,
        eval_on_start=training.before_eval.pending,
    )
    callbacks = [
        MetricsCallback(tracker, peak_memory_mb),
        CheckpointCallback(cfg.train.save_total_limit),
        training.guard,
        training.preemption.callback(),
        training.before_eval,
        training.pairs,
        training.after_eval,
        training.clock,
        LogHistoryCallback(job.layout.history),
        training.progress,
        *pruning_callbacks(job, training),
    ]
    training.trainer = build_trainer(
        model,
        data.tokenizer,
        args,
        data.data.train,
        data.data.eval,
        build_lora_config(cfg.lora),
        callbacks=callbacks,
        micro_batch_observers=[training.guard.observe, training.batches.observe],
        prepared=data.cache.prepared_datasets(cfg, job.precision),
        dpo=cfg.dpo,
    )
    training.trainer.pair_observers.append(training.pairs.observe)
    training.pairs.bind(training.trainer.eval_dataset)


def train_and_evaluate(job: Job, training: Training, tracker: Tracker) -> tuple[Any, dict, dict]:
    """Train (resuming from the plan's checkpoint), then the held-out metrics; a preempted run exits here."""
    trainer, preemption = training.trainer, training.preemption
    checkpoint = job.plan.checkpoint
    with preemption.armed():
        if job.packed is None:
            train_out = trainer.train(resume_from_checkpoint=checkpoint and str(checkpoint.path))
        else:  # a job of a packed sweep takes what its pack trained
            train_out = finish_as_trained(trainer, job.packed)
            training.clock.replay(job.packed.step_times)
            if job.packed.heldout_after and is_main_process():  # the pack's last evaluation, per pair
                atomic_write_jsonl(job.layout.heldout_pairs("after"), job.packed.heldout_after)
    if preemption.stopped_training:
        tracker.finish_preempted(trainer.state.global_step, preemption.exit_code)
        preemption.record(job.layout.root, trainer.state.global_step)  # metrics.json: preempted, and where
        preemption.exit_for_requeue()
    after = training.after_eval.final_metrics(trainer)  # the Trainer's evaluation at its last step
    check_finite(train_out.metrics, after)  # a diverged job is a failed job
    return train_out, training.before_eval.metrics, after


def evaluate_after_training(job: Job, data: JobData, tracker: Tracker, training: Training) -> dict[str, Any]:
    """Answers to held-out prompts before / after, scored by the task checker, written into the run folder
    and logged as tables. One process generates under plain DDP; sharded weights (FSDP, ZeRO) need every
    rank."""
    trainer = training.trainer
    if not (is_main_process() or not _plain_ddp(trainer)):
        return {}
    evaluation = evaluate_task(
        trainer.model, data.tokenizer, data.task_prompts, data.task_eval,
        step=trainer.state.global_step, seed=job.cfg.seed,
        ahead=job.packed.task_answers if job.packed is not None else None,
    )  # fmt: skip
    if evaluation is None:
        return {}
    if is_main_process():
        for phase, records in evaluation.records.items():
            atomic_write_jsonl(job.layout.samples(phase), records)
            columns, rows = evaluation.table(phase)
            tracker.log_table(f"samples/{phase}", columns, rows, step=evaluation.steps[phase])
    return evaluation.summary


def evaluate_reward_kl(job: Job, data: JobData, tracker: Tracker, training: Training) -> dict[str, Any]:
    """Reward and KL(policy || reference) on samples of the held-out prompts, and the base's reward
    (eval.reward_kl); written per prompt into the run folder and logged as a table. Off without a reward."""
    settings = job.cfg.eval.reward_kl
    trainer = training.trainer
    if (
        settings.reward is None
        or not job.cfg.eval.enabled
        or not (is_main_process() or not _plain_ddp(trainer))
    ):
        return {}
    from dpo_lab.evaluation.policy_eval import evaluate_reward_and_kl

    prompts = [row["prompt"] for row in data.data.eval]
    rows = data.data.held_out_rows() if job.cfg.eval.reward_kl.reward == "finance" else None
    found = evaluate_reward_and_kl(trainer.model, data.tokenizer, prompts, settings, rows)
    if is_main_process():
        records = [p.record() for p in found.prompts]
        atomic_write_jsonl(job.layout.reward_kl, records)
        columns = ["prompt", "reward", "kl", "base_reward"]
        tracker.log_table("reward_kl", columns, [[r[c] for c in columns] for r in records],
                          trainer.state.global_step)  # fmt: skip
    return found.summary()


def phase_seconds(
    started: float, marks: list[tuple[str, float]], before: Mapping[str, Any], after: Mapping[str, Any]
) -> dict[str, float]:
    """Seconds of each phase of the run (the closing table shows them): from the job's start, each phase
    until its mark; the held-out evaluations the Trainer ran inside training taken out of it."""
    phases, last = {}, started
    for name, at in marks:
        phases[name], last = at - last, at
    for name, metrics in (("held-out before", before), ("held-out after", after)):
        seconds = float(metrics.get("eval_runtime") or 0.0)
        if seconds:
            phases[name] = seconds
            phases["training"] = max(phases["training"] - seconds, 0.0)
    return {name: round(value, 1) for name, value in phases.items() if value >= 0.05}


def open_pruning(job: Job) -> Any:
    """The job's Optuna trial when ``prune.pruner`` is set (optuna loads only then), else None. A job of a
    packed sweep goes on with the trial its pack reported to (``PackedOutcome.pruning``), pruned where the
    pack stopped it: it asks for no second one."""
    if job.cfg.prune.pruner.value == "none":
        return None
    from hydra.core.hydra_config import HydraConfig

    from dpo_lab.sweep.pruning import handed_over_trial, open_trial

    sweep_dir = Path(HydraConfig.get().sweep.dir) if in_multirun() else None
    if job.packed is not None and job.packed.pruning is not None:
        return handed_over_trial(job.cfg.prune, sweep_dir, job.cfg.objective, job.packed.pruning,
                                 run_dir=job.layout.root)  # fmt: skip
    return open_trial(job.cfg.prune, sweep_dir, job.cfg.objective, run_dir=job.layout.root,
                      overrides=task_overrides())  # fmt: skip


def pruning_callbacks(job: Job, training: Training) -> list[Any]:
    """The callback that reports every evaluation and stops a losing job; none for a job whose pack trained
    it (the pack reported and judged its evaluations)."""
    if training.pruning is None or job.packed is not None:
        return []
    from dpo_lab.sweep.pruning import PruningCallback

    cfg = job.cfg
    return [
        PruningCallback(
            training.pruning,
            cfg.objective.metric,
            cfg.objective.direction,
            cfg.prune.min_steps,
            cfg.prune.stop_at,
        )
    ]


def pruned_fields(job: Job, training: Training) -> dict[str, Any]:
    """What metrics.json records of pruning (``status: pruned`` and where), nothing without a pruner; a job
    of a packed sweep as its pack pruned it (the handed-over trial carries the step)."""
    if training.pruning is None:
        return {}
    from dpo_lab.sweep.pruning import pruned_record

    return pruned_record(training.pruning, job.cfg.prune.stop_at)


def _plain_ddp(trainer: Any) -> bool:
    return not (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled)


def collect_result(
    job: Job,
    data: JobData,
    training: Training,
    train_out: Any,
    before: dict,
    after: dict,
    task: dict,
    reward_kl: dict | None = None,
) -> RunResult:
    """The metrics.json record: status, held-out before / after, task, speed, memory, objective, reuse."""
    trainer, cfg, plan = training.trainer, job.cfg, job.plan
    adapter = adapter_state_dict(trainer.model) if _plain_ddp(trainer) else None
    heldout = heldout_summary(job.layout)
    runtime = train_out.metrics["train_runtime"]
    return RunResult({
        "status": "completed",
        "train": train_out.metrics,
        "eval_before": before,
        "eval": after,
        "task": task,
        # with the rounds before this one of a job the halving sweeper ran on from a rung
        "train_runtime_s": round(runtime + float((plan.rung or {}).get("train_runtime_s") or 0.0), 4),
        "total_runtime_s": time.time() - job.started,
        "peak_memory_mb": peak_memory_mb(),
        "global_step": trainer.state.global_step,
        "precision": job.precision.value,
        "device": job.device,
        "data": data.data.summary(),
        "resumed_from_step": plan.checkpoint.step if plan.checkpoint else None,
        "distributed": rank_report(training.batches, adapter),
        **speed_metrics(
            trainer, training.clock, runtime, job.precision, job.device, job.started,
            pack_lora_params=job.packed.pack_lora_params if job.packed is not None else None,
        ),
        "heldout": heldout,
        "objective": objective_record(cfg.objective, after, heldout),
        "reused": dict(data.cache.last_job),
        **({"reward_kl": reward_kl} if reward_kl else {}),
        **pruned_fields(job, training),  # last: a pruned job's status is "pruned"
    })  # fmt: skip


def save(job: Job, data: JobData, training: Training, tracker: Tracker, result: RunResult) -> None:
    """Adapter, model card and metrics.json (last), the W&B summary, and the adapter as a W&B artifact."""
    cfg = job.cfg
    base = card_base(cfg.model)
    card = render_model_card(
        base=base,
        data=card_data(cfg.data, *result.pair_counts()),
        hyperparameters=card_hyperparameters(cfg, job.precision.value),
        metrics=result.card_metrics(),
        quantization=cfg.model.quantization.value,
        heldout_after=result.heldout.get(AFTER, {}),
    )
    write_final_artifacts(
        training.trainer, data.tokenizer, job.layout.root, card, result.metrics, base_name=base.name
    )
    summary = {**result.summary(), **data.data.wandb_summary()}
    tracker.summarize(summary)
    for phase, step in (("before", 0), ("after", training.trainer.state.global_step)):
        records = read_pairs(job.layout.heldout_pairs(phase))
        if records:  # the held-out evaluation per pair, as a table beside the run's metrics
            columns = list(records[0])
            tracker.log_table(
                f"heldout_pairs/{phase}", columns, [[r[c] for c in columns] for r in records], step
            )
    if cfg.logger.log_model and tracker.active:
        tracker.log_artifact(
            job.layout.adapter, name=f"adapter-{tracker.run_id}", kind="model", metadata=summary
        )


def objective_record(
    objective: ObjectiveSettings, after: Mapping[str, Any], heldout: Mapping[str, Any]
) -> dict[str, Any]:
    """metrics.json's ``objective``: the metric, its direction and value, and its interval where the metric
    has a per-pair one (``rewards/accuracies`` then counts ties as half, like every held-out number here);
    other metrics take TRL's held-out value (dpo_lab.sweep.objective)."""
    record = {"metric": objective.metric, "direction": objective.direction.value}
    per_pair = {trl: name for name, trl in TRL_NAMES.items()}.get(objective.metric)
    found = heldout.get(AFTER, {}).get(per_pair) if per_pair else None
    if found is not None and found.get("value") is not None:
        return {**record, "value": found["value"], "interval": found}
    return {**record, "value": objective_value(after, objective)}
