"""Nothing a user did not ask for prints: the libraries' notices and progress bars that mean nothing to a
person, switched off by the entry points (never at import). Each is matched precisely, so that any other
warning of the same library still shows (tests/test_quiet_imports.py).

- bitsandbytes warns at import, on every AVX512-BF16 CPU, that an optional CPU kernel from the Hugging Face
  Hub (the ``kernels`` package) is missing; nf4 works without it: shown at DEBUG instead.
- transformers warns that ``is_gradient_checkpointing`` / ``gradient_checkpointing`` are deprecated: raised
  by PEFT and by TRL's own DPOConfig default, not by anything a user set (dpo_lab passes
  ``activation_checkpointing``).
- progress bars of datasets (``Generating train split``, ``Map``, dpo_lab's own normalising and token
  counting) and transformers (``Loading weights``); dpo_lab shows its own for every phase that takes time.
  TRL's ``Computing reference log probs`` bar stays: that phase takes time.
"""

from __future__ import annotations

import logging
import warnings

BNB_NOTICE = "Failed to load CPU gemm_4bit_forward"
DEPRECATIONS = (
    r"`is_gradient_checkpointing` is deprecated",
    r"`gradient_checkpointing` is deprecated and will be removed in v6",
)


class _OptionalKernelNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and str(record.msg).startswith(BNB_NOTICE):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def quiet_notices() -> None:
    """The library notices above (no library is imported for it: call it before they load)."""
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    if not any(isinstance(f, _OptionalKernelNotice) for f in logger.filters):
        logger.addFilter(_OptionalKernelNotice())
    for message in DEPRECATIONS:
        warnings.filterwarnings("ignore", message=message, category=FutureWarning)


def quiet_progress_bars() -> None:
    """The libraries' own progress bars (imports datasets and transformers: call it inside a job)."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
