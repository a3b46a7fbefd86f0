"""Tier 1: every config option composes and validates; bad values fail early with one clear line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import trl
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from dpo_lab.config.choices import DPO_LOSS_TYPES
from dpo_lab.config.overrides import check_overrides
from dpo_lab.config.resolvers import register_resolvers
from dpo_lab.config.schemas import RunConfig
from dpo_lab.config.store import register_configs
from dpo_lab.config.validation import to_run_config, validate
from dpo_lab.errors import ConfigError
from dpo_lab.runtime.precision import Precision
from tests.helpers import CONF, compose_config, run_cli

GROUPS = ["model", "lora", "dpo", "data", "train", "logger", "eval", "experiment", "sweep"]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize(
    "override", [f"{group}={option}" for group in GROUPS for option in _options(group)]
)  # fmt: skip
def test_every_option_composes_and_validates(override: str) -> None:
    cfg = compose_config([override])
    run_cfg = to_run_config(cfg)
    assert isinstance(run_cfg, RunConfig)


def test_each_group_has_options() -> None:
    for group in GROUPS:
        assert _options(group), f"conf/{group}/ has no option"


def test_experiments_start_with_their_command() -> None:
    # Hydra reads the package directive only from the leading "# @" lines, so it comes first;
    # the command to run the experiment is the first line after it.
    for path in (CONF / "experiment").glob("*.yaml"):
        lines = path.read_text().splitlines()
        assert lines[0] == "# @package _global_", path
        assert lines[1] == f"# python -m dpo_lab.run experiment={path.stem}", path


def test_reference_experiment_is_qlora_llama() -> None:
    run_cfg = to_run_config(compose_config(["experiment=finance_llama31_8b"]))
    assert run_cfg.model.name_or_path == "unsloth/Meta-Llama-3.1-8B-Instruct-bnb-4bit"
    assert run_cfg.model.quantization.value == "nf4"
    assert run_cfg.lora.target_modules == ["all-linear"]
    assert run_cfg.train.learning_rate == 5e-6


def test_rpo_preset_combines_sigmoid_and_sft() -> None:
    run_cfg = to_run_config(compose_config(["dpo=rpo"]))
    assert run_cfg.dpo.loss_type == ["sigmoid", "sft"]
    assert run_cfg.dpo.loss_weights == [1.0, 1.0]


def test_defaults_are_the_tiny_model_on_finance_data() -> None:
    run_cfg = to_run_config(compose_config())
    assert Path(run_cfg.model.name_or_path).joinpath("config.json").is_file()
    assert Path(run_cfg.data.path).joinpath("train.jsonl").is_file()
    assert run_cfg.train.precision is Precision.auto
    assert run_cfg.train.gradient_checkpointing is False


def test_public_keys_exist() -> None:
    cfg = compose_config()
    keys = [
        "model.name_or_path", "model.quantization", "model.dtype", "lora.r", "lora.alpha", "lora.dropout",
        "lora.target_modules", "dpo.beta", "dpo.loss_type", "dpo.loss_weights", "dpo.max_length",
        "dpo.precompute_ref_log_probs", "train.learning_rate", "train.per_device_train_batch_size",
        "train.gradient_accumulation_steps", "train.num_train_epochs", "train.max_steps", "train.eval_steps",
        "train.save_steps", "train.gradient_checkpointing", "train.extra", "seed", "reuse",
        "keep_freed_memory",
    ]  # fmt: skip
    for key in keys:
        assert OmegaConf.select(cfg, key, default="MISSING-KEY") != "MISSING-KEY", key


def test_loss_types_match_installed_trl() -> None:
    help_text = trl.DPOConfig.__dataclass_fields__["loss_type"].metadata["help"]
    trl_losses = set(re.findall(r"`'([a-z_]+)'`", help_text))
    assert trl_losses == set(DPO_LOSS_TYPES)


# (override, key named in the error, a word of what is allowed)
BAD_OVERRIDES = [
    ("lora.rank=8", "lora.rank", "accepts: alpha, bias, dropout, r,"),
    ("lora.r=eight", "lora.r", "must be an integer"),
    ("lora.r=0", "lora.r", ">= 1"),
    ("dpo.beta=-1", "dpo.beta", "> 0"),
    ("dpo.beta=0", "dpo.beta", "> 0"),  # zero gradient: a run that silently learns nothing
    ("model.quantization=nf5", "model.quantization", "none, nf4, int8"),
    ("dpo.loss_type=[sigmod]", "dpo.loss_type", "sigmoid"),
    ("train.learning_rate=0", "train.learning_rate", "> 0"),
    ("keep_freed_memory=maybe", "keep_freed_memory", "must be true or false"),
]


def test_keep_freed_memory_composes_both_ways() -> None:
    assert to_run_config(compose_config()).keep_freed_memory is True
    assert to_run_config(compose_config(["keep_freed_memory=false"])).keep_freed_memory is False


@pytest.mark.parametrize(("override", "key", "allowed"), BAD_OVERRIDES)
def test_bad_override_fails_in_process(override: str, key: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_overrides([override])
        to_run_config(compose_config([override]))
    assert info.value.key == key
    assert allowed in str(info.value)


@pytest.mark.parametrize(("override", "key", "allowed"), BAD_OVERRIDES)
def test_bad_override_cli_one_line_exit_2(override: str, key: str, allowed: str, tmp_path) -> None:
    proc = run_cli([override, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("dpo_lab:")]
    assert len(lines) == 1, proc.stderr
    assert key in lines[0] and allowed in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("dpo.loss_weights=[1.0,2.0]", "dpo.loss_weights"),
        ("dpo.max_length=4", "dpo.max_length"),
        ("lora.dropout=1.5", "lora.dropout"),
        ("lora.bias=some", "lora.bias"),
        ("train.max_steps=0", "train.max_steps"),
        ("train.per_device_train_batch_size=0", "train.per_device_train_batch_size"),
        ("+train.extra.bf16=true", "train.extra.bf16"),
        ("data.test_split=null", "data.test_size"),
        ("data.test_size=2.5", "data.test_size"),
        ("dpo=robust dpo.label_smoothing=0.6".split()[1], "dpo.label_smoothing"),
    ],
)
def test_invariants(override: str, key: str) -> None:
    overrides = [override]
    if override.startswith("data.test_size"):
        overrides.append("data.test_split=null")
    with pytest.raises(ConfigError) as info:
        validate(OmegaConf.to_object(compose_config(overrides)))
    assert info.value.key == key


def test_sweep_values_are_checked_each() -> None:
    check_overrides(["dpo.beta=0.05,0.1", "lora.r=8,16"])
    with pytest.raises(ConfigError, match="lora.r: must be an integer; got 'x'"):
        check_overrides(["lora.r=8,x"])


def test_unknown_key_suggests_the_close_one() -> None:
    with pytest.raises(ConfigError, match=r"did you mean dpo.beta\?"):
        check_overrides(["dpo.betta=0.1"])


# the YAML presets, and the packed launcher's own node (its plugin stores it in Hydra's ConfigStore)
LAUNCHERS = sorted([*(p.stem for p in (CONF / "hydra" / "launcher").glob("*.yaml")), "packed"])


def _launcher(option: str, *overrides: str):
    register_configs()
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", [f"hydra/launcher={option}", *overrides], return_hydra_config=True)
    return cfg.hydra.launcher


@pytest.mark.parametrize("option", LAUNCHERS)
def test_every_launcher_preset_composes(option: str) -> None:
    launcher = _launcher(option, "hydra.launcher.partition=gpu" if option == "slurm" else "seed=1")
    if option == "packed":  # dpo_lab's own launcher (hydra_plugins/dpo_lab_packed_launcher)
        assert launcher._target_.startswith("hydra_plugins.dpo_lab_packed_launcher.")
        return
    assert launcher._target_.startswith("hydra_plugins.hydra_submitit_launcher.")
    assert OmegaConf.select(launcher, "timeout_min") > 0


def test_launcher_presets_are_slurm_local_and_packed() -> None:
    assert LAUNCHERS == ["local", "packed", "slurm"]
    assert _launcher("local")._target_.endswith("LocalLauncher")
    assert _launcher("packed")._target_.endswith("PackedLauncher")
    assert _launcher("packed").pack_size == "auto"
    assert _launcher("packed").step == "auto"
    assert _launcher("packed", "hydra.launcher.step=together").step == "together"
    assert _launcher("packed", "hydra.launcher.pack_size=3").pack_size == 3


def test_slurm_preset_becomes_an_sbatch_script_that_requeues(tmp_path) -> None:
    from submitit.slurm.slurm import SlurmExecutor, _make_sbatch_string

    launcher = _launcher("slurm", "hydra.launcher.partition=gpu")
    params = {k: launcher[k] for k in launcher if k not in ("_target_", "submitit_folder", "name")}
    assert params.pop("max_num_timeout") == 20  # requeues after time-outs; preemptions always requeue
    renames = SlurmExecutor._equivalence_dict()
    sbatch_args = {renames.get(k, k): OmegaConf.to_object(v) if OmegaConf.is_config(v) else v
                   for k, v in params.items()}  # fmt: skip
    sbatch_args["mem"] = f"{sbatch_args['mem']}GB"
    script = _make_sbatch_string(command="python -m submitit.core._submit x", folder=tmp_path, **sbatch_args)
    for line in ("--partition=gpu", "--gpus-per-node=1", "--time=240", "--signal=USR2@300", "--requeue"):
        assert f"#SBATCH {line}" in script, line


def test_slurm_preset_defaults_to_the_clusters_partition() -> None:
    assert _launcher("slurm").partition is None


ACCELERATE = Path(__file__).resolve().parents[2] / "accelerate_configs"


@pytest.mark.parametrize(
    ("name", "kind"),
    [("ddp_cpu", "multi_gpu"), ("ddp_gpu", "multi_gpu"), ("fsdp", "use_fsdp"),
     ("deepspeed_zero2", "use_deepspeed"), ("deepspeed_zero3", "use_deepspeed")],
)  # fmt: skip
def test_accelerate_configs_pass_accelerates_own_checks(name: str, kind: str) -> None:
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    path = ACCELERATE / f"{name}.yaml"
    lines = path.read_text().splitlines()
    assert lines[0].startswith(f"# accelerate launch --config_file accelerate_configs/{name}.yaml")
    args = launch_command_parser().parse_args(["--config_file", str(path), "-m", "dpo_lab.run"])
    args, defaults, _ = _validate_launch_command(args)
    assert getattr(args, kind) is True
    assert sum(bool(getattr(args, k)) for k in ("multi_gpu", "use_fsdp", "use_deepspeed")) == 1
    if name == "fsdp":
        assert args.fsdp_version == 2 and args.fsdp_transformer_layer_cls_to_wrap == "LlamaDecoderLayer"
    if name.startswith("deepspeed"):
        assert defaults.deepspeed_config["zero_stage"] == int(name[-1])


def test_accelerate_config_folder_is_covered() -> None:
    assert sorted(p.stem for p in ACCELERATE.glob("*.yaml")) == [
        "ddp_cpu", "ddp_gpu", "deepspeed_zero2", "deepspeed_zero3", "fsdp",
    ]  # fmt: skip


def test_console_script_finds_the_config_from_any_directory(tmp_path) -> None:
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).with_name("dpo-lab")
    proc = subprocess.run([str(script), "dpo.beta=0.2", "--cfg", "job"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "beta: 0.2" in proc.stdout


def _float_keys() -> list[str]:
    from dpo_lab.config.fields import leaves

    cfg = to_run_config(compose_config([]))
    return [key for key, _, value in leaves(cfg) if isinstance(value, float)]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_every_float_key_refuses_nan_and_inf(bad: float) -> None:
    """A range check like ``> 0`` lets inf through and NaN compares false with everything: no float key of
    the run takes a non-finite value (each is refused with its key named)."""
    import copy

    from dpo_lab.config.validation import validate

    keys = _float_keys()
    assert {"dpo.beta", "train.learning_rate", "lora.dropout", "train.max_grad_norm"} <= set(keys)
    base = to_run_config(compose_config([]))
    for key in keys:
        cfg = copy.deepcopy(base)
        *path, last = key.split(".")
        node = cfg
        for part in path:
            node = getattr(node, part)
        setattr(node, last, bad)
        with pytest.raises(ConfigError) as info:
            validate(cfg)
        assert info.value.key == key and "must be a finite number" in str(info.value), key
