"""The one conversion of a composed config into typed objects, in process: what it says for a required key
left empty and for a value OmegaConf cannot resolve, and the walk over nested groups (the CLI's side of the
same lines is in tests/cli/)."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dpo_lab.config.choices import DPO_LOSS_TYPES, Direction
from dpo_lab.config.commands import GenerateConfig
from dpo_lab.config.schemas import OBJECTIVE_METRICS, RunConfig
from dpo_lab.config.validation import non_finite, problems, to_run_config, typed_config, validate
from dpo_lab.errors import ConfigError
from tests.helpers import compose_config


def test_a_required_key_left_empty_is_named_with_what_to_add() -> None:
    with pytest.raises(ConfigError) as info:
        to_run_config(compose_config(["model.name_or_path=???"]))
    assert info.value.key == "model.name_or_path"
    assert str(info.value) == (
        "model.name_or_path: required, and no value was given: add model.name_or_path=... to the command"
    )


def test_a_value_that_does_not_resolve_is_one_line_naming_its_key() -> None:
    with pytest.raises(ConfigError) as info:
        to_run_config(compose_config(["lora.r=${no_such_key}"]))
    assert info.value.key == "lora.r"
    message = str(info.value)
    assert message.startswith("lora.r: ") and "no_such_key" in message and "\n" not in message


def test_typed_config_checks_after_converting() -> None:
    cfg = compose_config(["lora.dropout=1.0"])
    with pytest.raises(ConfigError, match=r"^lora.dropout: must be in \[0, 1\), got 1.0$"):
        typed_config(cfg, RunConfig)
    assert isinstance(typed_config(compose_config(), RunConfig), RunConfig)
    with pytest.raises(AssertionError):  # the composed config is not a generate command's
        typed_config(compose_config(), GenerateConfig)


@dataclass
class Leaf:
    x: float = 1.0
    values: list = field(default_factory=lambda: [1.0, 2.0])
    table: dict = field(default_factory=lambda: {"a": 1.0})


@dataclass
class Tree:
    leaf: Leaf = field(default_factory=Leaf)
    y: float = 0.5
    name: str = "n"


def test_non_finite_walks_groups_lists_and_mappings() -> None:
    tree = Tree(leaf=Leaf(x=math.inf, values=[1.0, math.nan], table={"a": -math.inf}), y=math.nan)
    assert list(non_finite(tree, "top.")) == [
        ("top.leaf.x", "must be a finite number, got inf"),
        ("top.leaf.values[1]", "must be a finite number, got nan"),
        ("top.leaf.table.a", "must be a finite number, got -inf"),
        ("top.y", "must be a finite number, got nan"),
    ]
    assert list(non_finite(Tree())) == []


def test_problems_walks_groups_without_their_own_check_and_validate_raises_the_first() -> None:
    @dataclass
    class Checked:
        v: int = 0

        def problems(self):
            if self.v < 0:
                yield "v", "must be >= 0"

    @dataclass
    class Outer:
        inner: Checked = field(default_factory=Checked)
        plain: Tree = field(default_factory=Tree)

    assert list(problems(Outer(inner=Checked(v=-1)), "p.")) == [("p.inner.v", "must be >= 0")]
    assert list(problems(Outer())) == []
    with pytest.raises(ConfigError) as info:
        validate(Outer(inner=Checked(v=-1), plain=Tree(y=math.inf)))
    assert info.value.key == "plain.y"  # a non-finite number is reported before a range check
    with pytest.raises(ConfigError) as info:
        validate(Outer(inner=Checked(v=-1)))
    assert info.value.key == "inner.v" and str(info.value) == "inner.v: must be >= 0"
    validate(Outer())


def test_blank_names_are_refused() -> None:
    cfg = to_run_config(compose_config())
    cfg.eval.reward_kl.reward = " "
    cfg.logger.wandb.project = ""
    assert dict(problems(cfg)) == {
        "eval.reward_kl.reward": "must name a reward (sentiment, finance, or module:function) or be null",
        "logger.wandb.project": "must name a W&B project",
    }


LOSSES = ", ".join(DPO_LOSS_TYPES)
HOME_MISSING = (
    f"no such folder: {Path('~/no/such/model').expanduser()}; give a local model folder or a hub id"
)


@pytest.fixture(scope="module")
def default_run() -> RunConfig:
    return to_run_config(compose_config())


@pytest.mark.parametrize(
    ("changes", "found"),
    [
        (
            {"lora.target_modules": []},
            {"lora.target_modules": 'must name at least one module, or be ["all-linear"]'},
        ),
        ({"lora.bias": "some"}, {"lora.bias": "must be one of none, all, lora_only, got 'some'"}),
        ({"lora.bias": "lora_only"}, {}),
        ({"dpo.loss_type": []}, {"dpo.loss_type": f"must list at least one of: {LOSSES}"}),
        ({"dpo.loss_type": ["pkg.mod:fn"]}, {}),
        (
            {"dpo.loss_type": ["pkg.mod:"]},
            {"dpo.loss_type": "'pkg.mod:' is not a package.module:function path"},
        ),
        (
            {"dpo.loss_type": ["sigmod"]},
            {"dpo.loss_type": f"unknown loss 'sigmod'; allowed: {LOSSES}, or package.module:function"},
        ),
        (
            {"dpo.loss_params": {"g": 1}},
            {
                "dpo.loss_params": (
                    "only your own loss functions (package.module:function in dpo.loss_type) read it, and "
                    "dpo.loss_type names none"
                )
            },
        ),
        ({"dpo.loss_params": {"g": 1}, "dpo.loss_type": ["sigmoid", "pkg.mod:fn"]}, {}),
        (
            {"dpo.loss_weights": [1.0, 2.0]},
            {"dpo.loss_weights": "needs one weight per loss_type entry (1), got 2"},
        ),
        ({"dpo.loss_weights": [0.5]}, {}),
        ({"data.path": " "}, {"data.path": "must name a file, a folder or a hub dataset id"}),
        (
            {"data.test_split": None},
            {"data.test_size": "set data.test_split to a held-out split, or data.test_size to carve one off"},
        ),
        (
            {"data.test_size": 0.2},
            {
                "data.test_size": (
                    "set data.test_split=null to carve test_size off data.split, or test_size=null"
                )
            },
        ),
        ({"model.name_or_path": " "}, {"model.name_or_path": "must name a hub id or a local model folder"}),
        (
            {"model.name_or_path": "/no/such/model"},
            {"model.name_or_path": "no such folder: /no/such/model; give a local model folder or a hub id"},
        ),
        ({"model.name_or_path": "org/model"}, {}),
        # a path relative to here or to the home folder is a local folder too, and must exist
        (
            {"model.name_or_path": "./no/such/model"},
            {"model.name_or_path": "no such folder: no/such/model; give a local model folder or a hub id"},
        ),
        (
            {"model.name_or_path": "../no/such/model"},
            {"model.name_or_path": "no such folder: ../no/such/model; give a local model folder or a hub id"},
        ),
        ({"model.name_or_path": "~/no/such/model"}, {"model.name_or_path": HOME_MISSING}),
        (
            {"eval.checker.name": " "},
            {
                "eval.checker.name": (
                    "must name a checker (finance_number, exact_match, or module:function) or be null"
                )
            },
        ),
        ({"eval.checker.name": None}, {}),
        (
            {"eval.checker.answer_column": ""},
            {"eval.checker.answer_column": "must name the held-out column with the ground truth"},
        ),
        (
            {"model.gguf_file": "m.bin"},
            {"model.gguf_file": "must name a .gguf file in model.name_or_path, or be null; got 'm.bin'"},
        ),
        ({"model.gguf_file": "m.Q4.gguf"}, {}),
        (
            {"objective.metric": "acc"},
            {"objective.metric": (f"unknown held-out metric 'acc'; allowed: {', '.join(OBJECTIVE_METRICS)}")},
        ),
        (
            {"objective.metric": "loss"},
            {
                "objective.direction": (
                    "a loss is minimised: use objective.direction=minimize with objective.metric=loss"
                )
            },
        ),
        ({"objective.metric": "loss", "objective.direction": Direction.minimize}, {}),
        (
            {"logger.backend": "tensorboard"},
            {"logger.backend": "unknown tracker 'tensorboard'; use wandb, none or package.module:function"},
        ),
        ({"logger.backend": "pkg.mod:make"}, {}),
        (
            {"logger.options": {"a": 1}},
            {"logger.options": "only a tracker of your own reads it; logger.backend is wandb"},
        ),
        ({"logger.options": {"a": 1}, "logger.backend": "pkg.mod:make"}, {}),
        (
            {"dpo.precompute_ref_log_probs": True, "train.extra": {"sync_ref_model": True}},
            {"dpo.precompute_ref_log_probs": "cannot be combined with train.extra.sync_ref_model"},
        ),
        ({"dpo.precompute_ref_log_probs": True}, {}),
    ],
)
def test_the_rules_that_are_not_ranges(default_run: RunConfig, changes: dict, found: dict) -> None:
    cfg = copy.deepcopy(default_run)
    for key, value in changes.items():
        *path, last = key.split(".")
        node = cfg
        for part in path:
            node = getattr(node, part)
        setattr(node, last, value)
    assert dict(problems(cfg)) == found


@pytest.mark.parametrize(
    ("value", "refused"),
    [("apache-2.0", False), ("''", True), ("' mit'", True), ("'mit '", True), ("null", False)],
)
def test_model_license_is_a_licence_name_or_null(value: str, refused: bool) -> None:
    """The card's licence: a Hub licence id or null (unknown); blank or padded is a typo, refused by key."""
    if not refused:
        assert to_run_config(compose_config([f"model.license={value}"])).model.license == (
            None if value == "null" else value
        )
        return
    with pytest.raises(ConfigError) as info:
        to_run_config(compose_config([f"model.license={value}"]))
    assert info.value.key == "model.license" and "must name a licence" in str(info.value)
