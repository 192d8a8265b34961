"""Files a search leaves in its run folder: trials table, summary, best config, anytime curve, importances."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import optuna

from hpo import attributes
from hpo.results import SearchResult


def trial_counts(result: SearchResult) -> dict[str, int]:
    """Trials by outcome. INFEASIBLE trials are stored COMPLETE with a violated constraint (not run for the
    budget, or out of memory even at a smaller batch) so TPE/GP avoid them; they never trained to the end."""
    infeasible = sum(t.state == "COMPLETE" and not t.feasible for t in result.trials)
    counts = {state: result.count(state) for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    return {**counts, "COMPLETE": counts["COMPLETE"] - infeasible, "INFEASIBLE": infeasible}


def write_search_outputs(
    result: SearchResult, folder: str | Path, *, best_config: Any | None = None, extra: dict[str, Any] | None = None
) -> dict[str, str]:
    """Write trials.csv/json, summary.json, best_config.yaml, anytime.png, importances.json/png; return paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_trial_tables(result, folder)
    paths = {"trials_csv": str(folder / "trials.csv"), "trials_json": str(folder / "trials.json")}
    best = result.best_trial
    summary = {
        "stop_reason": result.stop_reason,
        "direction": result.direction,
        "best_value": result.best_value,
        "best_trial": best.number if best else None,
        "best_params": result.best_params,
        "trials": trial_counts(result),
        "steps_spent": result.steps_spent,
        "trial_seconds_spent": result.wall_seconds_spent,
        "discarded_trials": result.discarded,
        **(extra or {}),
    }
    if best_config is not None:
        best_config.to_yaml(folder / "best_config.yaml")
        paths["best_config"] = str(folder / "best_config.yaml")
    importances = parameter_importances(result.study) if result.study is not None else {}
    summary["importances"] = importances
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    paths["summary"] = str(folder / "summary.json")
    paths["anytime_png"] = plot_anytime({"search": result}, folder / "anytime.png")
    if importances:
        paths["importances_png"] = plot_importances(importances, folder / "importances.png")
    return paths


def shown_state(state: str, value: float | None, *, feasible: bool) -> tuple[str, float | None]:
    """A trial's state and value as the trial tables show them. A refused trial (not run for the budget, or
    out of memory at every batch) is stored COMPLETE at the worst value so TPE/GP avoid its region; the
    tables say INFEASIBLE, without a value."""
    return (state, value) if feasible else ("INFEASIBLE", None)


def write_trial_tables(result: SearchResult, folder: str | Path) -> None:
    """trials.csv and trials.json (params, state, objective, steps, seconds, failure reason). trials.csv has a
    DISCARDED row for every number asked for but never run, so its numbering has no gaps, and an INFEASIBLE
    row, without a value, for every trial refused before or while running (not run for the budget, or out of
    memory at every batch)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = [asdict(t) for t in result.trials]
    (folder / "trials.json").write_text(json.dumps(rows, indent=2, default=str))
    keys = sorted({k for t in result.trials for k in t.params})
    with open(folder / "trials.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["number", "state", "value", "steps", "seconds", *keys, "note"])
        blank = [""] * len(keys)
        rows = {number: [number, "DISCARDED", "", 0, 0, *blank, why] for number, why in result.discarded.items()}
        for t in result.trials:
            params = [t.params.get(k, "") for k in keys]
            note = t.failure or t.stop_reason or ""
            for replaced in (attributes.SHORTENED, attributes.BATCH_LOWERED):
                if replaced in t.extra:
                    note = f"{replaced.replace('_', ' ')}: {t.extra[replaced]}" + (f"; {note}" if note else "")
            state, value = shown_state(t.state, t.value, feasible=t.feasible)
            rows[t.number] = [t.number, state, value, t.steps, round(t.seconds, 2), *params, note]
        writer.writerows(rows[number] for number in sorted(rows))


def parameter_importances(study: optuna.Study) -> dict[str, float]:
    """fANOVA importances over complete trials (empty when too few trials or a single parameter varies)."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 3:
        return {}
    try:
        return dict(
            optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)
            )
        )
    except (RuntimeError, ValueError):  # e.g. the complete trials share one search space point
        return {}


def new_figure(**figure_kwargs):
    """A matplotlib Figure outside pyplot: no backend is chosen and no global state changes."""
    from matplotlib.figure import Figure

    return Figure(**figure_kwargs)


def save_figure(fig, path: str | Path) -> str:
    """Lay out and write as PNG (the figure is not registered with pyplot: nothing to close)."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return str(path)


def plot_anytime(results: dict[str, SearchResult], path: str | Path) -> str:
    """Best objective so far against cumulative steps, one line per search."""
    fig = new_figure(figsize=(6, 4))
    ax = fig.subplots()
    for name, result in results.items():
        curve = result.anytime_curve()
        if curve:
            steps, values = zip(*curve, strict=True)
            ax.step(steps, values, where="post", label=name)
    ax.set_xlabel("cumulative steps")
    ax.set_ylabel("best objective so far")
    ax.set_title("anytime performance")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def plot_importances(importances: dict[str, float], path: str | Path) -> str:
    names = list(importances)[::-1]
    fig = new_figure(figsize=(6, 0.4 * len(names) + 1.2))
    ax = fig.subplots()
    ax.barh(names, [importances[n] for n in names])
    ax.set_xlabel("importance (fANOVA)")
    return save_figure(fig, path)
