"""fp32 against bf16 autocast on this CPU: SmolLM2-135M-Instruct LoRA SFT tokens/s, and whether the answers hold.

    python benchmarks/precision.py            # 2 runs per precision, 24 steps each
    python benchmarks/precision.py --quick    # 1 run per precision, 6 steps

Each run trains the causal-LM demo recipe's model and data (recipes/configs/sst2_words_smollm2_lora.yaml)
at a learning rate that learns the task in a few dozen steps, alternating precisions, then evaluates the
saved run on validation with greedy generation (at the precision it trained at). Tokens/s = non-padding
training tokens / training-loop seconds. Prints a table and writes benchmarks/precision.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import finetune  # noqa: E402
from recipes.cli import quiet_libraries  # noqa: E402
from recipes.recipe import load_finetune_config  # noqa: E402

CONFIG = ROOT / "recipes" / "configs" / "sst2_words_smollm2_lora.yaml"
PRECISIONS = ("no", "bf16")


def one_run(precision: str, steps: int, out: Path) -> dict:
    overrides = [
        f"training.mixed_precision={precision}",
        f"training.max_steps={steps}",
        f"training.eval_steps={steps}",
        "training.learning_rate=1e-3",
        "training.train_split_metrics=false",
        f"training.output_dir={out}",
    ]
    result = finetune.train(load_finetune_config(CONFIG, overrides))
    validation = finetune.evaluate(out, "validation", generate=True)
    return {
        "tokens_per_second": result.tokens_seen / result.train_seconds,
        "train_seconds": result.train_seconds,
        "validation_loss": validation["validation_loss"],
        "validation_exact_match": validation["validation_exact_match"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    quiet_libraries()
    runs, steps = (1, 6) if args.quick else (2, 24)
    measured: dict[str, list[dict]] = {p: [] for p in PRECISIONS}
    with tempfile.TemporaryDirectory() as scratch:
        for index in range(runs):
            for precision in PRECISIONS if index % 2 == 0 else reversed(PRECISIONS):
                measured[precision].append(one_run(precision, steps, Path(scratch) / f"{precision}_{index}"))
    rows = {
        precision: {key: statistics.median(run[key] for run in values) for key in values[0]}
        for precision, values in measured.items()
    }
    speedup = rows["bf16"]["tokens_per_second"] / rows["no"]["tokens_per_second"]
    print(f"SmolLM2-135M LoRA SFT, {steps} steps, median of {runs} run(s) per precision")
    print("| precision | tokens/s | validation loss | validation exact match |")
    print("|---|---|---|---|")
    for precision, row in rows.items():
        name = "fp32" if precision == "no" else precision
        print(
            f"| {name} | {row['tokens_per_second']:.0f} | {row['validation_loss']:.4f} | "
            f"{row['validation_exact_match']:.3f} |"
        )
    print(f"bf16 / fp32 tokens/s: {speedup:.2f}x")
    if not args.quick:
        out = {"steps": steps, "runs": runs, "rows": rows, "bf16_speedup_tokens_per_second": speedup}
        (ROOT / "benchmarks" / "precision.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
