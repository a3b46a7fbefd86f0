"""Shapes of preference rows: detection and normalisation to conversational prompt / chosen / rejected."""

from __future__ import annotations

import pytest

from dpo_lab.config.choices import DataFormat
from dpo_lab.config.schemas import DataColumns
from dpo_lab.data.formats import (
    Pair,
    Reason,
    RowProblem,
    detect_format,
    normalise_record,
    parse_hh_transcript,
)

COLS = DataColumns()


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def system(text: str) -> dict[str, str]:
    return {"role": "system", "content": text}


STANDARD = {"prompt": "2+2?", "chosen": "4", "rejected": "5"}
CONVERSATIONAL = {
    "prompt": [system("Be brief."), user("Hi"), assistant("Hello!"), user("2+2?")],
    "chosen": [assistant("4")],
    "rejected": [assistant("5")],
}
IMPLICIT = {
    "chosen": [user("Hi"), assistant("Hello!"), user("2+2?"), assistant("4")],
    "rejected": [user("Hi"), assistant("Hello!"), user("2+2?"), assistant("5")],
}
HH = {
    "chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: 2+2?\n\nAssistant: 4",
    "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: 2+2?\n\nAssistant: 5",
}


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (STANDARD, DataFormat.standard),
        (CONVERSATIONAL, DataFormat.conversational),
        ({**CONVERSATIONAL, "chosen": "4", "rejected": "5"}, DataFormat.conversational),
        (IMPLICIT, DataFormat.implicit_prompt),
        (HH, DataFormat.hh),
        ({"chosen": "4", "rejected": "5"}, None),  # strings without a prompt that are no HH transcripts
        ({"prompt": "2+2?", "chosen": "4"}, None),  # rejected missing
        ({"prompt": "x", "chosen": 4, "rejected": 5}, None),
    ],
)
def test_detect_format(record: dict, expected: DataFormat | None) -> None:
    assert detect_format(record, COLS) is expected


def test_detect_format_follows_column_mapping() -> None:
    cols = DataColumns(prompt="question", chosen="good", rejected="bad")
    assert detect_format({"question": "q", "good": "a", "bad": "b"}, cols) is DataFormat.standard
    assert detect_format(STANDARD, cols) is None


def test_standard_becomes_one_user_turn_and_assistant_replies() -> None:
    pair = normalise_record(STANDARD, DataFormat.standard, COLS)
    assert pair == Pair(prompt=[user("2+2?")], chosen=assistant("4"), rejected=assistant("5"))


def test_conversational_keeps_multi_turn_prompt_and_system_message() -> None:
    pair = normalise_record(CONVERSATIONAL, DataFormat.conversational, COLS)
    assert isinstance(pair, Pair)
    assert pair.prompt == CONVERSATIONAL["prompt"]
    assert (pair.chosen, pair.rejected) == (assistant("4"), assistant("5"))


def test_conversational_drops_extra_message_keys() -> None:
    record = {**CONVERSATIONAL, "chosen": [{"role": "assistant", "content": "4", "name": "bot"}]}
    pair = normalise_record(record, DataFormat.conversational, COLS)
    assert isinstance(pair, Pair) and pair.chosen == assistant("4")


def test_implicit_prompt_is_the_shared_prefix() -> None:
    pair = normalise_record(IMPLICIT, DataFormat.implicit_prompt, COLS)
    assert pair == Pair(
        prompt=[user("Hi"), assistant("Hello!"), user("2+2?")], chosen=assistant("4"), rejected=assistant("5")
    )


def test_hh_transcripts_become_the_same_pair_as_implicit() -> None:
    assert normalise_record(HH, DataFormat.hh, COLS) == normalise_record(
        IMPLICIT, DataFormat.implicit_prompt, COLS
    )


def test_column_mapping() -> None:
    cols = DataColumns(prompt="question", chosen="good", rejected="bad")
    pair = normalise_record(
        {"question": "2+2?", "good": "4", "bad": "5", "other": 1}, DataFormat.standard, cols
    )
    assert pair == normalise_record(STANDARD, DataFormat.standard, COLS)


