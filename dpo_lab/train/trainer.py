"""The only module that imports trl: DPOSettings from the schemas, and the DPOTrainer."""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from copy import copy as shallow_copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import trl
from datasets import Dataset
from peft import LoraConfig as PeftLoraConfig
from torch.utils.data import Sampler, SequentialSampler
from transformers import PreTrainedModel, PrinterCallback, TrainerCallback
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from dpo_lab.config.schemas import DPOSettings, TrainSettings
from dpo_lab.errors import ConfigError
from dpo_lab.runs.redaction import REDACTED, is_secret_key, redact
from dpo_lab.runtime.precision import Precision
from dpo_lab.train.batching import PAIR_ID_COLUMNS, dpo_length_sampler, pair_token_lengths
from dpo_lab.train.library import TrainerHooks, pending_metrics, set_logged_train_tokens
from dpo_lab.train.losses import (
    PairLogps,
    PairLoss,
    custom_loss,
    is_custom,
    plan_losses,
    sequence_logps,
    sigmoid_dpo,
)
from dpo_lab.train.reference import (
    fill_reference_logps,
    first_epoch_draws,
    pairs_per_step,
    with_reference_logps,
)

log = logging.getLogger(__name__)


def build_dpo_args(
    dpo: DPOSettings,
    train: TrainSettings,
    *,
    output_dir: Path,
    seed: int,
    precision: Precision,
    device: str,
    run_name: str | None = None,
    eval_on_start: bool = False,
) -> trl.DPOConfig:
    """trl.DPOConfig from the ``dpo`` and ``train`` groups; precision and checkpointing are ours, not TRL's
    defaults (TRL turns on bf16 and gradient checkpointing everywhere, ~10x slower on CPUs without bf16)."""
    kwargs: dict[str, Any] = {
        "output_dir": str(output_dir),
        "run_name": run_name,
        "seed": seed,
        "data_seed": seed,
        "report_to": "none",  # dpo_lab owns the W&B run (tracking.py)
        "use_cpu": device == "cpu",
        "bf16": precision is Precision.bf16,
        "fp16": precision is Precision.fp16,
        # DPO
        "beta": dpo.beta,
        **_trl_losses(dpo),
        "max_length": dpo.max_length,
        "label_smoothing": dpo.label_smoothing,
        "precompute_ref_log_probs": dpo.precompute_ref_log_probs,
        # optimisation
        "learning_rate": train.learning_rate,
        "per_device_train_batch_size": train.per_device_train_batch_size,
        "per_device_eval_batch_size": train.per_device_eval_batch_size,
        "gradient_accumulation_steps": train.gradient_accumulation_steps,
        "num_train_epochs": train.num_train_epochs,
        "max_steps": train.max_steps,
        "lr_scheduler_type": train.lr_scheduler_type,
        "warmup_steps": train.warmup_steps,
        "weight_decay": train.weight_decay,
        "max_grad_norm": train.max_grad_norm,
        "optim": train.optim,
        "activation_checkpointing": train.gradient_checkpointing,
        "train_sampling_strategy": "group_by_length" if train.group_by_length else "random",
        "dataloader_num_workers": train.dataloader_num_workers,
        # schedule of logs, evals and checkpoints
        "logging_steps": train.logging_steps,
        "eval_strategy": "steps" if train.eval_steps > 0 else "no",
        "eval_on_start": eval_on_start,  # the held-out metrics "before" (see before_eval.HeldOutBefore)
        "eval_steps": train.eval_steps if train.eval_steps > 0 else None,
        "save_strategy": "steps" if train.save_steps > 0 else "no",
        "save_steps": train.save_steps if train.save_steps > 0 else 500,
        # dpo_lab.train.checkpoints rotates (train.save_total_limit) once a checkpoint is known to be complete
        "save_total_limit": None,
        "include_num_input_tokens_seen": "non_padding",
        "disable_tqdm": True,
    }
    check_extra_keys(train.extra)
    return _dpo_config({**kwargs, **train.extra})


