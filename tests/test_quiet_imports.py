"""bitsandbytes' import-time notice about an optional Hub kernel is demoted; its other warnings are not."""

from __future__ import annotations

import logging

import pytest

import dpo_lab  # noqa: F401  (installs the filter)


def test_optional_kernel_notice_is_demoted_other_warnings_pass(caplog: pytest.LogCaptureFixture) -> None:
    bnb = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING):
        bnb.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s.", "no module 'kernels'")
        bnb.warning("some other bitsandbytes warning")
    assert [r.getMessage() for r in caplog.records] == ["some other bitsandbytes warning"]
