"""Test driver: ``dpo-lab pairs``, killed by SIGKILL to itself while it appends a batch's rows.

``DPO_LAB_TEST_PAIRS_KILL=<k> python -m tests.helpers.inject_pairs_kill [pairs overrides]`` lets the
first k batches be appended as usual; while appending batch k + 1 it writes half of that batch's first row
(no newline, synced to disk, as a kill in the middle of a write leaves it) and kills its own process, the
way a crash or an OOM killer would. Only the tests use it; the package has no hook for it.
"""

from __future__ import annotations

import json
import os
import signal
import sys

from dpo_lab.cli import pairs

AFTER = int(os.environ["DPO_LAB_TEST_PAIRS_KILL"])
_append = pairs.append_rows
_calls: list[int] = []


def killed_while_appending(out, rows) -> None:
    _calls.append(len(rows))
    if len(_calls) <= AFTER:
        return _append(out, rows)
    if rows:
        line = (json.dumps(rows[0], ensure_ascii=False) + "\n").encode()
        with open(out, "ab") as f:
            f.write(line[: len(line) // 2])
            f.flush()
            os.fsync(f.fileno())
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    pairs.append_rows = killed_while_appending
    sys.argv = ["dpo-lab pairs", *sys.argv[1:]]
    pairs.main()