def _trl_losses(dpo: DPOSettings) -> dict[str, Any]:
    """The losses TRL computes: all of ``dpo.loss_type`` when none is custom, else TRL's part of the plan."""
    if not any(is_custom(name) for name in dpo.loss_type):
        weights = list(dpo.loss_weights) if dpo.loss_weights is not None else None
        return {"loss_type": list(dpo.loss_type), "loss_weights": weights}
    plan = plan_losses(dpo.loss_type, dpo.loss_weights)
    return {"loss_type": plan.trl_types, "loss_weights": plan.trl_weights}


def _dpo_config(kwargs: dict[str, Any]) -> trl.DPOConfig:
    try:
        return trl.DPOConfig(**kwargs)
    except (ValueError, TypeError) as err:  # a value TrainingArguments refuses (e.g. in train.extra)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError("train", f"trl.DPOConfig refuses these settings: {first}") from None


def redacted_args(args: trl.DPOConfig) -> trl.DPOConfig:
    """A shallow copy of ``args`` whose secret-looking fields (and keys of dict fields) are redacted."""
    copy = shallow_copy(args)
    for f in dataclasses.fields(args):
        value = getattr(args, f.name)
        if is_secret_key(f.name) and value not in (None, ""):
            setattr(copy, f.name, REDACTED)
        elif isinstance(value, dict):
            setattr(copy, f.name, redact(value))
    return copy


def check_extra_keys(extra: Mapping[str, Any]) -> None:
    """ConfigError naming ``train.extra.<key>`` for a key that is no field of trl.DPOConfig (whose
    constructor would fail with a TypeError after the model loaded)."""
    known = {f.name for f in dataclasses.fields(trl.DPOConfig) if f.init}
    for key in extra:
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f"did you mean train.extra.{close[0]}? " if close else ""
            raise ConfigError(
                f"train.extra.{key}",
                f"no such trl.DPOConfig / TrainingArguments field; {hint}see trl.DPOConfig for the fields",
            )


@dataclass
class PreparedDatasets:
    """Datasets DPOTrainer prepared in an earlier job of a sweep, by split name (``train``, ``eval``).

    ``tokenized``: the output of TRL's dataset preparation (chat template, tokenisation, length filter).
    ``with_ref_log_probs``: the same plus TRL's precomputed ``ref_chosen_logps`` / ``ref_rejected_logps``.
    The owner (dpo_lab.reuse.cache) hands a job only the slots whose cache key matches that job exactly; an
    empty slot is filled by this job for the next one. ``computed`` counts what this job computed itself.
    """

    tokenized: dict[str, Dataset] = field(default_factory=dict)
    with_ref_log_probs: dict[str, Dataset] = field(default_factory=dict)
    computed: dict[str, int] = field(default_factory=lambda: {"tokenized": 0, "ref_log_probs": 0})


# Called with (optimizer step being computed, micro-batch loss, micro-batch inputs) after each backward.
MicroBatchObserver = Callable[[int, torch.Tensor, Mapping[str, Any]], None]


# Called with (mode, the batch's log-probs, chosen rewards, rejected rewards, per-pair losses or None) after
# each loss computation; in evaluation the values of every process, in the data's order.
PairObserver = Callable[[str, PairLogps, torch.Tensor, torch.Tensor, torch.Tensor | None], None]


