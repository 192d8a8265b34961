"""report.md and a self-contained report.html (PNG plots embedded) from a recipe's results."""

from __future__ import annotations

import base64
import html
import importlib.metadata
import platform
from pathlib import Path
from typing import Any

from hpo.result_files import plot_anytime
from hpo.results import SearchResult
from recipes.fit import fit_lines, fit_table, plot_fit
from recipes.references import arm_names
from recipes.report_answers import generation_table, side_by_side
from recipes.report_plots import plot_history, plot_learning_curves, plot_seed_scores
from recipes.stats import mean_std
from recipes.time_table import time_rows

LIBRARIES = ("torch", "transformers", "peft", "accelerate", "optuna", "datasets")
INTERVALS = {"welch": "Welch t", "bootstrap": "percentile bootstrap"}  # recipes.stats: how the CI was made


def headline(results: dict[str, Any]) -> list[str]:
    """The question and the answer, first lines of the report."""
    c, metric = results["comparison"], results["metric"]
    method = results["untuned_config"]["method"]["name"]
    points = 100 if metric in ("accuracy", "macro_f1") else 1
    unit = " points" if points == 100 else ""
    digits = 1 if points == 100 else 3  # a loss difference of 0.347 is not "-0.3"
    better = c["difference"] > 0 if results["direction"] == "maximize" else c["difference"] < 0
    references = results.get("references") or {}
    against = f" and the best of the field's recipes ({', '.join(references)})" if references else ""
    lines = [
        f"Question: does tuning the {method} fine-tune beat the untuned run{against} on held-out test {metric}?",
        f"Answer: tuned {method}: {c['tuned_mean']:.3f} +/- {c['tuned_std']:.3f} test {metric} vs untuned "
        f"{c['untuned_mean']:.3f} +/- {c['untuned_std']:.3f} ({c['n_tuned']} seeds each), "
        f"{c['difference'] * points:+.{digits}f}{unit}, 95% CI ({INTERVALS[c.get('ci_method', 'bootstrap')]}) "
        f"[{c['ci_low'] * points:+.{digits}f}, {c['ci_high'] * points:+.{digits}f}]"
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
    # Each verdict next to its answer: against the untuned run above, against the best reference here.
    lines += reference_lines(results, points, unit, digits)
    chosen = _tuned_runs_of(results)
    if chosen not in (None, "untuned"):
        lines.append(
            f"The search chose {chosen}'s recipe: the tuned arm is its runs (the same configuration, seeds and "
            "rows, trained once)."
        )
    if all("test_exact_match" in run["test"] for arm in arm_names(results) for run in results["runs"][arm]):
        match = {arm: [run["test"]["test_exact_match"] for run in results["runs"][arm]] for arm in arm_names(results)}
        others = "".join(f"; {name} {mean_std(match[name])}" for name in references)
        lines.append(
            f"Greedy answers on test, exact match: tuned {mean_std(match['tuned'])} vs untuned "
            f"{mean_std(match['untuned'])}{others}."
        )
    return lines


def reference_lines(results: dict[str, Any], points: int, unit: str, digits: int) -> list[str]:
    """The tuned arm against the best reference (recipes.references), as the headline says it."""
    references = results.get("references") or {}
    best = next((name for name, ref in references.items() if ref["best"]), None)
    if best is None:
        return []
    c = references[best]["comparison"]
    overrides = references[best]["overrides"]
    shown = ", ".join(
        f"{key.split('.')[-1]} {shown_value(overrides[key])}"
        for key in ("training.learning_rate", "method.lora_r", "training.num_train_epochs")
        if key in overrides
    )
    better = c["difference"] > 0 if results["direction"] == "maximize" else c["difference"] < 0
    if not c["significant"]:
        verdict = "the difference is not significant (p >= 0.05)"
    else:
        verdict = f"tuning is significantly {'better' if better else 'worse'} (p < 0.05)"
    return [
        f"Against the best reference, {best} ({shown}): tuned {c['tuned_mean']:.3f} +/- {c['tuned_std']:.3f} vs "
        f"{c['untuned_mean']:.3f} +/- {c['untuned_std']:.3f}, {c['difference'] * points:+.{digits}f}{unit}, 95% CI "
        f"({INTERVALS[c['ci_method']]}) [{c['ci_low'] * points:+.{digits}f}, {c['ci_high'] * points:+.{digits}f}]"
        f"{unit}, p = {c['p_value']:.3g}: {verdict}."
    ]


def write_report(run_dir: Path, results: dict[str, Any], search: SearchResult) -> None:
    plots = {
        "anytime": plot_anytime({"search": search}, run_dir / "anytime.png"),
        "history": plot_history(search, run_dir / "history.png"),
        "seeds": plot_seed_scores(results, run_dir / "seed_scores.png"),
        "curves": plot_learning_curves(results, run_dir / "learning_curves.png"),
        "fit": plot_fit(results, run_dir / "train_vs_validation.png"),
    }
    importances = run_dir / "search" / "importances.png"
    if importances.is_file():
        plots["importances"] = str(importances)
    sections = _sections(results, search)
    (run_dir / "report.md").write_text(_markdown(results, sections, plots, run_dir))
    (run_dir / "report.html").write_text(_html(results, sections, plots))


def _untuned_won(results: dict[str, Any]) -> bool:
    return results["search"].get("winner_role") == "untuned"


def _tuned_runs_of(results: dict[str, Any]) -> str | None:
    """The arm whose runs the tuned arm is (the untuned one or a reference the search chose), or None."""
    tuned = results["runs"].get("tuned") or [{}]
    return tuned[0].get("same_runs_as") or ("untuned" if _untuned_won(results) else None)


def _sections(results: dict[str, Any], search: SearchResult) -> list[tuple[str, list[list[str]]]]:
    metric = results["metric"]
    runs = results["runs"]
    # A row is a pair of runs on the same training rows (validation split); the untuned runs reused from
    # choosing the winner carry that re-run's seed.
    references = list(results.get("references") or {})
    per_seed = [
        [
            "seed (tuned / untuned)",
            "tuned test",
            "untuned test",
            *(f"{name} test" for name in references),
            "tuned validation",
            "untuned validation",
        ]
    ]
    for index, (tuned, untuned) in enumerate(zip(runs["tuned"], runs["untuned"], strict=True)):
        reused = " (re-run from choosing the winner)" if untuned.get("reused_from") else ""
        per_seed.append(
            [
                f"{tuned['seed']} / {untuned['seed']}{reused}",
                f"{tuned['test'][f'test_{metric}']:.4f}",
                f"{untuned['test'][f'test_{metric}']:.4f}",
                *(f"{runs[name][index]['test'][f'test_{metric}']:.4f}" for name in references),
                f"{tuned['validation'].get(f'eval_{metric}', float('nan')):.4f}",
                f"{untuned['validation'].get(f'eval_{metric}', float('nan')):.4f}",
            ]
        )
    overrides = {name: ref["overrides"] for name, ref in (results.get("references") or {}).items()}
    params = [["hyperparameter", "tuned", "untuned", *overrides]]
    for section in ("training", "method"):
        for key, value in results["best_config"][section].items():
            untuned = results["untuned_config"][section][key]
            dotted = f"{section}.{key}"
            theirs = [o.get(dotted, untuned) for o in overrides.values()]
            if key not in ("output_dir", "run_name") and (
                any(v != untuned for v in (value, *theirs)) or key in ("learning_rate", "num_train_epochs")
            ):
                params.append([dotted, shown_value(value), shown_value(untuned), *map(shown_value, theirs)])
    environment = [["", ""], ["python", platform.python_version()], ["machine", platform.platform()]]
    for name in LIBRARIES:
        try:
            environment.append([name, importlib.metadata.version(name)])
        except importlib.metadata.PackageNotFoundError:
            pass
    environment += hardware()
    times = time_rows(results.get("time_breakdown") or {})
    sections = [("Per-seed results", per_seed)]
    if "test_exact_match" in runs["tuned"][0]["test"]:
        sections += [("Generated answers on test", generation_table(results))]
        sections += [("The same test prompts, answered by each arm (first seed)", side_by_side(results))]
    if results["search"].get("selection"):
        sections.append(("How the winner was chosen", selection_table(results)))
    sections += [
        ("Fit: training vs validation at the last evaluation", fit_table(results)),
        ("Best parameters next to the untuned ones and the references'", params),
        ("Budget used", _budget_rows(results)),
    ]
    if len(times) > 1:  # results written before runs timed their stages have none
        sections.append(("Where the time went (seconds)", times))
    return [*sections, ("Environment", environment)]


def _budget_rows(results: dict[str, Any]) -> list[list[str]]:
    s = results["search"]
    return [
        ["", "value"],
        ["steps spent at the untuned run's batch (LR sweep + exploration + selection re-runs)", str(total_steps(s))],
        ["full-run equivalents spent", spent_against_budget(s)],
        ["learning-rate range test", ((s.get("lr_range_test") or {}).get("reading") or {}).get("reason", "not run")],
        [
            "trials run shorter than proposed (fewer epochs, so their re-runs fit)",
            str(s.get("trials_shortened", 0)),
        ],
        [
            "trials run at a smaller batch than proposed (to take the floor of optimizer steps)",
            str(s.get("trials_batch_lowered", 0)),
        ],
        [
            "trials proposed but not run (even shortened, with their re-runs they would not have fit the budget)",
            str(s.get("trials_not_run", 0)),
        ],
        ["trial wall time (s)", f"{s['trial_seconds_spent']:.0f}"],
        [
            "trials complete / pruned / failed / infeasible (not run, or out of memory)",
            "{COMPLETE} / {PRUNED} / {FAIL} / {INFEASIBLE}".format(**{"INFEASIBLE": 0, **s["trials"]}),
        ],
        ["sampler / scheduler", f"{s['sampler']} / {s['scheduler']}"],
        ["stopped because", s["stop_reason"]],
        ["best validation during search", f"{s['best_value']:.4f} (trial {s['best_trial']})"],
        ["retrain wall time, every arm (s; untuned re-runs counted in the search)", f"{_retrain_seconds(results):.0f}"],
    ]


def shown_value(value: Any) -> str:
    """A hyperparameter as a person reads it: floats to 3 significant digits (2.3e-04, 0.06, 3)."""
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _retrain_seconds(results: dict[str, Any]) -> float:
    arms = [arm for arm in arm_names(results) if not (arm == "tuned" and _tuned_runs_of(results))]
    return sum(r["wall_seconds"] for arm in arms for r in results["runs"][arm] if not r.get("reused_from"))


def spent_against_budget(summary: dict[str, Any]) -> str:
    """ "9.01 of 8.00 (over by 13%: ...)": an overrun is said, not left for the reader to compute."""
    spent, budget = summary["full_run_equivalents_spent"], summary.get("full_run_equivalents_budget")
    if budget is None:
        return f"{spent:.2f}"
    text = f"{spent:.2f} of {budget:.2f}"
    if spent > budget * 1.02:  # one evaluation interval of overshoot is not worth a word
        text += (
            f" (over by {100 * (spent / budget - 1):.0f}%: trials that several workers started at the same time "
            "each counted on the same steps left)"
        )
    return text


def total_steps(summary: dict[str, Any]) -> int:
    """Optimizer steps of the whole search: LR sweep, exploration and selection re-runs."""
    sweep = (summary.get("lr_range_test") or {}).get("steps") or 0
    return sweep + summary["steps_spent"] + ((summary.get("selection") or {}).get("steps") or 0)


def selection_lines(results: dict[str, Any]) -> list[str]:
    """The rule and the winner's curse in words, under the headline."""
    sel = results["search"].get("selection")
    if not sel:
        return []
    winner = next(c for c in sel["candidates"] if c["trial"] == sel["winner"])
    metric = results["metric"]
    test = results["comparison"]["tuned_mean"]
    settings = results["search"].get("selection_settings") or {}
    top_k = settings.get("top_k", len(sel["candidates"]))
    fewer = (
        f" (search.selection.top_k is {top_k}: no further candidate's re-runs fit what the budget had left, or no "
        "further trial completed)"
        if len(sel["candidates"]) < top_k
        else ""
    )
    among = "the untuned one always among them"
    if settings.get("seeds") == 1:
        among = "the untuned one only by its rank"
        how = (
            "were re-run once each with a fresh seed at their own length (a fresh validation draw where the "
            "validation split is carved from train) and the best re-run won: a re-ranking that exposes a lucky "
            "trial, with no noise test (one re-run cannot measure the noise)"
        )
        if settings.get("incumbent_z") is not None:
            how += (
                f", except that a sampled trial replaces the best re-run warm-start or untuned trial only if it "
                f"beats it by more than {settings['incumbent_z']:g} standard errors of their row-by-row difference "
                "on the re-runs' shared validation rows (search.selection.incumbent_z)"
            )
    elif settings.get("sequential"):
        how = (
            f"were re-run one fresh seed at a time (at most {settings.get('seeds')} each; fresh validation draws "
            "where the validation split is carved from train): every challenger once, ranked by its re-runs, the "
            "untuned one only while the decision was unclear; a challenger replaces the untuned configuration only "
            "if its re-run mean beats the untuned mean by more than a one-sided t bound on the pooled noise, "
            "Bonferroni-corrected over the challengers and the looks"
        )
    else:
        how = (
            f"were re-run with {len(winner['values'])} fresh seeds each (fresh validation draws where the "
            "validation split is carved from train); a challenger replaces the untuned configuration only if its "
            "mean beats the untuned mean by more than a one-sided t bound on the pooled noise, "
            "Bonferroni-corrected over the challengers"
        )
    lines = [
        f"Winner: trial {sel['winner']} ({winner['role'] or 'tuned'}). "
        f"{sel['reason'][0].upper()}{sel['reason'][1:]}. "
        f"Rule: the top {len(sel['candidates'])} candidates{fewer} by validation {metric} ({among}) {how}"
        + ("." if settings.get("seeds") == 1 else f" (noise std {sel['noise_std']:.4f}, margin {sel['margin']:.4f})."),
    ]
    if winner["search_value"] is not None and winner["rerun_mean"] is not None:
        lines.append(
            f"For the winner: validation {metric} during the search {winner['search_value']:.4f}, over the "
            f"re-runs {winner['rerun_mean']:.4f} (winner's curse {sel['winners_curse']:+.4f}), test {test:.4f}."
        )
    return lines


def selection_table(results: dict[str, Any]) -> list[list[str]]:
    sel = results["search"]["selection"]
    rows = [["trial", "role", "validation in search", "re-run validations", "mean used", "std", "chosen"]]
    for c in sel["candidates"]:
        rows.append(
            [
                str(c["trial"]),
                c["role"] or "challenger",
                "-" if c["search_value"] is None else f"{c['search_value']:.4f}",
                c["failure"] or ", ".join(f"{v:.4f}" for v in c["values"]),
                "-" if c["mean"] is None else f"{c['mean']:.4f}",
                f"{c['std']:.4f}",
                "yes" if c["trial"] == sel["winner"] else "",
            ]
        )
    return rows


def hardware() -> list[list[str]]:
    import os

    import psutil
    import torch

    rows = [
        ["processor", platform.processor() or platform.machine()],
        ["CPU cores", str(os.cpu_count())],
        ["memory", f"{psutil.virtual_memory().total / 2**30:.0f} GiB"],
    ]
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        rows.append(["GPUs", ", ".join(names)])
    else:
        rows.append(["GPUs", "none"])
    return rows


def _markdown(results, sections, plots, run_dir: Path) -> str:
    seeds = Path(plots["seeds"]).relative_to(run_dir)
    lines = ["# tunelab report", "", *headline(results), "", f"![per-seed test scores]({seeds})", ""]
    lines += [*selection_lines(results), ""]
    lines += [*fit_lines(results), ""]
    for title, table in sections:
        lines += [f"## {title}", "", "| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in table[1:]] + [""]
    lines += ["## Plots", ""]
    lines += [f"![{name}]({Path(path).relative_to(run_dir)})" for name, path in plots.items() if name != "seeds"]
    lines += ["", "## Configurations", ""]
    for title, text in _configs(results):
        lines += [f"### {title}", "", "```yaml", text.rstrip(), "```", ""]
    return "\n".join(lines) + "\n"


def _configs(results: dict[str, Any]) -> list[tuple[str, str]]:
    import yaml

    configs = [
        (f"{name} (as trained)", yaml.safe_dump(results[key], sort_keys=False))
        for name, key in (("tuned", "best_config"), ("untuned", "untuned_config"))
    ]
    for name, reference in (results.get("references") or {}).items():
        title = f"{name}: the untuned config with these values (recipes/references/{name}.yaml)"
        configs.append((title, yaml.safe_dump(reference["overrides"], sort_keys=False)))
    return configs


# Nothing may be wider than the page: long values wrap, wide tables scroll inside themselves.
HTML_STYLE = (
    "body{font-family:sans-serif;max-width:1000px;margin:auto;padding:0 12px;overflow-wrap:anywhere}"
    "table{border-collapse:collapse;display:block;max-width:100%;overflow-x:auto}"
    "td,th{border:1px solid #ccc;padding:3px 8px}img{max-width:100%;height:auto}"
    "pre{white-space:pre-wrap}.answer{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}"
    ".answer>div{flex:1 1 400px}.answer>img{flex:0 1 440px;width:440px;min-width:0}"
)


def _html(results, sections, plots) -> str:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>tunelab report</title>",
        f"<meta name='viewport' content='width=device-width'><style>{HTML_STYLE}</style></head><body>",
        "<h1>tunelab report</h1><div class='answer'><div>",
    ]
    parts += [f"<p>{html.escape(line)}</p>" for line in headline(results)]
    parts += ["</div>", _html_image("per-seed test scores", plots["seeds"]), "</div>"]
    parts += [f"<p>{html.escape(line)}</p>" for line in selection_lines(results) + fit_lines(results)]
    for title, table in sections:
        parts.append(f"<h2>{html.escape(title)}</h2><table>")
        parts.append("<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in table[0]) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in table[1:]]
        parts.append("</table>")
    parts.append("<h2>Plots</h2>")
    for name, path in plots.items():
        if name != "seeds":
            parts.append(f"<h3>{html.escape(name)}</h3>{_html_image(name, path)}")
    parts.append("<h2>Configurations</h2>")
    for title, text in _configs(results):
        parts.append(f"<h3>{html.escape(title)}</h3><pre>{html.escape(text)}</pre>")
    return "\n".join(parts) + "</body></html>\n"


def _html_image(name: str, path: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f"<img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>"
