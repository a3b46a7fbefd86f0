"""The held-out "after" metrics: taken from an evaluation already logged at the last step, never run twice."""

from __future__ import annotations

from types import SimpleNamespace

from dpo_lab.train.final_eval import HeldOutAfter, evaluated_at


def test_evaluated_at_finds_the_newest_eval_record_of_the_step() -> None:
    history = [
        {"step": 6, "loss": 0.5},
        {"step": 6, "eval_loss": 0.7, "epoch": 1.0},
        {"step": 6, "eval_loss": 0.6, "epoch": 1.0},
        {"step": 7, "loss": 0.4},
    ]
    assert evaluated_at(history, 6) == {"eval_loss": 0.6, "epoch": 1.0}
    assert evaluated_at(history, 7) is None and evaluated_at([], 6) is None


def test_a_resumed_final_checkpoint_reuses_its_logged_evaluation() -> None:
    calls = []
    state = SimpleNamespace(global_step=6, log_history=[{"step": 6, "eval_loss": 0.6}])
    trainer = SimpleNamespace(state=state, evaluate=lambda **kw: calls.append(kw) or {"eval_loss": 9.0})
    assert HeldOutAfter().final_metrics(trainer) == {"eval_loss": 0.6} and calls == []
    state.log_history = [{"step": 5, "eval_loss": 0.6}]  # nothing at the last step: evaluate now
    assert HeldOutAfter().final_metrics(trainer) == {"eval_loss": 9.0} and len(calls) == 1
