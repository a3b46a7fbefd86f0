"""W&B tracking: names, groups, config, metrics, summary, failures, secrets (offline run files read back)."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from dpo_lab.config.choices import WandbMode
from dpo_lab.runs.naming import format_value, run_group, run_name, swept_keys
from dpo_lab.runs.redaction import redact
from dpo_lab.track.callbacks import prefixed
from dpo_lab.track.wandb_tracker import network_reachable, resolve_mode
from tests.helpers import cli_env, run_cli, wandb_records, wandb_summary

SMALL = ["train.max_steps=3", "train.logging_steps=1", "data.max_train_samples=24", "data.max_eval_samples=8"]


def test_run_name_from_overrides_that_change_a_default() -> None:
    defaults = OmegaConf.create({"dpo": {"beta": 0.1}, "lora": {"r": 16}, "train": {"learning_rate": 5e-4}})
    cfg = OmegaConf.create({"dpo": {"beta": 0.05}, "lora": {"r": 8}, "train": {"learning_rate": 5e-6}})
    overrides = ["dpo.beta=0.05", "lora.r=8", "train.learning_rate=5e-6", "hydra.run.dir=x"]
    assert run_name(overrides, cfg, defaults, {}, {}) == "beta=0.05,r=8,lr=5e-06"
    same = OmegaConf.create({"dpo": {"beta": 0.1}, "lora": {"r": 8}, "train": {"learning_rate": 5e-4}})
    assert run_name(["dpo.beta=0.1", "lora.r=8"], same, defaults, {}, {}) == "r=8"
    choices, default_choices = {"dpo": "ipo", "model": "tiny"}, {"dpo": "sigmoid", "model": "tiny"}
    assert run_name(["dpo=ipo", "model=tiny"], same, defaults, choices, default_choices) == "dpo=ipo"


def test_format_value() -> None:
    assert format_value(5e-6) == "5e-06" and format_value(0.05) == "0.05"
    assert format_value(["sigmoid", "sft"]) == "sigmoid+sft"
    assert format_value("/models/tiny-llama") == "tiny-llama" and format_value(True) == "true"


def test_groups_per_sweep_and_per_run() -> None:
    assert (
        run_group("multirun/2026-11-26/10-00-00-123", "beta=0.1", Path("x"))
        == "sweep-2026-11-26_10-00-00-123"
    )
    run = Path("runs/2026-11-26/10-00-01-5")
    assert run_group(None, "beta=0.1", run) == "single-runs"  # readable, and it gathers comparable runs
    assert run_group(None, "beta=0.1", run, "smollm2_hh_finance") == "experiment-smollm2_hh_finance"


def test_a_sweeps_job_is_named_after_every_swept_key_even_at_its_default() -> None:
    """In sweep=tiny_beta_rank, job 1 (beta 0.1 = the default, r 16 = the default) used to be named
    without beta or r."""
    defaults = OmegaConf.create({"dpo": {"beta": 0.1}, "lora": {"r": 16}, "train": {"max_steps": 5}})
    job = OmegaConf.create({"dpo": {"beta": 0.1}, "lora": {"r": 16}, "train": {"max_steps": 20}})
    overrides = ["dpo.beta=0.1", "lora.r=16", "train.max_steps=20"]
    swept = swept_keys(["dpo.beta=0.1,0.5", "train.max_steps=20"], {"lora.r": "4,16"})
    assert swept == ["lora.r", "dpo.beta"]
    assert run_name(overrides, job, defaults, {}, {}, swept) == "beta=0.1,r=16,steps=20"
    assert run_name(overrides, job, defaults, {}, {}) == "steps=20"  # a single run: what it changed
    assert swept_keys(["prune.trial=3", "hydra.launcher.pack_size=2", "seed=1,2"], None) == ["seed"]


def test_prefixes() -> None:
    out = prefixed({"eval_loss": 0.5, "loss": 0.4, "train_runtime": 3.0, "note": "text"})
    assert out == {"eval/loss": 0.5, "train/loss": 0.4, "train/runtime": 3.0}


def test_redact_masks_secret_keys_at_any_depth() -> None:
    cfg = {
        "model": {"hf_token": "hf_abc", "name": "x"},
        "api_key": "k",
        "empty_token": None,
        "l": [{"password": 1}],
    }
    assert redact(cfg) == {"model": {"hf_token": "<redacted>", "name": "x"}, "api_key": "<redacted>",
                           "empty_token": None, "l": [{"password": "<redacted>"}]}  # fmt: skip


def test_auto_mode_is_offline_without_key_and_never_hangs(monkeypatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", "/nonexistent")
    assert resolve_mode(WandbMode.auto) == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    started = time.perf_counter()
    assert resolve_mode(WandbMode.auto) == "offline"
    assert time.perf_counter() - started < 5
    assert resolve_mode(WandbMode.online) == "online" and resolve_mode(WandbMode.disabled) == "disabled"
    assert not network_reachable(("127.0.0.1", 9), timeout=1)


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory) -> tuple[Path, Path, dict[str, str]]:
    tmp = tmp_path_factory.mktemp("tracked")
    run = tmp / "run"
    secrets = {
        "WANDB_API_KEY": "wandbkey" + "0" * 32,
        "HF_TOKEN": "hf_sekrit_value_123",
        "OPENAI_API_KEY": "sk-x1y2z3",
    }
    env = cli_env(tmp) | secrets
    args = ["dpo.beta=0.05", "lora.r=8", "train.learning_rate=5e-6", *SMALL, f"hydra.run.dir={run}",
            "logger.tags=[smoke,finance]", "logger.notes=tracking test", "logger.log_model=true"]  # fmt: skip
    proc = run_cli(args, tmp, env=env, cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return run, tmp, secrets | {"stdout": proc.stdout + proc.stderr}


@pytest.mark.slow
def test_run_record_name_group_tags_config(tracked_run) -> None:
    run, _, _ = tracked_run
    record = next(r["run"] for r in wandb_records(run) if r["type"] == "run")
    assert record["display_name"].startswith("beta=0.05,r=8,lr=5e-06")
    assert record["run_group"] == "single-runs"  # a single run without an experiment
    summary = wandb_summary(run)
    assert set(summary["tags"]) == {"smoke", "finance"} and summary["notes"] == "tracking test"
    config = summary["config"]
    assert (
        config["dpo"]["beta"] == 0.05
        and config["lora"]["r"] == 8
        and config["train"]["learning_rate"] == 5e-6
    )
    meta = config["meta"]
    assert meta["versions"]["trl"] and meta["dataset_fingerprint"] and meta["device"] == "cpu"
    assert len(meta["git"]["commit"]) == 40 and isinstance(meta["git"]["dirty"], bool)
    stored = json.loads((run / "wandb_run.json").read_text())
    assert stored["id"] == record["run_id"] and stored["mode"] == "offline"


@pytest.mark.slow
def test_metrics_at_step_zero_and_end_and_summary_agrees(tracked_run) -> None:
    run, _, _ = tracked_run
    history = [r["history"]["item"] for r in wandb_records(run) if r["type"] == "history"]
    first_eval = next(h for h in history if "eval/loss" in h)
    assert first_eval["train/global_step"] == 0
    assert first_eval["eval/rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    train_logs = [h for h in history if "train/loss" in h]
    assert [h["train/global_step"] for h in train_logs] == [1, 2, 3]
    assert all(h["train/tokens_per_second"] > 0 and h["train/peak_memory_mb"] > 0 for h in train_logs)
    last_eval = [h for h in history if "eval/loss" in h][-1]
    assert last_eval["train/global_step"] == 3

    metrics = json.loads((run / "metrics.json").read_text())
    summary = wandb_summary(run)["summary"]
    for key, value in metrics["eval"].items():
        if key.startswith("eval_"):
            assert summary[f"eval/{key[5:]}"] == pytest.approx(value), key
    assert summary["tokens_per_second"] == pytest.approx(metrics["tokens_per_second"])
    assert summary["status"] == "completed" and summary["global_step"] == 3


@pytest.mark.slow
def test_adapter_logged_as_model_artifact(tracked_run) -> None:
    run, _, _ = tracked_run
    artifacts = [r["artifact"] for r in wandb_records(run) if r["type"] == "artifact"]
    models = [a for a in artifacts if a["type"] == "model"]
    assert len(models) == 1, [a["type"] for a in artifacts]  # the others: the sample tables (run_table)
    artifact = models[0]
    paths = {entry["path"] for entry in artifact["manifest"]["contents"]}
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= paths


@pytest.mark.slow
def test_offline_run_prints_sync_command_and_stays_in_run_folder(tracked_run) -> None:
    run, cwd, info = tracked_run
    run_files = next((run / "wandb").glob("offline-run-*"))
    assert f"wandb sync {run_files}" in info["stdout"]
    assert not (cwd / "wandb").exists(), "W&B files must not land in the current directory"


@pytest.mark.slow
def test_no_secret_in_any_file_the_run_writes(tracked_run) -> None:
    run, _, secrets = tracked_run
    values = [v for k, v in secrets.items() if k != "stdout"]
    files = [p for p in run.rglob("*") if p.is_file()]
    assert len(files) > 10
    for path in files:
        data = path.read_bytes()
        for value in values:
            assert value.encode() not in data, f"{value} leaked into {path}"
    for value in values:
        assert value not in secrets["stdout"]


@pytest.mark.slow
def test_failed_job_does_not_spoil_the_next_one(tmp_path) -> None:
    sweep = tmp_path / "sweep"
    args = ["-m", "model.attn_implementation=flash_attention_2,sdpa", *SMALL, f"hydra.sweep.dir={sweep}"]
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    failed, ok = sweep / "0", sweep / "1"
    assert json.loads((failed / "metrics.json").read_text())["status"] == "failed"
    assert "flash" in json.loads((failed / "metrics.json").read_text())["error"].lower()
    assert json.loads((ok / "metrics.json").read_text())["status"] == "completed"

    failed_summary, ok_summary = wandb_summary(failed), wandb_summary(ok)
    assert failed_summary["exit_code"] != 0 and failed_summary["summary"]["status"] == "failed"
    assert ok_summary["exit_code"] == 0 and ok_summary["summary"]["status"] == "completed"
    assert failed_summary["run_id"] != ok_summary["run_id"]
    groups = {
        next(r["run"]["run_group"] for r in wandb_records(d) if r["type"] == "run") for d in (failed, ok)
    }
    assert groups == {f"sweep-{sweep.parent.name}_{sweep.name}"}
    # the second job's run holds its own metrics only, from step 0
    history = [r["history"]["item"] for r in wandb_records(ok) if r["type"] == "history"]
    assert history[0]["train/global_step"] == 0 and len([h for h in history if "train/loss" in h]) == 3


# ---- which tracker a run gets (logger.backend) -------------------------------------------------------------

STARTED: list[dict] = []


def recording_tracker(settings, *, layout, config, name, group):
    """A tracker of one's own, named as logger.backend=tests.track.test_tracking:recording_tracker."""
    from dpo_lab.track.null_tracker import NullTracker

    STARTED.append({"settings": settings, "layout": layout, "config": config, "name": name, "group": group})
    return NullTracker()