def test_system_prompt_is_added_only_where_there_is_none() -> None:
    pair = normalise_record(STANDARD, DataFormat.standard, COLS, system_prompt="You are an accountant.")
    assert isinstance(pair, Pair) and pair.prompt == [system("You are an accountant."), user("2+2?")]
    pair = normalise_record(CONVERSATIONAL, DataFormat.conversational, COLS, system_prompt="Other.")
    assert isinstance(pair, Pair) and pair.prompt[0] == system("Be brief.")


def test_hh_parser_turns_and_whitespace() -> None:
    text = "\n\nHuman:  What is NPV?  \n\nAssistant: Net present value.\n\nHuman: Thanks\n\nAssistant: "
    assert parse_hh_transcript(text) == [
        user("What is NPV?"),
        assistant("Net present value."),
        user("Thanks"),
        assistant(""),
    ]


def test_hh_parser_accepts_a_transcript_without_leading_newlines() -> None:
    assert parse_hh_transcript("Human: a\n\nAssistant: b") == [user("a"), assistant("b")]


def test_hh_parser_merges_consecutive_turns_of_one_speaker() -> None:
    # HH-RLHF has rows with two Assistant turns in a row (e.g. harmless-base test line 764)
    text = "\n\nHuman: q\n\nAssistant: part one\n\nAssistant: part two\n\nHuman: ok\n\nAssistant: done"
    assert parse_hh_transcript(text) == [
        user("q"),
        assistant("part one\n\npart two"),
        user("ok"),
        assistant("done"),
    ]


def test_hh_response_split_over_two_assistant_turns_is_one_response() -> None:
    # harmless-base test line 1951: the rejected transcript has two Assistant turns after the shared prompt
    record = {
        "chosen": "\n\nHuman: q\n\nAssistant: short",
        "rejected": "\n\nHuman: q\n\nAssistant: long, part one Human: inline\n\nAssistant: part two",
    }
    pair = normalise_record(record, DataFormat.hh, COLS)
    assert pair == Pair(
        prompt=[user("q")],
        chosen=assistant("short"),
        rejected=assistant("long, part one Human: inline\n\npart two"),
    )


@pytest.mark.parametrize(
    ("chosen", "detail"),
    [
        ("Assistant: hi", "does not start with a 'Human:' turn"),
        ("preamble\n\nHuman: q\n\nAssistant: a", "does not start with a 'Human:' turn"),
        ("\n\nHuman: q\n\nAssistant: a\n\nHuman: more", "ends with a Human turn"),
    ],
)
def test_hh_unparseable_transcripts(chosen: str, detail: str) -> None:
    problem = normalise_record({"chosen": chosen, "rejected": HH["rejected"]}, DataFormat.hh, COLS)
    assert isinstance(problem, RowProblem)
    assert (problem.reason, problem.field) == (Reason.unparseable, "chosen")
    assert detail in problem.detail


def test_hh_responses_that_go_on_past_the_shared_prompt_are_unparseable() -> None:
    record = {
        "chosen": "\n\nHuman: q\n\nAssistant: a1\n\nHuman: q2\n\nAssistant: a2",
        "rejected": "\n\nHuman: q\n\nAssistant: b1\n\nHuman: q2\n\nAssistant: b2",
    }
    problem = normalise_record(record, DataFormat.hh, COLS)
    assert isinstance(problem, RowProblem)
    assert (problem.reason, problem.field) == (Reason.unparseable, "chosen")
    assert "expected one assistant message, got 3 (assistant, user, assistant)" in problem.detail


