"""The reward / KL evaluation of a policy on the tiny model: the KL estimator against hand-computed values
and against plain one-sequence forwards, exactly 0 for an untrained adapter; the base's reward is the mean of
its samples' rewards; sampling is deterministic for a seed, batch by batch."""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from dpo_lab.config.resolvers import asset_path
from dpo_lab.config.reward_eval import RewardEvalSettings
from dpo_lab.errors import ConfigError
from dpo_lab.evaluation import policy_eval
from dpo_lab.evaluation.policy_eval import (
    Sampling,
    batch_seed,
    completion_logps,
    cut_at_end,
    encode_prompts,
    evaluate_reward_and_kl,
    left_pad,
    sample_batches,
    sequence_kl,
)
from dpo_lab.evaluation.rewards import sentiment
from dpo_lab.model.loading import adapter_disabled
from dpo_lab.stats import bootstrap_interval

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = [
    [{"role": "user", "content": "Write a short review of the movie The Long Night."}],
    [{"role": "user", "content": "The film Harbour Lights was"}],
    [{"role": "system", "content": "You review films."}, {"role": "user", "content": "Paper Moon?"}],
    [{"role": "user", "content": "Tell me about the film Quiet Streets."}],
    [{"role": "user", "content": "Describe the movie Red Canyon."}],
]
SETTINGS = RewardEvalSettings(reward="sentiment", num_prompts=4, samples_per_prompt=3, max_new_tokens=8,
                              batch_size=2, seed=3)  # fmt: skip


def tiny_policy(trained: bool):
    """The tiny model with a LoRA adapter: as PEFT initialises it (B = 0: the policy is the base) or with
    B filled with seeded noise (a policy that differs from the base)."""
    path = asset_path("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(path)
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with warnings.catch_warnings():  # peft asks transformers a deprecated question (FutureWarning)
        warnings.simplefilter("ignore", FutureWarning)
        lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
        model = get_peft_model(base, lora)
    if trained:
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def untrained():
    return tiny_policy(trained=False)


@pytest.fixture(scope="module")
def trained():
    return tiny_policy(trained=True)


# ----------------------------------------------------------------------------------------------------------
# pure parts


class TableLM(torch.nn.Module):
    """A 'model' whose next-token distribution depends only on the current token: P[a][b] = p(b | a).
    Answers like a causal LM (logits for the last ``logits_to_keep`` positions)."""

    P = torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6]])

    device = torch.device("cpu")

    def forward(self, input_ids, attention_mask, position_ids, logits_to_keep, use_cache):
        logits = self.P.log()[input_ids]  # [batch, seq, vocab]
        return SimpleNamespace(logits=logits[:, -logits_to_keep:])


def test_completion_logps_on_a_known_table() -> None:
    # prompt [0, 1], completion [2, 0]: log P[1][2] + log P[2][0] = log 0.3 + log 0.2
    # prompt [2], completion [1]: log P[2][1] = log 0.2 (left-padded by two, completion one shorter)
    # prompt [1, 1, 0], completion [0, 0]: log P[0][0] + log P[0][0] = 2 log 0.5
    logps = completion_logps(TableLM(), [[0, 1], [2], [1, 1, 0]], [[2, 0], [1], [0, 0]], pad_id=1)
    expected = [math.log(0.3) + math.log(0.2), math.log(0.2), 2 * math.log(0.5)]
    assert logps.tolist() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx([-2.81341, -1.60944, -1.38629], abs=1e-5)


def test_sequence_kl_is_the_log_ratio() -> None:
    kl = sequence_kl(torch.tensor([-1.0, -2.5, -3.0]), torch.tensor([-1.5, -2.0, -3.0]))
    assert kl.tolist() == [0.5, -0.5, 0.0]


