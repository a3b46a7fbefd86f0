"""Invalid preference rows: group them by reason, and say where they are (error) or how many went (drop).

The row rules themselves live with the shapes (:mod:`dpo_lab.data.formats`) and the prompt-length rule
here (it needs token counts); this module only tallies and words them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from dpo_lab.data.formats import Reason, RowProblem


def prompt_length_problem(prompt_tokens: int, max_length: int, field: str) -> RowProblem | None:
    """A prompt of ``prompt_tokens`` leaves no room for a response under ``dpo.max_length``.

    TRL keeps the start of prompt + response and drops pairs whose prompt alone fills ``max_length``;
    dpo_lab reports them instead of losing them silently.
    """
    if prompt_tokens < max_length:
        return None
    return RowProblem(
        Reason.prompt_too_long,
        field,
        f"the prompt is {prompt_tokens} tokens with the chat template; dpo.max_length={max_length} leaves no "
        "room for the responses",
    )


@dataclass
class ProblemGroup:
    """Invalid rows of one split that share a reason: the first one, and how many there are."""

    reason: str
    first_row: int
    first: RowProblem
    count: int = 1


@dataclass
class SplitProblems:
    """Invalid rows of one split, grouped by reason in order of first appearance."""

    origin: str
    unit: str
    groups: dict[str, ProblemGroup] = field(default_factory=dict)
    rows: list[int] = field(default_factory=list)  # positions (0-based) of the invalid rows in the split

    def add(self, position: int, row_number: int, problem: RowProblem) -> None:
        self.rows.append(position)
        group = self.groups.get(problem.reason)
        if group is None:
            self.groups[problem.reason] = ProblemGroup(problem.reason, row_number, problem)
        else:
            group.count += 1

    def counts(self) -> dict[str, int]:
        return {reason: group.count for reason, group in self.groups.items()}

    def describe(self, group: ProblemGroup) -> str:
        others = group.count - 1
        tail = {0: "no other row has this problem", 1: "1 other row has this problem"}.get(
            others, f"{others} other rows have this problem"
        )
        return (
            f"{self.origin} {self.unit} {group.first_row}, field {group.first.field!r}: "
            f"{group.first.detail} ({tail})"
        )


def tally(
    origin: str, unit: str, row_numbers: Iterable[int], problems: Iterable[RowProblem | None]
) -> SplitProblems:
    """Group the problems of one split (``None`` = a valid row); ``row_numbers`` are as shown to users."""
    found = SplitProblems(origin, unit)
    for position, (number, problem) in enumerate(zip(row_numbers, problems, strict=True)):
        if problem is not None:
            found.add(position, number, problem)
    return found


def invalid_rows_message(splits: Iterable[SplitProblems]) -> str:
    """One line per (split, reason): the first row with that problem and how many others share it."""
    lines = [split.describe(group) for split in splits for group in split.groups.values()]
    lines.append("fix these rows, or set data.on_invalid=drop to drop them (the counts are reported)")
    return "\n  ".join(lines)
