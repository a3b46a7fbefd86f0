"""Run names and groups: a readable name from what a run changed, one group per sweep."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from dpo_lab.config.pruning import SWEEPER_KEYS
from dpo_lab.runs.redaction import REDACTED, is_secret_key, redact, redact_text

# Short forms of the keys people sweep, for names like beta=0.05,r=8,lr=5e-06.
ALIASES = {
    "learning_rate": "lr",
    "per_device_train_batch_size": "bs",
    "gradient_accumulation_steps": "ga",
    "num_train_epochs": "epochs",
    "max_steps": "steps",
    "name_or_path": "model",
    "quantization": "quant",
    "loss_type": "loss",
}


def format_value(value: Any) -> str:
    """Compact text of a config value: 5e-06, 0.05, sigmoid+sft, basename of a path."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "+".join(format_value(v) for v in value)
    if isinstance(value, str) and "/" in value:
        return Path(value).name or value
    return str(value)


def changed_keys(overrides: list[str]) -> list[str]:
    """Config keys and groups that command-line overrides set, in command-line order."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException:
        return []
    return [
        o.key_or_group
        for o in parsed
        if not o.key_or_group.startswith("hydra")
        and o.type.name != "DEL"
        and o.key_or_group not in SWEEPER_KEYS
    ]


def run_name(
    overrides: list[str],
    cfg: DictConfig,
    defaults: DictConfig | None,
    choices: Mapping[str, str | None],
    default_choices: Mapping[str, str | None],
    swept: Sequence[str] = (),
) -> str:
    """``beta=0.05,r=8,lr=5e-06`` from the overrides whose value differs from the default config, and every
    ``swept`` key whatever its value (a sweep's job whose beta is the default still says beta=0.1)."""
    parts = []
    for key in changed_keys(overrides):
        if key in choices:  # a group choice such as model=llama31_8b_instruct_bnb4bit
            if choices.get(key) != default_choices.get(key) or key in swept:
                parts.append(f"{key}={choices[key]}")
            continue
        value = OmegaConf.select(cfg, key, default=None)
        default = OmegaConf.select(defaults, key, default=None) if defaults is not None else object()
        if defaults is None or value != default or key in swept:
            plain = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
            short = ALIASES.get(key.rsplit(".", 1)[-1], key.rsplit(".", 1)[-1])
            value_text = REDACTED if is_secret_key(short) else format_value(redact(plain))
            parts.append(redact_text(f"{short}={value_text}"))
    return ",".join(parts)


def run_group(sweep_dir: str | None, name: str, run_dir: Path, experiment: str | None = None) -> str:
    """All jobs of one multirun share ``sweep-<date>_<time>``; single runs are grouped by their experiment
    (``experiment-<name>``), or as ``single-runs``: a group that reads, and gathers comparable runs."""
    if sweep_dir is not None:
        path = Path(sweep_dir)
        return f"sweep-{path.parent.name}_{path.name}"
    return f"experiment-{experiment}" if experiment else "single-runs"


def swept_keys(sweep_overrides: Sequence[str], sweeper_params: Mapping[str, Any] | None) -> list[str]:
    """The keys a sweep varies: those of the command line's sweep overrides (``dpo.beta=0.1,0.5``) and of
    the sweeper's params (a committed ``sweep=...`` or Optuna's search space)."""
    keys = [str(k) for k in (sweeper_params or {})]
    try:
        parsed = OverridesParser.create().parse_overrides(list(sweep_overrides))
    except HydraException:
        parsed = []
    keys += [o.key_or_group for o in parsed if o.is_sweep_override() and o.key_or_group not in keys]
    return [k for k in keys if not k.startswith("hydra") and k not in SWEEPER_KEYS]
