"""Where preference rows come from: ``data.path`` as a file, a folder or a Hugging Face hub id -> a Dataset.

- A file: ``.jsonl``, ``.json`` (JSON lines or one JSON array), ``.jsonl.gz`` / ``.json.gz``, ``.parquet``,
  ``.csv`` / ``.csv.gz``. A file holds one split; the held-out split is carved off with ``data.test_size``.
- A folder saved by ``datasets`` (``save_to_disk``): its splits by name.
- A folder of split files, ``<split>.<ext>`` (``train.jsonl``, ``test.parquet``...) or ``data.split`` /
  ``data.test_split`` naming a file in it (``data.split=pairs_v2.csv``): a split-to-file mapping.
- Anything else (a hub id such as ``Anthropic/hh-rlhf``, or a local copy of a hub repository):
  ``datasets.load_dataset(path, data_dir=data.data_dir, split=...)``.

JSON files are read line by line by dpo_lab itself so that a broken line is reported by its line number
(instead of failing the whole file) and rows whose fields have mixed types still load; the rows are kept
as JSON text in an Arrow cache whose fingerprint is the file's path, size and modification time, so an
unchanged file is read once. The other sources are cached by ``datasets`` itself.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

from datasets import Dataset, DatasetDict, Features, Value, load_dataset, load_from_disk
from datasets.exceptions import DatasetGenerationError

from dpo_lab.config.schemas import DataSettings
from dpo_lab.errors import ConfigError, DataError

log = logging.getLogger(__name__)

JSON_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")
TABLE_SUFFIXES = {".parquet": "parquet", ".csv": "csv", ".csv.gz": "csv"}
FILE_SUFFIXES = (*JSON_SUFFIXES, *TABLE_SUFFIXES)
JSON_ROW_FEATURES = Features({"_line": Value("int64"), "_text": Value("string")})
_JSON_READER_VERSION = "dpo_lab-json-rows-1"  # bump when the row layout below changes
T = TypeVar("T")
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


@dataclass
class RawSplit:
    """One split as read from its source, before normalisation.

    ``json_text`` rows are ``{"_line": n, "_text": "<one JSON row>"}``; the others carry the source columns.
    ``unit`` says how rows are numbered in messages: ``line`` (1-based line of a file) or ``row`` (0-based
    index in the split, or in a JSON array).
    """

    dataset: Dataset
    origin: str
    unit: str
    json_text: bool


def file_suffix(path: Path) -> str:
    """``.jsonl.gz`` for ``x.jsonl.gz``, ``.csv`` for ``x.csv``; '' when it is no supported data file."""
    name = path.name.lower()
    return next((s for s in sorted(FILE_SUFFIXES, key=len, reverse=True) if name.endswith(s)), "")


def read_split(cfg: DataSettings, split: str, key: str) -> RawSplit:
    """The split named ``split`` (from config key ``key``) of the source ``data.path`` names."""
    path = Path(cfg.path).expanduser()
    if path.is_file():
        if cfg.data_dir is not None:
            raise ConfigError(
                "data.data_dir", f"applies to a folder or a hub dataset, not to the file {path}"
            )
        return read_file(path)
    if path.is_dir():
        return _read_folder(path, cfg.data_dir, split, key)
    if _looks_local(cfg.path):
        raise ConfigError("data.path", f"no such file or folder: {cfg.path}")
    return _load_with_datasets(cfg.path, cfg.data_dir, split, key)


def single_split_source(cfg: DataSettings) -> bool:
    """True when ``data.path`` holds one split only (a file, or a folder saved from a single Dataset)."""
    path = Path(cfg.path).expanduser()
    folder = path / cfg.data_dir if cfg.data_dir else path
    return path.is_file() or (folder / "state.json").is_file()


def _looks_local(value: str) -> bool:
    return value.startswith(("/", ".", "~")) or bool(file_suffix(Path(value))) or not _HUB_ID.match(value)


# ---------------------------------------------------------------------------------------------- files


def read_file(path: Path) -> RawSplit:
    if path.stat().st_size == 0:
        raise DataError("data.path", f"{path} is empty (0 bytes): it holds no preference rows")
    suffix = file_suffix(path)
    if suffix in JSON_SUFFIXES:
        return _read_json(path)
    if suffix in TABLE_SUFFIXES:
        dataset = _wrap_load_errors(
            lambda: load_dataset(TABLE_SUFFIXES[suffix], data_files=str(path), split="train"), str(path)
        )
        return RawSplit(dataset, origin=str(path), unit="row", json_text=False)
    raise ConfigError(
        "data.path", f"{path} is not a supported data file; use one of: {', '.join(FILE_SUFFIXES)}"
    )


def _open_text(path: Path) -> IO[str]:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def _is_json_array(path: Path) -> bool:
    with _open_text(path) as f:
        while chunk := f.read(4096):
            stripped = chunk.lstrip()
            if stripped:
                return stripped.startswith("[")
    return False


def json_rows(path: str) -> Iterator[dict]:
    """Each JSON row of a file as ``{"_line": number, "_text": json}``, unparsed (a bad line is not fatal).

    JSON lines: ``_line`` is the 1-based line number (blank lines are skipped, not renumbered).
    A JSON array: ``_line`` is the 0-based index of the element.
    """
    file = Path(path)
    if _is_json_array(file):
        with _open_text(file) as f:
            rows = json.load(f)
        for index, row in enumerate(rows):
            yield {"_line": index, "_text": json.dumps(row, ensure_ascii=False)}
        return
    with _open_text(file) as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                yield {"_line": number, "_text": line}


def _read_json(path: Path) -> RawSplit:
    resolved = path.resolve()
    stat = resolved.stat()
    stamp = f"{_JSON_READER_VERSION}:{resolved}:{stat.st_size}:{stat.st_mtime_ns}"
    fingerprint = hashlib.sha256(stamp.encode()).hexdigest()[:16]
    unit = "row" if _wrap_load_errors(lambda: _is_json_array(resolved), str(path)) else "line"

    def build() -> Dataset:
        return Dataset.from_generator(
            json_rows,
            features=JSON_ROW_FEATURES,
            gen_kwargs={"path": str(resolved)},
            fingerprint=fingerprint,
        )

    try:
        dataset = _wrap_load_errors(build, str(path))
    except ValueError as err:  # datasets: 'Instruction "train" corresponds to no data!'
        if "no data" not in str(err):
            raise
        raise DataError("data.path", f"{path} holds no rows") from None
    if len(dataset) == 0:
        raise DataError("data.path", f"{path} holds no rows")
    return RawSplit(dataset, origin=str(path), unit=unit, json_text=True)


def _wrap_load_errors(load: Callable[[], T], origin: str) -> T:
    """Run a loader; a file that cannot be read becomes a DataError naming it and the cause."""
    try:
        return load()
    except DatasetGenerationError as err:
        cause = err.__cause__ or err
        raise DataError("data.path", f"cannot read {origin}: {type(cause).__name__}: {cause}") from err
    except (UnicodeDecodeError, json.JSONDecodeError, gzip.BadGzipFile, EOFError) as err:
        raise DataError("data.path", f"cannot read {origin}: {type(err).__name__}: {err}") from err


# ---------------------------------------------------------------------------------------------- folders


def _read_folder(path: Path, data_dir: str | None, split: str, key: str) -> RawSplit:
    """A saved dataset, a folder of split files, or else a repository layout for ``load_dataset``."""
    folder = path / data_dir if data_dir else path
    if not folder.is_dir():
        raise ConfigError("data.data_dir", f"no such folder: {folder}")
    if (folder / "dataset_dict.json").is_file():
        saved = load_from_disk(str(folder))
        assert isinstance(saved, DatasetDict)
        if split not in saved:
            raise ConfigError(key, f"no split {split!r} in {folder}; it has: {', '.join(saved)}")
        return RawSplit(saved[split], origin=f"{folder} split {split}", unit="row", json_text=False)
    if (folder / "state.json").is_file():
        saved = load_from_disk(str(folder))
        assert isinstance(saved, Dataset)
        return RawSplit(saved, origin=str(folder), unit="row", json_text=False)
    file = _split_file(folder, split)
    if file is not None:
        return read_file(file)
    if not any(file_suffix(f) for f in folder.rglob("*") if f.is_file()):  # nothing datasets could read
        names = ", ".join([split, *(f"{split}{s}" for s in FILE_SUFFIXES)])
        raise ConfigError(
            key,
            f"no file for split {split!r} in {folder}: looked for {names}, and the folder holds no data file "
            "(a saved dataset has dataset_dict.json or state.json)",
        )
    return _load_with_datasets(str(path), data_dir, split, key)


def _split_file(folder: Path, split: str) -> Path | None:
    """``split`` as a file of ``folder``: the name itself, or ``<split>.<ext>`` for a supported ext."""
    exact = folder / split
    if exact.is_file():
        return exact
    found = [folder / f"{split}{s}" for s in FILE_SUFFIXES if (folder / f"{split}{s}").is_file()]
    if len(found) > 1:
        raise ConfigError(
            "data.path", f"several files for split {split!r} in {folder}: {[f.name for f in found]}"
        )
    return found[0] if found else None


# ---------------------------------------------------------------------------------------------- hub


def _load_with_datasets(path: str, data_dir: str | None, split: str, key: str) -> RawSplit:
    """``datasets.load_dataset`` on a hub id (or a local repository folder), one split."""
    log.info("loading %s (data_dir=%s, split=%s) with datasets.load_dataset", path, data_dir, split)
    try:
        dataset = load_dataset(path, data_dir=data_dir, split=split)
    except ValueError as err:
        if "split" in str(err).lower():
            raise ConfigError(key, f"{path}: {str(err).splitlines()[0]}") from err
        raise ConfigError("data.path", f"datasets cannot load {path!r}: {str(err).splitlines()[0]}") from err
    except (OSError, ConnectionError, FileNotFoundError, DatasetGenerationError) as err:
        raise ConfigError(
            "data.path",
            ("" if Path(path).exists() else "no such file or folder, and ")
            + f"datasets cannot load {path!r}: {type(err).__name__}: {str(err).splitlines()[0]}",
        ) from err
    assert isinstance(dataset, Dataset)
    origin = f"{path}" + (f"/{data_dir}" if data_dir else "") + f" split {split}"
    return RawSplit(dataset, origin=origin, unit="row", json_text=False)
