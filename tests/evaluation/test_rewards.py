"""Reward functions: VADER's sentiment (values worked out by hand from its lexicon), the finance checker as
a 0/1 reward, a reward of your own by module:function, and one-line refusals naming the key."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from dpo_lab.errors import ConfigError
from dpo_lab.evaluation import rewards
from dpo_lab.evaluation.rewards import REWARDS, finance, get_reward, register_reward, sentiment

NOT_A_FUNCTION = 3


def shouting(prompt: str, completion: str, row=None) -> float:
    """A reward of a user's own: the share of upper-case letters."""
    letters = [c for c in completion if c.isalpha()]
    return sum(c.isupper() for c in letters) / len(letters)


def vader_compound(valences: float) -> float:
    """VADER's normalisation of a sum of valences: s / sqrt(s^2 + 15)."""
    return valences / math.sqrt(valences**2 + 15)


def test_sentiment_of_a_positive_sentence() -> None:
    # lexicon: wonderful 2.7, loved 2.9; one "!" adds 0.292 to the sum: 5.892 -> 0.8356
    assert vader_compound(2.7 + 2.9 + 0.292) == pytest.approx(0.8356, abs=5e-5)
    assert sentiment("Review it.", "This movie was wonderful, I loved it!") == 0.8356


def test_sentiment_of_a_negative_sentence() -> None:
    # lexicon: terrible -2.1, boring -1.3, hated -3.2: -6.6 -> -0.8625
    assert vader_compound(-2.1 - 1.3 - 3.2) == pytest.approx(-0.8625, abs=5e-5)
    assert sentiment("Review it.", "A terrible, boring film. I hated it.") == -0.8625


def test_sentiment_of_a_neutral_sentence_and_of_nothing() -> None:
    assert sentiment("Review it.", "The film is two hours long.") == 0.0
    assert sentiment("Review it.", "") == 0.0


def test_sentiment_scores_the_completion_not_the_prompt() -> None:
    text = "This movie was wonderful, I loved it!"
    assert sentiment("I hated that awful, terrible film.", text) == sentiment("", text) == 0.8356
    assert isinstance(sentiment("", text), float)


def test_vader_loads_on_first_use_not_at_import() -> None:
    code = (
        "import sys; import dpo_lab.evaluation.rewards as r; assert 'vaderSentiment' not in sys.modules; "
        "r.get_reward('sentiment'); assert 'vaderSentiment' not in sys.modules; "
        "r.sentiment('', 'good'); assert 'vaderSentiment.vaderSentiment' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert rewards._vader() is rewards._vader()  # made once


@pytest.mark.parametrize(
    ("completion", "row", "value"),
    [
        ("Real return = 1.1125 / 1.0175 - 1. The answer is 9.34%.", {"answer": 9.34, "unit": "percent"}, 1.0),
        ("The answer is 0.0934.", {"answer": 9.34, "unit": "percent"}, 1.0),  # a fraction of a percent truth
        ("The answer is 9.50%.", {"answer": 9.34, "unit": "percent"}, 0.0),
        ("So FV = $1,330,528.57.", {"answer": 1330528.57, "unit": "currency"}, 1.0),
        ("So FV = $1,340,000.00.", {"answer": 1330528.57, "unit": "currency"}, 0.0),  # 0.7% off; tol 0.1%
        ("The answer is 0.0934.", {"answer": 9.34}, 0.0),  # no unit: not a percentage
        ("I cannot tell.", {"answer": 9.34, "unit": "percent"}, 0.0),
    ],
)
def test_finance_is_the_checker_as_a_zero_one_reward(completion: str, row: dict, value: float) -> None:
    assert finance("What was the real return?", completion, row) == value


def test_finance_needs_the_ground_truth_row() -> None:
    for row in (None, {"unit": "percent"}):
        with pytest.raises(ConfigError, match="finance needs each prompt's ground truth") as info:
            finance("q", "The answer is 9.34%.", row)
        assert info.value.key == "reward"


def test_registered_names() -> None:
    assert get_reward("sentiment") is sentiment and get_reward("finance") is finance
    assert {"sentiment", "finance"} <= set(REWARDS)


def test_a_user_function_by_module_and_name() -> None:
    reward = get_reward(f"{__name__}:shouting")
    assert reward is shouting and reward("p", "ABcd") == 0.5


def test_register_reward_makes_a_name_selectable() -> None:
    register_reward("shouting")(shouting)
    try:
        assert get_reward("shouting") is shouting
    finally:
        del REWARDS["shouting"]


@pytest.mark.parametrize(
    ("name", "says"),
    [
        (
            "happiness",
            "unknown reward 'happiness'; registered: finance, sentiment, or give package.module:function",
        ),
        ("no.such.module:f", "cannot import reward 'no.such.module:f'"),
        (f"{__name__}:absent", f"cannot import reward '{__name__}:absent'"),
        (f"{__name__}:NOT_A_FUNCTION", "is not a function"),
    ],
)
def test_an_unknown_reward_is_refused_naming_the_key(name: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        get_reward(name)
    assert info.value.key == "reward" and says in str(info.value)
    with pytest.raises(ConfigError) as info:
        get_reward(name, "eval.reward.reward")
    assert str(info.value).startswith("eval.reward.reward: ")
