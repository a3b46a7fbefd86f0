"""The help every config key carries (``dpo-lab explain``, docs/configuration.md): each key has it, the
TRL defaults it claims hold against the installed TRL, the page's tables are current, and the command
answers without loading a training library."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from dpo_lab.cli import explain as explain_cli
from dpo_lab.config.choices import Quantization
from dpo_lab.config.commands import ENTRY_POINTS
from dpo_lab.config.fields import default_of, help_of, plain
from dpo_lab.config.help import (
    GENERATED_END,
    GENERATED_START,
    REGENERATE,
    explain,
    markdown_tables,
    replace_generated_block,
    type_text,
)
from dpo_lab.config.schemas import GROUPS, DPOSettings, RunConfig
from dpo_lab.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "configuration.md"


def _fields(schema: type, prefix: str) -> typing.Iterator[tuple[str, dataclasses.Field]]:
    """(dotted key, field) of every field of ``schema``, nested groups and their own fields included."""
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        yield f"{prefix}{f.name}", f
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _fields(hints[f.name], f"{prefix}{f.name}.")


def all_fields() -> list[tuple[str, dataclasses.Field]]:
    found = [item for group, schema in GROUPS.items() for item in _fields(schema, f"{group}.")]
    found += [(f.name, f) for f in dataclasses.fields(RunConfig) if f.name not in GROUPS]
    found += [item for name, schema in ENTRY_POINTS.items() for item in _fields(schema, f"{name}.")]
    return found


TRL_FIELDS = [(key, f) for key, f in all_fields() if f.metadata.get("trl")]


# ----------------------------------------------------------------------------------------------------------
# the page and the metadata


def test_the_page_holds_the_generated_tables() -> None:
    page = PAGE.read_text()
    assert page.count(GENERATED_START) == 1 and page.count(GENERATED_END) == 1, (
        f"{PAGE} needs one {GENERATED_START} line and one {GENERATED_END} line"
    )
    block = page.split(GENERATED_START)[1].split(GENERATED_END)[0]
    assert block == f"\n\n{markdown_tables()}\n", (
        f"{PAGE} is stale: regenerate its tables with `{REGENERATE}`"
    )


def test_update_rewrites_a_stale_page(tmp_path, capsys) -> None:
    stale = PAGE.read_text().replace("| `dpo.beta` | `float` | `0.1` |", "| `dpo.beta` | `float` | `0.2` |")
    assert stale != PAGE.read_text()
    page = tmp_path / "configuration.md"
    page.write_text(stale)
    assert explain_cli.main(["--update", str(page)]) == 0
    assert page.read_text() == replace_generated_block(stale) == PAGE.read_text()
    assert explain_cli.main(["--update", str(page)]) == 0
    assert "up to date" in capsys.readouterr().out.splitlines()[-1]
    with pytest.raises(ValueError, match="needs one"):
        replace_generated_block("# no markers\n")


def test_markdown_tables_cover_every_group_key_and_command() -> None:
    text = markdown_tables()
    headings = [line[4:] for line in text.splitlines() if line.startswith("### ")]
    assert headings == [*GROUPS, "top-level keys", *ENTRY_POINTS]
    assert text == markdown_tables()  # deterministic
    assert "| `dpo.beta` | `float` | `0.1` |" in text
    assert "| `model.quantization` | `none \\| nf4 \\| int8` | `none` |" in text
    assert "| `seed` | `int` | `42` |" in text
    for key, _ in all_fields():
        command, _, rest = key.partition(".")
        shown = rest if command in ENTRY_POINTS else key
        assert f"| `{shown}` |" in text, f"{key} has no row"
    for line in text.splitlines():
        if line.startswith("| `"):  # four cells, pipes in the help escaped
            assert line.replace("\\|", "").count("|") == 5, line


def test_every_key_has_help() -> None:
    missing = [key for key, f in all_fields() if not help_of(f).strip()]
    assert len(all_fields()) > 80
    assert missing == [], f"keys without help=...: {missing}"


@pytest.mark.parametrize(("key", "f"), TRL_FIELDS, ids=[key for key, _ in TRL_FIELDS])
def test_trl_declarations_hold_against_the_installed_trl(key: str, f: dataclasses.Field) -> None:
    import trl

    trl_fields = {t.name: t for t in dataclasses.fields(trl.DPOConfig)}
    name, differs = f.metadata["trl"], f.metadata.get("trl_differs")
    assert name in trl_fields, f"{key}: trl={name!r} is no field of trl.DPOConfig {trl.__version__}"
    theirs, ours = plain(default_of(trl_fields[name])), plain(default_of(f))
    if differs:
        assert ours != theirs, (
            f"{key}: declares trl_differs, but its default {ours!r} equals TRL's; drop trl_differs"
        )
    else:
        assert ours == theirs, (
            f"{key}: default {ours!r}, TRL's {name} defaults to {theirs!r}; match it or declare trl_differs"
        )


def test_the_trl_declarations_include_the_core_keys() -> None:
    declared = {key for key, _ in TRL_FIELDS}
    assert {"dpo.beta", "dpo.loss_type", "train.learning_rate", "train.eval_steps"} <= declared


# ----------------------------------------------------------------------------------------------------------
# explain


def test_explain_a_key_with_trl_same_default() -> None:
    text = explain("dpo.beta")
    beta = next(f for f in dataclasses.fields(DPOSettings) if f.name == "beta")
    assert text.splitlines()[0] == "dpo.beta"
    assert "type:    float" in text and "default: 0.1" in text
    assert help_of(beta) in " ".join(text.split())
    assert "trl.DPOConfig.beta" in text and "same default as TRL" in text
    assert "may differ between jobs of one pack (hydra/launcher=packed)" in text


def test_explain_a_key_whose_default_differs_from_trl() -> None:
    text = " ".join(explain("train.learning_rate").split())
    assert "differs from TRL's default: TRL's 1e-6 is sized for full fine-tuning" in text
    assert "same default as TRL" not in text
    assert "default: 5e-6" in text and "train=default sets 5e-4" in text


def test_explain_says_which_shared_artefacts_a_key_changes() -> None:
    text = " ".join(explain("model.name_or_path").split())
    assert "default: ???" in text
    assert "changes the shared base model and tokenizer (jobs that differ in it do not share them)" in text
    assert "changes the shared" not in explain("lora.r")


def test_explain_a_group_lists_every_key_and_the_shipped_options() -> None:
    text = explain("dpo")
    for f in dataclasses.fields(DPOSettings):
        assert any(line.split()[:1] == [f"dpo.{f.name}"] for line in text.splitlines()), f.name
    for option in ("hinge", "ipo", "robust", "rpo", "sigmoid"):
        assert any(line.split()[:1] == [option] for line in text.splitlines()), option
    assert "default sigmoid" in text


@pytest.mark.parametrize(
    ("key", "says"),
    [
        ("data.columns.prompt", "source column holding the prompt"),
        ("seed", "type:    int"),
        ("eval.generation.top_p", "nucleus sampling mass"),
        ("eval.checker", "eval.checker.rel_tol"),
        ("train", "train.learning_rate"),
        ("generate", "prompts_file"),
        ("generate.prompt", "dpo-lab generate prompt=..."),
        ("merge.out", "<run>/merged"),
        ("compare.judge", "type:    checker | reward_model"),
        ("generate.generation.max_new_tokens", "generate.yaml sets 256"),
        ("experiment", "finance_llama31_8b"),
        ("train.extra.ld_alpha", "free-form mapping train.extra"),
        ("", "top-level keys"),
    ],
)
def test_explain_keys_groups_and_commands(key: str, says: str) -> None:
    assert says in explain(key)


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [
        ("dpo.bta", "did you mean dpo.beta?"),
        ("lora.beta", "did you mean dpo.beta?"),
        ("learning_rate", "did you mean train.learning_rate?"),
        ("generate.promt", "did you mean generate.prompt?"),
    ],
)
def test_explain_an_unknown_key(key: str, suggestion: str) -> None:
    with pytest.raises(ConfigError) as info:
        explain(key)
    assert info.value.key == key and str(info.value) == f"{key}: no such key; {suggestion}"


@pytest.mark.parametrize(
    ("tp", "text"),
    [
        (float, "float"),
        (list[str], "list[str]"),
        (typing.Optional[str], "str | None"),  # noqa: UP045 (the spelling of older schemas)
        (str | None, "str | None"),
        (Quantization, "none | nf4 | int8"),
        (Quantization | None, "(none | nf4 | int8) | None"),
        (dict[str, typing.Any], "dict[str, Any]"),
    ],
)
def test_type_text(tp, text: str) -> None:
    assert type_text(tp) == text


# ----------------------------------------------------------------------------------------------------------
# the console command, in a fresh process

HEAVY = ("torch", "trl", "transformers", "peft", "datasets", "accelerate", "wandb")
# python -m dpo_lab.cli.main ARGS, then which training libraries got imported
PROBE = f"""
import json, runpy, sys
sys.argv = ["dpo-lab", *json.loads(sys.argv[1])]
code = 0
try:
    runpy.run_module("dpo_lab.cli.main", run_name="__main__", alter_sys=True)
