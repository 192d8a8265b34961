"""Seconds of one validation pass of the causal-LM recipes, with the prompt prefix every row shares run once per
pass (finetune.shared_prefix) against every row run whole.

    python benchmarks/prompt_prefix.py            # 3 passes per way, alternating, per recipe and precision
    python benchmarks/prompt_prefix.py --quick    # 1 pass per way

A search evaluates its validation split at every evaluation of every trial and re-run. Models as the recipes'
untuned runs build them (pretrained, LoRA applied, not trained): the cost of a forward pass does not depend on
the weights. Both ways score the same tokens; in fp32 they agree to float noise, under bf16 autocast to bf16's
rounding (a different split of the same matrix products). Prints a table; writes benchmarks/prompt_prefix.json.
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
from finetune.precision import resolve_precision  # noqa: E402
from finetune.shared_prefix import shared_prefix  # noqa: E402
from recipes.recipe import load_recipe  # noqa: E402

RECIPES = ("sst2_words_smollm2_lora.yaml", "dolly_short_qa_smollm2_lora.yaml")
WAYS = ("whole rows", "prefix once")


def evaluator(recipe: str, precision: str, scratch: str):
    """(trainer, validation split, eval batch) for the recipe's untuned config at ``precision``."""
    config = load_recipe(ROOT / "recipes" / "configs" / recipe, [f"training.mixed_precision={precision}"]).untuned
    source = resolve_source(config.model)
    tokenizer = load_tokenizer(config.model, source)
    inputs = prepare_inputs(config, tokenizer)
    model = apply_method(build_model(config, source, tokenizer, inputs.label_names), config.method, config.model.task)
    trainer = evaluation_trainer(model, config, inputs.collator, inputs.validation, batch_size=None, scratch=scratch)
    if not trainer.prompt_prefix:
        raise SystemExit(f"{recipe}: the model was not found to evaluate with its prompt prefix run once")
    return trainer, inputs.validation, config.training.per_device_eval_batch_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 pass per way")
    args = parser.parse_args()
    passes = 1 if args.quick else 3
    precisions = sorted({resolve_precision("auto"), "no"})
    results = {}
    print(
        "| recipe | precision | rows | shared tokens / mean row | way "
        f"| s per pass (median of {passes}) | ratio | eval_loss |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for recipe in RECIPES:
        for precision in precisions:
            trainer, validation, batch = evaluator(recipe, precision, tempfile.mkdtemp())
            shared = len(shared_prefix(validation) or [])
            mean_row = statistics.mean(len(ids) for ids in validation["input_ids"])
            trainer.evaluate(validation)  # warm-up: first-call costs are not the way's
            seconds: dict[str, list[float]] = {way: [] for way in WAYS}
            metrics = {}
            for _ in range(passes):
                for way in WAYS:
                    trainer.prompt_prefix = way == "prefix once"
                    started = time.perf_counter()
                    metrics[way] = trainer.evaluate(validation)
                    seconds[way].append(time.perf_counter() - started)
            base = statistics.median(seconds["whole rows"])
            for way in WAYS:
                median = statistics.median(seconds[way])
                print(
                    f"| {recipe} | {precision} | {len(validation)} | {shared} / {mean_row:.0f} | {way} | "
                    f"{median:.2f} | {median / base:.2f} | {metrics[way]['eval_loss']:.4f} |"
                )
            results[f"{recipe} {precision}"] = {
                way: {"seconds": seconds[way], "batch": batch, "shared_tokens": shared, **metrics[way]} for way in WAYS
            }
    out = Path(__file__).with_name("prompt_prefix.json")
    out.write_text(json.dumps({"passes": passes, "results": results}, indent=2))


if __name__ == "__main__":
    main()
