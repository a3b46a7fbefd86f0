"""Settings of the reward / KL evaluation of a trained policy (dpo_lab.evaluation.policy_eval): samples of
held-out prompts from the policy and from its base, scored by a reward function, and KL(policy || base)
estimated on the policy's samples. Sampling is plain (temperature 1, top_p 1, top_k 0) so that the KL
estimate is unbiased; these keys say how much of it to do."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from dpo_lab.config.fields import setting


@dataclass
class RewardEvalSettings:
    reward: str | None = setting(
        None,
        help=(
            "a registered reward (sentiment, finance) or package.module:function scoring each sample; null = "
            "no reward / KL evaluation"
        ),
    )
    num_prompts: int = setting(
        64, help="held-out prompts sampled (the first N): the intervals are over prompts, more = narrower"
    )
    samples_per_prompt: int = setting(
        4, help="completions sampled per prompt from the policy and from the base: more = steadier means"
    )
    max_new_tokens: int = setting(
        64, help="new tokens per completion; the KL is summed over a completion's tokens, so it grows with it"
    )
    batch_size: int = setting(
        16, help="prompts sampled together (each with samples_per_prompt sequences); larger is faster"
    )
    seed: int = setting(
        0,
        help=(
            "seeds the sampling (each batch from (seed, batch index)); the policy and the base get the same "
            "draws, so their difference is less noisy"
        ),
    )

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.reward is not None and not self.reward.strip():
            yield "reward", "must name a reward (sentiment, finance, or module:function) or be null"
        for key in ("num_prompts", "samples_per_prompt", "max_new_tokens", "batch_size"):
            value = getattr(self, key)
            if value < 1:
                yield key, f"must be an integer >= 1, got {value}"