except SystemExit as err:
    code = err.code
heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)
sys.stdout.flush()
print("\\n" + json.dumps({{"code": code, "heavy": heavy}}))
"""


def run_dpo_lab(*args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(list(args))],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.stdout.strip(), proc.stderr[-2000:]
    out, _, last = proc.stdout.rstrip("\n").rpartition("\n")
    return {**json.loads(last), "stdout": out.removesuffix("\n"), "stderr": proc.stderr}


def test_cli_explain_prints_the_help_without_the_training_libraries() -> None:
    result = run_dpo_lab("explain", "dpo.beta")
    assert result["code"] in (0, None), result["stderr"][-2000:]
    assert result["stdout"] == explain("dpo.beta")
    assert "temperature of the implicit reward" in result["stdout"]
    assert result["heavy"] == [], f"dpo-lab explain imported {result['heavy']}"


def test_cli_help_with_a_key_explains_it() -> None:
    result = run_dpo_lab("--help", "dpo")
    assert result["code"] in (0, None) and result["heavy"] == [], result["stderr"][-2000:]
    assert result["stdout"] == explain("dpo")
    plain_help = run_dpo_lab("--help")
    assert (
        plain_help["stdout"].startswith("usage: dpo-lab [COMMAND]") and "  explain " in plain_help["stdout"]
    )


def test_cli_explain_an_unknown_key_is_one_line_exit_2() -> None:
    result = run_dpo_lab("explain", "dpo.bta")
    assert result["code"] == 2 and result["stdout"] == "" and result["heavy"] == []
    assert result["stderr"].splitlines() == [
        "dpo_lab: invalid config: dpo.bta: no such key; did you mean dpo.beta?"
    ]
