"""Preference-row shapes: detect which one a dataset uses and normalise a row to TRL's conversational form.

Every shape becomes ``prompt`` (a list of ``{role, content}`` messages ending with the user) and ``chosen`` /
``rejected`` (each a single assistant message), so the run applies the tokenizer's chat template through
TRL whatever the source looked like:

- ``standard``: ``prompt``, ``chosen``, ``rejected`` strings.
- ``conversational``: ``prompt`` a list of messages (multi-turn, a leading system message allowed);
  ``chosen`` / ``rejected`` a list holding one assistant message (a plain string is taken as its content).
- ``implicit_prompt``: ``chosen`` / ``rejected`` full conversations; the messages they share from the start
  are the prompt and the rest of each is the response (TRL's ``extract_prompt`` convention).
- ``hh``: Anthropic HH-RLHF transcripts, ``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` strings; parsed into
  turns, then split like ``implicit_prompt``. Consecutive turns of the same speaker (a glitch of the HH
  collection, e.g. two ``Assistant:`` turns in a row) are one message, their texts joined by a blank line.

A row that does not fit its shape yields a :class:`RowProblem` (a reason code, the source field, a
sentence) instead of messages; :mod:`dpo_lab.data.checks` turns those into errors or drop counts.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dpo_lab.config.choices import DataFormat
from dpo_lab.config.schemas import DataColumns

Message = dict[str, str]
ROLES = ("system", "user", "assistant")


class Reason:
    """Reason codes of invalid rows: the keys of the drop counts in the log, metrics.json and W&B."""

    unparseable = "unparseable"
    missing_field = "missing_field"
    non_string_content = "non_string_content"
    bad_role_sequence = "bad_role_sequence"
    empty_prompt = "empty_prompt"
    empty_response = "empty_response"
    identical_responses = "identical_responses"
    prompt_too_long = "prompt_too_long"


@dataclass(frozen=True)
class RowProblem:
    """Why one row cannot be used: a reason code, the source field it concerns, and a sentence."""

    reason: str
    field: str
    detail: str


@dataclass(frozen=True)
class Pair:
    """A normalised preference pair: prompt messages ending with the user, one assistant message each."""

    prompt: list[Message]
    chosen: Message
    rejected: Message


class _Invalid(Exception):
    def __init__(self, reason: str, field: str, detail: str):
        super().__init__(detail)
        self.problem = RowProblem(reason, field, detail)


# ---------------------------------------------------------------------------------------------- detection


def detect_format(record: Mapping[str, Any], columns: DataColumns) -> DataFormat | None:
    """The shape of one row (the first registered format that claims it), or None when it fits none."""
    for fmt in FORMATS.values():
        if fmt.detect(record, columns):
            return fmt.name
    return None


def _detect_conversational(record: Mapping[str, Any], columns: DataColumns) -> bool:
    prompt, chosen, rejected = (record.get(c) for c in (columns.prompt, columns.chosen, columns.rejected))
    pair_of_texts = isinstance(chosen, str) and isinstance(rejected, str)
    answers = _is_messages(chosen) and _is_messages(rejected) and _opens_with_assistant(chosen, rejected)
    return (pair_of_texts or answers) and _is_messages(prompt) and bool(prompt)


def _detect_implicit_prompt(record: Mapping[str, Any], columns: DataColumns) -> bool:
    chosen, rejected = record.get(columns.chosen), record.get(columns.rejected)
    return _is_messages(chosen) and _is_messages(rejected) and not _opens_with_assistant(chosen, rejected)


def _detect_standard(record: Mapping[str, Any], columns: DataColumns) -> bool:
    prompt, chosen, rejected = (record.get(c) for c in (columns.prompt, columns.chosen, columns.rejected))
    return isinstance(chosen, str) and isinstance(rejected, str) and isinstance(prompt, str)


def _detect_hh(record: Mapping[str, Any], columns: DataColumns) -> bool:
    prompt, chosen, rejected = (record.get(c) for c in (columns.prompt, columns.chosen, columns.rejected))
    texts = isinstance(chosen, str) and isinstance(rejected, str)
    return texts and prompt is None and looks_like_hh(chosen) and looks_like_hh(rejected)


def _opens_with_assistant(chosen: list, rejected: list) -> bool:
    return bool(chosen and rejected and chosen[0].get("role") == "assistant")


def looks_like_hh(text: str) -> bool:
    """An HH-RLHF transcript opens with a ``Human:`` turn and has an ``Assistant:`` turn."""
    return text.lstrip().startswith("Human:") and "\n\nAssistant:" in text


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(m, Mapping) and "role" in m for m in value)


# ---------------------------------------------------------------------------------------------- normalisation


def normalise_record(
    record: Any, fmt: DataFormat, columns: DataColumns, system_prompt: str | None = None
) -> Pair | RowProblem:
    """One source row in shape ``fmt`` -> a :class:`Pair`, or the first :class:`RowProblem` found."""
    if not isinstance(record, Mapping):
        return RowProblem(Reason.unparseable, "(row)", f"expected an object, got {type(record).__name__}")
    try:
        pair = FORMATS[fmt].normalise(record, columns)
        pair = _with_system_prompt(pair, system_prompt)
        _check_pair(pair, columns, fmt)
    except _Invalid as err:
        return err.problem
    return pair


def _field(record: Mapping[str, Any], name: str) -> Any:
    value = record.get(name)
    if value is None:
        raise _Invalid(Reason.missing_field, name, f"missing field {name!r}")
    return value


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise _Invalid(Reason.non_string_content, field, f"expected a string, got {_type_name(value)}")
    return value


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _messages(value: Any, field: str) -> list[Message]:
    """A list of ``{role, content}`` messages with string contents (other keys are not kept)."""
    if not isinstance(value, list):
        raise _Invalid(
            Reason.non_string_content, field, f"expected a list of messages, got {_type_name(value)}"
        )
    out = []
    for i, message in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise _Invalid(
                Reason.non_string_content, where, "expected a message with 'role' and 'content' keys"
            )
        role = message["role"]
        if role not in ROLES:
            raise _Invalid(
                Reason.bad_role_sequence,
                f"{where}.role",
                f"unknown role {role!r}; allowed: {', '.join(ROLES)}",
            )
        out.append({"role": role, "content": _text(message["content"], f"{where}.content")})
    return out


def _response(value: Any, field: str) -> Message:
    """A response given as a string, or as a list holding exactly one assistant message."""
    if isinstance(value, str):
        return {"role": "assistant", "content": value}
    messages = _messages(value, field)
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        roles = ", ".join(m["role"] for m in messages) or "none"
        raise _Invalid(
            Reason.bad_role_sequence,
            field,
            f"expected a single assistant message, got {len(messages)} ({roles}); if chosen and rejected "
            "hold whole conversations use data.format=implicit_prompt",
        )
    return messages[0]


def _standard(record: Mapping[str, Any], columns: DataColumns) -> Pair:
    prompt = _text(_field(record, columns.prompt), columns.prompt)
    return Pair(
        prompt=[{"role": "user", "content": prompt}],
        chosen={"role": "assistant", "content": _text(_field(record, columns.chosen), columns.chosen)},
        rejected={"role": "assistant", "content": _text(_field(record, columns.rejected), columns.rejected)},
    )


def _conversational(record: Mapping[str, Any], columns: DataColumns) -> Pair:
    return Pair(
        prompt=_messages(_field(record, columns.prompt), columns.prompt),
        chosen=_response(_field(record, columns.chosen), columns.chosen),
        rejected=_response(_field(record, columns.rejected), columns.rejected),
    )


def _implicit_prompt(record: Mapping[str, Any], columns: DataColumns) -> Pair:
    chosen = _messages(_field(record, columns.chosen), columns.chosen)
    rejected = _messages(_field(record, columns.rejected), columns.rejected)
    return _split_shared_prefix(chosen, rejected, columns, Reason.bad_role_sequence)


def _hh(record: Mapping[str, Any], columns: DataColumns) -> Pair:
    chosen = parse_hh_transcript(_text(_field(record, columns.chosen), columns.chosen), columns.chosen)
    rejected = parse_hh_transcript(
        _text(_field(record, columns.rejected), columns.rejected), columns.rejected
    )
    return _split_shared_prefix(chosen, rejected, columns, Reason.unparseable)


def _split_shared_prefix(
    chosen: list[Message], rejected: list[Message], columns: DataColumns, reason: str
) -> Pair:
    """The messages both conversations open with are the prompt; each must then have one assistant reply."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == len(chosen) == len(rejected):
        last = chosen[-1] if chosen else {"role": "assistant", "content": ""}
        return Pair(prompt=chosen[:-1], chosen=last, rejected=dict(last))  # flagged as identical later
    if shared == 0:
        raise _Invalid(
            reason, columns.chosen, "chosen and rejected share no opening message: no common prompt"
        )
    for field, messages in ((columns.chosen, chosen), (columns.rejected, rejected)):
        rest = messages[shared:]
        if len(rest) != 1 or rest[0]["role"] != "assistant":
            roles = ", ".join(m["role"] for m in rest) or "none"
            raise _Invalid(
                reason,
                field,
                f"after the {shared} message(s) shared with the other response, expected one assistant "
                f"message, got {len(rest)} ({roles})",
            )
    return Pair(prompt=chosen[:shared], chosen=chosen[shared], rejected=rejected[shared])


