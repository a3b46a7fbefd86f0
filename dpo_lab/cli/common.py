"""What the console commands share: one-line config errors (exit code 2) and, for the commands that work
on a finished run (generate, merge, compare), logging to stderr (stdout carries the answers)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

from dpo_lab.config.overrides import check_overrides
from dpo_lab.config.resolvers import register_resolvers
from dpo_lab.config.store import register_configs
from dpo_lab.config.user_configs import check_user_config_dirs
from dpo_lab.errors import ConfigError, DataError
from dpo_lab.runtime.quiet import quiet_notices


def setup_logging() -> None:
    """INFO logs of dpo_lab on stderr, so that stdout holds only the answers; the libraries' notices and
    progress bars that mean nothing to a user off (dpo_lab.runtime.quiet)."""
    quiet_notices()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")
    logging.getLogger("dpo_lab").setLevel(logging.INFO)


def exit_with_config_error(err: ConfigError) -> None:
    """One line on stderr (``dpo_lab: invalid config: <key>: <what is allowed>``) and exit code 2."""
    kind = "invalid data" if isinstance(err, DataError) else "invalid config"
    print(f"dpo_lab: {kind}: {err}", file=sys.stderr)
    sys.exit(2)


def run_entry_point(hydra_main: Callable[[], Any], schema: type) -> None:
    """Console entry: register the schemas, give one-line errors for bad overrides, then run Hydra."""
    quiet_notices()
    register_configs()
    register_resolvers()
    try:
        check_overrides(sys.argv[1:], root=schema)
        check_user_config_dirs(sys.argv[1:])
    except ConfigError as err:
        exit_with_config_error(err)
    hydra_main()