def test_the_backend_names_the_tracker_and_a_function_path_names_your_own(tmp_path, monkeypatch) -> None:
    from dpo_lab.config.schemas import LoggerSettings
    from dpo_lab.config.validation import validate
    from dpo_lab.errors import ConfigError
    from dpo_lab.runs.layout import RunLayout
    from dpo_lab.track.base import start_tracker
    from dpo_lab.track.null_tracker import NullTracker

    own = LoggerSettings(backend=f"{__name__}:recording_tracker", options={"file": "x.jsonl"})
    validate(own)
    STARTED.clear()
    layout = RunLayout(tmp_path)
    start_tracker(own, layout=layout, config={"seed": 1}, name="n", group="g")
    assert STARTED == [{"settings": own, "layout": layout, "config": {"seed": 1}, "name": "n", "group": "g"}]
    assert isinstance(start_tracker(LoggerSettings(backend="none"), layout=layout, config={}, name="n",
                                     group="g"), NullTracker)  # fmt: skip
    monkeypatch.setenv("RANK", "1")  # not the main process: nothing is started, whatever the backend
    STARTED.clear()
    assert isinstance(start_tracker(own, layout=layout, config={}, name="n", group="g"), NullTracker)
    assert STARTED == []
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match=r"logger.backend: cannot import tracker 'no_such_mod:start'"):
        start_tracker(
            LoggerSettings(backend="no_such_mod:start"), layout=layout, config={}, name="n", group="g"
        )
    wandb_without_project = LoggerSettings(wandb=dataclasses.replace(LoggerSettings().wandb, project=" "))
    for bad, key in (
        (LoggerSettings(backend="mlflow"), "backend: unknown tracker 'mlflow'"),
        (LoggerSettings(backend="wandb", options={"a": 1}), "options: only a tracker of your own"),
        (wandb_without_project, "wandb.project: must name a W&B project"),
    ):
        with pytest.raises(ConfigError, match=key):
            validate(bad)
