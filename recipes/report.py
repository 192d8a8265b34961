"""report.md and a self-contained report.html (PNG plots embedded) from a recipe's results."""

from __future__ import annotations

import base64
import html
import importlib.metadata
import platform
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from hpo.outputs import plot_anytime, save_figure  # noqa: E402
from hpo.results import SearchResult  # noqa: E402

LIBRARIES = ("torch", "transformers", "peft", "accelerate", "optuna", "datasets")


def headline(results: dict[str, Any]) -> list[str]:
    """The question and the answer, first lines of the report."""
    c, metric = results["comparison"], results["metric"]
    method = results["untuned_config"]["method"]["name"]
    points = 100 if metric in ("accuracy", "macro_f1") else 1
    unit = " points" if points == 100 else ""
    better = c["difference"] > 0 if results["direction"] == "maximize" else c["difference"] < 0
    lines = [
        f"Question: does tuning the {method} fine-tune beat the untuned run on held-out test {metric}?",
        f"Answer: tuned {method}: {c['tuned_mean']:.3f} +/- {c['tuned_std']:.3f} test {metric} vs untuned "
        f"{c['untuned_mean']:.3f} +/- {c['untuned_std']:.3f} ({c['n_tuned']} seeds each), "
        f"{c['difference'] * points:+.1f}{unit}, 95% CI [{c['ci_low'] * points:+.1f}, {c['ci_high'] * points:+.1f}]"
        f"{unit}, Welch's t-test p = {c['p_value']:.3g}.",
    ]
    if _untuned_won(results):
        lines.append("The search kept the untuned configuration: tuning did not help on this task at this budget.")
    elif not c["significant"]:
        lines.append(
            "The difference is not statistically significant (p >= 0.05): on this evidence tuning did "
            "not change the result."
        )
    elif better:
        lines.append("Tuning helped, and the difference is significant (p < 0.05).")
    else:
        lines.append("Tuning made the result worse, significantly (p < 0.05).")
    return lines


def write_report(run_dir: Path, results: dict[str, Any], search: SearchResult) -> None:
    plots = {
        "anytime": plot_anytime({"search": search}, run_dir / "anytime.png"),
        "history": _plot_history(search, run_dir / "history.png"),
        "seeds": _plot_seed_scores(results, run_dir / "seed_scores.png"),
        "curves": _plot_learning_curves(results, run_dir / "learning_curves.png"),
    }
    importances = run_dir / "search" / "importances.png"
    if importances.is_file():
        plots["importances"] = str(importances)
    sections = _sections(results, search)
    (run_dir / "report.md").write_text(_markdown(results, sections, plots, run_dir))
    (run_dir / "report.html").write_text(_html(results, sections, plots))


def _untuned_won(results: dict[str, Any]) -> bool:
    return results["best_config"]["training"] == results["untuned_config"]["training"] and (
        results["best_config"]["method"] == results["untuned_config"]["method"]
    )


