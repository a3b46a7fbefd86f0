"""``setting()`` and the helpers that read its field metadata, called directly (the schemas call them once, at
import, where a test of the schemas cannot see a mistake in them)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from omegaconf import MISSING

from dpo_lab.config.fields import (
    ARTEFACTS,
    changes_of,
    config_key,
    default_of,
    differs_in_pack,
    digest,
    help_of,
    leaves,
    plain,
    setting,
    values_where,
)
from dpo_lab.config.pruning import PrunerName


def test_setting_records_its_metadata() -> None:
    f = setting(
        3, help="why", changes=["pairs", "base"], differs_in_pack=True, trl="x", trl_differs="because"
    )
    assert f.default == 3 and f.default_factory is dataclasses.MISSING
    assert dict(f.metadata) == {
        "help": "why",
        "changes": frozenset({"pairs", "base"}),
        "differs_in_pack": True,
        "trl": "x",
        "trl_differs": "because",
    }
    assert help_of(f) == "why" and changes_of(f) == {"base", "pairs"} and differs_in_pack(f) is True


def test_setting_defaults() -> None:
    f = setting(help="required")
    assert f.default is MISSING and default_of(f) is MISSING
    assert dict(f.metadata) == {
        "help": "required",
        "changes": frozenset(),
        "differs_in_pack": False,
        "trl": None,
        "trl_differs": None,
    }
    assert differs_in_pack(f) is False and changes_of(f) == frozenset()


def test_a_factory_default_is_fresh_each_time() -> None:
    f = setting(help="a list", factory=lambda: ["all-linear"])
    assert f.default is dataclasses.MISSING and f.metadata["help"] == "a list"
    first, second = default_of(f), default_of(f)
    assert first == ["all-linear"] and first is not second


def test_an_unknown_artefact_is_refused() -> None:
    with pytest.raises(ValueError) as info:
        setting(1, help="h", changes=("base", "weights", "cache"))
    assert str(info.value) == (f"unknown artefacts ['cache', 'weights']; known: {', '.join(ARTEFACTS)}")
    assert ARTEFACTS == ("base", "tokenizer", "pairs", "tokenized", "reference")
    for artefact in ARTEFACTS:
        assert changes_of(setting(1, help="h", changes=(artefact,))) == {artefact}


def test_a_field_without_metadata_reads_as_empty() -> None:
    (f,) = dataclasses.fields(dataclasses.make_dataclass("Plain", [("x", int, dataclasses.field(default=1))]))
    assert help_of(f) == "" and changes_of(f) == frozenset() and differs_in_pack(f) is False


@dataclasses.dataclass
class Inner:
    b: int = setting(2, help="b", changes=("pairs",))
    c: list = setting(help="c", factory=lambda: [1.5, PrunerName.median])


@dataclasses.dataclass
class Outer:
    a: str = setting("x", help="a", differs_in_pack=True)
    inner: Inner = setting(help="group", factory=Inner)


def test_leaves_walk_classes_and_objects() -> None:
    assert [(k, v) for k, _, v in leaves(Outer)] == [
        ("a", "x"),
        ("inner.b", 2),
        ("inner.c", [1.5, PrunerName.median]),
    ]
    obj = Outer(a="y", inner=Inner(b=5))
    assert [(k, v) for k, _, v in leaves(obj, "top.")] == [
        ("top.a", "y"), ("top.inner.b", 5), ("top.inner.c", [1.5, PrunerName.median])
    ]  # fmt: skip
    assert values_where(obj, lambda f: "pairs" in changes_of(f)) == {"inner.b": 5}
    assert values_where(obj, differs_in_pack, "g.") == {"g.a": "y"}


def test_plain_values() -> None:
    obj = Outer(inner=Inner(c=[PrunerName.hyperband, (1, 2)]))
    assert plain(obj) == {"a": "x", "inner": {"b": 2, "c": ["hyperband", [1, 2]]}}
    assert plain({1: PrunerName.none}) == {"1": "none"}
    # the enum's value itself, not the enum (a str enum compares equal to its value)
    assert type(plain(PrunerName.median)) is str and type(plain([PrunerName.none])[0]) is str
    assert plain(Outer) is Outer  # a class is not a value


def test_config_key_and_digest() -> None:
    a = {"x": 1, "y": [PrunerName.median, 0.5]}
    b = {"y": [PrunerName.median, 0.5], "x": 1}
    assert config_key(a) == config_key(b) == json.dumps({"x": 1, "y": ["median", 0.5]}, sort_keys=True)
    assert config_key({"p": object}) == json.dumps({"p": str(object)})
    assert digest(a) == digest(b) and len(digest(a)) == 16 and len(digest(a, 8)) == 8
    assert digest(a) != digest({"x": 2, "y": [PrunerName.median, 0.5]})
    assert int(digest(a, 64), 16) >= 0 and len(digest(a, 64)) == 64
