"""The training bar shows what a person can read right: the held-out margin, not TRL's tie-blind accuracy."""

from __future__ import annotations

from types import SimpleNamespace

from dpo_lab.track.console import ProgressBar


def test_the_bar_shows_the_margin_not_an_accuracy_that_counts_ties_as_wrong() -> None:
    bar = ProgressBar()
    state = SimpleNamespace(max_steps=4, global_step=0)
    bar.on_train_begin(None, state, None)
    try:
        # an untrained policy: every margin exactly 0, so TRL's accuracy is 0 where chance is 0.5
        bar.on_log(None, state, None, logs={"eval_rewards/accuracies": 0.0, "eval_rewards/margins": 0.0})
        bar.on_log(None, state, None, logs={"loss": 0.6931})
        assert bar.shown == {"eval margin": "0.000", "loss": "0.6931"}
        bar.on_log(None, state, None, logs={"eval_rewards/accuracies": 0.9, "eval_rewards/margins": 1.25})
        assert bar.shown["eval margin"] == "1.250" and "eval acc" not in bar.shown
    finally:
        bar.close()