def _sections(results: dict[str, Any], search: SearchResult) -> list[tuple[str, list[list[str]]]]:
    metric = results["metric"]
    runs = results["runs"]
    per_seed = [["seed", "tuned test", "untuned test", "tuned validation", "untuned validation"]]
    for tuned, untuned in zip(runs["tuned"], runs["untuned"], strict=True):
        per_seed.append(
            [
                str(tuned["seed"]),
                f"{tuned['test'][f'test_{metric}']:.4f}",
                f"{untuned['test'][f'test_{metric}']:.4f}",
                f"{tuned['validation'].get(f'eval_{metric}', float('nan')):.4f}",
                f"{untuned['validation'].get(f'eval_{metric}', float('nan')):.4f}",
            ]
        )
    params = [["hyperparameter", "tuned", "untuned"]]
    for section in ("training", "method"):
        for key, value in results["best_config"][section].items():
            untuned = results["untuned_config"][section][key]
            if key != "output_dir" and (value != untuned or key in ("learning_rate", "num_train_epochs")):
                params.append([f"{section}.{key}", str(value), str(untuned)])
    s = results["search"]
    budget = [
        ["", "value"],
        ["optimizer steps spent", str(s["steps_spent"])],
        ["full-run equivalents spent", f"{s['full_run_equivalents_spent']:.2f}"],
        ["trial wall time (s)", f"{s['trial_seconds_spent']:.0f}"],
        ["trials complete / pruned / failed", "{COMPLETE} / {PRUNED} / {FAIL}".format(**s["trials"])],
        ["sampler / scheduler", f"{s['sampler']} / {s['scheduler']}"],
        ["stopped because", s["stop_reason"]],
        ["best validation during search", f"{s['best_value']:.4f} (trial {s['best_trial']})"],
    ]
    environment = [["", ""], ["python", platform.python_version()], ["machine", platform.platform()]]
    for name in LIBRARIES:
        try:
            environment.append([name, importlib.metadata.version(name)])
        except importlib.metadata.PackageNotFoundError:
            pass
    return [
        ("Per-seed results", per_seed),
        ("Best parameters next to the untuned ones", params),
        ("Budget used", budget),
        ("Environment", environment),
    ]


def _markdown(results, sections, plots, run_dir: Path) -> str:
    lines = ["# tunelab report", "", *headline(results), ""]
    for title, table in sections:
        lines += [f"## {title}", "", "| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
        lines += ["| " + " | ".join(row) + " |" for row in table[1:]] + [""]
    lines += ["## Plots", ""]
    lines += [f"![{name}]({Path(path).relative_to(run_dir)})" for name, path in plots.items()]
    return "\n".join(lines) + "\n"


def _html(results, sections, plots) -> str:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>tunelab report</title>",
        "<style>body{font-family:sans-serif;max-width:900px;margin:auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px}</style></head><body><h1>tunelab report</h1>",
    ]
    parts += [f"<p>{html.escape(line)}</p>" for line in headline(results)]
    for title, table in sections:
        parts.append(f"<h2>{html.escape(title)}</h2><table>")
        parts.append("<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in table[0]) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in table[1:]]
        parts.append("</table>")
    parts.append("<h2>Plots</h2>")
    for name, path in plots.items():
        data = base64.b64encode(Path(path).read_bytes()).decode()
        parts.append(f"<h3>{html.escape(name)}</h3><img alt='{name}' src='data:image/png;base64,{data}'>")
    return "\n".join(parts) + "</body></html>\n"


def _plot_history(search: SearchResult, path: Path) -> str:
    fig, ax = plt.subplots(figsize=(6, 4))
    for state, marker in (("COMPLETE", "o"), ("PRUNED", "x")):
        points = [(t.number, t.value) for t in search.trials if t.state == state and t.value is not None]
        if points:
            ax.scatter(*zip(*points, strict=True), marker=marker, label=state.lower())
    ax.set_xlabel("trial")
    ax.set_ylabel("objective (validation)")
    ax.set_title("optimisation history")
    ax.legend()
    return save_figure(fig, path)


def _plot_seed_scores(results: dict[str, Any], path: Path) -> str:
    metric = results["metric"]
    fig, ax = plt.subplots(figsize=(5, 4))
    for i, arm in enumerate(("untuned", "tuned")):
        scores = [r["test"][f"test_{metric}"] for r in results["runs"][arm]]
        ax.scatter([i] * len(scores), scores, s=40)
        ax.hlines(sum(scores) / len(scores), i - 0.2, i + 0.2)
    ax.set_xticks([0, 1], ["untuned", "tuned"])
    ax.set_ylabel(f"test {metric}")
    ax.set_title("per-seed test scores")
    return save_figure(fig, path)


def _plot_learning_curves(results: dict[str, Any], path: Path) -> str:
    metric = results["metric"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for arm, color in (("untuned", "tab:blue"), ("tuned", "tab:orange")):
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
