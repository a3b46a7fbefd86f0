"""A finished run folder read back: the typed config sections that rebuild its model, and its adapter."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dpo_lab.config.schemas import DataSettings, ModelSettings, TaskEvalSettings
from dpo_lab.errors import ConfigError
from dpo_lab.runs.layout import ADAPTER_DIR, CONFIG_FILE
from dpo_lab.runtime.hardware import device_type, resolve_precision
from dpo_lab.runtime.precision import Precision


@dataclass
class RunFolder:
    """What inference needs from a run: where it is, its base model, data and precision settings."""

    path: Path
    model: ModelSettings
    data: DataSettings
    eval: TaskEvalSettings
    train_precision: Precision
    seed: int

    @property
    def adapter_dir(self) -> Path:
        return self.path / ADAPTER_DIR

    @property
    def precision(self) -> Precision:
        """The run's precision setting resolved on this machine (``auto`` follows the hardware)."""
        return resolve_precision(self.train_precision, device_type())


def read_run(path: str, key: str = "run") -> RunFolder:
    """Read ``<path>/config.yaml``; ConfigError naming ``key`` if the folder is not a finished run."""
    folder = Path(path).expanduser().resolve()
    if not folder.is_dir():
        raise ConfigError(key, f"no such run folder: {path}")
    config_file = folder / CONFIG_FILE
    if not config_file.is_file():
        raise ConfigError(key, f"{path} is not a dpo_lab run folder (no {CONFIG_FILE})")
    if not (folder / ADAPTER_DIR / "adapter_config.json").is_file():
        raise ConfigError(
            key, f"{path} has no trained adapter ({ADAPTER_DIR}/adapter_config.json): did it finish?"
        )
    raw = OmegaConf.to_container(OmegaConf.load(config_file))
    assert isinstance(raw, dict)
    return RunFolder(
        path=folder,
        model=_section(raw, "model", ModelSettings, config_file, key),
        data=_section(raw, "data", DataSettings, config_file, key),
        eval=_section(raw, "eval", TaskEvalSettings, config_file, key, required=False),
        train_precision=Precision(raw.get("train", {}).get("precision", Precision.auto.value)),
        seed=int(raw.get("seed", 42)),
    )


def _section(
    raw: dict[str, Any], name: str, schema: type, source: Path, key: str, required: bool = True
) -> Any:
    """One section of the run's config as its typed schema (a run from before the section existed gets
    the defaults when the section is optional)."""
    if name not in raw:
        if required:
            raise ConfigError(key, f"{source} has no {name} section")
        return schema()
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), raw[name]))
    except OmegaConfBaseException as err:
        raise ConfigError(key, f"{source}: section {name}: {str(err).splitlines()[0]}") from None