def test_hh_with_no_shared_opening_turn() -> None:
    record = {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: c\n\nAssistant: d"}
    problem = normalise_record(record, DataFormat.hh, COLS)
    assert isinstance(problem, RowProblem) and problem.reason == Reason.unparseable
    assert "no common prompt" in problem.detail


# (shape, record, reason, field): each row rule on a crafted row names the right field
RULES = [
    (DataFormat.standard, {"chosen": "4", "rejected": "5"}, Reason.missing_field, "prompt"),
    (DataFormat.standard, {"prompt": "q", "chosen": None, "rejected": "5"}, Reason.missing_field, "chosen"),
    (
        DataFormat.standard,
        {"prompt": "q", "chosen": "4", "rejected": 5},
        Reason.non_string_content,
        "rejected",
    ),
    (
        DataFormat.standard,
        {"prompt": ["q"], "chosen": "4", "rejected": "5"},
        Reason.non_string_content,
        "prompt",
    ),
    (DataFormat.standard, {"prompt": "q", "chosen": "  ", "rejected": "5"}, Reason.empty_response, "chosen"),
    (DataFormat.standard, {"prompt": "q", "chosen": "4", "rejected": ""}, Reason.empty_response, "rejected"),
    (DataFormat.standard, {"prompt": "", "chosen": "4", "rejected": "5"}, Reason.empty_prompt, "prompt"),
    (
        DataFormat.standard,
        {"prompt": "q", "chosen": "4", "rejected": "4 "},
        Reason.identical_responses,
        "chosen",
    ),
    (
        DataFormat.conversational,
        {"prompt": [user("q"), {"role": "user", "content": 3}], "chosen": "4", "rejected": "5"},
        Reason.non_string_content,
        "prompt[1].content",
    ),
    (
        DataFormat.conversational,
        {"prompt": [user("q"), {"role": "user"}], "chosen": "4", "rejected": "5"},
        Reason.non_string_content,
        "prompt[1]",
    ),
    (
        DataFormat.conversational,
        {"prompt": [user("q"), assistant("a")], "chosen": "4", "rejected": "5"},
        Reason.bad_role_sequence,
        "prompt",
    ),
    (
        DataFormat.conversational,
        {"prompt": [user("q"), system("late")], "chosen": "4", "rejected": "5"},
        Reason.bad_role_sequence,
        "prompt",
    ),
    (
        DataFormat.conversational,
        {"prompt": [{"role": "tool", "content": "x"}], "chosen": "4", "rejected": "5"},
        Reason.bad_role_sequence,
        "prompt[0].role",
    ),
    (
        DataFormat.conversational,
        {"prompt": [user("q")], "chosen": [user("4")], "rejected": "5"},
        Reason.bad_role_sequence,
        "chosen",
    ),
    (
        DataFormat.conversational,
        {"prompt": [user("q")], "chosen": [assistant("4"), assistant("more")], "rejected": "5"},
        Reason.bad_role_sequence,
        "chosen",
    ),
    (
        DataFormat.implicit_prompt,
        {"chosen": [user("q"), assistant("4")], "rejected": [user("q"), assistant("4")]},
        Reason.identical_responses,
        "chosen",
    ),
    (
        DataFormat.implicit_prompt,
        {
            "chosen": [user("q"), assistant("a"), assistant("4")],
            "rejected": [user("q"), assistant("a"), assistant("5")],
        },
        Reason.bad_role_sequence,
        "chosen",
    ),
    (DataFormat.hh, {"chosen": HH["chosen"]}, Reason.missing_field, "rejected"),
    (DataFormat.hh, {"chosen": HH["chosen"], "rejected": ["x"]}, Reason.non_string_content, "rejected"),
    (
        DataFormat.hh,
        {"chosen": "\n\nHuman: q\n\nAssistant: ", "rejected": "\n\nHuman: q\n\nAssistant: a"},
        Reason.empty_response,
        "chosen",
    ),
]


@pytest.mark.parametrize(("fmt", "record", "reason", "field"), RULES)
def test_row_rules(fmt: DataFormat, record: dict, reason: str, field: str) -> None:
    problem = normalise_record(record, fmt, COLS)
    assert isinstance(problem, RowProblem), problem
    assert (problem.reason, problem.field) == (reason, field), problem.detail


def test_rules_name_the_mapped_column() -> None:
    cols = DataColumns(prompt="question", chosen="good", rejected="bad")
    problem = normalise_record({"question": "q", "good": "", "bad": "b"}, DataFormat.standard, cols)
    assert problem == RowProblem(Reason.empty_response, "good", "empty response")


def test_a_row_that_is_no_object() -> None:
    problem = normalise_record(["a", "b"], DataFormat.standard, COLS)
    assert isinstance(problem, RowProblem) and problem.reason == Reason.unparseable
