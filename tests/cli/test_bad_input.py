"""Bad input of every kind (config, data, paths, entry points): each trial exits non-zero with a message of
at most 3 lines that names the key, row or path, and no traceback.

The trials run in this process (``main()`` of the entry point with ``sys.argv`` set, stderr captured), so
the table costs no Python start per row; every row fails before a model's weights load. The trials that
need a real run (a full disk mid-run, secrets in a trained run's files) are in the slow tier at the end.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from dpo_lab import run
from dpo_lab.cli import generate, merge
from dpo_lab.config.validation import to_run_config
from dpo_lab.data.loading import load_preference_data
from dpo_lab.errors import ConfigError
from dpo_lab.runs.failures import describe_write_failure
from dpo_lab.runs.redaction import REDACTED, is_secret_key, redact, redact_text
from dpo_lab.sweep import report
from dpo_lab.train.resume import save_run_config
from tests.helpers import ROOT, cli_env, compose_config

FINANCE = ROOT / "dpo_lab" / "assets" / "finance"
# what every run trial adds: no W&B, and nothing heavy should it get that far
QUIET = ["logger.backend=none", "eval.enabled=false", "train.max_steps=1"]


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """The bad files and folders the trials point at."""
    good = FINANCE.joinpath("train.jsonl").read_text().splitlines()
    one = tmp_path / "one.jsonl"
    one.write_text("\n".join(good[:12]) + "\n")
    bad_row = tmp_path / "bad_row.jsonl"
    bad_row.write_text(
        "\n".join([*good[:5], json.dumps({"prompt": "q", "chosen": "", "rejected": "x"})]) + "\n"
    )
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder\n")
    return {
        "empty": _touch(tmp_path / "empty.jsonl"),
        "all_invalid": write_rows(
            tmp_path / "all_invalid.jsonl", [{"prompt": "q", "chosen": "", "rejected": "x"}] * 5
        ),
        "one": one,
        "bad_row": bad_row,
        "file": a_file,
        "tmp": tmp_path,
    }


def _touch(path: Path) -> Path:
    path.write_text("")
    return path


@pytest.fixture
def read_only_dir(tmp_path: Path):
    """A folder the process cannot write: chmod for a normal user, a read-only tmpfs mount for root (whom
    file modes do not stop)."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)],
                             capture_output=True, text=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.fail(f"cannot make a read-only folder as root (mount: {mounted.stderr.strip()})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def call_main(main, args: list[str], capsys, monkeypatch, stdin: str | None = None) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of an entry point's ``main()`` run in this process with ``args``."""
    monkeypatch.setattr(sys, "argv", ["dpo_lab", *args])
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    capsys.readouterr()
    code: int | str | None = 0
    try:
        main()
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return (code if isinstance(code, int) else 1), out.out, out.err


# a progress bar of data loading (datasets' tqdm: "Normalising x.jsonl: 100%|...| 5/5 [...]"): what a run
# shows while it works, not part of the error message
PROGRESS = re.compile(r"(\d+%\|.*\||\d+ examples \[)")


def assert_one_clear_line(code: int, err: str, *named: str) -> None:
    """Non-zero exit, no traceback, and at most 3 lines besides progress bars, naming each of ``named``."""
    lines = [line for line in err.splitlines() if line.strip() and not PROGRESS.search(line)]
    assert code != 0, err
    assert "Traceback" not in err, err
    assert 1 <= len(lines) <= 3, err
    message = " ".join(lines)
    for text in named:
        assert text in message, (text, err)


# (id, arguments (with {file} placeholders from the `files` fixture), texts the message must name)
RUN_TRIALS = [
    ("misspelt experiment", ["experiment=finance_llama3_8b"], ["experiment", "finance_llama31_8b"]),
    ("misspelt sweep", ["-m", "sweep=tiny_beta_rnk"], ["sweep", "tiny_beta_rank", "beta_rank_lr"]),
    ("plus on a misspelt key", ["+lora.rank=8"], ["lora.rank", "accepts:", " r,"]),
    ("misspelt key", ["lora.dropuot=0.1"], ["lora.dropuot", "did you mean lora.dropout"]),
    ("wrong type", ["dpo.beta=high"], ["dpo.beta", "must be a number"]),
    ("run folder is a file", ["hydra.run.dir=<file>"], ["hydra.run.dir", "<file>", "is a file"]),
    ("run folder under a file", ["hydra.run.dir=<file>/run"], ["hydra.run.dir", "<file>", "is a file"]),
    ("missing model folder", ["model.name_or_path=/nonexistent/model"],
     ["model.name_or_path", "/nonexistent/model"]),
    ("model folder without a model", ["model.name_or_path=<tmp>"], ["model.name_or_path", "<tmp>"]),
    ("unknown train.extra key", ["+train.extra={no_such_arg: 1}"],
     ["train.extra.no_such_arg", "trl.DPOConfig"]),
    ("unknown train.extra key, no +", ["train.extra={adam_betas2: 0.99}"],
     ["train.extra.adam_betas2", "adam_beta2"]),
    ("train.extra key dpo_lab owns", ["+train.extra.bf16=true"], ["train.extra.bf16", "train.precision"]),
    ("LoRA target that does not exist", ["lora.target_modules=[nonexistent_proj]"],
     ["lora.target_modules", "nonexistent_proj", "q_proj"]),
    ("missing data file", ["data.path=<tmp>/nope.jsonl"], ["data.path", "nope.jsonl"]),
    ("empty data file", ["data.path=<empty>", "data.test_size=2"], ["<empty>", "empty"]),
    ("all rows invalid, dropped", ["data.path=<all_invalid>", "data.test_size=2", "data.on_invalid=drop"],
     ["<all_invalid>", "all 5", "empty_response=5", "data.on_invalid=drop"]),
    ("an invalid row", ["data.path=<bad_row>", "data.test_size=2"], ["<bad_row>", "line 6", "chosen"]),
    ("single file with a test split", ["data.path=<one>"], ["data.test_split", "<one>"]),
    ("held-out size larger than the data", ["data.path=<one>", "data.test_size=40"],
     ["data.test_size", "40"]),
]  # fmt: skip


def _fill(values: list[str], files: dict[str, Path]) -> list[str]:
    out = []
    for value in values:
        for name, path in files.items():
            value = value.replace(f"<{name}>", str(path))
        out.append(value)
    return out


@pytest.mark.parametrize(("args", "named"), [t[1:] for t in RUN_TRIALS], ids=[t[0] for t in RUN_TRIALS])
def test_bad_run_input_is_one_line(args, named, files, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # the default runs/ folder, if a trial got that far, lands in tmp_path
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = _fill(args, files)
    if not any(a.startswith("hydra.") for a in args):
        args.append(f"hydra.run.dir={tmp_path / 'run'}")
    if "-m" in args:
        args.append(f"hydra.sweep.dir={tmp_path / 'sweep'}")
    code, _, err = call_main(run.main, [*args, *QUIET], capsys, monkeypatch)
    assert_one_clear_line(code, err, *_fill(named, files))
    assert not (tmp_path / "run" / "adapter").exists()


def test_read_only_run_folder(read_only_dir, tmp_path, capsys, monkeypatch) -> None:
    for folder in (read_only_dir, read_only_dir / "run"):  # the folder itself, or one to create inside it
        code, _, err = call_main(run.main, [f"hydra.run.dir={folder}", *QUIET], capsys, monkeypatch)
        assert_one_clear_line(code, err, "hydra.run.dir", str(read_only_dir), "not writable")


def test_sweep_with_no_completed_job_exits_non_zero(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sweep = tmp_path / "sweep"
    args = ["-m", "model.name_or_path=/nonexistent/a,/nonexistent/b", f"hydra.sweep.dir={sweep}", *QUIET]
    code, out, err = call_main(run.main, args, capsys, monkeypatch)
    assert_one_clear_line(code, err, "no job of the sweep completed", "0 (failed)", "1 (failed)")
    assert "2 jobs, 0 completed" in out
    assert "/nonexistent/a" in (sweep / "results.md").read_text()  # the report says why each failed


def test_report_of_a_sweep_with_a_completed_job_does_not_fail(tmp_path) -> None:
    sweep = tmp_path / "sweep"
    for job, status in (("0", "failed"), ("1", "completed")):
        (sweep / job / ".hydra").mkdir(parents=True)
        (sweep / job / ".hydra" / "overrides.yaml").write_text(f"- seed={job}\n")
        (sweep / job / "metrics.json").write_text(json.dumps({"status": status, "eval": {"eval_loss": 0.5}}))
    assert report.no_job_completed(report.write_report(sweep)) is None
    (sweep / "1" / "metrics.json").write_text(json.dumps({"status": "failed", "error": "boom"}))
    assert "jobs: 0 (failed), 1 (failed)" in report.no_job_completed(report.write_report(sweep))


ENTRY_TRIALS = [
    ("generate: no run folder", generate.main, ["run=/no/such/run", "prompt=hi"], ["run", "/no/such/run"]),
    ("generate: misspelt key", generate.main, ["run=/r", "prompt=hi", "generation.max_new_token=5"],
     ["generation.max_new_token", "did you mean generation.max_new_tokens"]),
    ("generate: two prompt sources", generate.main, ["run=/r", "prompt=hi", "chat=true"], ["prompt", "chat"]),
    ("merge: no run folder", merge.main, ["run=/no/such/run"], ["run", "/no/such/run"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("main", "args", "named"), [t[1:] for t in ENTRY_TRIALS], ids=[t[0] for t in ENTRY_TRIALS]
)
def test_bad_entry_point_input_is_one_line(main, args, named, capsys, monkeypatch) -> None:
    code, _, err = call_main(main, args, capsys, monkeypatch)
    assert_one_clear_line(code, err, *named)


def test_report_of_a_folder_that_is_no_sweep(tmp_path, capsys) -> None:
    code = report.main([str(tmp_path / "nothing")])
    assert_one_clear_line(code, capsys.readouterr().err, str(tmp_path / "nothing"))


# ----------------------------------------------------------------------------- accepted where it was refused


def test_readme_train_extra_form_composes(tmp_path, capsys, monkeypatch) -> None:
    """``train.extra='{...}'`` without ``+`` (the README's example): composed and written to config.yaml; the
    run is then stopped by a missing data file, before any model loads."""
    run_dir = tmp_path / "run"
    args = ["train.extra={lr_scheduler_kwargs: {min_lr: 1e-6}}", "train.extra.adam_beta2=0.99",
            f"data.path={tmp_path}/nope.jsonl", f"hydra.run.dir={run_dir}", *QUIET]  # fmt: skip
    code, _, err = call_main(run.main, args, capsys, monkeypatch)
    assert_one_clear_line(code, err, "data.path", "nope.jsonl")  # got past composition
    extra = yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["extra"]
    assert extra == {"lr_scheduler_kwargs": {"min_lr": 1e-6}, "adam_beta2": 0.99}


def test_single_file_with_test_size_needs_no_test_split(files) -> None:
    run_cfg = to_run_config(compose_config([f"data.path={files['one']}", "data.test_size=4"]))
    assert run_cfg.data.test_split == "test" and run_cfg.data.test_size == 4  # the preset's split stays
    data = load_preference_data(run_cfg.data, seed=0)
    assert (len(data.train), len(data.eval)) == (8, 4)
    with pytest.raises(ConfigError, match="set data.test_split=null to carve") as info:  # a folder: ambiguous
        to_run_config(compose_config(["data.test_size=4"]))
    assert info.value.key == "data.test_size"


def test_generate_answers_prompts_piped_on_stdin(tmp_path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dpo_lab.config.validation import typed_config
    from tests.cli.test_entry_points import compose_entry

    folder = tmp_path / "run"
    resolved = OmegaConf.to_container(compose_config(), resolve=True)
    folder.mkdir()
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(resolved))
    base = resolved["model"]["name_or_path"]
    lora = LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM")
    get_peft_model(AutoModelForCausalLM.from_pretrained(base), lora).save_pretrained(folder / "adapter")
    AutoTokenizer.from_pretrained(base).save_pretrained(folder / "adapter")
    cfg = compose_entry("generate", [f"run={folder}", "generation.max_new_tokens=3", "stream=false"])
    assert typed_config is not None and cfg.prompt is None and not cfg.chat
    out = io.StringIO()
    records = generate.generate(cfg, io.StringIO("What is 2% of $100?\n\nAnd 3%?\n"), out)
    assert [r["prompt"] for r in records] == ["What is 2% of $100?", "And 3%?"]
    assert ">>> What is 2% of $100?" in out.getvalue() and all(r["response"] for r in records)

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    with pytest.raises(ConfigError, match="pipe prompts on standard input") as info:
        generate.generate(cfg, Terminal(), io.StringIO())
    assert info.value.key == "prompt"


# ---------------------------------------------------------------------------------------------- secrets


def test_secret_keys_are_recognised_and_only_they() -> None:
    for key in ("hub_token", "api_key", "WANDB_API_KEY", "password", "db-passwd", "client_secret", "hf-auth"):
        assert is_secret_key(key), key
    for key in ("max_new_tokens", "lr_scheduler_kwargs", "tokenizer", "include_num_input_tokens_seen", "r"):
        assert not is_secret_key(key), key
    cfg = compose_config()
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert redact(plain) == plain  # nothing of the default config is taken for a secret
    assert redact({"eval": {"generation": {"max_new_tokens": 128}}}) == {
        "eval": {"generation": {"max_new_tokens": 128}}
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("+train.extra={hub_token: hf_abc, seed: 1}", "+train.extra={hub_token: <redacted>, seed: 1}"),
        ("train.extra.hub_token=hf_abc", "train.extra.hub_token=<redacted>"),
        ("train.extra='{api_key: \"a b\"}'", "train.extra='{api_key: <redacted>}'"),
        ("extra={'hub_token': 'hf_abc'},lr=5e-06", "extra={'hub_token': <redacted>},lr=5e-06"),
        ("generation.max_new_tokens=5", "generation.max_new_tokens=5"),
    ],
)  # fmt: skip
def test_redact_text(text: str, expected: str) -> None:
    assert redact_text(text) == expected


def test_run_config_files_hold_no_secret(tmp_path) -> None:
    overrides = ["+train.extra={hub_token: hf_SECRET42}"]
    resolved = OmegaConf.to_container(compose_config(overrides), resolve=True)
    save_run_config(tmp_path, resolved, overrides)
    for name in ("config.yaml", "overrides.yaml"):
        text = (tmp_path / name).read_text()
        assert "hf_SECRET42" not in text and REDACTED in text, name
    with pytest.raises(ConfigError, match="secret") as info:  # resume cannot bring the secret back
        run.resume_overrides([f"resume={tmp_path}"])
    assert info.value.key == "resume"


def test_run_name_holds_no_secret() -> None:
    from dpo_lab.runs.naming import run_name

    overrides = ["+train.extra={hub_token: hf_SECRET42}", "+train.extra.api_key=k_SECRET42", "dpo.beta=0.2"]
    cfg, defaults = compose_config(overrides), compose_config()
    name = run_name(overrides, cfg, defaults, {}, {})
    assert "SECRET42" not in name and "beta=0.2" in name and REDACTED in name


# ------------------------------------------------------------------------------------------ a full disk


def test_full_disk_line_names_the_kept_checkpoint(tmp_path) -> None:
    checkpoint = tmp_path / "checkpoints" / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    disk_full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "checkpoints/checkpoint-4/x"))
    wrapped = RuntimeError("safetensors: I/O error")
    wrapped.__cause__ = disk_full
    assert describe_write_failure(wrapped, tmp_path).startswith("disk full (No space left on device) writing")
    assert "no complete checkpoint was saved" in describe_write_failure(wrapped, tmp_path)
    assert describe_write_failure(RuntimeError("os error 28"), tmp_path).startswith("disk full")
    assert describe_write_failure(ValueError("bad"), tmp_path) is None


def test_torch_save_on_a_full_disk_counts_as_a_full_disk(tmp_path, monkeypatch) -> None:
    """What torch.save raises when a real disk fills (seen on a full tmpfs): no errno, no system words."""
    from dpo_lab.runs import failures

    torn = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 427776 vs 427664")
    monkeypatch.setattr(failures, "free_bytes", lambda path: 0)
    line = describe_write_failure(torn, tmp_path)
    assert line.startswith(f"disk full (No space left on device) in {tmp_path}")
    monkeypatch.setattr(failures, "free_bytes", lambda path: 10 << 30)
    assert describe_write_failure(torn, tmp_path) is None  # room left: another error, shown as it is


@pytest.mark.slow
def test_full_disk_mid_run_keeps_the_last_complete_checkpoint(tmp_path) -> None:
    """A tiny run whose disk fills while it writes its second checkpoint (``torch.save`` raises ENOSPC, as
    a full disk does): exit 1, one line naming the kept checkpoint, which a resume then trains on from."""
    run_dir = tmp_path / "run"
    args = [f"hydra.run.dir={run_dir}", "logger.backend=none", "eval.enabled=false", "train.max_steps=6",
            "train.save_steps=2", "train.logging_steps=2", "data.max_train_samples=48",
            "data.max_eval_samples=8", "train.eval_before_training=false"]  # fmt: skip
    env = {**cli_env(tmp_path), "DPO_LAB_TEST_ENOSPC": "checkpoint-4", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "tests.helpers.inject_enospc", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("dpo_lab: disk full (No space left on device) writing"), proc.stderr[-3000:]
    assert f"{run_dir}/checkpoints/checkpoint-2 (step 2) is kept" in last
    assert f"resume={run_dir}" in last
    from dpo_lab.runs.checkpoints import latest_complete

    assert latest_complete(run_dir / "checkpoints").step == 2
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "failed"


@pytest.mark.slow
def test_a_secret_in_config_reaches_no_file_of_the_run(tmp_path) -> None:
    """``train.extra.hub_token``: not in any file of the run folder (config.yaml, .hydra/,
    run.log, the W&B run, the adapter, the checkpoints' training_args.bin), nor in the W&B run's name;
    training_args.bin is not shipped in the adapter."""
    from tests.helpers import run_cli, wandb_summary

    run_dir = tmp_path / "run"
    secret = "hf_SECRETvalue4242"
    args = [f"+train.extra={{hub_token: {secret}}}", "+train.extra.adam_beta2=0.99",
            f"hydra.run.dir={run_dir}", "logger.wandb.mode=offline",
            "eval.enabled=false", "train.max_steps=2", "train.logging_steps=1", "train.save_steps=1",
            "data.max_train_samples=16",
            "data.max_eval_samples=8"]  # fmt: skip
    proc = run_cli(args, tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    leaks = [str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()
             and secret.encode() in p.read_bytes()]  # fmt: skip
    assert leaks == []
    assert (run_dir / "checkpoints" / "checkpoint-2" / "training_args.bin").is_file()  # written, redacted
    assert secret not in proc.stdout + proc.stderr
    assert not (run_dir / "adapter" / "training_args.bin").exists()
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    summary = wandb_summary(run_dir)
    assert summary["config"]["train"]["extra"]["hub_token"] == REDACTED
    assert summary["config"]["train"]["extra"]["adam_beta2"] == 0.99  # not a secret: kept
