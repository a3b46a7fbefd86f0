"""Preemption: SIGTERM / SIGUSR2 during training -> checkpoint at the next step boundary, stop, requeue.

Clusters announce the end of a job with a signal some time before they kill it: SLURM sends SIGTERM on
preemption and, with ``--signal=USR2@<s>``, SIGUSR2 before the time limit (submitit asks for that). While
training runs, :class:`Preemption` replaces the handlers of both signals with one that only records the
signal. :class:`PreemptionCallback` checks the record after every optimizer step (agreed across processes,
so all ranks stop at the same step) and makes the Trainer save a checkpoint and stop. The run then finishes
its W&B run as preempted and calls :meth:`Preemption.exit_for_requeue`: if a handler was installed before
(submitit's, which dumps the job and requeues it: ``scontrol requeue`` on SLURM, exit code 144 with the
local executor), it is called now that the checkpoint is safe; otherwise, or if it returns, the process exits
with ``128 + signal number`` (143 for SIGTERM, 140 for SIGUSR2), as if the signal had ended it. Running the
same command again (the requeued job does) resumes from that checkpoint. Either way ``metrics.json`` says
``status: preempted``, with the step and checkpoint to resume from (:meth:`Preemption.record`).

Outside training, a SIGTERM that no launcher handles (:func:`terminate_as_interrupt`) stops the run the way
Ctrl-C does: :class:`Terminated` (a KeyboardInterrupt) is raised, the run is recorded as ``interrupted``
and the process exits with 143. Under submitit, whose handlers are installed first, nothing changes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

from transformers import TrainerCallback

from dpo_lab.runs.atomic import atomic_write_json
from dpo_lab.runs.layout import RunLayout
from dpo_lab.runtime.collectives import any_process
from dpo_lab.runtime.processes import is_main_process

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGUSR2)


class Terminated(KeyboardInterrupt):
    """SIGTERM outside training: stops the run like Ctrl-C, recorded as ``interrupted``."""

    exit_code = 128 + int(signal.SIGTERM)


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(f"{signal.Signals(signum).name} received")


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """In the block, SIGTERM raises :class:`Terminated` where it would end the process at once (the default
    handler); a handler a launcher installed (submitit's) is left alone."""
    main_thread = threading.current_thread() is threading.main_thread()
    if not main_thread or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


class Preemption:
    """Records a preemption signal while armed; the training loop acts on it at a step boundary."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.stopped_at_step: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def stopped_training(self) -> bool:
        """True when a signal stopped training at a step boundary (a checkpoint of that step was saved).

        A signal that arrives after the last step finds training already done: the run then finishes as
        usual and exits normally.
        """
        return self.stopped_at_step is not None

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a process ended by that signal."""
        return 128 + (self.signum if self.signum is not None else int(signal.SIGTERM))

    def _record(self, signum: int, frame: Any) -> None:
        # only a flag: logging or saving inside a signal handler could interrupt itself
        if self.signum is None:
            self.signum = signum

    @contextlib.contextmanager
    def armed(self) -> Iterator[Preemption]:
        """Handle SIGTERM and SIGUSR2 this way inside the block; the previous handlers come back after it."""
        if threading.current_thread() is not threading.main_thread():
            log.warning("not in the main thread: SIGTERM / SIGUSR2 will not checkpoint before stopping")
            yield self
            return
        self._previous = {sig: signal.signal(sig, self._record) for sig in SIGNALS}
        try:
            yield self
        finally:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)

    def callback(self) -> PreemptionCallback:
        return PreemptionCallback(self)

    def _launcher_handler(self) -> Any:
        """The handler a launcher installed for the signal received (submitit's), or None."""
        previous = self._previous.get(self.exit_code - 128)
        return previous if callable(previous) and previous is not _raise_terminated else None

    def record(self, run_dir: Path, step: int) -> None:
        """Write :meth:`summary` as the run's ``metrics.json`` (main process)."""
        if is_main_process():
            checkpoint = RunLayout(run_dir).checkpoints / f"checkpoint-{step}"
            atomic_write_json(RunLayout(run_dir).metrics, self.summary(step, checkpoint))

    def summary(self, step: int, checkpoint: Path) -> dict[str, Any]:
        """``metrics.json`` of a run stopped by a signal at ``step``: where and how it resumes."""
        name = signal.Signals(self.exit_code - 128).name
        return {
            "status": "preempted",
            "signal": name,
            "global_step": step,
            "checkpoint": str(checkpoint),
            "requeued": self._launcher_handler() is not None,
            "error": f"{name} received: stopped at step {step} after saving {checkpoint}; run the same "
            "command again (or resume=<run folder>) to continue from it",
        }

    def exit_for_requeue(self) -> NoReturn:
        """Hand over to the launcher's own handler (submitit requeues the job), else exit 128 + signal."""
        signum = self.exit_code - 128
        previous = self._launcher_handler()
        if previous is not None:
            log.info("calling the launcher's %s handler to requeue the job", signal.Signals(signum).name)
            previous(signum, None)
        log.info("exiting with code %d so that the job can be requeued", self.exit_code)
        sys.exit(self.exit_code)


def record_interrupted(run_dir: Path, err: BaseException) -> None:
    """``metrics.json`` says ``interrupted`` (main process), unless the run completed before the signal."""
    path = RunLayout(run_dir).metrics
    if not is_main_process() or not run_dir.is_dir():
        return
    if path.is_file() and json.loads(path.read_text()).get("status") == "completed":
        return
    atomic_write_json(path, {"status": "interrupted", "error": f"{type(err).__name__}: {err}"})


class PreemptionCallback(TrainerCallback):
    """After each optimizer step: if any process got a preemption signal, save a checkpoint and stop."""

    def __init__(self, preemption: Preemption):
        self.preemption = preemption

    def on_step_end(self, args, state, control, **kwargs):
        if any_process(self.preemption.signum is not None):
            name = signal.Signals(self.preemption.signum).name if self.preemption.signum else "peer signal"
            log.warning("%s received: saving a checkpoint at step %d and stopping", name, state.global_step)
            self.preemption.stopped_at_step = state.global_step
            control.should_log = True  # the losses since the last log go into the history before the stop
            control.should_save = True
            control.should_training_stop = True
        return control
