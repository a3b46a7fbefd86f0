"""Packed training: K LoRA adapters of K sweep jobs trained together over one frozen base model.

One optimizer step for the whole pack. Each micro-batch is replicated K times along the batch dimension;
the frozen base layers run once over all K copies, and every LoRA layer adds adapter ``k``'s update to the
rows of copy ``k`` only (:func:`adapters_by_slice`; PEFT's own mixed batches, ``adapter_names=``, are for
inference only). The reference log-probs are computed once per micro-batch with every adapter off (or read
from the precomputed columns). Each job's loss and logged metrics come from TRL: the job's own DPOTrainer
runs its own ``_compute_loss`` (its beta, loss types, weights, label smoothing) on its slice of the packed
forward's outputs. The adapters' parameters are disjoint, so the backward of the summed loss gives each
adapter exactly its own gradient; then each job clips its own gradient norm and steps its own optimizer and
learning-rate schedule (built by TRL / transformers from the job's arguments, so ``optim``, weight decay,
scheduler and warm-up are the job's). A job whose loss or gradient goes non-finite leaves the pack alone.

With a pruner (``prune=...``), the pack's jobs step together, so they reach every held-out evaluation at the
same step: there each job still training reports its objective, then the pruner judges them all at once
(:class:`PackJudge`, dpo_lab.sweep.pruning.PackPruning: synchronous successive halving). A pruned job leaves
the pack there: its optimizer and its forward and backward stop, the others go on as if it had never been
in the pack; its adapter, log history and step are kept, and its outcome says where it stopped.

Besides dpo_lab.train.trainer, the only module that reaches into TRL (the DPOTrainer's loss and logging
methods); it imports trl for one helper only.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
from datasets import Dataset
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from transformers import PreTrainedModel, TrainerState
from transformers.tokenization_utils_base import PreTrainedTokenizerBase
from transformers.trainer_utils import speed_metrics
from trl.trainer.utils import disable_dropout_in_model

from dpo_lab.config.schemas import DPOSettings
from dpo_lab.errors import NonFiniteError
from dpo_lab.model.loading import adapter_state_dict, strip_adapters
from dpo_lab.packed.handoff import PackedOutcome
from dpo_lab.packed.slicing import _SliceOfOutputs, adapters_by_slice
from dpo_lab.reuse.cache import ModelSnapshot
from dpo_lab.train.heldout_pairs import HeldOutPairs
from dpo_lab.train.library import (
    count_input_tokens,
    logged_train_tokens,
    mark_accelerate_prepared,
    pending_metrics,
    prepare_inputs,
    set_logged_train_tokens,
    set_pending_metrics,
    start_input_token_count,
)
from dpo_lab.train.preemption import Preemption
from dpo_lab.train.reference import REF_COLUMNS, with_reference_logps
from dpo_lab.train.trainer import DPOTrainer, PreparedDatasets, build_trainer

if TYPE_CHECKING:  # the store reads PackedOutcome back: imported for annotations only
    from dpo_lab.packed.store import PackStore

log = logging.getLogger(__name__)


class PackJudge(Protocol):
    """What prunes a pack's jobs (dpo_lab.sweep.pruning.PackPruning): after an optimizer step, the jobs that
    evaluated there (index in the pack -> their trainer's held-out metrics) report, and it returns the
    indices of the jobs it stops there."""

    def judge(self, step: int, evaluated: dict[int, dict[str, Any]], max_steps: int) -> list[int]: ...


@dataclass
class PackJob:
    """What one job brings to a pack: its TRL arguments and its LoRA config."""

    args: Any  # trl.DPOConfig of the job (build_dpo_args)
    lora: PeftLoraConfig
    dpo: DPOSettings | None = None  # the job's dpo settings (custom losses and their parameters)


@dataclass
class _Member:
    name: str  # adapter name in the packed model
    trainer: DPOTrainer
    params: list[torch.nn.Parameter]
    result: PackedOutcome
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    tr_loss: float = 0.0
    total_loss: float = 0.0
    last_logged: int = 0
    pairs: HeldOutPairs | None = None  # the job's held-out evaluations per pair
    stopped_at: float | None = None  # when the pruner stopped it (time.time())

    @property
    def alive(self) -> bool:
        """Not failed: it has an adapter to hand over (a pruned job too)."""
        return self.result.error is None

    @property
    def training(self) -> bool:
        """Still stepping: neither failed nor pruned."""
        return self.alive and self.result.pruned_at_step is None


def adapter_names(count: int) -> list[str]:
    return [f"job{i}" for i in range(count)]


class Pack:
    """K jobs' adapters on one base model, each job with its own DPOTrainer (see the module docstring).

    Built by :func:`build_pack`; :meth:`train` runs the packed optimisation and returns one
    :class:`PackedOutcome` per job, in the order of the jobs.
    """

    def __init__(self, model: PeftModel, members: list[_Member], in_turn: bool = False):
        self.model = model
        self.members = members
        self.in_turn = in_turn  # each adapter's forward and backward over the micro-batch in turn
        self.pruning: PackJudge | None = None  # set by train(pruning=...)

    @property
    def step_name(self) -> str:
        return "in_turn" if self.in_turn else "together"  # hydra.launcher.step's names

    @property
    def leader(self) -> DPOTrainer:
        return self.members[0].trainer

    def train(
        self,
        store: PackStore | None = None,
        save_steps: int = 0,
        preemption: Preemption | None = None,
        pruning: PackJudge | None = None,
    ) -> list[PackedOutcome]:
        """The packed optimisation. With ``store``, the pack's state is saved every ``save_steps`` optimizer
        steps and at the last one, and training resumes from the store's newest checkpoint; a preemption
        signal (``preemption``) saves a checkpoint at the next step boundary and exits for requeue;
        ``pruning`` judges the jobs at their held-out evaluations and stops the ones that lost."""
        self.pruning = pruning
        leader = self.leader
        args = leader.args
        dataloader = leader.get_train_dataloader()
        (num_epochs, updates_per_epoch, _, num_train_samples, _, steps_in_epoch, max_steps) = (
            leader.set_initial_training_values(args, dataloader)
        )
        for member in self.members:
            self._start(member, max_steps, num_epochs)
        saved = store.latest_checkpoint() if store is not None else None
        done = self._restore(saved) if saved is not None else 0  # optimizer steps taken before
        start_time = time.time()
        self.model.train()
        for epoch in range(done // max(updates_per_epoch, 1), num_epochs):
            if done >= max_steps or not self._training():
                break
            if saved is not None and epoch * updates_per_epoch >= done:
                # the checkpoint ends the epoch before: the random state comes back before this epoch's
                # iterator is made (making it draws from torch's generator, as it did in the run that saved)
                set_rng_state(saved["rng"])
                saved = None
            if hasattr(dataloader, "set_epoch"):
                dataloader.set_epoch(epoch)
            batches = iter(dataloader)
            step = -1
            for update in range(updates_per_epoch):
                accumulation = args.gradient_accumulation_steps
                remainder = steps_in_epoch % accumulation or accumulation
                num_batches = accumulation if update != updates_per_epoch - 1 else remainder
                samples, _ = leader.get_batch_samples(batches, num_batches, args.device)
                step += len(samples)
                if epoch * updates_per_epoch + update < done:  # trained before the checkpoint
                    continue
                if saved is not None:  # the data order is replayed: now the random state of the step
                    set_rng_state(saved["rng"])
                    saved = None
                for member in self._stepping():
                    member.trainer.control = member.trainer.callback_handler.on_step_begin(
                        member.trainer.args, member.trainer.state, member.trainer.control
                    )
                for inputs in samples:
                    self._micro_step(inputs, len(samples))
                self._optimizer_step(epoch + (step + 1) / steps_in_epoch, start_time)
                done += 1
                self._maybe_checkpoint(store, done, save_steps, max_steps, preemption)
                if done >= max_steps or not self._training():
                    break
        return [self._finish(m, start_time, num_train_samples) for m in self.members]

    def _training(self) -> bool:
        """Some job is still in the pack (not failed, not pruned) and has steps to take."""
        stepping = self._stepping()
        return bool(stepping) and not all(m.trainer.control.should_training_stop for m in stepping)

    def _maybe_checkpoint(
        self, store: PackStore | None, done: int, save_steps: int, max_steps: int, preemption: Any
    ) -> None:
        if store is None:
            return
        signalled = preemption is not None and preemption.signum is not None
        if signalled or done == max_steps or (save_steps > 0 and done % save_steps == 0):
            store.save_checkpoint(done, self.state_dict(done))
        if signalled:
            log.warning("preemption signal: the pack stopped after step %d, its checkpoint saved", done)
            preemption.stopped_at_step = done
            preemption.exit_for_requeue()

    def state_dict(self, done: int) -> dict[str, Any]:
        """Everything a resumed pack needs after ``done`` optimizer steps (plain values and tensors)."""
        return {"step": done, "rng": rng_state(), "members": [self._member_state(m) for m in self.members]}

    def _member_state(self, member: _Member) -> dict[str, Any]:
        trainer = member.trainer
        adapter = get_peft_model_state_dict(self.model, adapter_name=member.name)
        return {
            "name": member.name,
            "adapter": {k: v.detach().clone() for k, v in adapter.items()},
            "optimizer": member.optimizer.state_dict(),
            "scheduler": member.scheduler.state_dict(),
            "trainer_state": json.dumps(dataclasses.asdict(trainer.state)),
            "pending_metrics": {k: list(v) for k, v in pending_metrics(trainer, "train").items()},
            "total_train_tokens": logged_train_tokens(trainer),
            "current_flos": float(trainer.current_flos),
            "losses": [member.tr_loss, member.total_loss, member.last_logged],
            "result": member.result.to_state(),
        }

    def _restore(self, saved: dict[str, Any]) -> int:
        """Load a checkpoint's state into the pack (after :meth:`_start`); returns its optimizer steps."""
        by_name = {m.name: m for m in self.members}
        if sorted(by_name) != sorted(state["name"] for state in saved["members"]):
            raise ValueError("the pack checkpoint holds other adapters than this pack")
        for state in saved["members"]:
            member = by_name[state["name"]]
            trainer = member.trainer
            set_peft_model_state_dict(self.model, state["adapter"], adapter_name=member.name)
            member.optimizer.load_state_dict(state["optimizer"])
            member.scheduler.load_state_dict(state["scheduler"])
            trainer.state = TrainerState(**json.loads(state["trainer_state"]))
            set_pending_metrics(trainer, "train", state["pending_metrics"])
            set_logged_train_tokens(trainer, state["total_train_tokens"])
            trainer.current_flos = state["current_flos"]
            member.tr_loss, member.total_loss, member.last_logged = state["losses"]
            member.result = PackedOutcome.from_state(state["result"])
        return int(saved["step"])

    def _alive(self) -> list[_Member]:
        """The jobs with an adapter to hand over: all but the failed ones (pruned ones included)."""
        return [m for m in self.members if m.alive]

    def _stepping(self) -> list[_Member]:
        """The jobs still training: neither failed nor pruned."""
        return [m for m in self.members if m.training]

    def _start(self, member: _Member, max_steps: int, num_epochs: int) -> None:
        trainer = member.trainer
        trainer.state = TrainerState()
        trainer.state.train_batch_size = trainer.args.train_batch_size
        trainer.state.compute_steps(trainer.args, max_steps)
        trainer.state.init_training_references(trainer, max_steps, num_epochs, None)
        member.optimizer = job_optimizer(trainer, self.model, member.params)
        trainer.optimizer = member.optimizer
        trainer.lr_scheduler = None
        member.scheduler = trainer.create_scheduler(num_training_steps=max_steps, optimizer=member.optimizer)
        start_input_token_count(trainer)
        trainer.control = trainer.callback_handler.on_train_begin(
            trainer.args, trainer.state, trainer.control
        )
        member.result.pack_size = len(self.members)

    def _micro_step(self, inputs: dict[str, Any], accumulation: int) -> None:
        """One micro-batch for every job still in the pack: together (one forward and one backward over the
        batch replicated once per job) or, with ``in_turn``, each job's forward and backward over the batch
        in turn, so that only one copy of the activations is alive at a time."""
        leader = self.leader
        alive = self._stepping()
        inputs = prepare_inputs(leader, inputs)
        inputs, _ = with_reference_logps(inputs, self._reference_logps)
        rows = inputs["input_ids"].shape[0]
        turns = [[member] for member in alive] if self.in_turn else [alive]
        for members in turns:
            outputs = self._forward(members, inputs, rows)
            total = None
            for k, member in enumerate(members):
                outputs_k = _SliceOfOutputs(outputs, k * rows, (k + 1) * rows)
                loss = self._job_loss(member, outputs_k, inputs, accumulation)
                if loss is not None:
                    total = loss if total is None else total + loss
            if total is not None:
                leader.accelerator.backward(total)

    def _forward(self, members: list[_Member], inputs: dict[str, Any], rows: int) -> Any:
        """The policy forward of ``members``' adapters, each on its own copy of the ``rows`` of the
        micro-batch."""
        model_kwargs = {
            k: v.repeat(len(members), *([1] * (v.dim() - 1)))
            for k, v in inputs.items()
            if k not in ("completion_mask", *REF_COLUMNS)
        }
        completion_mask = inputs["completion_mask"].repeat(len(members), 1)
        labels = model_kwargs["input_ids"].masked_fill(completion_mask == 0, -100)
        with (
            adapters_by_slice(self.model, [m.name for m in members], rows),
            self.leader.compute_loss_context_manager(),
        ):
            return self.model(**model_kwargs, labels=labels, use_cache=False, fused_lm_head=True)

    def _job_loss(
        self, member: _Member, outputs: _SliceOfOutputs, inputs: dict[str, Any], accumulation: int
    ) -> Any:
        """The job's TRL loss on its slice of the outputs over ``accumulation`` (TRL stores the metrics),
        or None if it is not finite (the job leaves the pack)."""
        trainer = member.trainer
        with trainer.compute_loss_context_manager():  # the reference comes with the inputs (computed once)
            loss = trainer.compute_loss(outputs, inputs) / accumulation
        trainer.current_flos += float(trainer.floating_point_ops(inputs))
        count_input_tokens(trainer, inputs)
        if not bool(torch.isfinite(loss.detach())):
            self._drop(member, f"loss ({float(loss.detach())})")
            return None
        member.tr_loss += float(loss.detach())
        return loss

    @torch.no_grad()
    def _reference_logps(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference (every adapter off) log-probs of a micro-batch, once for the whole pack, as TRL's
        ``compute_ref_log_probs`` computes them."""
        leader = self.leader
        model_kwargs = {k: v for k, v in inputs.items() if k not in ("completion_mask", *REF_COLUMNS)}
        labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
        rows = inputs["input_ids"].shape[0]
        with adapters_by_slice(self.model, [None], rows), leader.accelerator.autocast():
            out = self.model(**model_kwargs, labels=labels, use_cache=False, fused_lm_head=True)
        seq_len = inputs["completion_mask"].shape[1] - 1
        return out.log_probs[:, -seq_len:].sum(dim=1).chunk(2, dim=0)

    def _optimizer_step(self, epoch: float, start_time: float) -> None:
        evaluated: dict[int, dict[str, Any]] = {}  # index in the pack -> the held-out metrics at this step
        for member in self._stepping():
            trainer, args = member.trainer, member.trainer.args
            max_norm = args.max_grad_norm if args.max_grad_norm and args.max_grad_norm > 0 else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(member.params, max_norm)
            if not bool(torch.isfinite(grad_norm)):
                self._drop(member, "gradient")
                continue
            member.optimizer.step()
            learning_rate = member.scheduler.get_last_lr()[0]
            member.scheduler.step()
            member.optimizer.zero_grad(set_to_none=True)
            state = trainer.state
            state.global_step += 1
            state.epoch = epoch
            member.result.step_times.append((time.time(), time.process_time()))
            trainer.control = trainer.callback_handler.on_step_end(args, state, trainer.control)
            if trainer.control.should_log and state.global_step > member.last_logged:
                logs = {
                    "loss": member.tr_loss / (state.global_step - member.last_logged),
                    "grad_norm": float(grad_norm),
                    "learning_rate": learning_rate,
                }
                member.total_loss += member.tr_loss
                member.tr_loss = 0.0
                member.last_logged = state.global_step
                trainer.store_flos()
                trainer.log(logs, start_time)
            if trainer.control.should_evaluate:
                evaluated[self.members.index(member)] = self.evaluate(member)
        if evaluated and self.pruning is not None:
            self._prune(evaluated)
        for member in self.members:  # a dropped job's gradients must not linger
            for param in member.params:
                param.grad = None

    def _prune(self, evaluated: dict[int, dict[str, Any]]) -> None:
        """Every job that evaluated at this step has reported; the pruner's losers leave the pack here."""
        state = self.members[next(iter(evaluated))].trainer.state
        pruned = [self.members[i] for i in self.pruning.judge(state.global_step, evaluated, state.max_steps)]
        for member in pruned:
            member.result.pruned_at_step = member.trainer.state.global_step
            member.stopped_at = time.time()
            for param in member.params:
                param.grad = None
        if pruned:
            log.info("pruned at step %d, leaving the pack: %s; %d jobs still training", state.global_step,
                     ", ".join(m.name for m in pruned), len(self._stepping()))  # fmt: skip

    def evaluate(self, member: _Member) -> dict[str, float]:
        """The job's held-out evaluation, by its own trainer with its adapter active (TRL's evaluate)."""
        self.model.set_adapter(member.name)
        try:
            metrics = member.trainer.evaluate()
        finally:
            self._trainable()
            self.model.train()
        return metrics

    @torch.inference_mode()
    def generate(
        self, tokenizer: PreTrainedTokenizerBase, conversations: Sequence[Any], cfg: Any, seed: int
    ) -> tuple[list[str], dict[str, list[str]]]:
        """Greedy answers to ``conversations`` by the base (adapters off) and by every job's adapter, in one
        ``generate`` per prompt batch: the batch of ``cfg.batch_size`` prompts is replicated 1 + K times
        (the base's slice first), as :func:`dpo_lab.evaluation.generation.generate_answers` would batch it
        for one model. Returns (the base's answers, {adapter name: its answers})."""
        from transformers import set_seed

        from dpo_lab.evaluation.generation import chat_inputs, generate_kwargs

        names = [m.name for m in self._alive()]
        before: list[str] = []
        after: dict[str, list[str]] = {name: [] for name in names}
        set_seed(seed)
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(conversations), cfg.batch_size):
                batch = chat_inputs(
                    tokenizer, conversations[start : start + cfg.batch_size], self.model.device
                )
                rows, width = batch["input_ids"].shape
                copies = {k: v.repeat(1 + len(names), 1) for k, v in batch.items()}
                with adapters_by_slice(self.model, [None, *names], rows):
                    out = self.model.generate(**copies, **generate_kwargs(cfg, tokenizer))
                texts = [t.strip() for t in tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)]
                before += texts[:rows]
                for k, name in enumerate(names, start=1):
                    after[name] += texts[k * rows : (k + 1) * rows]
        finally:
            self.model.train(was_training)
        return before, after

    def _trainable(self) -> None:
        """Every adapter of the pack trainable (PEFT's set_adapter / disable_adapter turn the others off)."""
        for member in self.members:
            for param in member.params:
                param.requires_grad_(True)

    def _drop(self, member: _Member, what: str) -> None:
        step = member.trainer.state.global_step + 1
        member.result.error = NonFiniteError(step, what, None)
        for param in member.params:
            param.grad = None
        log.error("packed job %s leaves the pack: %s", member.name, member.result.error)

    def _finish(self, member: _Member, start_time: float, num_train_samples: int) -> PackedOutcome:
        trainer, result = member.trainer, member.result
        state = trainer.state
        member.total_loss += member.tr_loss
        steps = state.global_step
        if member.alive:
            if member.result.pruned_at_step is not None:  # its training time ends where it was pruned
                stopped = member.stopped_at or (member.result.step_times or [(start_time, 0.0)])[-1][0]
                start_time += time.time() - max(stopped, start_time)
            metrics = speed_metrics(
                "train",
                start_time,
                num_samples=num_train_samples * steps / max(state.max_steps, 1),
                num_steps=steps,
            )
            trainer.store_flos()
            metrics["total_flos"] = state.total_flos
            metrics["train_loss"] = member.total_loss / max(steps, 0.001)
            trainer.log(metrics)
            trainer.control = trainer.callback_handler.on_train_end(trainer.args, state, trainer.control)
            # in metrics.json's "train": how many adapters trained together in this job's step
            result.metrics = {**metrics, "pack_size": len(self.members), "pack_step": self.step_name}
            result.training_loss = metrics["train_loss"]
        result.adapter = {
            k: v.detach().clone()
            for k, v in get_peft_model_state_dict(self.model, adapter_name=member.name).items()
        }
        result.log_history = list(state.log_history)
        result.pack_lora_params = [sum(p.numel() for p in m.params) for m in self.members]
        result.heldout_after = member.pairs.final(steps) if member.pairs is not None else None
        result.global_step, result.epoch = steps, state.epoch or 0.0
        result.num_input_tokens_seen = state.num_input_tokens_seen
        return result