_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


def parse_hh_transcript(text: str, field: str = "chosen") -> list[Message]:
    """``"\\n\\nHuman: a\\n\\nAssistant: b"`` -> ``[{user: a}, {assistant: b}]`` (raises on a malformed one).

    Turn contents are stripped of surrounding whitespace; consecutive turns of one speaker become one message.
    """
    body = text.lstrip()
    if not body.startswith("Human:"):
        detail = "does not start with a 'Human:' turn"
        raise _Invalid(Reason.unparseable, field, f"cannot parse the HH transcript: {detail}")
    parts = _HH_TURN.split("\n\n" + body)
    messages: list[Message] = []
    for speaker, content in zip(parts[1::2], parts[2::2], strict=True):
        role = "user" if speaker == "Human" else "assistant"
        content = content.strip()
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] = "\n\n".join(c for c in (messages[-1]["content"], content) if c)
        else:
            messages.append({"role": role, "content": content})
    if messages[-1]["role"] != "assistant":
        raise _Invalid(
            Reason.unparseable,
            field,
            "cannot parse the HH transcript: it ends with a Human turn, not a response",
        )
    return messages


@dataclass(frozen=True)
class RowFormat:
    """One preference-row shape: how to recognise it, which columns it needs, how to normalise a row."""

    name: DataFormat
    detect: Callable[[Mapping[str, Any], DataColumns], bool]
    normalise: Callable[[Mapping[str, Any], DataColumns], Pair]
    # the data.columns keys a row of this shape reads; the first holds the prompt
    required: tuple[str, ...]

    def prompt_field(self, columns: DataColumns) -> str:
        """The source column the prompt is read from (HH and implicit-prompt rows: inside chosen)."""
        return getattr(columns, self.required[0])


