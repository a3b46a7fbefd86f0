"""Preemption signals, the non-finite guard and the multi-process helpers, without training."""

from __future__ import annotations

import datetime as dt
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from transformers import TrainerControl, TrainerState, TrainingArguments

from dpo_lab.errors import ConfigError, NonFiniteError
from dpo_lab.runtime import collectives
from dpo_lab.runtime import processes as distributed
from dpo_lab.train.guards import NonFiniteGuard, first_nonfinite_grad
from dpo_lab.train.preemption import Preemption, Terminated, terminate_as_interrupt
from tests.train.test_checkpoints import fake_checkpoint


def _args(tmp_path) -> TrainingArguments:
    return TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")


def test_signal_is_recorded_while_armed_and_handlers_come_back() -> None:
    before = signal.getsignal(signal.SIGUSR2)
    preemption = Preemption()
    with preemption.armed():
        os.kill(os.getpid(), signal.SIGUSR2)  # would end the process with the default handler
        assert preemption.signum == signal.SIGUSR2
    assert signal.getsignal(signal.SIGUSR2) is before
    assert preemption.exit_code == 128 + signal.SIGUSR2


def test_callback_saves_and_stops_at_the_step_boundary(tmp_path) -> None:
    preemption = Preemption()
    callback = preemption.callback()
    state, control = TrainerState(global_step=7), TrainerControl()
    callback.on_step_end(_args(tmp_path), state, control)
    assert not (control.should_save or control.should_training_stop) and not preemption.stopped_training
    preemption.signum = signal.SIGTERM
    callback.on_step_end(_args(tmp_path), state, control)
    assert control.should_save and control.should_training_stop and control.should_log
    assert preemption.stopped_at_step == 7 and preemption.stopped_training


def test_exit_hands_over_to_the_launchers_handler() -> None:
    calls = []
    preemption = Preemption()
    preemption._previous = {signal.SIGUSR2: lambda signum, frame: calls.append(signum)}
    preemption.signum = signal.SIGUSR2
    with pytest.raises(SystemExit) as info:
        preemption.exit_for_requeue()
    assert calls == [signal.SIGUSR2]  # e.g. submitit's checkpoint_and_try_requeue
    assert info.value.code == 128 + signal.SIGUSR2


def test_nonfinite_gradient_is_found_by_name() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    model(torch.ones(1, 3)).sum().backward()
    assert first_nonfinite_grad(model) is None
    model[1].weight.grad[0, 1] = float("inf")
    assert first_nonfinite_grad(model) == "1.weight"


def test_guard_stops_before_the_optimizer_step_naming_step_and_checkpoint(tmp_path) -> None:
    fake_checkpoint(tmp_path, 4)
    guard = NonFiniteGuard(tmp_path)
    model = torch.nn.Linear(2, 1)
    model(torch.ones(1, 2)).sum().backward()
    state, control = TrainerState(global_step=4), TrainerControl()
    guard.observe(5, torch.tensor(0.7), {})
    guard.on_pre_optimizer_step(_args(tmp_path), state, control, model=model)  # finite: no error
    guard.observe(5, torch.tensor(float("nan")), {})
    with pytest.raises(NonFiniteError) as info:
        guard.on_pre_optimizer_step(_args(tmp_path), state, control, model=model)
    assert info.value.step == 5 and info.value.what == "loss (nan)"
    assert "non-finite loss (nan) at step 5" in str(info.value)
    assert info.value.last_checkpoint == tmp_path / "checkpoint-4"


@pytest.mark.parametrize("bad", [float("inf"), float("-inf")])
def test_an_infinite_loss_stops_the_run_as_a_nan_does(tmp_path, bad: float) -> None:
    guard = NonFiniteGuard(tmp_path)
    model = torch.nn.Linear(2, 1)
    model(torch.ones(1, 2)).sum().backward()
    state, control = TrainerState(global_step=2), TrainerControl()
    guard.observe(3, torch.tensor(bad), {})
    with pytest.raises(NonFiniteError) as info:
        guard.on_pre_optimizer_step(_args(tmp_path), state, control, model=model)
    assert info.value.step == 3 and info.value.what == f"loss ({bad})"


def test_guard_passes_over_checkpoints_of_a_diverging_run(tmp_path) -> None:
    fake_checkpoint(tmp_path, 2, losses=[0.69, 0.66])
    fake_checkpoint(tmp_path, 4, weight=5e29, losses=[0.69, 0.66, 9.8, 1.7e9])  # finite, but diverged
    fake_checkpoint(tmp_path, 6, weight=float("inf"), losses=[0.69, 0.66, 9.8, 1.7e9, 0.7, 0.7])
    guard = NonFiniteGuard(tmp_path)
    model = torch.nn.Linear(2, 1)
    model(torch.ones(1, 2)).sum().backward()
    guard.observe(7, torch.tensor(float("nan")), {})
    with pytest.raises(NonFiniteError) as info:
        guard.on_pre_optimizer_step(
            _args(tmp_path), TrainerState(global_step=6), TrainerControl(), model=model
        )
    assert info.value.last_checkpoint == tmp_path / "checkpoint-2"
    assert str(info.value).endswith(
        f"Last good checkpoint: {tmp_path / 'checkpoint-2'}; checkpoint-6 passed over: non-finite adapter "
        "weights (lora_A); checkpoint-4 passed over: training loss 1.7e+09 at step 4, over 4x the first "
        "(0.69)"
    )


