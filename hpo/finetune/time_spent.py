"""Where a fine-tune search's time went: its trials' and re-runs' stages, and what lies between runs.

Each run splits its own wall time into finetune.timing.STAGES (setup, training, evaluation, checkpoints);
a trial stores the sum over its runs (k folds under cross-validation) as a trial attribute, a re-run in its
replicate file. Only the training stage teaches a model: the rest is the price of searching.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from finetune.timing import STAGES
from hpo import attributes
from hpo.results import SearchResult


def add_run_time(trial: Any, time_breakdown: dict[str, float]) -> None:
    """Add one run's seconds per stage to an Optuna trial's TIME_BREAKDOWN attribute."""
    so_far = trial.user_attrs.get(attributes.TIME_BREAKDOWN) or dict.fromkeys(STAGES, 0.0)
    total = {stage: round(so_far.get(stage, 0.0) + time_breakdown.get(stage, 0.0), 3) for stage in STAGES}
    trial.set_user_attr(attributes.TIME_BREAKDOWN, total)


def summed(breakdowns: list[dict[str, float]]) -> dict[str, float]:
    return {stage: round(sum(b.get(stage, 0.0) for b in breakdowns), 3) for stage in STAGES}


def search_time_breakdown(
    result: SearchResult, selection_folder: Path, *, wall_seconds: float, run_seconds: float
) -> dict[str, Any]:
    """summary.json's "time_breakdown": seconds per stage summed over the trials and over the re-runs
    (every invocation's), and this invocation's wall time with the part spent outside runs (sampling,
    storage, planning trials, writing results): ``run_seconds`` is the time this invocation spent in runs."""
    trials = [t.extra[attributes.TIME_BREAKDOWN] for t in result.trials if t.extra.get(attributes.TIME_BREAKDOWN)]
    reruns = [
        json.loads(path.read_text()).get("time_breakdown") or {}
        for path in sorted(selection_folder.glob("trial_*/replicate_*.json"))
    ]
    return {
        "trials": summed(trials),
        "reruns": summed(reruns),
        "wall_seconds_this_invocation": round(wall_seconds, 3),
        "between_runs_this_invocation": round(max(wall_seconds - run_seconds, 0.0), 3),
    }


def training_share(breakdown: dict[str, Any]) -> float | None:
    """The training stage's share of a search's time_breakdown: the LR sweep's, the trials' and the re-runs'
    stages, and the time between runs (sampling, storage) of the last invocation. None: nothing ran."""
    runs = [breakdown.get(part) or {} for part in ("lr_range_test", "trials", "reruns")]
    total = sum(sum(part.values()) for part in runs) + breakdown.get("between_runs_this_invocation", 0.0)
    return sum(part.get("training", 0.0) for part in runs) / total if total else None
