"""Where a `tunelab run`'s time went: the search (trials, re-runs, between runs), the arms' retrains and
their tests, each split into setup, training, evaluation and checkpoints (finetune.timing.STAGES)."""

from __future__ import annotations

from typing import Any

from finetune.timing import STAGES
from hpo.attributes import UNTUNED
from hpo.finetune.time_spent import summed


def run_time_breakdown(runs: dict[str, list[dict]], search_summary: dict[str, Any]) -> dict[str, Any]:
    """results.json's "time_breakdown": seconds per stage of each phase. The retrains are the arm runs
    trained after the search (the untuned runs reused from choosing the winner are counted there, once)."""
    # Where the tuned arm is another arm's runs (the untuned configuration or a reference won), counted once
    # (results.json written before same_runs_as was recorded: the winner's role says it).
    shared = search_summary.get("winner_role") == UNTUNED
    arms = [arm for arm in runs if not (shared and arm == "tuned")]
    tested = [r for arm in arms for r in runs[arm] if not r.get("same_runs_as")]
    return {
        "search": search_summary.get("time_breakdown"),
        "retraining": summed([r.get("time_breakdown") or {} for r in tested if not r.get("reused_from")]),
        "testing_seconds": round(sum(r.get("test_seconds", 0.0) for r in tested), 3),
    }


def time_rows(breakdown: dict[str, Any]) -> list[list[str]]:
    """The report's table: a row per phase, a column per stage, the total and the training stage's share."""
    rows = [["phase", *STAGES, "total (s)", "training share"]]
    search = breakdown.get("search") or {}
    phases = [
        ("learning-rate range test", search.get("lr_range_test")),
        ("search trials", search.get("trials")),
        ("choosing the winner (re-runs)", search.get("reruns")),
        ("retraining the arms", breakdown.get("retraining")),
    ]
    for name, stages in phases:
        total = sum((stages or {}).values())
        if total:
            share = f"{100 * stages['training'] / total:.0f}%"
            rows.append([name, *(f"{stages[s]:.0f}" for s in STAGES), f"{total:.0f}", share])
    blank = [""] * len(STAGES)
    if search.get("between_runs_this_invocation") is not None:
        between = search["between_runs_this_invocation"]
        rows.append(["search, between runs (sampling, storage; last invocation)", *blank, f"{between:.0f}", ""])
    if breakdown.get("testing_seconds"):
        rows.append(["testing every arm (test loss, generations)", *blank, f"{breakdown['testing_seconds']:.0f}", ""])
    return rows
