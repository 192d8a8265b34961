"""The report's causal-LM sections: generation metrics per arm, and the same test prompts answered by each arm."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from recipes.references import arm_names
from recipes.stats import mean_std

SIDE_BY_SIDE_PROMPTS = 3  # test prompts shown with every arm's answers


def generation_table(results: dict[str, Any]) -> list[list[str]]:
    """Exact match and token F1 of the greedy answers on test, per arm (mean +/- std over seeds)."""
    rows = [["arm", "exact match", "token F1", "test loss"]]
    for arm in reversed(arm_names(results)):
        tests = [run["test"] for run in results["runs"][arm]]
        rows.append(
            [arm, *(mean_std([t[f"test_{key}"] for t in tests]) for key in ("exact_match", "token_f1", "loss"))]
        )
    return rows


def side_by_side(results: dict[str, Any], count: int = SIDE_BY_SIDE_PROMPTS) -> list[list[str]]:
    arms = arm_names(results)
    answers = [_read_generations(results["runs"][arm][0].get("generations")) for arm in arms]
    rows = [["prompt (end)", "expected", *arms]]
    for per_arm in list(zip(*answers, strict=False))[:count]:
        texts = [per_arm[0]["prompt"][-160:], per_arm[0]["reference"][:200]]
        rows.append([_one_line(text) for text in [*texts, *(answer["generated"][:200] for answer in per_arm)]])
    return rows


def _one_line(text: str) -> str:
    """A generated text as one table cell: its newlines shown as ⏎."""
    return text.replace("\n", " ⏎ ")


def _read_generations(path: str | None) -> list[dict[str, str]]:
    if not path or not Path(path).is_file():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines()]
