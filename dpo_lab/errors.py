"""The errors every layer raises and the entry points report: the bottom of the package (imports nothing of
dpo_lab), so that config, data, training and the command line share one set of exception types.

- :class:`ConfigError`: a config value that is not allowed (one line, exit code 2);
- :class:`DataError`: data that cannot be used as it is (a ConfigError naming the data.* key);
- :class:`NonFiniteError`: a non-finite loss or gradient stopped training (exit code 1).
"""

from __future__ import annotations

from pathlib import Path


class ConfigError(ValueError):
    """A config value that is not allowed: carries the full key path and what is allowed."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key


class DataError(ConfigError):
    """Data that cannot be used as it is (unreadable file, invalid rows); ``key``: the data.* key to check."""

    def __init__(self, key: str, message: str):
        super().__init__(key, message)
        self.args = (message,)  # printed alone: the message names files and rows itself


class NonFiniteError(RuntimeError):
    """A non-finite loss or gradient at a training step; names the step and the last good checkpoint."""

    def __init__(
        self,
        step: int,
        what: str,
        last_checkpoint: Path | None,
        passed_over: str = "",
        consequence: str = "stopped before the optimizer step, so no weights took it",
    ):
        kept = str(last_checkpoint) if last_checkpoint else "none (no checkpoint was saved before this step)"
        super().__init__(
            f"non-finite {what} at step {step}; {consequence}. Last good checkpoint: {kept}{passed_over}"
        )
        self.step = step
        self.what = what
        self.last_checkpoint = last_checkpoint
