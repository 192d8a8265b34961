"""The peers benchmark's outputs, from its results: the Markdown table, the issue's targets, the anytime plot.

Kept apart from benchmarks/peers.py, which measures; this only reads the results dict it writes (also
stored in benchmarks/peers_<method>_<rows>.json, so `peers.py --report-only` redraws all three).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path


def results_table(results: dict, budget_steps: int) -> str:
    """One row per contender: search validation, retrained validation and test, steps, seconds, trials."""

    def mean_std(values):
        return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)

    rows = [
        "| contender | best validation in search | validation retrained | test accuracy | steps (x B) | s | "
        "trials complete/pruned/failed (+ not run; shortened) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        test_mean, test_std = mean_std(r["final"]["test"])
        val = statistics.mean(r["final"]["validation"])
        best = "-" if r["best_validation"] is None else f"{r['best_validation']:.4f}"
        t = r["trials"]
        rows.append(
            f"| {name} | {best} | {val:.4f} | {test_mean:.4f} +/- {test_std:.4f} | {r['steps']} "
            f"({r['steps'] / budget_steps:.2f}) | {r['seconds']:.0f} | {t['COMPLETE']}/{t['PRUNED']}/{t['FAIL']}"
            + (f" (+ {t['NOT_RUN']} not run)" if t.get("NOT_RUN") else "")
            + (f" ({t['SHORTENED']} shortened)" if t.get("SHORTENED") else "")
            + " |"
        )
    return "\n".join(rows)


def steps_to_reach(anytime: list, score: float) -> float:
    """Steps spent when an anytime curve (``[steps, best so far]`` pairs) first reached ``score``; inf if never."""
    return next((steps for steps, value in anytime if value >= score), math.inf)


def targets(results: dict) -> list[str]:
    """The issue's targets for the "tunelab" contender, one line each: met or not, and the numbers."""

    def test(name):
        return statistics.mean(results[name]["final"]["test"])

    lines = []
    if "hf_default" in results:
        met = test("tunelab") > test("hf_default")
        lines.append(
            f"tunelab beats Trainer.hyperparameter_search on test: {met} "
            f"({test('tunelab'):.4f} vs {test('hf_default'):.4f})"
        )
    if "grid" in results:
        # Read on the anytime curve: the steps tunelab had spent when its best validation first came within
        # 0.5 points of the grid's best, against the grid's total steps.
        grid_best = max(v for _, v in results["grid"]["anytime"])
        reached = steps_to_reach(results["tunelab"]["anytime"], grid_best - 0.005)
        ratio = reached / results["grid"]["steps"]
        gap = (grid_best - (results["tunelab"]["best_validation"] or 0)) * 100
        lines.append(
            f"tunelab within 0.5 points of the grid's best validation with <= 1/5 of its steps: {ratio <= 0.2} "
            f"(reached after {reached} steps = {ratio:.2f} of the grid's {results['grid']['steps']}; final gap "
            f"{gap:+.2f} points)"
        )
    if "random" in results:
        target = statistics.mean(results["untuned"]["final"]["validation"])
        ours = steps_to_reach(results["tunelab"]["anytime"], target)
        theirs = steps_to_reach(results["random"]["anytime"], target)
        met = ours <= theirs / 3 if ours < math.inf else False
        lines.append(
            f"tunelab reaches the untuned validation score in <= 1/3 of random search's steps: {met} "
            f"(tunelab {ours}, random {theirs})"
        )
    lines.append(
        f"tunelab never below untuned by more than one std: "
        f"{test('tunelab') >= test('untuned') - statistics.stdev(results['untuned']['final']['test'])}"
    )
    return lines


def plot_anytime(results: dict, path: Path, full_run: int) -> None:
    """Best validation so far against full-run equivalents spent, every contender on one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, r in results.items():
        if r["anytime"]:
            steps, values = zip(*r["anytime"], strict=True)
            ax.step([s / full_run for s in steps], values, where="post", label=name)
    ax.set_xlabel("full-run equivalents spent")
    ax.set_ylabel("best validation accuracy so far")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