_WITH_PROMPT = ("prompt", "chosen", "rejected")
_RESPONSES_ONLY = ("chosen", "rejected")


# The registry, in detection order (the first format whose detect() accepts a row is the row's). A new
# format: a DataFormat member, its functions, and one line here.
FORMATS: dict[DataFormat, RowFormat] = {
    f.name: f
    for f in (
        RowFormat(DataFormat.conversational, _detect_conversational, _conversational, _WITH_PROMPT),
        RowFormat(DataFormat.implicit_prompt, _detect_implicit_prompt, _implicit_prompt, _RESPONSES_ONLY),
        RowFormat(DataFormat.standard, _detect_standard, _standard, _WITH_PROMPT),
        RowFormat(DataFormat.hh, _detect_hh, _hh, _RESPONSES_ONLY),
    )
}


def _with_system_prompt(pair: Pair, system_prompt: str | None) -> Pair:
    if system_prompt is None or (pair.prompt and pair.prompt[0]["role"] == "system"):
        return pair
    return Pair([{"role": "system", "content": system_prompt}, *pair.prompt], pair.chosen, pair.rejected)


# ---------------------------------------------------------------------------------------------- row rules


def _check_pair(pair: Pair, columns: DataColumns, fmt: DataFormat) -> None:
    """Role sequence, empty texts and identical responses (lengths are checked once tokenised)."""
    prompt_field = FORMATS[fmt].prompt_field(columns)
    roles = [m["role"] for m in pair.prompt]
    if "system" in roles[1:]:
        raise _Invalid(
            Reason.bad_role_sequence,
            prompt_field,
            f"a system message may only open the prompt; roles are {', '.join(roles)}",
        )
    if not roles or roles[-1] != "user":
        raise _Invalid(
            Reason.bad_role_sequence,
            prompt_field,
            "the prompt must end with a user message before the responses; "
            f"roles are {', '.join(roles) or 'none'}",
        )
    if not pair.prompt[-1]["content"].strip():
        raise _Invalid(Reason.empty_prompt, prompt_field, "the last user message of the prompt is empty")
    for field, message in ((columns.chosen, pair.chosen), (columns.rejected, pair.rejected)):
        if not message["content"].strip():
            raise _Invalid(Reason.empty_response, field, "empty response")
    if pair.chosen["content"].strip() == pair.rejected["content"].strip():
        raise _Invalid(Reason.identical_responses, columns.chosen, "chosen is identical to rejected")
