"""Build the prompts of the controlled sentiment experiment (the DPO paper's reward-KL frontier).

The DPO paper prompts GPT-2 with prefixes of IMDb reviews and rewards positive continuations. No dataset
can be downloaded here, so the prompts are written from templates instead: openings of a film review for
the model to continue, requests for a review, and neutral questions about a film, each about an invented
title. They are mixed so that a chat model's own samples score around neutral on average (VADER's compound
score of the completion), with room to move both up and down:

- ``continue``: "Continue this movie review: "<opener>"" with a neutral opener ("The second half of
  <title>"), the closest to the paper's review prefixes;
- ``review``: "Write a short review of the movie <title>." (chat models lean positive here);
- ``describe``: a neutral question ("Describe the opening scene of <title>.") whose answers lean neutral.

Titles, genres and openers use only words VADER scores 0 (checked against its lexicon when building), so a
completion that repeats a title gains or loses nothing by it. Held-out prompts use titles the training
prompts never use.

Every line: ``{"prompt": [{"role": "user", "content": ...}], "kind", "title", "genre"}``; the prompt is
chat messages (no system message: the model's chat template adds its own default, if it has one).

Usage::

    python scripts/build_sentiment_prompts.py            # writes dpo_lab/assets/sentiment/
    python scripts/build_sentiment_prompts.py --train 320 --heldout 64 --seed 2026

The output is deterministic for a given seed and sizes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
from collections import Counter
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "dpo_lab" / "assets" / "sentiment"

# invented titles: "The <adjective> <noun>" / "<adjective> <noun>"; words VADER scores 0
ADJECTIVES = [
    "Silent", "Northern", "Paper", "Glass", "Iron", "Distant", "Hidden", "Copper", "Winter", "Summer",
    "Midnight", "Amber", "Crimson", "Second", "Last", "Hollow", "Western", "Electric", "Salt", "Quiet",
    "Eastern", "Velvet", "Marble", "Painted",
]  # fmt: skip
NOUNS = [
    "Harbour", "Station", "Orchard", "Signal", "River", "Lighthouse", "Archive", "Frontier", "Window",
    "Bridge", "Island", "Engine", "Choir", "Season", "Letter", "Garden", "Tower", "Valley", "Mirror",
    "Compass", "Canyon", "Parade", "Ferry", "Atlas",
]  # fmt: skip
GENRES = [
    "drama", "documentary", "western", "musical", "science fiction", "mystery", "animated", "period",
    "road", "courtroom", "fantasy", "family", "sports", "heist", "spy",
]  # fmt: skip

# openings of a review, neutral on their own: the model decides which way the review goes
OPENERS = [
    "I watched {title} last weekend and",
    "{title} is a film that",
    "The first half hour of {title}",
    "When the lights came up after {title}, I",
    "My sister picked {title} for movie night, and",
    "The ending of {title}",
    "The acting in {title}",
    "I went into {title} knowing nothing about it, and",
    "Two hours after {title} ended,",
    "The director of {title} obviously",
    "Compared with the book, {title}",
    "The music in {title}",
    "The second half of {title}",
    "As a {genre} film, {title}",
    "The script of {title}",
    "Halfway through {title}, I",
    # two that lean each way without a scored word, to widen the spread of the samples
    "I walked out of {title} before the end, and",
    "I asked for my money back after {title} because",
    "I have now seen {title} three times, and",
    "I keep buying tickets for {title} again because",
]
REVIEWS = [
    "Write a review of {title}, a {genre} film, in a few lines.",
    "Write a short review of the movie {title}.",
    "What did you think of the {genre} film {title}? Answer in a few lines.",
    "Give your opinion of {title} in a few lines.",
]
DESCRIBE = [
    "Describe the opening scene of the {genre} film {title}.",
    "In a few words, what is {title} about?",
    "Who is the audience for {title}, a {genre} film?",
    "Describe the main character of {title}.",
]
# the share of each kind among the prompts
KINDS = {"continue": (OPENERS, 0.5), "review": (REVIEWS, 0.25), "describe": (DESCRIBE, 0.25)}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the two .jsonl files")
    parser.add_argument("--train", type=int, default=320, help="training prompts")
    parser.add_argument("--heldout", type=int, default=64, help="held-out prompts (titles of their own)")
    parser.add_argument("--seed", type=int, default=2026)
    return parser.parse_args()


def vader_words() -> dict[str, float]:
    """VADER's lexicon (word -> valence), read from the package the sentiment reward uses."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer().lexicon


def check_neutral(lexicon: dict[str, float]) -> None:
    """Every word the templates put into a prompt scores 0 in VADER's lexicon."""
    texts = [*ADJECTIVES, *NOUNS, *GENRES, *(t for kind in KINDS.values() for t in kind[0])]
    words = {w.strip(".,?!:\"'").lower() for text in texts for w in text.split()}
    scored = sorted(w for w in words if lexicon.get(w, 0.0) != 0.0)
    if scored:
        raise SystemExit(f"words with a VADER valence in the templates: {', '.join(scored)}")


def titles(rng: random.Random) -> list[str]:
    """Every invented title, shuffled."""
    out = [f"The {a} {n}" if (i + j) % 2 else f"{a} {n}"
           for (i, a), (j, n) in itertools.product(enumerate(ADJECTIVES), enumerate(NOUNS))]  # fmt: skip
    rng.shuffle(out)
    return out


def prompts_for(titles_: list[str], n: int, rng: random.Random) -> list[dict]:
    """``n`` prompts over ``titles_`` (each title at most once), kinds in the KINDS shares."""
    counts = {kind: round(share * n) for kind, (_, share) in KINDS.items()}
    counts["continue"] += n - sum(counts.values())
    kinds = [kind for kind, count in counts.items() for _ in range(count)]
    rng.shuffle(kinds)
    if len(titles_) < n:
        raise SystemExit(f"{n} prompts need {n} titles, there are {len(titles_)}")
    rows = []
    for kind, title in zip(kinds, titles_, strict=False):
        template = rng.choice(KINDS[kind][0])
        genre = rng.choice(GENRES)
        text = template.format(title=title, genre=genre)
        content = f'Continue this movie review: "{text}"' if kind == "continue" else text
        rows.append({"prompt": [{"role": "user", "content": content}], "kind": kind, "title": title,
                     "genre": genre})  # fmt: skip
    return rows


def write_jsonl(rows: list[dict], path: Path) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def main() -> None:
    args = parse_args()
    check_neutral(vader_words())
    rng = random.Random(args.seed)
    every_title = titles(rng)
    heldout = prompts_for(every_title[: args.heldout], args.heldout, rng)
    train = prompts_for(every_title[args.heldout :], args.train, rng)
    assert not {r["title"] for r in heldout} & {r["title"] for r in train}
    args.out.mkdir(parents=True, exist_ok=True)
    write_jsonl(train, args.out / "prompts.jsonl")
    write_jsonl(heldout, args.out / "heldout_prompts.jsonl")
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(Counter(r["kind"] for r in train).items()))
    print(f"wrote {len(train)} train prompts ({kinds}) and {len(heldout)} held-out prompts to {args.out}")


if __name__ == "__main__":
    main()