class DPOTrainer(TrainerHooks):
    """trl.DPOTrainer that

    - computes its loss through :meth:`compute_loss`: the reference log-probs come from the batch
      (precomputed, or a pack's shared reference forward) or are computed here first, exactly as TRL would;
      TRL then computes its losses and metrics; the policy's sequence log-probs are kept, custom losses of
      ``dpo.loss_type`` added (dpo_lab.train.losses), and each batch's per-pair values shown to
      ``pair_observers`` (the held-out per-pair records);
    - shows every training micro-batch loss to ``micro_batch_observers`` (the non-finite guard, the per-rank
      batch counter: TrainerCallbacks never see the loss of a step);
    - groups by length on its tokenised pair columns (see batching.py); evaluation stays sequential, so
      held-out metrics come from the same batches with or without grouping;
    - takes datasets an earlier job of the same sweep prepared (``prepared``, see :class:`PreparedDatasets`).
    """

    def __init__(
        self,
        *args: Any,
        micro_batch_observers: Sequence[MicroBatchObserver] = (),
        prepared: PreparedDatasets | None = None,
        dpo: DPOSettings | None = None,
        **kwargs: Any,
    ):
        self._prepared = prepared  # set before super().__init__, which prepares the datasets
        super().__init__(*args, **kwargs)
        self.micro_batch_observers = list(micro_batch_observers)
        self.pair_observers: list[PairObserver] = []
        self.reference_misses = 0  # training pairs whose precomputed reference log-prob was missing
        self.dpo = dpo if dpo is not None else DPOSettings(beta=self.beta)
        self.loss_plan = plan_losses(self.dpo.loss_type, self.dpo.loss_weights)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = self.with_reference(inputs)
        recorder = _LogProbsRecorder(model)
        saved, self.precompute_ref_logps = self.precompute_ref_logps, True  # TRL reads them from the batch
        try:
            out = super().compute_loss(recorder, inputs, return_outputs, num_items_in_batch)
        finally:
            self.precompute_ref_logps = saved
        loss, outputs = out if return_outputs else (out, None)
        policy = sequence_logps(recorder.log_probs, inputs["completion_mask"], self.ld_alpha).chunk(2, dim=0)
        logps = PairLogps(*policy, inputs["ref_chosen_logps"], inputs["ref_rejected_logps"])
        extra, first = custom_loss(self.loss_plan, logps, self.dpo)
        if self.loss_plan.custom:
            loss = loss + extra
        if first is not None and self.loss_plan.all_custom:
            chosen, rejected = first.chosen_rewards.detach(), first.rejected_rewards.detach()
            self._replace_reward_metrics(chosen, rejected)
        else:
            chosen, rejected = (
                self.beta * logps.chosen_logratios.detach(),
                self.beta * logps.rejected_logratios.detach(),
            )
        if self.pair_observers:
            self._show_pairs(logps, chosen, rejected, first)
        return (loss, outputs) if return_outputs else loss

    def _show_pairs(self, logps: PairLogps, chosen: Any, rejected: Any, first: PairLoss | None) -> None:
        """The batch's per-pair values to the pair observers; in evaluation gathered across processes, in
        the data's order (accelerate's gather_for_metrics drops the padding of the last batch)."""
        losses = (
            first.losses.detach()
            if first is not None and self.loss_plan.all_custom
            else self._trl_pair_losses(logps)
        )
        mode = "train" if self.model.training else "eval"
        if mode == "eval":
            gather = self.accelerator.gather_for_metrics
            logps = PairLogps(*(gather(t.detach()) for t in dataclasses.astuple(logps)))
            chosen, rejected = gather(chosen), gather(rejected)
            losses = gather(losses) if losses is not None else None
        for observe in self.pair_observers:
            observe(mode, logps, chosen, rejected, losses)

    def _trl_pair_losses(self, logps: PairLogps) -> torch.Tensor | None:
        """Each pair's loss where it is TRL's plain ``sigmoid`` (DPO); None for other TRL losses, whose
        per-pair value dpo_lab does not recompute."""
        plain = (
            list(self.loss_types) == ["sigmoid"] and list(self.loss_weights) == [1.0]
            and self.f_divergence_type == "reverse_kl"
            and not self.use_weighting and not self.aux_loss_enabled
        )  # fmt: skip
        if not plain:
            return None
        return sigmoid_dpo(logps, DPOSettings(beta=self.beta)).losses.detach()

    def with_reference(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The batch with its reference log-probs: those it carries, or TRL's reference forward (the base
        with the adapter disabled) run here, before the policy's, for the batch or for the rows whose
        precomputed value is missing (see dpo_lab.train.reference)."""
        inputs, missed = with_reference_logps(
            inputs, lambda batch: self.compute_ref_log_probs(self.model, batch)
        )
        if missed:
            if not self.reference_misses:
                log.warning(
                    "%d training pair(s) drawn without a precomputed reference log-prob: computed in the "
                    "step (the same values, only slower; dpo_lab predicted the sampler's draw wrongly)",
                    missed,
                )  # fmt: skip
            self.reference_misses += missed
        return inputs

    def _replace_reward_metrics(self, chosen: torch.Tensor, rejected: torch.Tensor) -> None:
        """The custom loss's rewards in place of TRL's (beta-scaled log-ratios) in the metrics just kept."""
        metrics = pending_metrics(self, "train" if self.model.training else "eval")
        gather = self.accelerator.gather
        values = {
            "rewards/chosen": gather(chosen).mean(),
            "rewards/rejected": gather(rejected).mean(),
            "rewards/accuracies": gather((chosen > rejected).float()).mean(),
            "rewards/margins": gather(chosen - rejected).mean(),
        }
        for name, value in values.items():
            if metrics.get(name):
                metrics[name][-1] = float(value.item())

    def prepare_split(self, dataset, processing_class, args, dataset_name):
        """TRL's preparation (chat template, tokenisation), or the one an earlier sweep job made."""
        if self._prepared is None:
            return self._tokenized_once(dataset, processing_class, args, dataset_name)
        cached = self._prepared.tokenized.get(dataset_name)
        if cached is None:
            cached = self._tokenized_once(dataset, processing_class, args, dataset_name)
            self._prepared.tokenized[dataset_name] = cached
            self._prepared.computed["tokenized"] += 1
        return cached

    def _tokenized_once(self, dataset, processing_class, args, dataset_name):
        """A dataset whose pairs dpo_lab already tokenised while checking them (``prompt_ids``,
        ``chosen_ids``, ``rejected_ids``, split as TRL splits them: data_report.pair_token_ids) is not
        tokenised again; only TRL's last step applies, dropping pairs whose prompt alone fills
        ``max_length`` (with ``keep_start`` truncation the collator would cut every response token).
        Anything else goes through TRL's own preparation."""
        if not set(PAIR_ID_COLUMNS) <= set(getattr(dataset, "column_names", None) or ()):
            return super().prepare_split(dataset, processing_class, args, dataset_name)
        if args.max_length is None or args.truncation_mode != "keep_start":
            return dataset
        limit = args.max_length
        lengths = pair_token_lengths(dataset)
        keep = [i for i, (prompt, _, _) in enumerate(lengths) if prompt < limit]
        return dataset if len(keep) == len(dataset) else dataset.select(keep)

    def reference_logps_of_split(self, dataset, name, batch_size):
        """TRL's reference log-probs of the pairs this run uses: every held-out pair, and the training pairs
        drawn before ``max_steps`` ends (the rest stay NaN); those an earlier job of the sweep computed on the
        same inputs are taken from it."""
        needed = self.training_draws(dataset) if name == "train" else None
        known = self._prepared.with_ref_log_probs.get(name) if self._prepared is not None else None
        trl_precompute = super().reference_logps_of_split
        filled, computed = fill_reference_logps(
            dataset, known, needed, lambda part: trl_precompute(part, name, batch_size)
        )
        if needed is not None and computed:
            log.info(
                "reference log-probs: computed for the %d of %d training pairs that train.max_steps=%d draws "
                "(%d new)", len(needed), len(dataset), self.args.max_steps, computed,
            )  # fmt: skip
        if self._prepared is not None and computed:
            self._prepared.with_ref_log_probs[name] = filled
            self._prepared.computed["ref_log_probs"] += 1
        return filled

    def training_draws(self, dataset: Dataset) -> list[int] | None:
        """The training rows this run draws before ``max_steps`` ends, from a fresh copy of the sampler
        training will use; None when it uses them all (or the order is not known ahead)."""
        seedable = self.args.accelerator_config.use_seedable_sampler
        data_seed = self.args.data_seed if seedable else None
        draws = self.args.max_steps * pairs_per_step(self.args)
        return first_epoch_draws(self.train_sampler(dataset), len(dataset), draws, data_seed)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        for observe in self.micro_batch_observers:
            observe(self.state.global_step + 1, loss, inputs)
        return loss

    def after_save(self, folder: Path) -> None:
        # training_args.bin pickles every argument, secrets passed in train.extra (hub_token...) included:
        # each checkpoint keeps a copy with their values redacted (nothing reads them back on resume)
        path = folder / "training_args.bin"
        if path.is_file() and self.args.should_save:
            torch.save(redacted_args(self.args), path)

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """No batch once ``max_steps`` is reached: the Trainer checks the step limit only after a step, so a
        run resumed from its final checkpoint would otherwise train one step more than it was asked to (and
        past the end of its learning-rate schedule). An empty list ends the epoch loop without a step."""
        if 0 < self.state.max_steps <= self.state.global_step:
            self.control.should_training_stop = True
            return [], None
        return super().get_batch_samples(epoch_iterator, num_batches, device)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # the Trainer's train_loss is the mean over this train() call only; a resumed run reports the run's
        # (a packed sweep logs its jobs' end of training itself, outside train(): it computes the mean loss)
        unlogged = self.unlogged_loss()
        if "train_loss" in logs and unlogged is not None:  # in place: it is train()'s output metrics
            logs["train_loss"] = run_mean_loss(self.state.log_history, unlogged, self.state.global_step)
        super().log(logs, start_time)

    def train(self, resume_from_checkpoint: str | None = None, **kwargs: Any):
        # TRL counts the logged `num_tokens` in the trainer, not in the checkpointed state: carry it over
        if resume_from_checkpoint:
            set_logged_train_tokens(self, logged_train_tokens_at(Path(resume_from_checkpoint)))
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _groups_by_length(self, dataset: Dataset | None) -> bool:
        return self.args.train_sampling_strategy == "group_by_length" and set(PAIR_ID_COLUMNS) <= set(
            getattr(dataset, "column_names", None) or ()
        )

    def train_sampler(self, train_dataset: Dataset | None = None) -> Sampler | None:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if not self._groups_by_length(dataset):
            return super().train_sampler(train_dataset)
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return dpo_length_sampler(dataset, self.args.per_device_train_batch_size, self.args.max_length, seed)

    def eval_sampler(self, eval_dataset: Dataset) -> Sampler | None:
        if not self._groups_by_length(eval_dataset):
            return super().eval_sampler(eval_dataset)
        return SequentialSampler(eval_dataset) if self.args.world_size <= 1 else None


