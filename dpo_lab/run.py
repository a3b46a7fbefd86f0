"""The one entry point: ``python -m dpo_lab.run [overrides] [-m]``.

validate -> seed -> data -> track -> build -> evaluate -> train -> evaluate -> save, top to bottom;
the logic lives in the modules named after what they build.
"""

from __future__ import annotations

import logging
import resource
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from transformers import set_seed

from dpo_lab.artifacts import atomic_write_json, write_final_artifacts
from dpo_lab.card import framework_versions, render_model_card
from dpo_lab.checkpoints import CheckpointCallback
from dpo_lab.config import ConfigError, RunConfig, register_configs, validate
from dpo_lab.data_checks import DataError
from dpo_lab.data_report import format_report
from dpo_lab.distributed import (
    BatchCounter,
    agree_on_launch_time,
    check_same_run_dir,
    drop_log_files_off_main,
    export_submitit_env,
    is_main_process,
    rank_overrides,
    rank_report,
)
from dpo_lab.guards import NonFiniteError, NonFiniteGuard
from dpo_lab.hardware import describe, device_type, resolve_precision
from dpo_lab.history import HISTORY_FILE
from dpo_lab.model import adapter_state_dict, build_lora_config, load_tokenizer
from dpo_lab.naming import run_group, run_name
from dpo_lab.objective import check_finite, objective_value
from dpo_lab.overrides import check_overrides
from dpo_lab.packing import train_or_finish
from dpo_lab.preemption import Preemption
from dpo_lab.resolvers import CONF_DIR, register_resolvers
from dpo_lab.resume import HeldOutBefore, plan_resume, resume_overrides, save_run_config
from dpo_lab.reuse import job_cache
from dpo_lab.task_eval import evaluate_task, load_task_prompts, task_metrics
from dpo_lab.throughput import StepClock, job_started_at, speed_metrics
from dpo_lab.tracking import LogHistoryCallback, MetricsCallback, Tracker, git_state, start_run
from dpo_lab.trainer import build_dpo_args, build_trainer

log = logging.getLogger("dpo_lab")

# The metrics of the before/after summary, in the order they are printed.
SUMMARY_KEYS = ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected")


def to_run_config(cfg: DictConfig) -> RunConfig:
    """The composed config as typed objects, with every invariant checked (raises ConfigError)."""
    try:
        run_cfg = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "config"
        raise ConfigError(key, str(err).splitlines()[0]) from None
    assert isinstance(run_cfg, RunConfig)
    validate(run_cfg)
    return run_cfg


def run_identity(cfg: DictConfig, run_dir: Path) -> tuple[str, str]:
    """(name, group) for the tracker: config values win, else derived from the command line / sweep."""
    hydra_cfg = HydraConfig.get()
    choices = dict(hydra_cfg.runtime.choices)
    defaults = _default_config(hydra_cfg.job.config_name)
    default_choices = dict(defaults.hydra.runtime.choices) if defaults is not None else {}
    derived = run_name(list(hydra_cfg.overrides.task), cfg, defaults, choices, default_choices)
    name = cfg.logger.name or derived or choices.get("experiment") or "default"
    group = cfg.logger.group or run_group(hydra_cfg.sweep.dir if in_multirun() else None, name, run_dir)
    return name, group


_DEFAULT_CONFIGS: dict[str, DictConfig | None] = {}


def _default_config(config_name: str) -> DictConfig | None:
    """The config with no overrides, to name a run after what it changed; composed once per process (the
    jobs of a same-process sweep share it). None where this process has no global Hydra (some launchers):
    the run is then named after every override."""
    if config_name not in _DEFAULT_CONFIGS:
        try:
            _DEFAULT_CONFIGS[config_name] = hydra.compose(config_name=config_name, return_hydra_config=True)
        except Exception:
            return None
    return _DEFAULT_CONFIGS[config_name]


def in_multirun() -> bool:
    """True inside a job of ``-m`` (any sweeper or launcher)."""
    mode = HydraConfig.get().mode
    return mode is not None and mode.name == "MULTIRUN"


