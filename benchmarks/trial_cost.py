"""Wall seconds of one search trial, with and without the train-split metrics.

    python benchmarks/trial_cost.py            # 3 runs per variant, alternating
    python benchmarks/trial_cost.py --quick    # 1 run per variant, 200 rows

The trial is the untuned run of the SST-2 MiniLM LoRA recipe at the peers benchmark's size (500 training
rows, 3 epochs, 189 optimizer steps), evaluated every 1/9 of the run as tunelab's search does. "measured"
also scores a fixed 256-row training sample at each evaluation (training.train_split_metrics: the final
report's train-vs-validation plot); "skipped" is what search trials do since 2026-11-30. Both variants
must reach the same validation curve: measuring may not move the run. Prints a table and writes
benchmarks/trial_cost.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import finetune  # noqa: E402
from finetune import FinetuneConfig  # noqa: E402
from finetune.data import load_splits  # noqa: E402
from finetune.train import planned_steps  # noqa: E402
from recipes.recipe import load_recipe  # noqa: E402

CONFIG = ROOT / "recipes" / "configs" / "sst2_minilm_lora.yaml"
VARIANTS = {"measured": True, "skipped": False}


def search_trial_config(rows: int) -> FinetuneConfig:
    """The untuned run, evaluated every 1/9 of its planned steps as the search evaluates its trials."""
    # fp32, as the costs in RESULTS.md were measured (finetune's default "auto" is bf16 on this CPU).
    untuned = load_recipe(CONFIG, [f"data.max_train_samples={rows}", "training.mixed_precision=no"]).untuned
    steps = planned_steps(untuned, len(load_splits(untuned.data).train))
    return untuned.with_overrides({"training.eval_steps": max(1, round(steps / 9))})


def one_trial(trial: FinetuneConfig, train_split_metrics: bool, out: Path) -> dict:
    config = trial.with_overrides(
        {"training.output_dir": str(out), "training.train_split_metrics": train_split_metrics}
    )
    started = time.perf_counter()
    result = finetune.train(config)
    return {
        "seconds": time.perf_counter() - started,
        "steps": result.optimizer_steps,
        "curve": [e["eval_accuracy"] for e in result.evaluations],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 run per variant, 200 rows")
    parser.add_argument("--runs", type=int, default=None)
    args = parser.parse_args()
    rows, runs = (200, 1) if args.quick else (500, 3)
    runs = args.runs or runs
    trial = search_trial_config(rows)  # read once: the data loading is not part of what is compared
    measured: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as scratch:
        for run in range(runs):
            for name, flag in VARIANTS.items():
                measured[name].append(one_trial(trial, flag, Path(scratch) / f"{name}_{run}"))
    curves = {json.dumps(r["curve"]) for results in measured.values() for r in results}
    same_run = len(curves) == 1
    base = statistics.median(r["seconds"] for r in measured["measured"])
    print(f"one search trial: LoRA, {rows} rows, {measured['measured'][0]['steps']} steps, median of {runs}")
    print("| train-split metrics | s | vs measured |")
    print("|---|---|---|")
    for name, results in measured.items():
        seconds = statistics.median(r["seconds"] for r in results)
        print(f"| {name} | {seconds:.1f} | {seconds / base:.2f} |")
    print(f"same validation curve in every run: {same_run}")
    out = Path(__file__).with_name("trial_cost.json")
    out.write_text(json.dumps({"rows": rows, "runs": runs, "same_run": same_run, "results": measured}, indent=2))
    if not same_run:
        sys.exit("the train-split metrics changed the training run")


if __name__ == "__main__":
    main()
