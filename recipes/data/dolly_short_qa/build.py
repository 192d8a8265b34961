"""Builds dolly_short_qa/train.jsonl from ../dolly_open_qa/train.jsonl: the questions answered in a few words.

Run from anywhere: python recipes/data/dolly_short_qa/build.py (the output is committed; this shows how it was made).
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
MAX_ANSWER_WORDS = 12  # a fact or a name, not an essay: cheap to generate, scored by token F1
MAX_QUESTION_WORDS = 30


def main() -> None:
    with open(HERE.parent / "dolly_open_qa" / "train.jsonl") as handle:
        rows = [json.loads(line) for line in handle]
    with open(HERE / "train.jsonl", "w") as out:
        for row in rows:
            if len(row["response"].split()) > MAX_ANSWER_WORDS or len(row["instruction"].split()) > MAX_QUESTION_WORDS:
                continue
            out.write(json.dumps({"instruction": row["instruction"].strip(), "output": row["response"].strip()}) + "\n")


if __name__ == "__main__":
    main()
