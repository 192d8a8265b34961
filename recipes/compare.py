"""tunelab compare RUN_DIR ...: the arms of finished runs side by side, each tuned arm against the first's."""

from __future__ import annotations

import json
from pathlib import Path

from finetune.errors import ConfigError
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
    arms = {}
    for run_dir, results in loaded:
        for arm in ("tuned", "untuned"):
            arms[f"{run_dir} [{arm}]"] = [r["test"][f"test_{metric}"] for r in results["runs"][arm]]
    lines = [f"# tunelab compare: test {metric}", "", "| arm | mean | std | seeds |", "|---|---|---|---|"]
    reference_name = f"{loaded[0][0]} [tuned]"
    for name, scores in arms.items():
        mean = sum(scores) / len(scores)
        std = (sum((s - mean) ** 2 for s in scores) / max(len(scores) - 1, 1)) ** 0.5
        lines.append(f"| {name} | {mean:.4f} | {std:.4f} | {len(scores)} |")
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
