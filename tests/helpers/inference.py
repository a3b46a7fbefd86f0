"""Helpers of the after-training tests (generate, merge, compare): run a CLI, read jsonl, held-out prompts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from dpo_lab.config.resolvers import asset_path
from tests.helpers import ROOT, cli_env

TEST_ROWS = [json.loads(line) for line in open(asset_path("finance") + "/test.jsonl")]
ROWS_BY_PROMPT = {row["prompt"]: row for row in TEST_ROWS}


def env(tmp_path: Path) -> dict[str, str]:
    """The CLI environment (offline), with one intra-op thread: on the shared 2-core machines two
    threads per process under contention made generation 30-50x slower."""
    return {**cli_env(tmp_path), "OMP_NUM_THREADS": "1"}


def cli(
    args: list[str], tmp_path: Path, module: str, stdin: str | None = None
) -> subprocess.CompletedProcess:
    """``python -m <module> args`` from the repo root, asserted to succeed."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, env=env(tmp_path), input=stdin,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def held_out_messages(n: int) -> list[list[dict[str, str]]]:
    """The first ``n`` held-out finance questions as chat messages."""
    return [[{"role": "user", "content": row["prompt"]}] for row in TEST_ROWS[:n]]
