"""dpo_lab: Hydra-configured DPO + LoRA/QLoRA experiments for chat LLMs, tracked in Weights & Biases."""

import logging as _logging

__version__ = "0.1.0"


_NOTICE = "Failed to load CPU gemm_4bit_forward"


class _OptionalKernelNotice(_logging.Filter):
    """bitsandbytes warns at import, on every AVX512-BF16 CPU, that an optional CPU kernel from the
    Hugging Face Hub (the ``kernels`` package) is missing; nf4 works without it. Shown at DEBUG instead."""

    def filter(self, record: _logging.LogRecord) -> bool:
        if record.levelno == _logging.WARNING and str(record.msg).startswith(_NOTICE):
            record.levelno, record.levelname = _logging.DEBUG, "DEBUG"
            return _logging.getLogger(record.name).isEnabledFor(_logging.DEBUG)
        return True


_logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_OptionalKernelNotice())
