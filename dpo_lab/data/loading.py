"""Load preference data, normalise it to conversational prompt / chosen / rejected, and validate it.

read (:mod:`dpo_lab.data.sources`) -> detect the shape, normalise and check every row
(:mod:`dpo_lab.data.formats`) -> error on invalid rows, or drop them and count them per reason
(:mod:`dpo_lab.data.checks`) -> held-out split -> sample caps -> count tokens with the chat template and
check prompt lengths on the rows kept -> report (:mod:`dpo_lab.data.report`).

Every step is a ``datasets`` map / select with a deterministic fingerprint over Arrow cache files, so an
unchanged source is neither re-read nor re-normalised by the next job, and TRL's tokenisation map that
follows finds its own cache too.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from datasets import Dataset, Features, List, Value
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from dpo_lab.config.choices import DataFormat, OnInvalid
from dpo_lab.config.schemas import DataColumns, DataSettings
from dpo_lab.data.checks import SplitProblems, invalid_rows_message, prompt_length_problem, tally
from dpo_lab.data.formats import FORMATS, Pair, Reason, RowProblem, detect_format, normalise_record
from dpo_lab.data.report import pair_token_ids, split_report
from dpo_lab.data.sources import RawSplit, read_split, single_split_source
from dpo_lab.errors import ConfigError, DataError

log = logging.getLogger(__name__)

PAIR_COLUMNS = ("prompt", "chosen", "rejected")
LENGTH_COLUMNS = ("prompt_tokens", "chosen_tokens", "rejected_tokens")
# the token ids TRL's DPOTrainer trains on, made while counting tokens and handed to it (trainer.py)
ID_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")
CHECK_COLUMNS = ("_row", "_reason", "_field", "_detail")
DETECT_ROWS = 100  # rows looked at to detect the shape with data.format=auto

_MESSAGES = List({"role": Value("string"), "content": Value("string")})
NORMALISED_FEATURES = Features(
    {
        "prompt": _MESSAGES,
        "chosen": _MESSAGES,
        "rejected": _MESSAGES,
        "_row": Value("int64"),
        "_reason": Value("string"),
        "_field": Value("string"),
        "_detail": Value("string"),
    }
)


@dataclass
class PreferenceData:
    """Train and held-out splits as conversational prompt / chosen / rejected, and what loading found."""

    train: Dataset
    eval: Dataset
    source: str
    formats: dict[str, str] = field(default_factory=dict)  # split -> shape (detected or forced)
    dropped: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> reason -> rows dropped
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)  # split -> rows, token stats, truncation
    max_length: int | None = None
    # the held-out pairs' source split and their row numbers in it ("_row"): their stored rows, every column
    # kept (the ground truth a task checker needs), without reading the source a second time
    held_out_source: RawSplit | None = None
    held_out_row_numbers: list[int] = field(default_factory=list)

    def held_out_rows(self) -> list[dict[str, Any]]:
        """The stored rows of the held-out pairs, in their order (rows that are not JSON objects skipped)."""
        if self.held_out_source is None:
            return []
        return source_rows(self.held_out_source, self.held_out_row_numbers)

    @property
    def fingerprint(self) -> str:
        return f"{self.train._fingerprint}:{self.eval._fingerprint}"

    @property
    def dropped_total(self) -> dict[str, int]:
        """Rows dropped per reason, over both splits."""
        total: dict[str, int] = {}
        for counts in self.dropped.values():
            for reason, n in counts.items():
                total[reason] = total.get(reason, 0) + n
        return total

    def summary(self) -> dict[str, Any]:
        """The ``data`` entry of metrics.json: source, shapes, dropped rows per reason, the data report."""
        return {
            "source": self.source,
            "format": self.formats,
            "dropped": self.dropped_total,
            "dropped_by_split": self.dropped,
            "max_length": self.max_length,
            "splits": self.splits,
        }

    def wandb_summary(self) -> dict[str, Any]:
        """Flat ``data/...`` keys for the W&B run summary."""
        flat: dict[str, Any] = {f"data/dropped/{reason}": n for reason, n in self.dropped_total.items()}
        flat["data/dropped_rows"] = sum(self.dropped_total.values())
        for name, split in self.splits.items():
            flat[f"data/{name}/rows"] = split["rows"]
            if "truncated_pairs" in split:
                flat[f"data/{name}/truncated_pairs"] = split["truncated_pairs"]
            for kind in ("prompt_tokens", "response_tokens"):
                for stat, value in (split.get(kind) or {}).items():
                    flat[f"data/{name}/{kind}_{stat}"] = value
        return flat


def _train_and_held_out(parsed: dict[str, Any], cfg: DataSettings, seed: int) -> dict[str, Dataset]:
    """The held-out split (its own, or carved off the train rows with the seed), both capped by
    ``data.max_*_samples``."""
    train = parsed["train"].valid
    if "eval" in parsed:
        held_out = parsed["eval"].valid
    else:
        train, held_out = _carve_held_out(train, cfg.test_size, seed)
    if cfg.max_train_samples is not None:
        train = train.select(range(min(cfg.max_train_samples, len(train))))
    if cfg.max_eval_samples is not None:
        held_out = held_out.select(range(min(cfg.max_eval_samples, len(held_out))))
    return {"train": train, "eval": held_out}


def load_preference_data(
    cfg: DataSettings,
    seed: int,
    tokenizer: PreTrainedTokenizerBase | None = None,
    max_length: int | None = None,
) -> PreferenceData:
    """Read, normalise and validate the train and held-out splits named by the ``data`` group.

    Every row is normalised and checked; invalid rows raise :class:`DataError` unless
    ``data.on_invalid=drop``. Then the held-out split is carved off (without ``data.test_split``) and the
    ``max_*_samples`` caps apply. With a tokenizer, the rows that remain are measured with its chat
    template (the report) and, given ``max_length``, checked for prompts that leave no room for a response;
    token counting is the costly step, so it only runs on rows that will be used.
    """
    _check_split_keys(cfg)
    raws = {"train": read_split(cfg, cfg.split, "data.split")}
    if cfg.held_out_split is not None:
        raws["eval"] = read_split(cfg, cfg.held_out_split, "data.test_split")
    parsed = {name: _parse_split(raw, cfg) for name, raw in raws.items()}
    _refuse_or_log(cfg, [p.problems for p in parsed.values()])
    for name, p in parsed.items():
        if len(p.valid) == 0:
            raise DataError("data.path", _nothing_left(name, p, cfg))

    splits = _train_and_held_out(parsed, cfg, seed)
    origins = {name: parsed.get(name, parsed["train"]).raw for name in splits}

    dropped = {name: p.problems.counts() for name, p in parsed.items()}
    if tokenizer is not None:
        splits = {name: _measure(ds, tokenizer, origins[name].origin) for name, ds in splits.items()}
        if max_length is not None:
            fmt = parsed["train"].format
            too_long = {name: _length_problems(ds, origins[name], cfg.columns, fmt, max_length)
                        for name, ds in splits.items()}  # fmt: skip
            _refuse_or_log(cfg, list(too_long.values()))
            splits = {name: _without(ds, too_long[name].rows) for name, ds in splits.items()}
            for name, problems in too_long.items():
                for reason, n in problems.counts().items():
                    dropped.setdefault(name, {})[reason] = n
    for name, ds in splits.items():
        if len(ds) == 0:
            raise DataError("data.path", f"no valid {name} rows left from {origins[name].origin}")

    return PreferenceData(
        held_out_source=origins["eval"],
        held_out_row_numbers=list(splits["eval"]["_row"]),
        train=_pairs_only(splits["train"]),
        eval=_pairs_only(splits["eval"]),
        source=cfg.path,
        formats={name: p.format.value for name, p in parsed.items()},
        dropped=dropped,
        splits={name: _split_report(ds, max_length) for name, ds in splits.items()},
        max_length=max_length,
    )


def _nothing_left(name: str, parsed: _Parsed, cfg: DataSettings) -> str:
    """Why a split has no row left: every row invalid (and dropped), or the held-out carving / caps."""
    origin, invalid = parsed.raw.origin, len(parsed.problems.rows)
    if invalid and invalid == len(parsed.raw.dataset):
        counts = ", ".join(f"{reason}={n}" for reason, n in parsed.problems.counts().items())
        return (
            f"no valid {name} rows left from {origin}: all {invalid} {parsed.raw.unit}s are invalid "
            f"({counts}) and data.on_invalid={cfg.on_invalid.value} dropped them; fix the data, or "
            "data.columns / data.format if they name the wrong fields"
        )
    return f"no valid {name} rows left from {origin}"


def _check_split_keys(cfg: DataSettings) -> None:
    if cfg.held_out_split is not None and single_split_source(cfg):
        raise ConfigError(
            "data.test_split",
            f"{cfg.path} holds a single split; set data.test_split=null and data.test_size (a fraction or a "
            "row count) to carve the held-out split off it, or point data.path at a folder of split files",
        )


def _refuse_or_log(cfg: DataSettings, found: list[SplitProblems]) -> None:
    """Raise on invalid rows with ``on_invalid=error``; otherwise log what is dropped."""
    found = [p for p in found if p.groups]
    if found and cfg.on_invalid is OnInvalid.error:
        raise DataError("data.on_invalid", invalid_rows_message(found))
    for problems in found:
        _log_dropped(problems)


@dataclass
class _Parsed:
    raw: RawSplit
    format: DataFormat
    valid: Dataset  # normalised valid rows, with their source row number in "_row"
    problems: SplitProblems


def _parse_split(raw: RawSplit, cfg: DataSettings) -> _Parsed:
    """Normalise every row of one split and tally the invalid ones; ``valid`` holds the rest."""
    fmt = cfg.format if cfg.format is not DataFormat.auto else detect_split_format(raw, cfg.columns)
    _check_columns(raw, fmt, cfg.columns)
    how = "detected" if cfg.format is DataFormat.auto else "data.format"
    log.info("data: %s -> format %s (%s)", raw.origin, fmt.value, how)
    ds = raw.dataset.map(
        normalise_row,
        with_indices=True,
        fn_kwargs={
            "fmt": fmt.value,
            "columns": asdict(cfg.columns),
            "system_prompt": cfg.system_prompt,
            "json_text": raw.json_text,
        },
        remove_columns=raw.dataset.column_names,
        features=NORMALISED_FEATURES,
        desc=f"Normalising {raw.origin}",
    )
    table = ds.select_columns(list(CHECK_COLUMNS)).to_dict()
    problems = tally(
        raw.origin,
        raw.unit,
        table["_row"],
        [
            RowProblem(r, f, d) if r else None
            for r, f, d in zip(table["_reason"], table["_field"], table["_detail"], strict=True)
        ],
    )
    valid = _without(ds, problems.rows).remove_columns(["_reason", "_field", "_detail"])
    return _Parsed(raw, fmt, valid, problems)


def _without(ds: Dataset, positions: list[int]) -> Dataset:
    """``ds`` less the rows at ``positions`` (order kept)."""
    if not positions:
        return ds
    drop = set(positions)
    return ds.select([i for i in range(len(ds)) if i not in drop])


def _measure(ds: Dataset, tokenizer: PreTrainedTokenizerBase, origin: str) -> Dataset:
    return ds.map(measure_row, fn_kwargs={"tokenizer": tokenizer}, desc=f"Counting tokens of {origin}")


def _length_problems(
    ds: Dataset, raw: RawSplit, columns: DataColumns, fmt: DataFormat, max_length: int
) -> SplitProblems:
    """Rows whose prompt leaves no room for a response under ``max_length``."""
    prompt_field = FORMATS[fmt].prompt_field(columns)
    table = ds.select_columns(["_row", "prompt_tokens"]).to_dict()
    found = [prompt_length_problem(n, max_length, prompt_field) for n in table["prompt_tokens"]]
    return tally(raw.origin, raw.unit, table["_row"], found)


def detect_split_format(raw: RawSplit, columns: DataColumns) -> DataFormat:
    """The shape of the first of the first rows that fits one (``data.format=auto``)."""
    seen: set[str] = set()
    for row in raw.dataset.select(range(min(DETECT_ROWS, len(raw.dataset)))):
        record = _record(row, raw.json_text)
        if not isinstance(record, dict):
            continue
        seen.update(record)
        fmt = detect_format(record, columns)
        if fmt is not None:
            return fmt
    raise DataError(
        "data.format",
        f"cannot tell the shape of {raw.origin} from its first {DETECT_ROWS} rows (fields: "
        f"{', '.join(sorted(seen)) or 'none'}; looked for prompt={columns.prompt!r}, "
        f"chosen={columns.chosen!r}, rejected={columns.rejected!r}); set data.format to standard, "
        "conversational, implicit_prompt or hh, and data.columns.* where the fields have other names",
    )


def _check_columns(raw: RawSplit, fmt: DataFormat, columns: DataColumns) -> None:
    """A source with a schema must have the columns its shape reads (JSON rows are checked row by row)."""
    if raw.json_text:
        return
    for key in FORMATS[fmt].required:
        name = getattr(columns, key)
        if name not in raw.dataset.column_names:
            raise ConfigError(
                f"data.columns.{key}",
                f"{raw.origin} has no column {name!r}; its columns: {', '.join(raw.dataset.column_names)}",
            )


def _record(row: dict[str, Any], json_text: bool) -> Any:
    if not json_text:
        return row
    try:
        return json.loads(row["_text"])
    except json.JSONDecodeError:
        return None


def normalise_row(
    row: dict[str, Any],
    index: int,
    fmt: str,
    columns: dict[str, str],
    system_prompt: str | None,
    json_text: bool,
) -> dict[str, Any]:
    """``datasets.map`` function: one source row -> prompt / chosen / rejected messages and its problem."""
    number = row["_line"] if json_text else index
    if json_text:
        try:
            record: Any = json.loads(row["_text"])
        except json.JSONDecodeError as err:
            problem = RowProblem(
                Reason.unparseable, "(line)", f"not valid JSON: {err.msg} at column {err.colno}"
            )
            return _row_output(number, problem)
    else:
        record = row
    result = normalise_record(record, DataFormat(fmt), DataColumns(**columns), system_prompt)
    return _row_output(number, result)


def _row_output(number: int, result: Pair | RowProblem) -> dict[str, Any]:
    if isinstance(result, RowProblem):
        empty: list[dict[str, str]] = []
        return {
            "prompt": empty, "chosen": empty, "rejected": empty, "_row": number,
            "_reason": result.reason, "_field": result.field, "_detail": result.detail,
        }  # fmt: skip
    return {
        "prompt": result.prompt, "chosen": [result.chosen], "rejected": [result.rejected], "_row": number,
        "_reason": "", "_field": "", "_detail": "",
    }  # fmt: skip


def measure_row(row: dict[str, Any], tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """``datasets.map`` function: prompt / chosen / rejected token ids (TRL's columns) and counts of a
    normalised row."""
    ids = pair_token_ids(tokenizer, row["prompt"], row["chosen"][0], row["rejected"][0])
    return {
        **dict(zip(ID_COLUMNS, ids, strict=True)),
        **dict(zip(LENGTH_COLUMNS, (len(i) for i in ids), strict=True)),
    }


def _carve_held_out(train: Dataset, test_size: float | None, seed: int) -> tuple[Dataset, Dataset]:
    assert test_size is not None  # DataSettings.problems insists on test_split or test_size
    size: float | int = test_size if test_size < 1 else int(test_size)
    try:
        parts = train.train_test_split(test_size=size, seed=seed)
    except ValueError as err:
        raise ConfigError(
            "data.test_size", f"cannot hold out {size} of {len(train)} valid rows: {err}"
        ) from err
    return parts["train"], parts["test"]


def _split_report(ds: Dataset, max_length: int | None) -> dict[str, Any]:
    if "prompt_tokens" not in ds.column_names:
        return {"rows": len(ds)}
    lengths = ds.select_columns(list(LENGTH_COLUMNS)).to_dict()
    return split_report(*(lengths[c] for c in LENGTH_COLUMNS), max_length=max_length)


def _pairs_only(ds: Dataset) -> Dataset:
    """The pair columns, and the token ids when they were counted (TRL trains on those)."""
    extra = [c for c in ds.column_names if c not in PAIR_COLUMNS + ID_COLUMNS]
    return ds.remove_columns(extra) if extra else ds


def _log_dropped(problems: SplitProblems) -> None:
    if not problems.groups:
        return
    counts = ", ".join(f"{reason}={n}" for reason, n in problems.counts().items())
    log.warning("data: dropped %d invalid rows of %s (%s)", len(problems.rows), problems.origin, counts)
    for group in problems.groups.values():
        log.warning("data:   %s", problems.describe(group))


def source_rows(raw: RawSplit, numbers: list[int]) -> list[dict[str, Any]]:
    """The rows of ``raw`` numbered ``numbers`` (the ``_row`` of normalised rows: a JSON file's line, else
    the index), as stored; rows that are not JSON objects are skipped."""
    if raw.json_text:
        position = {line: i for i, line in enumerate(raw.dataset["_line"])}
        picked = raw.dataset.select([position[n] for n in numbers])
    else:
        picked = raw.dataset.select(numbers)
    rows = (_record(row, raw.json_text) for row in picked)
    return [row for row in rows if isinstance(row, dict)]


def load_held_out_rows(cfg: DataSettings) -> list[dict[str, Any]]:
    """The source rows of the held-out split as stored, every column kept (e.g. the ground truth a task
    checker needs); rows that are not JSON objects are skipped. Without ``data.test_split`` the held-out
    rows are carved off ``data.split`` after normalisation, so this returns all of ``data.split``: match
    the held-out pairs to their rows by prompt."""
    split, key = (
        (cfg.held_out_split, "data.test_split")
        if cfg.held_out_split is not None
        else (cfg.split, "data.split")
    )
    raw = read_split(cfg, split, key)
    rows = (_record(row, raw.json_text) for row in raw.dataset)
    return [row for row in rows if isinstance(row, dict)]
