"""Under- or overfitting, per arm: training vs validation at each evaluation, labelled by one stated rule.

Each retrained seed records, at every evaluation, the metric on the validation split and on a fixed
sample of the training split (finetune.train_metrics). At the last evaluation of a run:

    gap   = train - validation (points of the metric; for a loss, validation - train)
    trend = last validation - best earlier validation (positive: still improving)

    overfitting   gap > GAP_LARGE, or gap > GAP_OVERFIT and the validation fell from its best by more
                  than TREND_POINTS
    underfitting  gap < GAP_UNDERFIT and (the validation was still improving by more than TREND_POINTS,
                  or the training accuracy is below TRAIN_FLOOR or within GAP_OVERFIT of guessing one label)
    good fit      otherwise

An arm's label is the one most of its seeds get; its variance is the spread of its test score across seeds.
"""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from recipes.references import arm_names

GAP_LARGE = 0.10  # 10 points of accuracy (or 0.1 nats of loss): the model learned its training rows
GAP_OVERFIT = 0.05
GAP_UNDERFIT = 0.03
TREND_POINTS = 0.01
TRAIN_FLOOR = 0.80  # accuracy: a model below this on its own training rows has not fit them

RULE = (
    f"At a run's last evaluation, gap = train - validation and trend = last validation - best earlier "
    f"validation. Overfitting: gap > {GAP_LARGE:g}, or gap > {GAP_OVERFIT:g} with trend < -{TREND_POINTS:g} "
    f"(validation fell from its best). Underfitting: gap < {GAP_UNDERFIT:g} and either trend > {TREND_POINTS:g} "
    f"(still improving when training stopped) or a training accuracy below {TRAIN_FLOOR:g} or within "
    f"{GAP_OVERFIT:g} of guessing one label. Otherwise: good fit. An arm's label is its seeds' majority; for "
    "loss-only tasks the gap is validation - train loss and only the trend marks underfitting."
)


def diagnose_run(evaluations: list[dict[str, float]], metric: str, higher_is_better: bool, labels: int = 0) -> dict:
    """The rule above on one run's evaluations; ``labels`` (number of classes, 0 if unknown) sets chance."""
    points = [e for e in evaluations if f"eval_{metric}" in e and f"train_{metric}" in e]
    if not points:
        return {"label": "unknown", "why": f"no evaluation recorded train_{metric} and eval_{metric}"}
    sign = 1.0 if higher_is_better else -1.0
    train, validation = points[-1][f"train_{metric}"], points[-1][f"eval_{metric}"]
    gap = sign * (train - validation)
    earlier = [sign * e[f"eval_{metric}"] for e in points[:-1]]
    trend = sign * validation - max(earlier) if earlier else 0.0
    chance = 1.0 / labels if labels and metric == "accuracy" else None
    poor_fit = metric == "accuracy" and (train < TRAIN_FLOOR or (chance is not None and train <= chance + GAP_OVERFIT))
    if gap > GAP_LARGE or (gap > GAP_OVERFIT and trend < -TREND_POINTS):
        label = "overfitting"
    elif gap < GAP_UNDERFIT and (trend > TREND_POINTS or poor_fit):
        label = "underfitting"
    else:
        label = "good fit"
    return {"label": label, "train": train, "validation": validation, "gap": gap, "trend": trend}


def diagnose_arm(runs: list[dict[str, Any]], metric: str, higher_is_better: bool, labels: int = 0) -> dict:
    diagnoses = [diagnose_run(r["evaluations"], metric, higher_is_better, labels) for r in runs]
    known = [d for d in diagnoses if d["label"] != "unknown"]
    if not known:
        return {"label": "unknown", "seeds": diagnoses}
    counts = Counter(d["label"] for d in known)
    tests = [r["test"][f"test_{metric}"] for r in runs if f"test_{metric}" in r.get("test", {})]
    return {
        "label": counts.most_common(1)[0][0],
        "votes": dict(counts),
        "gap": statistics.fmean(d["gap"] for d in known),
        "trend": statistics.fmean(d["trend"] for d in known),
        "train": statistics.fmean(d["train"] for d in known),
        "validation": statistics.fmean(d["validation"] for d in known),
        "test_std": statistics.stdev(tests) if len(tests) > 1 else 0.0,
        "test_variance": statistics.variance(tests) if len(tests) > 1 else 0.0,
        "seeds": diagnoses,
    }


def arm_diagnoses(results: dict[str, Any]) -> dict[str, dict]:
    """diagnose_arm for every arm of a `tunelab run`'s results."""
    higher = results.get("direction", "maximize") == "maximize"
    labels = len(results["untuned_config"]["data"].get("label_names") or [])
    return {arm: diagnose_arm(results["runs"][arm], results["metric"], higher, labels) for arm in arm_names(results)}


def fit_lines(results: dict[str, Any]) -> list[str]:
    """One sentence per arm for the report's text, then the rule."""
    lines = []
    for arm, d in arm_diagnoses(results).items():
        if d["label"] != "unknown":
            lines.append(
                f"Fit of the {arm} arm: {d['label']} (train {d['train']:.4f} vs validation {d['validation']:.4f} "
                f"at the end, gap {d['gap']:+.4f}, trend {d['trend']:+.4f}; variance across seeds: test std "
                f"{d['test_std']:.4f})."
            )
    return [*lines, f"Fit rule: {RULE}"] if lines else []


def fit_table(results: dict[str, Any]) -> list[list[str]]:
    rows = [["arm", "label (seeds)", "train", "validation", "gap", "trend at end", "test std (variance)"]]
    for arm, d in arm_diagnoses(results).items():
        if d["label"] == "unknown":
            rows.append([arm, "unknown (no training metrics recorded)", "-", "-", "-", "-", "-"])
            continue
        votes = ", ".join(f"{n} {label}" for label, n in d["votes"].items())
        rows.append(
            [
                arm,
                f"{d['label']} ({votes})",
                f"{d['train']:.4f}",
                f"{d['validation']:.4f}",
                f"{d['gap']:+.4f}",
                f"{d['trend']:+.4f}",
                f"{d['test_std']:.4f} ({d['test_variance']:.2e})",
            ]
        )
    return rows


def plot_fit(results: dict[str, Any], path: Path) -> str:
    """Train vs validation metric at each evaluation, one panel per arm, one line pair per seed."""
    from hpo.result_files import new_figure, save_figure

    metric = results["metric"]
    arms = arm_names(results)
    fig = new_figure(figsize=(5 * len(arms), 4))
    axes = fig.subplots(1, len(arms), sharey=True)
    for ax, arm in zip(axes, arms, strict=True):
        for i, run in enumerate(results["runs"][arm]):
            points = [e for e in run["evaluations"] if f"train_{metric}" in e and f"eval_{metric}" in e]
            if not points:
                continue
            steps = [e["step"] for e in points]
            for prefix, style, color, name in (
                ("train", "--o", "tab:green", "train"),
                ("eval", "-o", "tab:purple", "validation"),
            ):
                values = [e[f"{prefix}_{metric}"] for e in points]
                ax.plot(steps, values, style, color=color, alpha=0.7, label=name if i == 0 else None)
        ax.set_title(arm)
        ax.set_xlabel("optimizer step")
        ax.legend()
    axes[0].set_ylabel(metric)
    fig.suptitle("training vs validation (each pair of lines a seed)")
    return save_figure(fig, path)