def peak_memory_mb() -> float:
    """Peak CUDA allocation on GPU, else the process's peak resident set size."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_experiment(run_cfg: RunConfig, cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    started = job_started_at()  # process start for the first job, so imports and Hydra count
    set_seed(run_cfg.seed)
    device = device_type()
    precision = resolve_precision(run_cfg.train.precision, device)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    check_same_run_dir(str(run_dir))
    plan = plan_resume(run_dir, resolved)
    if plan.completed is not None:
        return plan.completed
    if is_main_process():
        save_run_config(run_dir, resolved, list(HydraConfig.get().overrides.task))
    log.info("run folder %s; device %s, precision %s", run_dir, device, precision.value)

    tokenizer = load_tokenizer(run_cfg.model)
    cache = job_cache(run_cfg.reuse, in_multirun())  # what earlier jobs of a same-process sweep loaded
    data = cache.preference_data(run_cfg.data, run_cfg.seed, tokenizer, run_cfg.dpo.max_length, run_cfg.model)
    log.info("%s", format_report(data.summary()))
    task_prompts = load_task_prompts(run_cfg.eval, run_cfg.data, data.eval)

    name, group = run_identity(cfg, run_dir)
    tracker = start_run(
        run_cfg.logger,
        run_dir=run_dir,
        config={
            **resolved,
            "meta": {
                **describe(),
                "precision": precision.value,
                "dataset_fingerprint": data.fingerprint,
                "git": git_state(Path(__file__).parent),
                "versions": framework_versions(),
            },
        },
        name=name,
        group=group,
    )
    guard, preemption, batches = NonFiniteGuard(run_dir / "checkpoints"), Preemption(), BatchCounter()
    before_eval = HeldOutBefore(
        run_dir, run_cfg.train.eval_before_training, resuming=plan.checkpoint is not None
    )
    try:
        model = cache.base_model(run_cfg.model, precision, run_cfg.train.gradient_checkpointing)
        args = build_dpo_args(
            run_cfg.dpo,
            run_cfg.train,
            output_dir=run_dir / "checkpoints",
            seed=run_cfg.seed,
            precision=precision,
            device=device,
            run_name=name,
            eval_on_start=before_eval.pending,
        )
        clock = StepClock()
        trainer = build_trainer(
            model,
            tokenizer,
            args,
            data.train,
            data.eval,
            build_lora_config(run_cfg.lora),
            callbacks=[
                MetricsCallback(tracker, peak_memory_mb),
                CheckpointCallback(run_cfg.train.save_total_limit),
                guard,
                preemption.callback(),
                before_eval,
                clock,
                LogHistoryCallback(run_dir / HISTORY_FILE),
            ],
            micro_batch_observers=[guard.observe, batches.observe],
            prepared=cache.prepared_datasets(run_cfg, precision),
        )
        with preemption.armed():
            train_out = train_or_finish(trainer, plan.checkpoint and str(plan.checkpoint.path))
        before = before_eval.metrics
        if preemption.stopped_training:
            tracker.finish_preempted(trainer.state.global_step, preemption.exit_code)
            preemption.exit_for_requeue()
        after = trainer.evaluate(metric_key_prefix="eval")
        check_finite(train_out.metrics, after)  # a diverged job is a failed job
        plain_ddp = not (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled)
        # one process generates and writes the samples; sharded weights (FSDP, ZeRO) need every rank
        task = {}
        if is_main_process() or not plain_ddp:
            task = evaluate_task(
                trainer.model, tokenizer, task_prompts, run_cfg.eval,
                run_dir=run_dir, tracker=tracker, step=trainer.state.global_step, seed=run_cfg.seed,
            )  # fmt: skip
        ranks = rank_report(batches, adapter_state_dict(trainer.model) if plain_ddp else None)

        runtime = train_out.metrics["train_runtime"]
        metrics = {
            "status": "completed",
            "train": train_out.metrics,
            "eval_before": before,
            "eval": after,
            "task": task,
            "train_runtime_s": runtime,
            "total_runtime_s": time.time() - started,
            "peak_memory_mb": peak_memory_mb(),
            "global_step": trainer.state.global_step,
            "precision": precision.value,
            "device": device,
            "data": data.summary(),
            "resumed_from_step": plan.checkpoint.step if plan.checkpoint else None,
            "distributed": ranks,
            **speed_metrics(trainer, clock, runtime, precision, device, started),
            "objective": {
                "metric": run_cfg.objective.metric,
                "direction": run_cfg.objective.direction.value,
                "value": objective_value(after, run_cfg.objective),
            },
            "reused": dict(cache.last_job),
        }
        card = render_model_card(
            base_model=run_cfg.model.name_or_path,
            dataset=run_cfg.data.path,
            hyperparameters=_card_hyperparameters(run_cfg, precision.value),
            metrics={
                **held_out(before, "eval_before/"),
                **held_out(after, "eval/"),
                "train/loss": train_out.metrics.get("train_loss"),
                **task_metrics(task),
                "tokens_per_second": metrics["tokens_per_second"],
            },
            quantization=run_cfg.model.quantization.value,
        )
        write_final_artifacts(trainer, tokenizer, run_dir, card, metrics)
        summary = {**run_summary(metrics), **data.wandb_summary()}
        tracker.summarize(summary)
        if run_cfg.logger.log_model and tracker.active:
            tracker.log_artifact(
                run_dir / "adapter", name=f"adapter-{tracker.run.id}", kind="model", metadata=summary
            )
    except BaseException as err:
        if not preemption.stopped_training:  # a preempted run exits on purpose, its checkpoint saved
            record_failure(run_dir, err, tracker)
        raise
    finally:
        cache.end_job()
    tracker.finish(exit_code=0)
    if is_main_process():
        print_summary(run_dir, before, after, metrics)
    return metrics


def run_summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The flat final metrics for the W&B summary (the same numbers as metrics.json)."""
    return {
        **held_out(metrics["eval_before"], "eval_before/"),
        **held_out(metrics["eval"], "eval/"),
        "train/mean_loss": metrics["train"].get("train_loss"),
        **task_metrics(metrics.get("task", {})),
        "tokens_per_second": metrics["tokens_per_second"],
        "peak_memory_mb": metrics["peak_memory_mb"],
        "train_runtime_s": metrics["train_runtime_s"],
        "global_step": metrics["global_step"],
        "status": metrics["status"],
        **{key: metrics.get(key) for key in ("mfu", "seconds_per_step", "time_to_first_step_s")},
    }