class _LogProbsRecorder:
    """Stands in for the model in TRL's loss: calls it and keeps the per-token log-probs of the first call
    (the policy forward; TRL's deprecated return_outputs path calls again for logits)."""

    def __init__(self, model: Any):
        self.model = model
        self.log_probs: torch.Tensor | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        outputs = self.model(*args, **kwargs)
        if self.log_probs is None:
            self.log_probs = outputs.log_probs
        return outputs

    def __getattr__(self, name: str) -> Any:  # anything else is the model's (``training``, ``config``...)
        return getattr(self.model, name)


def run_mean_loss(log_history: Sequence[Mapping[str, Any]], unlogged: float, global_step: int) -> float:
    """Mean training loss per optimizer step over the whole run, as the Trainer computes it for one
    uninterrupted ``train()`` call: the logged losses (each a mean over the steps since the log before it)
    weighted by their steps, plus the loss summed since the last log, over ``global_step`` steps."""
    total, last_step = 0.0, 0
    for entry in log_history:
        if "loss" in entry and "step" in entry:
            total += entry["loss"] * (entry["step"] - last_step)
            last_step = entry["step"]
    return (total + unlogged) / max(global_step, 0.001)


def logged_train_tokens_at(checkpoint: Path) -> int:
    """The last training ``num_tokens`` logged before ``checkpoint`` was saved (0 if none was logged)."""
    history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    logged = [entry["num_tokens"] for entry in history if "num_tokens" in entry]
    return int(logged[-1]) if logged else 0


def build_trainer(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    args: trl.DPOConfig,
    train_dataset: Dataset,
    eval_dataset: Dataset | None,
    peft_config: PeftLoraConfig,
    callbacks: list[TrainerCallback] | None = None,
    micro_batch_observers: Sequence[MicroBatchObserver] = (),
    prepared: PreparedDatasets | None = None,
    dpo: DPOSettings | None = None,
) -> DPOTrainer:
    """DPOTrainer on the base model + a fresh LoRA adapter. With no ``ref_model``, TRL computes the
    reference log-probs with the adapter disabled: the base model is the reference, never a second copy.
    On resume the adapter is built fresh like this and ``train(resume_from_checkpoint=...)`` loads the
    checkpoint's adapter weights into it; the base weights are never touched. ``prepared`` lends datasets
    an earlier job of the same sweep prepared."""
    trainer = DPOTrainer(
        model=model,
        ref_model=None,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
        micro_batch_observers=micro_batch_observers,
        prepared=prepared,
        dpo=dpo,
    )
    # every log as a raw dict on stdout: the numbers go to log_history.jsonl / W&B, the console gets a bar
    trainer.remove_callback(PrinterCallback)
    return trainer
