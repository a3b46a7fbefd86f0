"""Nothing a user did not ask for prints: bitsandbytes' notice about an optional Hub kernel is demoted and
transformers' deprecation warnings that dpo_lab's own calls trigger are filtered, precisely (any other warning
of the same library still shows); importing dpo_lab changes nothing (the entry points switch it on)."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings

import pytest

from dpo_lab.runtime.quiet import quiet_notices


def test_optional_kernel_notice_is_demoted_other_warnings_pass(caplog: pytest.LogCaptureFixture) -> None:
    quiet_notices()
    bnb = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING):
        bnb.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s.", "no module 'kernels'")
        bnb.warning("some other bitsandbytes warning")
    assert [r.getMessage() for r in caplog.records] == ["some other bitsandbytes warning"]


def test_only_the_deprecations_dpo_lab_triggers_are_filtered() -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_notices()
        for message, category in (
            ("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning),
            ("`gradient_checkpointing` is deprecated and will be removed in v6. Use x", FutureWarning),
            ("`something_else` is deprecated and will be removed in v6.", FutureWarning),
            ("`is_gradient_checkpointing` is deprecated", UserWarning),  # another category: shown
        ):
            warnings.warn(message, category, stacklevel=1)
    assert [str(w.message) for w in seen] == [
        "`something_else` is deprecated and will be removed in v6.",
        "`is_gradient_checkpointing` is deprecated",
    ]


def test_importing_dpo_lab_installs_nothing() -> None:
    code = (
        "import logging, warnings, dpo_lab, dpo_lab.run, dpo_lab.experiment; "
        "from dpo_lab.runtime.quiet import DEPRECATIONS; "
        "mine = [f for f in warnings.filters if f[1] is not None and f[1].pattern in DEPRECATIONS]; "
        "print(len(logging.getLogger('bitsandbytes.backends.cpu.ops').filters), len(mine))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["0", "0"], "a filter installed at import"