def test_sigterm_outside_training_stops_like_ctrl_c() -> None:
    with terminate_as_interrupt(), pytest.raises(Terminated, match="SIGTERM received"):
        os.kill(os.getpid(), signal.SIGTERM)  # would end the process with the default handler
        time.sleep(5)  # not reached: the handler raises as soon as the signal is delivered
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    preemption = Preemption()
    with terminate_as_interrupt(), preemption.armed():  # in training: recorded, handled at the step boundary
        os.kill(os.getpid(), signal.SIGTERM)
    assert preemption.signum == signal.SIGTERM
    assert preemption._launcher_handler() is None, "our own handler is no launcher's requeue handler"
    record = preemption.summary(5, Path("/runs/a/checkpoints/checkpoint-5"))
    assert record["status"] == "preempted" and record["global_step"] == 5 and not record["requeued"]


def test_guard_without_checkpoint_says_so(tmp_path) -> None:
    guard = NonFiniteGuard(tmp_path / "checkpoints")
    model = torch.nn.Linear(2, 1)
    model(torch.ones(1, 2)).sum().backward()
    model.bias.grad.fill_(float("nan"))
    with pytest.raises(NonFiniteError, match=r"gradient \(in bias\) at step 1.*none \(no checkpoint"):
        guard.on_pre_optimizer_step(_args(tmp_path), TrainerState(), TrainerControl(), model=model)


@pytest.fixture
def agent_store(monkeypatch):
    """A TCPStore standing in for torchrun's agent store, and the environment a worker sees."""
    store = torch.distributed.TCPStore("127.0.0.1", 0, None, True, dt.timedelta(seconds=10))
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(store.port))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", f"test-{os.getpid()}")
    monkeypatch.delenv(distributed.LAUNCH_TIME_ENV, raising=False)
    return store


def test_processes_agree_on_the_first_launch_time(agent_store, monkeypatch) -> None:
    # the calls below set the variable themselves: set and delete it through monkeypatch first, so that
    # teardown removes it (delenv of an absent variable records nothing, and the time leaked to later tests)
    monkeypatch.setenv(distributed.LAUNCH_TIME_ENV, "")
    monkeypatch.delenv(distributed.LAUNCH_TIME_ENV)
    monkeypatch.setenv("RANK", "1")
    distributed.agree_on_launch_time([])
    first = os.environ[distributed.LAUNCH_TIME_ENV]
    monkeypatch.delenv(distributed.LAUNCH_TIME_ENV)
    monkeypatch.setenv("RANK", "0")  # a second process, later: gets the same time
    distributed.agree_on_launch_time([])
    assert os.environ[distributed.LAUNCH_TIME_ENV] == first
    assert distributed.launch_time() == dt.datetime.fromisoformat(first)


def test_processes_must_resolve_the_same_run_dir(agent_store, monkeypatch) -> None:
    monkeypatch.setenv(distributed.LAUNCH_TIME_ENV, "2026-01-01T10:00:00.000001")
    distributed.check_same_run_dir("/runs/a")
    distributed.check_same_run_dir("/runs/a")
    with pytest.raises(ConfigError, match="resolved /runs/b but another process resolved /runs/a"):
        distributed.check_same_run_dir("/runs/b")


def test_several_processes_without_a_store_need_an_explicit_run_dir(monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE", raising=False)
    monkeypatch.delenv(distributed.LAUNCH_TIME_ENV, raising=False)
    with pytest.raises(ConfigError) as info:
        distributed.agree_on_launch_time(["lora.r=8"])
    assert info.value.key == "hydra.run.dir"
    distributed.agree_on_launch_time(["hydra.run.dir=/shared/run"])


def test_non_main_ranks_write_no_hydra_files(monkeypatch) -> None:
    monkeypatch.setenv("RANK", "0")
    assert distributed.rank_overrides() == []
    monkeypatch.setenv("RANK", "1")
    assert distributed.rank_overrides() == ["hydra.output_subdir=null", "hydra/job_logging=stdout"]


def test_state_digest_ignores_key_order_and_sees_values() -> None:
    a = {"x": torch.ones(2), "y": torch.zeros(3)}
    assert collectives.state_digest(a) == collectives.state_digest({"y": torch.zeros(3), "x": torch.ones(2)})
    assert collectives.state_digest(a) != collectives.state_digest({**a, "x": torch.tensor([1.0, 1.0001])})
