"""A bad command line is refused before torch, trl or transformers is imported (in a fresh process, the
way a user meets it), and ``dpo-lab --help`` imports none of them either."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "trl", "transformers", "peft", "datasets", "accelerate", "wandb")
PROBE = f"""
import json, sys
sys.argv = ["dpo-lab", *json.loads(sys.argv[1])]
code = 0
try:
    from dpo_lab.cli.main import main
    main()
except SystemExit as err:
    code = err.code
heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)
print(json.dumps({{"code": code, "heavy": heavy}}))
"""


def refuse(*args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(list(args))], capture_output=True, text=True, timeout=120
    )
    assert proc.stdout.strip(), proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["stderr"] = proc.stderr
    return result


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["lora.rank=8"], "lora.rank: no such key"),  # a misspelt key
        (["dpo.beta=abc"], "dpo.beta: must be a number"),  # a wrong type
        (["dpo=nosuch"], "dpo: no option 'nosuch'"),  # an unknown option
        (["train.learning_rate=-1"], "train.learning_rate: must be > 0"),  # out of range (found after Hydra)
        (
            ["dpo.loss_type=[no-such:thing]"],
            "dpo.loss_type: 'no-such:thing' is not a package.module:function",
        ),
    ],
)
def test_a_bad_command_line_is_refused_before_the_training_libraries_load(args, says) -> None:
    result = refuse(*args)
    assert result["code"] == 2 and says in result["stderr"], result["stderr"][-1500:]
    assert result["heavy"] == [], f"imported before the refusal: {result['heavy']}"


def test_help_imports_no_training_library() -> None:
    result = refuse("--help")
    assert result["code"] in (0, None) and result["heavy"] == []