def rng_state() -> dict[str, Any]:
    """torch's (CPU and CUDA), Python's and NumPy's random states, as plain values and tensors."""
    import numpy as np

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype("int64")), pos, has_gauss, cached],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np

    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, cached))


def job_optimizer(trainer: DPOTrainer, model: torch.nn.Module, params: Sequence[torch.nn.Parameter]):
    """The optimizer a Trainer would build for this job (``optim``, learning rate, betas, weight decay on
    the same parameters), over the job's own adapter parameters only."""
    own = {id(p) for p in params}
    decay = set(trainer.get_decay_parameter_names(model))
    named = [(n, p) for n, p in model.named_parameters() if id(p) in own]
    groups = [
        {"params": [p for n, p in named if n in decay], "weight_decay": trainer.args.weight_decay},
        {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0},
    ]
    optimizer_cls, kwargs = trainer.get_optimizer_cls_and_kwargs(trainer.args, model)
    if any(key in kwargs for key in ("params", "model", "optimizer_dict")) or not isinstance(
        optimizer_cls, type
    ):
        raise ValueError(
            f"train.optim={trainer.args.optim} cannot be packed (it builds its own parameter groups)"
        )
    return optimizer_cls(groups, **kwargs)


def build_pack(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    jobs: Sequence[PackJob],
    train_dataset: Dataset,
    eval_dataset: Dataset | None,
    prepared: PreparedDatasets | None = None,
    in_turn: bool = False,
) -> Pack:
    """K adapters on ``model`` (the base, adapter-free), each initialised exactly as the job alone would be.

    Each job's DPOTrainer is built as in a normal run (TRL seeds with the job's seed and creates its adapter);
    the fresh adapter's weights are copied and the layer unwrapped again, then the pack's PeftModel gets one
    named adapter per job with those weights. ``prepared`` shares tokenised data and reference log-probs;
    ``in_turn``: the adapters take their forward and backward over each micro-batch one after another
    (:meth:`Pack._micro_step`).
    """
    if not jobs:
        raise ValueError("a pack needs at least one job")
    names = adapter_names(len(jobs))
    trainers, initial = [], []
    snapshot = ModelSnapshot.capture(model)
    for job in jobs:
        trainer = build_trainer(
            model, tokenizer, job.args, train_dataset, eval_dataset, job.lora, prepared=prepared, dpo=job.dpo
        )
        initial.append({k: v.detach().clone() for k, v in adapter_state_dict(trainer.model).items()})
        strip_adapters(model)
        # TRL wraps the base's forward with its fused LM head (the pack keeps the first job's wrapping), PEFT
        # leaves its config on the base: back to the base as it came, for the next job's build
        patched_forward = model.__dict__.get("forward")
        snapshot.restore(model)
        if trainer.aux_loss_enabled or trainer.ld_alpha is not None:
            raise ValueError("a job with a MoE router loss or TRL's ld_alpha (train.extra) cannot be packed")
        trainers.append(trainer)
    if patched_forward is not None:
        model.forward = patched_forward
    packed = get_peft_model(model, jobs[0].lora, adapter_name=names[0])
    for name, job in zip(names[1:], jobs[1:], strict=True):
        packed.add_adapter(name, job.lora)
    started = zip(names, trainers, initial, strict=True)
    members = [_member(packed, name, trainer, weights) for name, trainer, weights in started]
    # what Trainer.train does to a job's model: accelerate's mixed-precision forward (autocast in the training
    # precision, outputs back in fp32). Without it a bf16 pack would train in fp32, unlike its jobs alone
    trainers[0].accelerator.prepare_model(packed, device_placement=False, evaluation_mode=True)
    mark_accelerate_prepared(packed)  # the jobs' own evaluations take it as it is (no second wrapping)
    pack = Pack(packed, members, in_turn=in_turn)
    pack._trainable()
    return pack


def _member(packed: PeftModel, name: str, trainer: DPOTrainer, weights: dict[str, torch.Tensor]) -> _Member:
    """One job in the pack: its adapter ``name`` with the initial ``weights`` its trainer drew, its trainer
    pointed at the packed model, a collector of its held-out evaluations per pair."""
    params = [p for n, p in packed.named_parameters() if f".{name}." in n or n.endswith(f".{name}")]
    dtype = next(iter(weights.values())).dtype
    for param in params:
        param.data = param.data.to(dtype)
    set_peft_model_state_dict(packed, weights, adapter_name=name)
    if trainer.args.disable_dropout:
        disable_dropout_in_model(packed)
    trainer.model = trainer.model_wrapped = packed
    pairs = HeldOutPairs()
    pairs.bind(trainer.eval_dataset)
    trainer.add_callback(pairs)
    trainer.pair_observers.append(pairs.observe)
    return _Member(name=name, trainer=trainer, params=params, result=PackedOutcome(), pairs=pairs)


def unpack(model: torch.nn.Module) -> None:
    """Take every adapter of a pack off the base model again (in place)."""
    strip_adapters(model)
