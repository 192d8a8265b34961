"""Seconds of one validation pass, rows in the data's order against longest first (finetune.inputs).

    python benchmarks/eval_order.py            # 3 passes per order, alternating, per recipe
    python benchmarks/eval_order.py --quick    # 1 pass per order

A search evaluates its validation split at every evaluation of every trial and re-run; batches pad to their
longest row, so the order of the rows decides how much padding the forward passes carry. "any order" is the
prepared split shuffled with a fixed seed (what a file without order gives); "longest first" is the split as
finetune prepares it. Both must give the same metrics up to float noise (the same rows, batched otherwise).
Models as the recipes untuned runs build them (pretrained, the method applied, not trained): the cost of a
forward pass does not depend on the weights. Prints a table and writes benchmarks/eval_order.json.
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

from finetune.evaluate import evaluation_trainer  # noqa: E402
from finetune.inputs import prepare_inputs  # noqa: E402
from finetune.methods import apply_method  # noqa: E402
from finetune.models import build_model, load_tokenizer, resolve_source  # noqa: E402
from recipes.recipe import load_recipe  # noqa: E402

RECIPES = ("sst2_minilm_lora.yaml", "sst2_words_smollm2_lora.yaml")


def evaluator(recipe: str, scratch: str):
    """(trainer, {order: dataset}, eval batch) for the recipe's untuned config, evaluating as finetune does."""
    config = load_recipe(ROOT / "recipes" / "configs" / recipe, []).untuned
    source = resolve_source(config.model)
    tokenizer = load_tokenizer(config.model, source)
    inputs = prepare_inputs(config, tokenizer)
    model = apply_method(build_model(config, source, tokenizer, inputs.label_names), config.method, config.model.task)
    trainer = evaluation_trainer(model, config, inputs.collator, inputs.validation, batch_size=None, scratch=scratch)
    orders = {"any order": inputs.validation.shuffle(seed=0), "longest first": inputs.validation}
    return trainer, orders, config.training.per_device_eval_batch_size


def padded_tokens(dataset, batch: int) -> int:
    lengths = [len(ids) for ids in dataset["input_ids"]]
    return sum(max(lengths[i : i + batch]) * len(lengths[i : i + batch]) for i in range(0, len(lengths), batch))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 pass per order")
    args = parser.parse_args()
    passes = 1 if args.quick else 3
    results = {}
    print(f"| recipe | rows | batch | order | padded tokens | s per pass (median of {passes}) | ratio | eval_loss |")
    print("|---|---|---|---|---|---|---|---|")
    for recipe in RECIPES:
        trainer, orders, batch = evaluator(recipe, tempfile.mkdtemp())
        trainer.evaluate(orders["any order"])  # warm-up: first-call costs are not the order's
        seconds: dict[str, list[float]] = {order: [] for order in orders}
        metrics = {}
        for _ in range(passes):
            for order, dataset in orders.items():
                started = time.perf_counter()
                metrics[order] = trainer.evaluate(dataset)
                seconds[order].append(time.perf_counter() - started)
        base = statistics.median(seconds["any order"])
        for order, dataset in orders.items():
            median = statistics.median(seconds[order])
            print(
                f"| {recipe} | {len(dataset)} | {batch} | {order} | {padded_tokens(dataset, batch)} | {median:.2f} | "
                f"{median / base:.2f} | {metrics[order]['eval_loss']:.4f} |"
            )
        results[recipe] = {
            order: {"seconds": seconds[order], "padded_tokens": padded_tokens(orders[order], batch), **metrics[order]}
            for order in orders
        }
    out = Path(__file__).with_name("eval_order.json")
    out.write_text(json.dumps({"passes": passes, "results": results}, indent=2))


if __name__ == "__main__":
    main()
