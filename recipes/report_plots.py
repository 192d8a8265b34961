"""The report's plots of a `tunelab run`: the search's history, per-seed test scores and learning curves,
one colour per arm (untuned, the references, tuned)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hpo.result_files import new_figure, save_figure
from hpo.results import SearchResult
from recipes.references import arm_names


def plot_history(search: SearchResult, path: Path) -> str:
    fig = new_figure(figsize=(6, 4))
    ax = fig.subplots()
    for state, marker in (("COMPLETE", "o"), ("PRUNED", "x")):
        points = [(t.number, t.value) for t in search.trials if t.state == state and t.value is not None]
        if points:
            ax.scatter(*zip(*points, strict=True), marker=marker, label=state.lower())
    ax.set_xlabel("trial")
    ax.set_ylabel("objective (validation)")
    ax.set_title("optimisation history")
    ax.legend()
    return save_figure(fig, path)


def plot_seed_scores(results: dict[str, Any], path: Path) -> str:
    metric = results["metric"]
    fig = new_figure(figsize=(5, 4))
    ax = fig.subplots()
    arms = arm_names(results)
    for i, arm in enumerate(arms):
        scores = [r["test"][f"test_{metric}"] for r in results["runs"][arm]]
        ax.scatter([i] * len(scores), scores, s=40)
        ax.hlines(sum(scores) / len(scores), i - 0.2, i + 0.2)
    ax.set_xticks(range(len(arms)), arms, rotation=20 if len(arms) > 2 else 0)
    ax.set_ylabel(f"test {metric}")
    ax.set_title("per-seed test scores")
    return save_figure(fig, path)


def plot_learning_curves(results: dict[str, Any], path: Path) -> str:
    metric = results["metric"]
    fig = new_figure(figsize=(6, 4))
    ax = fig.subplots()
    colors = {"untuned": "tab:blue", "tuned": "tab:orange"}
    others = iter(("tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan"))
    for arm in arm_names(results):
        color = colors.get(arm) or next(others, "tab:gray")
        for i, run in enumerate(results["runs"][arm]):
            points = [(e["step"], e[f"eval_{metric}"]) for e in run["evaluations"] if f"eval_{metric}" in e]
            if points:
                # Markers too: a run with a single evaluation is a point, not a line.
                ax.plot(*zip(*points, strict=True), color=color, marker="o", alpha=0.7, label=arm if i == 0 else None)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"validation {metric}")
    ax.set_title("learning curves (each line a seed)")
    ax.legend()
    return save_figure(fig, path)
