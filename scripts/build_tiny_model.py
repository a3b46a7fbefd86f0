"""Build the tiny Llama chat model shipped in ``dpo_lab/assets/tiny-llama``.

Steps:

1. train a byte-level BPE tokenizer on the finance TRAIN split, with Llama-3 special tokens and a
   Llama-3-style chat template, and wrap it as ``PreTrainedTokenizerFast``;
2. initialise a small ``LlamaForCausalLM`` (a few MB of float32 weights);
3. pre-train it briefly on chat-formatted TRAIN questions followed by the chosen answer and,
   separately, by the rejected answer. With ``--balance mistake`` (default) the rejected texts are
   re-weighted so that, within each topic, the correct working and every mistake type are seen
   equally often; the base model then has no built-in preference between good and bad reasoning,
   which has to come from DPO. ``--balance pair`` samples every chosen and rejected text once per
   epoch instead (the correct method is then the most frequent continuation);
4. save everything with ``save_pretrained`` and report the LM loss and the mean chosen-minus-rejected
   completion log-prob on the TEST split.

Usage::

    python scripts/build_tiny_model.py --out dpo_lab/assets/tiny-llama --seed 0 --steps 200
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections import Counter
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "dpo_lab" / "assets" / "tiny-llama"
DEFAULT_DATA = ROOT / "dpo_lab" / "assets" / "finance"

BOS, EOT, PAD = "<|begin_of_text|>", "<|eot_id|>", "<|finetune_right_pad_id|>"
SPECIAL_TOKENS = [BOS, "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", EOT, PAD]

# Splits words, 1-3 digit groups, punctuation runs and whitespace, in the spirit of Llama 3.
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)


def load_jsonl(path: Path) -> list[dict]:
    """Read a JSON-lines file."""
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


# ---------------------------------------------------------------- tokenizer


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts`` and wrap it with the chat special tokens and template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOT,
        pad_token=PAD,
        chat_template=CHAT_TEMPLATE,
        model_max_length=1024,
        padding_side="right",
    )


def check_chat_template(tokenizer: PreTrainedTokenizerFast) -> None:
    """Assert the Llama-3 layout of the chat template, including multi-turn and the generation prompt."""
    messages = [
        {"role": "system", "content": "You are a careful financial assistant."},
        {"role": "user", "content": "What is 10% of $50?"},
        {"role": "assistant", "content": "The answer is $5.00."},
        {"role": "user", "content": "And 20%?"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    expected = (
        "<|begin_of_text|>"
        "<|start_header_id|>system<|end_header_id|>\n\nYou are a careful financial assistant.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is 10% of $50?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nThe answer is $5.00.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nAnd 20%?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert text == expected, f"unexpected chat layout:\n{text!r}"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text, "tokenizer does not round-trip the chat text"


# ---------------------------------------------------------------- data


def chat_text(tokenizer: PreTrainedTokenizerFast, prompt: str, answer: str) -> str:
    """A single-turn conversation rendered with the chat template."""
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    return tokenizer.apply_chat_template(messages, tokenize=False)


def pretraining_corpus(
    rows: list[dict], tokenizer: PreTrainedTokenizerFast, balance: str
) -> tuple[list[list[int]], list[float]]:
    """Token ids of prompt+chosen and prompt+rejected conversations, with sampling weights."""
    per_topic = Counter(r["topic"] for r in rows)
    per_mistake = Counter((r["topic"], r["mistake"]) for r in rows)
    sequences: list[list[int]] = []
    weights: list[float] = []
    for row in rows:
        reject_weight = 1.0
        if balance == "mistake":
            reject_weight = per_topic[row["topic"]] / per_mistake[(row["topic"], row["mistake"])]
        for answer, weight in ((row["chosen"], 1.0), (row["rejected"], reject_weight)):
            text = chat_text(tokenizer, row["prompt"], answer)
            sequences.append(tokenizer(text, add_special_tokens=False)["input_ids"])
            weights.append(weight)
    return sequences, weights


def collate(batch: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad a batch; labels are -100 on padding."""
    width = max(len(s) for s in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, seq in enumerate(batch):
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    return ids, mask, labels


# ---------------------------------------------------------------- model


def make_model(
    vocab_size: int, tokenizer: PreTrainedTokenizerFast, args: argparse.Namespace
) -> LlamaForCausalLM:
    """A freshly initialised tiny Llama."""
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=1024,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    return LlamaForCausalLM(config)


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def pretrain(
    model: LlamaForCausalLM,
    sequences: list[list[int]],
    weights: list[float],
    pad_id: int,
    args: argparse.Namespace,
) -> float:
    """Causal-LM training on weighted samples of the corpus; returns the mean loss of the last 50 steps."""
    gen = torch.Generator().manual_seed(args.seed)
    sampler_weights = torch.tensor(weights, dtype=torch.double)
    optim = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.95))
    model.train()
    losses: list[float] = []
    start = time.time()
    for step in range(args.steps):
        idx = torch.multinomial(sampler_weights, args.batch_size, replacement=True, generator=gen)
        ids, mask, labels = collate([sequences[i] for i in idx.tolist()], pad_id)
        for group in optim.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, warmup=max(1, args.steps // 20))
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        losses.append(loss.item())
        if (step + 1) % 50 == 0 or step == 0:
            print(
                f"step {step + 1:4d}/{args.steps}  loss {loss.item():.4f}  {time.time() - start:6.1f}s",
                flush=True,
            )
    model.eval()
    tail = losses[-50:]
    return sum(tail) / len(tail)


@torch.no_grad()
def completion_logprob(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, prompt: str, answer: str
) -> float:
    """Summed log-probability of the assistant turn (answer and its end token) given the prompt."""
    prompt_text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(chat_text(tokenizer, prompt, answer), add_special_tokens=False)["input_ids"]
    ids = torch.tensor([full_ids])
    logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
    token_logp = logp.gather(1, ids[0, 1:, None])[:, 0]
    return token_logp[len(prompt_ids) - 1 :].sum().item()


def preference_report(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, rows: list[dict]) -> None:
    """Print the mean chosen-minus-rejected completion log-prob and how often chosen is more likely."""
    diffs = [
        completion_logprob(model, tokenizer, r["prompt"], r["chosen"])
        - completion_logprob(model, tokenizer, r["prompt"], r["rejected"])
        for r in rows
    ]
    mean = sum(diffs) / len(diffs)
    wins = sum(d > 0 for d in diffs) / len(diffs)
    print(
        f"test log p(chosen) - log p(rejected): mean {mean:+.3f} nats, chosen more likely in {wins:.1%} "
        f"of {len(rows)} pairs"
    )


# ---------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--vocab-size", type=int, default=3072)
    parser.add_argument("--hidden", type=int, default=192)
    parser.add_argument("--intermediate", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--balance", choices=["mistake", "pair"], default="mistake")
    return parser.parse_args()


def main() -> None:
    """Build, pre-train and save the tiny model and its tokenizer."""
    args = parse_args()
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    t0 = time.time()
    train_rows = load_jsonl(args.data / "train.jsonl")
    test_rows = load_jsonl(args.data / "test.jsonl")

    texts = [t for r in train_rows for t in (r["prompt"], r["chosen"], r["rejected"])]
    tokenizer = train_tokenizer(texts, args.vocab_size)
    check_chat_template(tokenizer)
    print(f"tokenizer: {len(tokenizer)} tokens ({time.time() - t0:.1f}s)")

    sequences, weights = pretraining_corpus(train_rows, tokenizer, args.balance)
    lengths = sorted(len(s) for s in sequences)
    print(
        f"corpus: {len(sequences)} conversations, tokens median {lengths[len(lengths) // 2]}, max "
        f"{lengths[-1]}"
    )

    model = make_model(len(tokenizer), tokenizer, args)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters")
    final_loss = pretrain(model, sequences, weights, tokenizer.pad_token_id, args)
    print(f"final LM loss (mean of last 50 steps): {final_loss:.4f}")
    preference_report(model, tokenizer, test_rows)

    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|end_of_text|>")],
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=160,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    size = sum(f.stat().st_size for f in args.out.iterdir() if f.is_file())
    print(f"saved to {args.out} ({size / 2**20:.1f} MiB) in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
