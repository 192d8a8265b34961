"""Builds sst2_words/train.jsonl from ../sst2/train.tsv: SST-2 sentences as one-word instruction answers.

Run from anywhere: python recipes/data/sst2_words/build.py (the output is committed; this shows how it was made).
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
INSTRUCTION = "Is the sentiment of this movie review positive or negative? Answer with one word."
WORDS = {"0": "negative", "1": "positive"}
ROWS_PER_LABEL = 300
MIN_WORDS = 8  # SST-2 train holds phrases of two or three words; a review needs a sentence


def main() -> None:
    with open(HERE.parent / "sst2" / "train.tsv", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    rng = random.Random(2026)
    chosen = []
    for label in sorted(WORDS):
        sentences = [row["sentence"].strip() for row in rows if row["label"] == label]
        sentences = [text for text in sentences if len(text.split()) >= MIN_WORDS]
        chosen += [(text, WORDS[label]) for text in rng.sample(sentences, ROWS_PER_LABEL)]
    rng.shuffle(chosen)
    with open(HERE / "train.jsonl", "w") as out:
        for text, word in chosen:
            out.write(json.dumps({"instruction": INSTRUCTION, "input": text, "output": word}) + "\n")


if __name__ == "__main__":
    main()
