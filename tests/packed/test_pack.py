"""Packed training (dpo_lab.packed.pack): K adapters trained together give each job what it gets alone."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from dpo_lab.config.fields import differs_in_pack
from dpo_lab.config.resolvers import asset_path
from dpo_lab.config.schemas import (
    DataSettings,
    DPOSettings,
    GenerationSettings,
    LoraSettings,
    ModelSettings,
    RunConfig,
    TrainSettings,
)
from dpo_lab.data.loading import load_preference_data
from dpo_lab.evaluation.generation import generate_answers
from dpo_lab.model.loading import (
    adapter_disabled,
    adapter_state_dict,
    build_lora_config,
    load_base_model,
    load_tokenizer,
    strip_adapters,
)
from dpo_lab.packed.handoff import finish_as_trained
from dpo_lab.packed.pack import PackJob, build_pack
from dpo_lab.packed.plan import PackedJobInfo, pack_key, plan_groups, why_alone
from dpo_lab.packed.slicing import adapters_by_slice
from dpo_lab.reuse.cache import ModelSnapshot
from dpo_lab.runtime.precision import Precision
from dpo_lab.train.trainer import build_dpo_args, build_trainer

MODEL = ModelSettings(name_or_path=asset_path("tiny-llama"))


def margin_sigmoid(logps, dpo):
    """A custom loss (dpo.loss_type as package.module:function) with its own parameter: DPO with a margin."""
    from dpo_lab.train.losses import PairLoss

    chosen, rejected = dpo.beta * logps.chosen_logratios, dpo.beta * logps.rejected_logratios
    losses = -torch.nn.functional.logsigmoid(chosen - rejected - dpo.loss_params["gamma"])
    return PairLoss(losses, chosen.detach(), rejected.detach())


# three jobs that differ in everything that may differ inside a pack: beta, the loss (TRL's sigmoid with label
# smoothing, a custom function with its own parameter and a loss weight, TRL's ipo), learning rate, LoRA rank,
# alpha (and so scaling), rank-stabilised scaling, dropout and targets, schedule, warm-up, weight decay,
# gradient clipping, how often they log and evaluate and how many checkpoints they keep
# (test_the_jobs_differ_in_every_key_that_may_differ_in_a_pack); all accumulate 2 micro-batches a step
JOBS = [
    dict(
        dpo=DPOSettings(beta=0.1, max_length=192, label_smoothing=0.1),
        lr=5e-3,
        lora=LoraSettings(r=4, alpha=8, use_rslora=True),
        wd=0.0,
        sched="linear",
        clip=0.5,
        warmup=1,
        eval_steps=2,
        logging=1,
        keep=2,
    ),
    dict(
        dpo=DPOSettings(
            beta=0.5,
            max_length=192,
            loss_type=[f"{__name__}:margin_sigmoid"],
            loss_params={"gamma": 0.3},
            loss_weights=[0.7],
        ),
        lr=2e-3,
        lora=LoraSettings(r=8, alpha=8, dropout=0.1),
        wd=0.1,
        sched="cosine",
        clip=1.0,
        warmup=0,
        eval_steps=1,
        logging=1,
        keep=3,
    ),
    dict(
        dpo=DPOSettings(beta=0.3, loss_type=["ipo"], max_length=192),
        lr=1e-2,
        lora=LoraSettings(r=2, alpha=4, target_modules=["q_proj", "v_proj"], dropout=0.0),
        wd=0.0,
        sched="constant",
        clip=0.3,
        warmup=2,
        eval_steps=3,
        logging=3,
        keep=1,
    ),
]


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    data = load_preference_data(
        DataSettings(path=asset_path("finance"), max_train_samples=12, max_eval_samples=6), seed=0
    )
    tokenizer = load_tokenizer(MODEL)
    model = load_base_model(MODEL, Precision.fp32, gradient_checkpointing=False)
    return data, tokenizer, model, ModelSnapshot.capture(model)


def _reset(setup) -> None:
    """The shared base as loaded again (no adapter, no PEFT or TRL leftovers), as the sweep cache does."""
    _, _, model, snapshot = setup
    strip_adapters(model)
    snapshot.restore(model)
    assert not snapshot.differences(model)


def _train(job: dict, steps: int = 3) -> TrainSettings:
    return TrainSettings(
        learning_rate=job["lr"], per_device_train_batch_size=3, per_device_eval_batch_size=6, max_steps=steps,
        precision=Precision.fp32, weight_decay=job["wd"], lr_scheduler_type=job["sched"],
        warmup_steps=job["warmup"], max_grad_norm=job["clip"], eval_steps=job["eval_steps"],
        logging_steps=job["logging"], save_total_limit=job["keep"], gradient_accumulation_steps=2,
    )  # fmt: skip


def _job(job: dict, tmp_path, name: str, steps: int = 3) -> PackJob:
    args = build_dpo_args(job["dpo"], _train(job, steps), output_dir=tmp_path / name, seed=0,
                          precision=Precision.fp32, device="cpu")  # fmt: skip
    return PackJob(args=args, lora=build_lora_config(job["lora"]), dpo=job["dpo"])


def test_the_jobs_differ_in_every_key_that_may_differ_in_a_pack() -> None:
    """JOBS are one pack (equal pack keys) whose jobs differ in every key declared ``differs_in_pack``, and
    they accumulate gradients over more than one micro-batch (fast: no training)."""
    configs = [
        RunConfig(model=MODEL, data=DataSettings(path=asset_path("finance")), dpo=j["dpo"], lora=j["lora"],
                  train=_train(j))
        for j in JOBS
    ]  # fmt: skip
    assert len({pack_key(c) for c in configs}) == 1
    for group in ("lora", "dpo", "train"):
        for f in dataclasses.fields(getattr(configs[0], group)):
            if differs_in_pack(f):
                values = [repr(getattr(getattr(c, group), f.name)) for c in configs]
                assert len(set(values)) > 1, f"every job has the same {group}.{f.name}"
    assert all(c.train.gradient_accumulation_steps > 1 for c in configs)


def _alone(setup, job: PackJob):
    """The job through the normal path: a DPOTrainer with a fresh adapter, trained, evaluated."""
    data, tokenizer, model, _ = setup
    trainer = build_trainer(model, tokenizer, job.args, data.train, data.eval, job.lora, dpo=job.dpo)
    trainer.train()
    out = {
        "adapter": {k: v.detach().clone() for k, v in adapter_state_dict(trainer.model).items()},
        "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
        "evals": [h for h in trainer.state.log_history if "eval_loss" in h],
        "eval": trainer.evaluate(),
    }
    _reset(setup)
    return out


def test_slices_get_their_own_adapter() -> None:
    """Each slice of a packed forward equals that adapter alone on that input.

    Independent of the suite's order: its own base model (not the module's shared one), its own seeded
    generator (not torch's global RNG, which earlier tests advance), its own thread count.
    """
    from peft import get_peft_model

    model = load_base_model(MODEL, Precision.fp32, gradient_checkpointing=False)
    generator = torch.Generator().manual_seed(0)
    packed = get_peft_model(model, build_lora_config(LoraSettings(r=4)), adapter_name="one")
    packed.add_adapter("two", build_lora_config(LoraSettings(r=2, target_modules=["q_proj"])))
    for name, param in packed.named_parameters():
        if "lora_B" in name:
            param.data.normal_(generator=generator)
    packed.eval()
    ids = torch.randint(0, 100, (2, 7), generator=generator)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            singles = []
            for name in ("one", "two"):
                packed.set_adapter(name)
                singles.append(packed(input_ids=ids).logits)
            with adapters_by_slice(packed, ["one", "two", None], 2):
                out = packed(input_ids=ids.repeat(3, 1)).logits
            with packed.disable_adapter():
                base = packed(input_ids=ids).logits
    finally:
        torch.set_num_threads(threads)
    assert torch.allclose(out[:2], singles[0], atol=1e-5)
    assert torch.allclose(out[2:4], singles[1], atol=1e-5)
    assert torch.allclose(out[4:], base, atol=1e-5)
    assert not torch.allclose(singles[0], singles[1], atol=1e-3)  # the adapters really differ
    assert not torch.allclose(singles[0], base, atol=1e-3)


def test_packed_generation_gives_each_adapter_its_own_answers(setup, tmp_path) -> None:
    """Pack.generate: one generate over base + K copies equals each adapter generating alone (greedy)."""
    data, tokenizer, model, _ = setup
    pack = build_pack(model, tokenizer, [_job(j, tmp_path, f"g{i}") for i, j in enumerate(JOBS[:2])],
                      data.train, data.eval)  # fmt: skip
    torch.manual_seed(0)
    for name, param in pack.model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(std=0.5)  # trained-looking adapters, so that their answers differ
    conversations = [row["prompt"] for row in data.eval][:3]
    generation = GenerationSettings(max_new_tokens=10, batch_size=2)
    try:
        base, answers = pack.generate(tokenizer, conversations, generation, seed=0)
        alone = {}
        for name in ("job0", "job1"):
            pack.model.set_adapter(name)
            alone[name] = generate_answers(pack.model, tokenizer, conversations, generation, seed=0)
        with adapter_disabled(pack.model):
            alone_base = generate_answers(pack.model, tokenizer, conversations, generation, seed=0)
    finally:
        _reset(setup)
    assert answers == alone and base == alone_base
    assert len({tuple(a) for a in (*answers.values(), base)}) == 3, "the adapters must answer differently"


@pytest.fixture(scope="module")
def trained_alone(setup, tmp_path_factory):
    """The three jobs trained and evaluated one by one, the normal way (shared by both packed steps)."""
    tmp_path = tmp_path_factory.mktemp("alone")
    return [_alone(setup, _job(j, tmp_path, f"job{i}")) for i, j in enumerate(JOBS)]


@pytest.mark.slow
@pytest.mark.parametrize("in_turn", [False, True], ids=["together", "in_turn"])
def test_pack_of_three_matches_each_job_alone(setup, trained_alone, tmp_path, in_turn) -> None:
    data, tokenizer, model, _ = setup
    alone = trained_alone
    pack = build_pack(model, tokenizer, [_job(j, tmp_path, f"p{i}") for i, j in enumerate(JOBS)],
                      data.train, data.eval, in_turn=in_turn)  # fmt: skip
    rows = []  # the batch size of every forward through the base during training
    embed = pack.model.get_input_embeddings()
    hook = embed.register_forward_pre_hook(lambda _, args: rows.append(args[0].shape[0]))
    try:
        results = pack.train()
    finally:
        hook.remove()
    # micro-batches of 3 pairs (6 sequences), evaluations of 6 pairs (12): together, the 3 jobs' 18 training
    # rows go through one forward; in turn the largest forward is an evaluation's
    assert max(rows) == (12 if in_turn else 18), sorted(set(rows))
    conversations = [row["prompt"] for row in data.eval][:3]
    generation = GenerationSettings(max_new_tokens=12, batch_size=2)
    base_answers, packed_answers = pack.generate(tokenizer, conversations, generation, seed=0)
    _reset(setup)

    for i, (single, packed) in enumerate(zip(alone, results, strict=True)):
        assert packed.error is None
        assert packed.metrics["pack_step"] == ("in_turn" if in_turn else "together")
        assert packed.adapter.keys() == single["adapter"].keys()
        diff = max((packed.adapter[k] - single["adapter"][k]).abs().max().item() for k in packed.adapter)
        assert diff <= 1e-5, f"job {i}: adapter differs by {diff}"
        # the loss TRL logs at every step, packed against alone
        losses = [h["loss"] for h in packed.log_history if "loss" in h]
        assert losses == pytest.approx(single["losses"], abs=1e-5), f"job {i}"
        # the held-out evaluation during training (train.eval_steps), by the job's trainer on its adapter
        evals = [h for h in packed.log_history if "eval_loss" in h]
        assert [h["step"] for h in evals] == [h["step"] for h in single["evals"]]
        assert [h["step"] for h in evals if h["step"] % JOBS[i]["eval_steps"] == 0] == list(
            range(JOBS[i]["eval_steps"], 4, JOBS[i]["eval_steps"])
        ), f"job {i} evaluated at {[h['step'] for h in evals]}"
        for mine, theirs in zip(evals, single["evals"], strict=True):
            for key in ("eval_loss", "eval_rewards/margins", "eval_logps/chosen"):
                assert mine[key] == pytest.approx(theirs[key], abs=1e-5), (i, key)
        moved = max(v.abs().max().item() for k, v in packed.adapter.items() if "lora_B" in k)
        assert moved > 0, "training moved nothing"

        # the job finished as a normal run would: fresh trainer, the pack's weights, TRL's evaluate
        job = _job(JOBS[i], tmp_path, f"finish{i}")
        job.args.eval_on_start = False
        trainer = build_trainer(model, tokenizer, job.args, data.train, data.eval, job.lora, dpo=job.dpo)
        finish_as_trained(trainer, packed)
        evaluated = trainer.evaluate()
        # the task answers generated in the pack are the job's own greedy answers, and the base's
        answers = generate_answers(trainer.model, tokenizer, conversations, generation, seed=0)
        assert packed_answers[f"job{i}"] == answers, f"job {i}"
        with adapter_disabled(trainer.model):
            assert base_answers == generate_answers(
                trainer.model, tokenizer, conversations, generation, seed=0
            )
        _reset(setup)
        for key in ("eval_loss", "eval_rewards/margins", "eval_rewards/chosen", "eval_logps/rejected"):
            assert evaluated[key] == pytest.approx(single["eval"][key], abs=1e-5), f"job {i} {key}"


@pytest.mark.slow
def test_a_bf16_pack_trains_in_bf16_and_in_turn_equals_each_job_alone(tmp_path) -> None:
    """The pack's model gets accelerate's mixed-precision forward as a job's model does in Trainer.train:
    its linear layers run under bf16 autocast (not fp32, as they did once), and a pack stepping in turn runs
    each adapter on the job's own batch shapes, so every job is bit-identical to the job alone."""
    data = load_preference_data(
        DataSettings(path=asset_path("finance"), max_train_samples=8, max_eval_samples=4), seed=0
    )
    tokenizer = load_tokenizer(MODEL)
    model = load_base_model(MODEL, Precision.bf16, gradient_checkpointing=False)
    snapshot = ModelSnapshot.capture(model)

    def job(spec: dict, name: str) -> PackJob:
        train = TrainSettings(learning_rate=spec["lr"], per_device_train_batch_size=4, max_steps=2,
                            logging_steps=1, precision=Precision.bf16, eval_steps=0)  # fmt: skip
        args = build_dpo_args(spec["dpo"], train, output_dir=tmp_path / name, seed=0,
                              precision=Precision.bf16, device="cpu")  # fmt: skip
        return PackJob(args=args, lora=build_lora_config(spec["lora"]))

    alone = []
    for i, spec in enumerate(JOBS[:2]):
        single = job(spec, f"a{i}")
        trainer = build_trainer(model, tokenizer, single.args, data.train, None, single.lora)
        trainer.train()
        alone.append({k: v.detach().clone() for k, v in adapter_state_dict(trainer.model).items()})
        strip_adapters(model)
        snapshot.restore(model)
    for in_turn in (True, False):
        pack = build_pack(model, tokenizer, [job(s, f"p{i}") for i, s in enumerate(JOBS[:2])], data.train,
                          None, in_turn=in_turn)  # fmt: skip
        dtypes = set()
        layer = next(
            m for n, m in pack.model.named_modules() if n.endswith("layers.0.mlp.down_proj.base_layer")
        )
        hook = layer.register_forward_hook(lambda _m, _i, out, seen=dtypes: seen.add(out.dtype))
        try:
            results = pack.train()
        finally:
            hook.remove()
            strip_adapters(model)
            snapshot.restore(model)
        assert dtypes == {torch.bfloat16}, (in_turn, dtypes)
        for single, packed in zip(alone, results, strict=True):
            diff = max((packed.adapter[k] - single[k]).abs().max().item() for k in single)
            if in_turn:
                assert diff == 0.0, f"in turn, a bf16 job differs from alone by {diff}"
            else:  # K-times larger matmuls round differently in bf16
                assert diff <= 1e-3


def _info(index: int, **changes) -> PackedJobInfo:
    cfg = RunConfig(model=MODEL, data=DataSettings(path=asset_path("finance")))
    for group, values in changes.items():
        new = dataclasses.replace(getattr(cfg, group), **values) if isinstance(values, dict) else values
        setattr(cfg, group, new)
    return PackedJobInfo(
        index, None, cfg, Path(f"/nonexistent/{index}"), why_alone(cfg, Path("/nonexistent"))
    )


def test_jobs_that_share_a_base_are_grouped_and_the_rest_run_alone() -> None:
    jobs = [
        _info(0),
        _info(1, dpo={"beta": 0.5, "loss_type": ["ipo"]}, lora={"r": 4, "target_modules": ["q_proj"]}),
        _info(2, dpo={"max_length": 64}),  # other batches: its own group
        _info(3, train={"learning_rate": 1e-3, "weight_decay": 0.1, "lr_scheduler_type": "cosine"}),
        _info(4, lora={"use_dora": True}),  # DoRA: alone
        _info(5, train={"save_steps": 5}),  # checkpoints every 5 steps: a pack key of its own
        _info(6, train={"per_device_train_batch_size": 2}),  # other batches
        _info(7, dpo={"max_length": 64}, lora={"r": 8}),
    ]
    assert jobs[4].why_alone.startswith("lora.use_dora") and jobs[5].why_alone is None
    groups = [[job.index for job in group] for group in plan_groups(jobs, "auto")]
    assert groups == [[0, 1, 3], [2, 7], [4], [5], [6]]
    assert [[j.index for j in g] for g in plan_groups(jobs, 2)] == [[0, 1], [3], [2, 7], [4], [5], [6]]
    assert pack_key(jobs[0].run_config) != pack_key(_info(8, seed=7).run_config)  # the data order differs


class _Killed(Exception):
    pass


def test_a_killed_pack_resumes_from_its_checkpoint_as_if_never_stopped(setup, tmp_path, monkeypatch) -> None:
    """A pack stopped after step 3 of 4 (checkpoint at step 2; 2 steps of 2 accumulated micro-batches an
    epoch, so the checkpoint ends epoch 1 and the resume starts epoch 2) and built again from scratch resumes
    from its checkpoint: every adapter and every logged loss equal the uninterrupted pack's (LoRA dropout on,
    so the random state must come back too, before the epoch's data iterator draws from it); a finished
    pack's outcome is read back as it was."""
    from dpo_lab.packed.handoff import PackedOutcome
    from dpo_lab.packed.pack import Pack
    from dpo_lab.packed.store import PackStore

    data, tokenizer, model, _ = setup
    # evaluating every 2 steps each (job 1 alone evaluates every step): half the evaluations, same coverage
    specs = [dict(j, lora=dataclasses.replace(j["lora"], dropout=0.3), eval_steps=2) for j in JOBS[:2]]

    def train(store, stop_after=None):
        jobs = [_job(j, tmp_path, f"r{i}", 4) for i, j in enumerate(specs)]
        for job in jobs:
            job.args.disable_dropout = False  # TRL's default turns dropout off
        pack = build_pack(model, tokenizer, jobs, data.train, data.eval)
        if stop_after is not None:
            step = Pack._optimizer_step

            def stopping(self, *args):
                step(self, *args)
                if self.leader.state.global_step == stop_after:
                    raise _Killed

            monkeypatch.setattr(Pack, "_optimizer_step", stopping)
        try:
            return pack.train(store, save_steps=2)
        finally:
            monkeypatch.undo()
            _reset(setup)

    whole = train(PackStore(tmp_path / "whole"))
    store = PackStore(tmp_path / "killed")
    with pytest.raises(_Killed):
        train(store, stop_after=3)
    assert [step for step, _ in store.checkpoints()] == [2]
    resumed = train(store)
    assert [step for step, _ in store.checkpoints()] == [2, 4]  # the final step is saved too
    for i, (a, b) in enumerate(zip(whole, resumed, strict=True)):
        assert a.global_step == b.global_step == 4
        diff = max((a.adapter[k] - b.adapter[k]).abs().max().item() for k in a.adapter)
        assert diff == 0.0, f"job {i}: resumed adapter differs by {diff}"
        losses = [(h["step"], h["loss"]) for h in a.log_history if "loss" in h]
        assert losses == [(h["step"], h["loss"]) for h in b.log_history if "loss" in h]
        assert [h["step"] for h in a.log_history if "eval_loss" in h] == [2, 4]
        assert [h["eval_loss"] for h in a.log_history if "eval_loss" in h] == [
            h["eval_loss"] for h in b.log_history if "eval_loss" in h
        ]
        assert len(b.step_times) == 4 and b.num_input_tokens_seen == a.num_input_tokens_seen

    store.save_result([result.to_state() for result in resumed])
    assert store.checkpoints() == []
    again = [PackedOutcome.from_state(state) for state in store.load_result()]
    for a, b in zip(resumed, again, strict=True):
        assert a.log_history == b.log_history and a.step_times == b.step_times
        assert all(torch.equal(a.adapter[k], b.adapter[k]) for k in a.adapter)


def test_an_unreadable_pack_checkpoint_falls_back_to_the_one_before(tmp_path) -> None:
    from dpo_lab.packed.store import PackStore

    store = PackStore(tmp_path)
    store.save_checkpoint(2, {"step": 2, "x": torch.ones(3)})
    store.save_checkpoint(4, {"step": 4, "x": torch.ones(3)})
    store.save_checkpoint(6, {"step": 6, "x": torch.ones(3)})
    assert [step for step, _ in store.checkpoints()] == [4, 6]  # the newest two are kept
    (tmp_path / "checkpoint-6.pt").write_bytes(b"torn")
    assert store.latest_checkpoint()["step"] == 4


def test_auto_pack_size_on_a_cpu_packs_what_the_available_memory_holds(monkeypatch) -> None:
    """``pack_size=auto`` on a CPU with ``step=together``: as many copies of the batch's activations as fit
    in 80% of the machine's available memory (a 3-job SmolLM2 pack peaked near 21 GB on a 24 GB machine), at
    most 8. In turn (the CPU's default step) one copy is alive at a time: the memory does not cap the pack."""
    from dpo_lab.packed import plan as packing

    jobs = [_info(i, dpo={"beta": 0.1 * (i + 1)}) for i in range(10)]
    cfg = jobs[0].run_config
    tokens = 2 * cfg.train.per_device_train_batch_size * cfg.dpo.max_length
    per_copy = tokens * 192 * 4 * 170  # the tiny model: hidden 192, 4 layers; CPU bytes per token-unit-layer
    monkeypatch.setattr(packing, "device_type", lambda: "cpu")
    monkeypatch.setattr(packing, "available_memory", lambda: int(2.5 * per_copy / 0.8))
    assert packing.auto_pack_size(jobs, "together") == 2
    assert packing.auto_pack_size(jobs, "in_turn") == 8
    assert packing.auto_pack_size(jobs) == 8  # auto on a CPU: in turn
    monkeypatch.setattr(packing, "available_memory", lambda: per_copy // 10)
    assert packing.auto_pack_size(jobs, "together") == 1  # never 0: a job too big to pack still runs
    monkeypatch.setattr(packing, "available_memory", lambda: None)
    assert packing.auto_pack_size(jobs, "together") == 8
    monkeypatch.setattr(packing, "available_memory", lambda: 10**15)
    assert packing.auto_pack_size(jobs[:3], "together") == 3


def test_the_packed_step_is_together_on_a_gpu_and_in_turn_on_a_cpu() -> None:
    from dpo_lab.packed.plan import packed_step

    assert packed_step("auto", "cuda") == "together" and packed_step("auto", "cpu") == "in_turn"
    assert packed_step("together", "cpu") == "together" and packed_step("in_turn", "cuda") == "in_turn"
    with pytest.raises(ValueError, match="hydra.launcher.step: expected one of together, in_turn, auto"):
        packed_step("sideways", "cpu")
