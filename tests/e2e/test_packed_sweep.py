"""``hydra/launcher=packed`` end to end on the tiny model: a packed sweep gives every job what the basic
launcher gives it (fp32), each job keeps its own folder, W&B run and report row, and a diverging job fails
alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.helpers import run_cli, wandb_records

SMALL = [
    "train.max_steps=3", "train.logging_steps=1", "train.per_device_train_batch_size=2",
    "train.per_device_eval_batch_size=4", "data.max_train_samples=8", "data.max_eval_samples=4",
    "dpo.max_length=128", "train.precision=fp32", "eval.num_prompts=2", "eval.generation.max_new_tokens=4",
]  # fmt: skip
GRID = ["dpo.beta=0.1,0.5", "lora.r=2,4", "dpo.precompute_ref_log_probs=true"]
EVAL_KEYS = ("eval_loss", "eval_rewards/accuracies", "eval_rewards/margins", "eval_rewards/chosen")


def _sweep(tmp_path_factory, name: str, args: list[str]) -> Path:
    tmp = tmp_path_factory.mktemp(name)
    sweep = tmp / "sweep"
    proc = run_cli(["-m", *args, *SMALL, f"hydra.sweep.dir={sweep}"], tmp)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return sweep


def _jobs(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def _metrics(job: Path) -> dict:
    return json.loads((job / "metrics.json").read_text())


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory) -> tuple[Path, Path]:
    basic = _sweep(tmp_path_factory, "basic", GRID)
    packed = _sweep(tmp_path_factory, "packed", ["hydra/launcher=packed", *GRID])
    return basic, packed


@pytest.mark.slow
def test_packed_jobs_equal_the_basic_launchers(sweeps) -> None:
    basic, packed = sweeps
    assert [j.name for j in _jobs(packed)] == ["0", "1", "2", "3"]
    for alone, job in zip(_jobs(basic), _jobs(packed), strict=True):
        mine, theirs = _metrics(job), _metrics(alone)
        assert mine["status"] == theirs["status"] == "completed"
        assert mine["train"]["pack_size"] == 4 and "pack_size" not in theirs["train"]
        assert mine["train"]["pack_step"] == ("together" if torch.cuda.is_available() else "in_turn")
        # the FLOP model of a packed step: the job's own policy FLOPs equal the job's alone (reference
        # precomputed), the pack's are the sum over its 4 jobs (2 ranks x 2 betas)
        own, pack = mine["flops"]["train_flops"], mine["flops"]["pack"]
        assert own["total"] == pytest.approx(theirs["flops"]["train_flops"]["total"], rel=1e-6)
        assert pack["size"] == 4 and sorted(pack["lora_params"])[0] * 2 == sorted(pack["lora_params"])[-1]
        assert pack["mfu"] > mine["mfu"] > 0
        assert yaml.safe_load((job / "config.yaml").read_text()) == yaml.safe_load(
            (alone / "config.yaml").read_text()
        )
        for key in EVAL_KEYS:
            assert mine["eval"][key] == pytest.approx(theirs["eval"][key], abs=1e-5), (job.name, key)
            assert mine["eval_before"][key] == pytest.approx(theirs["eval_before"][key], abs=1e-5)
        assert mine["objective"]["value"] == pytest.approx(theirs["objective"]["value"], abs=1e-5)
        a = load_file(job / "adapter" / "adapter_model.safetensors")
        b = load_file(alone / "adapter" / "adapter_model.safetensors")
        assert a.keys() == b.keys()
        assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5
        assert any(a[k].abs().max() > 0 for k in a if "lora_B" in k)  # it trained
        history = [json.loads(line) for line in (job / "log_history.jsonl").read_text().splitlines()]
        reference = [json.loads(line) for line in (alone / "log_history.jsonl").read_text().splitlines()]
        losses = [h["loss"] for h in history if "loss" in h]
        assert len(losses) == 3
        assert losses == pytest.approx([h["loss"] for h in reference if "loss" in h], abs=1e-5)
        for name in ("README.md", "adapter/README.md", "samples_before.jsonl", "samples_after.jsonl"):
            assert (job / name).is_file(), name
        assert mine["task"].keys() == theirs["task"].keys()
        for name in ("samples_before.jsonl", "samples_after.jsonl"):  # generated in the pack, same answers
            answers = [json.loads(line)["response"] for line in (job / name).read_text().splitlines()]
            lines = (alone / name).read_text().splitlines()
            assert answers == [json.loads(line)["response"] for line in lines]


@pytest.mark.slow
def test_packed_jobs_keep_their_own_wandb_runs_and_report_rows(sweeps) -> None:
    _, packed = sweeps
    runs = [next(r["run"] for r in wandb_records(job) if r["type"] == "run") for job in _jobs(packed)]
    assert len({r["run_id"] for r in runs}) == 4
    assert {r["run_group"] for r in runs} == {f"sweep-{packed.parent.name}_{packed.name}"}
    rows = (packed / "results.csv").read_text().splitlines()
    assert len(rows) == 5 and all(",completed," in row for row in rows[1:])


@pytest.mark.slow
def test_a_diverging_job_leaves_the_pack_alone(tmp_path_factory) -> None:
    sweep = _sweep(
        tmp_path_factory,
        "diverging",
        ["hydra/launcher=packed", "train.learning_rate=5e-4,1e30", "logger=none"],
    )
    ok, bad = (_metrics(job) for job in _jobs(sweep))
    assert bad["status"] == "failed" and "non-finite" in bad["error"], bad
    assert ok["status"] == "completed" and ok["train"]["pack_size"] == 2
    assert torch.isfinite(torch.tensor(ok["eval"]["eval_loss"]))
    report = (sweep / "results.csv").read_text()
    assert ",failed," in report and ",completed," in report