def test_left_pad_cut_at_end_and_batch_seeds() -> None:
    ids, mask = left_pad([[7, 8, 9], [5]], pad_id=0)
    assert ids.tolist() == [[7, 8, 9], [0, 0, 5]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert cut_at_end([3, 4, 2, 2, 2], {2}) == (3, 4, 2)  # the end token is part of the completion
    assert cut_at_end([3, 4, 5], {2}) == (3, 4, 5)  # max_new_tokens reached: no end token
    assert batch_seed(42, 1) == batch_seed(42, 1)
    assert len({batch_seed(s, i) for s in range(5) for i in range(50)}) == 250
    assert 0 <= batch_seed(0, 0) < 2**63


# ----------------------------------------------------------------------------------------------------------
# on the tiny model


def _samples(model, tokenizer, sampling: Sampling, start_batch: int = 0):
    ids = encode_prompts(tokenizer, PROMPTS)
    return ids, list(sample_batches(model, tokenizer, ids, sampling, start_batch=start_batch))


def test_completion_logps_match_plain_one_sequence_forwards(trained) -> None:
    model, tokenizer = trained
    ids, batches = _samples(model, tokenizer, Sampling(samples_per_prompt=2, max_new_tokens=8, batch_size=5))
    prompts = [ids[i] for i, cs in enumerate(batches[0].completions) for _ in cs]
    completions = [c.token_ids for cs in batches[0].completions for c in cs]
    assert len({len(c) for c in completions}) > 1 or len({len(p) for p in prompts}) > 1  # padding matters

    def plain(prompt, completion) -> float:  # one unpadded sequence, every position's logits
        sequence = torch.tensor([list(prompt) + list(completion)])
        with torch.no_grad():
            logps = torch.log_softmax(model(input_ids=sequence).logits[0].float(), -1)
        return sum(logps[len(prompt) - 1 + t, token].item() for t, token in enumerate(completion))

    batched = completion_logps(model, prompts, completions, tokenizer.pad_token_id)
    assert batched.tolist() == pytest.approx(
        [plain(p, c) for p, c in zip(prompts, completions, strict=True)], abs=1e-5
    )
    with adapter_disabled(model):
        reference = completion_logps(model, prompts, completions, tokenizer.pad_token_id)
        plain_reference = [plain(p, c) for p, c in zip(prompts, completions, strict=True)]
    assert reference.tolist() == pytest.approx(plain_reference, abs=1e-5)
    assert (batched - reference).abs().max() > 1e-3  # the adapter changes the policy


def test_an_untrained_adapter_has_kl_exactly_zero_and_the_base_reward(untrained) -> None:
    model, tokenizer = untrained
    result = evaluate_reward_and_kl(model, tokenizer, PROMPTS, SETTINGS)
    assert len(result.prompts) == SETTINGS.num_prompts
    for p in result.prompts:
        assert p.kls == [0.0] * SETTINGS.samples_per_prompt
        assert p.completions == p.base_completions and p.rewards == p.base_rewards  # the same draws
    assert (result.kl.value, result.kl.low, result.kl.high) == (0.0, 0.0, 0.0)
    assert result.reward_gain.value == 0.0


def test_the_base_reward_is_the_mean_of_its_samples_rewards(trained) -> None:
    model, tokenizer = trained
    result = evaluate_reward_and_kl(model, tokenizer, PROMPTS, SETTINGS)
    for p in result.prompts:
        assert p.base_rewards == [sentiment(p.prompt, c) for c in p.base_completions]
        assert p.base_reward == pytest.approx(sum(p.base_rewards) / len(p.base_rewards))
        assert p.rewards == [sentiment(p.prompt, c) for c in p.completions]
    means = [p.base_reward for p in result.prompts]
    assert result.base_reward == bootstrap_interval(means, seed=SETTINGS.seed, unit="prompts")
    assert "over prompts" in result.base_reward.method  # the resampled units are prompts, not pairs
    assert result.base_reward.value == pytest.approx(sum(means) / len(means))
    assert result.kl.value == pytest.approx(sum(p.kl for p in result.prompts) / len(result.prompts))
    gains = [p.reward - p.base_reward for p in result.prompts]
    assert result.reward_gain.value == pytest.approx(sum(gains) / len(gains))
    summary = result.summary()
    assert summary["reward_name"] == "sentiment" and summary["kl"]["n"] == SETTINGS.num_prompts
    assert any(k != 0.0 for p in result.prompts for k in p.kls)
    assert result.prompts[2].prompt == "Paper Moon?"  # the last user turn is what the reward reads


def test_deterministic_for_a_seed(trained) -> None:
    model, tokenizer = trained
    first = evaluate_reward_and_kl(model, tokenizer, PROMPTS, SETTINGS)
    again = evaluate_reward_and_kl(model, tokenizer, PROMPTS, SETTINGS)
    other = evaluate_reward_and_kl(
        model, tokenizer, PROMPTS, RewardEvalSettings(**{**vars(SETTINGS), "seed": 4})
    )
    assert [p.record() for p in first.prompts] == [p.record() for p in again.prompts]
    assert first.summary() == again.summary()
    assert [p.completions for p in first.prompts] != [p.completions for p in other.prompts]


def test_a_batch_draws_the_same_whether_or_not_earlier_batches_ran(trained) -> None:
    model, tokenizer = trained
    sampling = Sampling(samples_per_prompt=3, max_new_tokens=8, batch_size=2, seed=11)
    _, every = _samples(model, tokenizer, sampling)
    torch.manual_seed(123)  # the caller's random state neither matters nor changes
    state = torch.get_rng_state()
    _, resumed = _samples(model, tokenizer, sampling, start_batch=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert [b.index for b in every] == [0, 1, 2] and [b.index for b in resumed] == [1, 2]
    assert [b.completions for b in resumed] == [b.completions for b in every[1:]]
    assert every[2].first_prompt == 4 and len(every[2].completions) == 1
    assert all(len(cs) == 3 for b in every for cs in b.completions)
    assert every[0].new_tokens == sum(len(c.token_ids) for cs in every[0].completions for c in cs)


def test_the_shared_prompt_cache_draws_what_num_return_sequences_draws(trained) -> None:
    model, tokenizer = trained
    ids, mask = left_pad(encode_prompts(tokenizer, PROMPTS), tokenizer.pad_token_id)
    kwargs = policy_eval._sampling_kwargs(
        Sampling(samples_per_prompt=3, max_new_tokens=6), tokenizer.pad_token_id
    )
    outs = []
    for share in (True, False):
        torch.manual_seed(5)
        with torch.inference_mode():
            outs.append(policy_eval.generate_samples(model, ids, mask, 3, kwargs, share_prompt=share))
    assert outs[0].shape[0] == len(PROMPTS) * 3 and outs[0].shape[1] <= ids.shape[1] + 6
    assert torch.equal(outs[0], outs[1])  # fp32: the same logits, so the same draws
    assert torch.equal(outs[0][::3, : ids.shape[1]], ids)  # prompt-major, prompts kept in front
    with torch.inference_mode():  # the shared path ran (no fallback), under this transformers' argument name
        assert policy_eval._prompt_cache(model, ids, mask, 3) is not None
    assert policy_eval._cache_argument(model) in ("cache", "past_key_values")


def test_sampling_leaves_the_model_in_training_mode_if_it_was(untrained) -> None:
    model, tokenizer = untrained
    model.train()
    try:
        _samples(model, tokenizer, Sampling(samples_per_prompt=2, max_new_tokens=2, batch_size=5))
        assert model.training
    finally:
        model.eval()


def test_no_reward_is_refused_naming_the_key(untrained) -> None:
    model, tokenizer = untrained
    for reward, says in ((None, "needs a reward"), ("happiness", "unknown reward 'happiness'")):
        with pytest.raises(ConfigError, match=says) as info:
            evaluate_reward_and_kl(model, tokenizer, PROMPTS, RewardEvalSettings(reward=reward))
        assert info.value.key == "reward"


def test_settings_problems_name_the_key() -> None:
    assert list(RewardEvalSettings().problems()) == []
    bad = RewardEvalSettings(reward=" ", num_prompts=0, samples_per_prompt=0, max_new_tokens=0, batch_size=0)
    assert [key for key, _ in bad.problems()] == [
        "reward", "num_prompts", "samples_per_prompt", "max_new_tokens", "batch_size"
    ]  # fmt: skip
    assert policy_eval.prompt_text(PROMPTS[2]) == "Paper Moon?"
