"""tunelab compare RUN_DIR ...: the arms of finished runs side by side, each tuned arm against the first's."""

from __future__ import annotations

import json
from pathlib import Path

from finetune.errors import ConfigError
from recipes.references import arm_names
from recipes.report import total_steps
from recipes.stats import compare


def compare_runs(run_dirs: list[str | Path]) -> str:
    """Markdown: per-arm means over seeds, and Welch/bootstrap comparisons against the first run's tuned arm."""
    if len(run_dirs) < 1:
        raise ConfigError("tunelab compare needs at least one finished run folder")
    loaded = []
    for run_dir in run_dirs:
        path = Path(run_dir) / "results.json"
        if not path.is_file():
            raise ConfigError(f"{run_dir} is not a finished `tunelab run` folder: results.json is missing")
        loaded.append((str(run_dir), json.loads(path.read_text())))
    metrics = {results["metric"] for _, results in loaded}
    if len(metrics) != 1:
        raise ConfigError(f"the runs report different metrics {sorted(metrics)}; compare runs of one metric")
    metric = metrics.pop()
    arms, costs = {}, {}
    for run_dir, results in loaded:
        for arm in ["tuned", *[a for a in arm_names(results) if a != "tuned"]]:
            runs = results["runs"][arm]
            arms[f"{run_dir} [{arm}]"] = [r["test"][f"test_{metric}"] for r in runs]
            costs[f"{run_dir} [{arm}]"] = _cost(runs, results["search"] if arm == "tuned" else None)
    lines = [
        f"# tunelab compare: test {metric}",
        "",
        "| arm | mean | std | seeds | trainable params | steps per run | s per run | search steps |",
        "|---|---|---|---|---|---|---|---|",
    ]
    reference_name = f"{loaded[0][0]} [tuned]"
    for name, scores in arms.items():
        mean = sum(scores) / len(scores)
        std = (sum((s - mean) ** 2 for s in scores) / max(len(scores) - 1, 1)) ** 0.5
        lines.append(f"| {name} | {mean:.4f} | {std:.4f} | {len(scores)} | {costs[name]} |")
    lines += [
        "",
        f"Each arm against {reference_name} (difference = arm - reference):",
        "",
        "| arm | difference | 95% CI | Welch p | significant |",
        "|---|---|---|---|---|",
    ]
    for name, scores in arms.items():
        if name == reference_name:
            continue
        c = compare(scores, arms[reference_name])
        lines.append(
            f"| {name} | {c.difference:+.4f} | [{c.ci_low:+.4f}, {c.ci_high:+.4f}] | {c.p_value:.3g} | "
            f"{'yes' if c.significant else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def _cost(runs: list[dict], search: dict | None) -> str:
    """Trainable parameters, mean steps and seconds per seed run, and (tuned arm) the search's steps."""
    params = runs[0].get("trainable_params")
    steps = sum(r["optimizer_steps"] for r in runs) / len(runs)
    seconds = sum(r["wall_seconds"] for r in runs) / len(runs)
    searched = str(total_steps(search)) if search is not None else "-"
    shown = f"{params:,}" if params else "-"  # runs from before trainable_params was recorded
    return f"{shown} | {steps:.0f} | {seconds:.0f} | {searched}"
