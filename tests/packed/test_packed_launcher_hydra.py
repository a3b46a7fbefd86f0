"""Hydra's own launcher test suites, unmodified, against ``hydra/launcher=packed``.

Hydra's example apps are not dpo_lab jobs: the packed launcher must run them exactly as a launcher should
(one job per override set, in order, each in its own folder, with its return value).
"""

from __future__ import annotations

import os

import pytest
from hydra import version as hydra_version
from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher
from hydra.test_utils.launcher_common_tests import (
    BatchedSweeperTestSuite,
    IntegrationTestSuite,
    LauncherTestSuite,
)

from hydra_plugins.dpo_lab_packed_launcher.packed_launcher import PackedLauncher
from tests.helpers import ROOT


@pytest.fixture(autouse=True)
def plugin_on_the_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hydra finds launcher plugins by listing the ``hydra_plugins`` namespace; an installed wheel puts the
    plugin there, but an editable install's import hook is invisible to that listing. The suites' example
    apps run in subprocesses from other folders, so they get the checkout on their path, as a wheel would."""
    paths = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))


@pytest.fixture(autouse=True)
def fresh_version_base(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hydra keeps the ``version_base`` of the last ``@hydra.main`` in a process-wide singleton: after a
    dpo_lab run in this process (version_base 1.3, no chdir) the suites' example apps, which declare none,
    would not get the defaults they are written for. Each test starts as a fresh process does."""
    monkeypatch.setattr(hydra_version.VersionBase.instance(), "version_base", hydra_version._UNSPECIFIED_)


def test_discovery() -> None:
    assert PackedLauncher.__name__ in [x.__name__ for x in Plugins.instance().discover(Launcher)]


@pytest.mark.parametrize("launcher_name, overrides", [("packed", [])])
class TestPackedLauncher(LauncherTestSuite):
    pass


# as Hydra's own tests run this suite: the basic sweeper in batches of 2 (3 launches of 2 jobs)
@pytest.mark.parametrize(
    "launcher_name, overrides", [("packed", ["hydra/sweeper=basic", "hydra.sweeper.max_batch_size=2"])]
)
class TestPackedLauncherBatched(BatchedSweeperTestSuite):
    pass


@pytest.mark.parametrize(
    "task_launcher_cfg, extra_flags",
    [
        (
            {
                "defaults": [
                    {"override hydra/launcher": "packed"},
                    {"override hydra/hydra_logging": "hydra_debug"},
                    {"override hydra/job_logging": "disabled"},
                ]
            },
            ["-m"],
        )
    ],
)
# as Hydra parametrizes it for its basic launcher
class TestPackedLauncherIntegration(IntegrationTestSuite):
    pass


@pytest.mark.parametrize("value", [0, -2, "four", 1.5, True])
def test_pack_size_must_be_a_positive_int_or_auto(value) -> None:
    with pytest.raises(ValueError, match=r"hydra.launcher.pack_size: expected a positive integer or 'auto'"):
        PackedLauncher(pack_size=value)
    assert PackedLauncher(pack_size="auto").pack_size == "auto"
    assert PackedLauncher(pack_size=3).pack_size == 3


@pytest.mark.parametrize("value", ["sideways", "", 2, None])
def test_the_packed_step_must_be_together_in_turn_or_auto(value) -> None:
    with pytest.raises(ValueError, match=r"hydra.launcher.step: expected one of together, in_turn, auto"):
        PackedLauncher(step=value)
    assert [PackedLauncher(step=v).step for v in ("together", "in_turn", "auto")] == [
        "together",
        "in_turn",
        "auto",
    ]
