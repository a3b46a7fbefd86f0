"""Test driver: the dpo_lab CLI on a disk that fills up while a given checkpoint is written.

``DPO_LAB_TEST_ENOSPC=checkpoint-4 python -m tests.helpers.inject_enospc [overrides]``: every
``torch.save`` into a path containing ``checkpoint-4`` (the optimizer and scheduler state, written after
the adapter) raises ``OSError(ENOSPC)``, as a full disk does. Only the tests use it; the package has no
hook for it.
"""

from __future__ import annotations

import errno
import os
import runpy

import torch

MARKER = os.environ["DPO_LAB_TEST_ENOSPC"]
_save = torch.save


def save_on_a_full_disk(obj, f, *args, **kwargs):
    if isinstance(f, (str, os.PathLike)) and MARKER in str(f):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
    return _save(obj, f, *args, **kwargs)


if __name__ == "__main__":
    torch.save = save_on_a_full_disk
    # as `python -m dpo_lab.run` does (Hydra finds conf/ relative to the file run as __main__)
    runpy.run_module("dpo_lab.run", run_name="__main__", alter_sys=True)