def record_failure(run_dir: Path, err: BaseException, tracker: Tracker) -> None:
    """Mark the run failed in metrics.json and W&B, keeping the error, and finish the W&B run."""
    status = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
    error = f"{type(err).__name__}: {err}".strip()
    log.error("run %s: %s", status, error)
    if is_main_process():
        atomic_write_json(run_dir / "metrics.json", {"status": status, "error": error})
    tracker.summarize({"status": status, "error": error[:2000]})
    tracker.finish(exit_code=1)


def held_out(metrics: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The ``eval_*`` entries of Trainer.evaluate()'s output, renamed ``<prefix><name>``."""
    return {prefix + k[5:]: v for k, v in metrics.items() if k.startswith("eval_")}


def _card_hyperparameters(run_cfg: RunConfig, precision: str) -> dict[str, Any]:
    dpo, lora, train = run_cfg.dpo, run_cfg.lora, run_cfg.train
    return {
        "dpo.beta": dpo.beta, "dpo.loss_type": ",".join(dpo.loss_type), "dpo.max_length": dpo.max_length,
        "lora.r": lora.r, "lora.alpha": lora.alpha, "lora.dropout": lora.dropout,
        "lora.target_modules": ",".join(lora.target_modules),
        "model.quantization": run_cfg.model.quantization.value,
        "train.learning_rate": train.learning_rate,
        "train.per_device_train_batch_size": train.per_device_train_batch_size,
        "train.gradient_accumulation_steps": train.gradient_accumulation_steps,
        "train.max_steps": train.max_steps, "train.num_train_epochs": train.num_train_epochs,
        "precision": precision, "seed": run_cfg.seed,
    }  # fmt: skip


def print_summary(run_dir: Path, before: dict, after: dict, metrics: dict) -> None:
    """The CLI's closing table: held-out metrics before and after training."""
    rows = [f"{'held-out metric':<22}{'before':>10}{'after':>10}"]
    for key in SUMMARY_KEYS:
        b, a = before.get(f"eval_{key}"), after.get(f"eval_{key}")
        rows.append(f"{key:<22}{_num(b):>10}{_num(a):>10}")
    task = metrics.get("task", {})
    if "accuracy_after" in task:
        rows.append(
            f"{'task accuracy':<22}{_num(task['accuracy_before']):>10}{_num(task['accuracy_after']):>10}"
        )
    rows.append(
        f"steps {metrics['global_step']}, {metrics['train_runtime_s']:.1f} s training, "
        f"{metrics['tokens_per_second']:.0f} tokens/s, precision {metrics['precision']}"
    )
    rows.append(f"run folder: {run_dir}")
    print("\n".join(rows))


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def train(cfg: DictConfig) -> float | None:
    register_resolvers()  # a submitit job runs this in a fresh process
    export_submitit_env()
    drop_log_files_off_main()
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    in_sweep = in_multirun()
    try:
        metrics = run_experiment(to_run_config(cfg), cfg, run_dir)
    except ConfigError as err:  # also raised late, e.g. a tokenizer without a chat template
        if not in_sweep:
            exit_with_config_error(err)
        _record_failed_job(run_dir, err)
        return None
    except Exception as err:
        if not in_sweep and isinstance(err, NonFiniteError):
            print(f"dpo_lab: training stopped: {err}", file=sys.stderr)
            sys.exit(1)
        if not in_sweep:
            raise
        # one failed job (bad value, NaN, out of memory) must not stop the rest of the sweep
        log.exception("job %s failed; the sweep goes on", hydra_cfg.job.num)
        _record_failed_job(run_dir, err)
        return None  # Optuna's sweeper records a trial without a number as failed and goes on
    return metrics["objective"]["value"]


def _record_failed_job(run_dir: Path, err: BaseException) -> None:
    path = run_dir / "metrics.json"
    if not path.exists() and is_main_process():  # errors before training started: nothing recorded yet
        atomic_write_json(path, {"status": "failed", "error": f"{type(err).__name__}: {err}"})


def exit_with_config_error(err: ConfigError) -> None:
    kind = "invalid data" if isinstance(err, DataError) else "invalid config"
    print(f"dpo_lab: {kind}: {err}", file=sys.stderr)
    sys.exit(2)


def launch_args(args: list[str]) -> list[str]:
    """``resume=<folder>`` expanded; one launch time for all processes; no Hydra files from other ranks."""
    args = resume_overrides(args)
    agree_on_launch_time(args)
    return [*args, *rank_overrides()]


def main() -> None:
    """Console entry: friendly one-line errors for bad overrides, then Hydra."""
    register_configs()
    register_resolvers()
    try:
        sys.argv[1:] = launch_args(sys.argv[1:])
        check_overrides(sys.argv[1:])
    except ConfigError as err:
        exit_with_config_error(err)
    train()


if __name__ == "__main__":
    main()
