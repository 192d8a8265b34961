"""Seconds of the greedy answers `tunelab run` generates on each arm's test split, with the prompt prefix every
prompt shares run once per call (finetune.shared_prefix) against every prompt run whole (left-padded), and with
the prompts batched in file order against longest first (finetune.generate._batches).

    python benchmarks/generation_prefix.py            # 3 calls per way, alternating, per recipe and precision
    python benchmarks/generation_prefix.py --quick    # 1 call per way
    python benchmarks/generation_prefix.py --batch 8  # prompts per call (default: the recipe's
                                                      # data.generation_batch_size)

Models as the recipes' untuned runs build them (pretrained, LoRA applied, not trained): the answers are the
pretrained model's, as long as they run to data.max_new_tokens or an end of turn. Prints a table (seconds per
call, ratio, prompt tokens run with their padding, how many answers are the same as the first way's, exact
match); writes benchmarks/generation_prefix.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import finetune.generate as generation  # noqa: E402
from finetune.methods import apply_method  # noqa: E402
from finetune.models import build_model, load_tokenizer, resolve_source  # noqa: E402
from finetune.precision import resolve_precision  # noqa: E402
from finetune.preprocess import render_prompt  # noqa: E402
from finetune.shared_prefix import prompt_prefix_for_generation  # noqa: E402
from recipes.recipe import load_recipe  # noqa: E402

RECIPES = ("sst2_words_smollm2_lora.yaml", "dolly_short_qa_smollm2_lora.yaml")
# (the prefix, the order of the prompts): the code before the prefix, before longest first, now.
WAYS = ("whole prompts, file order", "prefix once, file order", "prefix once, longest first")
LONGEST_FIRST = generation._batches


def file_order(rows: list[list[int]], batch_size: int, *, unpadded: bool) -> list[list[int]]:
    """The batches before longest first: consecutive prompts (prompt-learning adapters' batches as now)."""
    if unpadded:
        return LONGEST_FIRST(rows, batch_size, unpadded=True)
    return [list(range(start, min(start + batch_size, len(rows)))) for start in range(0, len(rows), batch_size)]


def padded_tokens(rows: list[list[int]], shared: int, batches: list[list[int]]) -> int:
    """Prompt tokens the batches run after the shared prefix (shared=0: whole prompts), padding included."""
    return sum(len(batch) * max(len(rows[index]) - shared for index in batch) for batch in batches)


def answers(recipe: str, precision: str, passes: int, batch: int | None) -> dict:
    config = load_recipe(ROOT / "recipes" / "configs" / recipe, [f"training.mixed_precision={precision}"]).untuned
    source = resolve_source(config.model)
    tokenizer = load_tokenizer(config.model, source)
    model = apply_method(build_model(config, source, tokenizer), config.method, config.model.task).eval()
    rows, sft_format = generation._split_rows(config, "test")
    examples = [render_prompt(row, sft_format, tokenizer, chat_template=config.data.chat_template) for row in rows]
    prompts = [prompt for prompt, _ in examples]
    ids = tokenizer(prompts)["input_ids"]
    shared = len(prompt_prefix_for_generation(model, ids).token_ids)
    batch = batch or generation.generation_batch_size(config)

    def call(way: str) -> list[str]:
        # "whole prompts": the search for a shared prefix finds none, so every batch is left-padded whole.
        generation.prompt_prefix_for_generation = (
            prompt_prefix_for_generation if way.startswith("prefix once") else (lambda model, prompts: None)
        )
        generation._batches = LONGEST_FIRST if way.endswith("longest first") else file_order
        return generation.generate(model, tokenizer, prompts, config.data.max_new_tokens, batch, precision=precision)

    call(WAYS[-1])  # warm-up: first-call costs are not the way's
    seconds: dict[str, list[float]] = {way: [] for way in WAYS}
    texts = {}
    for _ in range(passes):
        for way in WAYS:
            started = time.perf_counter()
            texts[way] = call(way)
            seconds[way].append(time.perf_counter() - started)
    generation.prompt_prefix_for_generation = prompt_prefix_for_generation
    generation._batches = LONGEST_FIRST
    references = [reference for _, reference in examples]
    scores = {
        way: generation.score(
            [{"reference": r, "generated": t} for r, t in zip(references, texts[way], strict=True)],
            config.data.answer_pattern,
        )
        for way in WAYS
    }
    unpadded = generation._drops_positions(model)
    batches = {
        way: (LONGEST_FIRST if way.endswith("longest first") else file_order)(ids, batch, unpadded=unpadded)
        for way in WAYS
    }
    return {
        "prompts": len(prompts),
        "batch": batch,
        "shared_tokens": shared,
        "mean_prompt_tokens": statistics.mean(len(row) for row in ids),
        **{
            way: {
                "seconds": seconds[way],
                "exact_match": scores[way]["exact_match"],
                "padded_tokens": padded_tokens(ids, shared if way.startswith("prefix once") else 0, batches[way]),
                "same_answers": sum(a == b for a, b in zip(texts[WAYS[0]], texts[way], strict=True)),
            }
            for way in WAYS
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 call per way")
    parser.add_argument("--batch", type=int, help="prompts per call (default: the recipe's)")
    args = parser.parse_args()
    passes = 1 if args.quick else 3
    precisions = sorted({resolve_precision("auto"), "no"})
    results = {}
    print(
        "| recipe | precision | prompts | batch | shared tokens / mean prompt | way | prompt tokens run | s per call "
        f"(median of {passes}) | ratio | same answers | exact match |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for recipe in RECIPES:
        for precision in precisions:
            result = answers(recipe, precision, passes, args.batch)
            base = statistics.median(result[WAYS[0]]["seconds"])
            for way in WAYS:
                median = statistics.median(result[way]["seconds"])
                print(
                    f"| {recipe} | {precision} | {result['prompts']} | {result['batch']} | {result['shared_tokens']} / "
                    f"{result['mean_prompt_tokens']:.0f} | {way} | {result[way]['padded_tokens']} | {median:.2f} | "
                    f"{median / base:.2f} | {result[way]['same_answers']} | {result[way]['exact_match']:.3f} |"
                )
            results[f"{recipe} {precision}"] = result
    out = Path(__file__).with_name("generation_prefix.json")
    stored = json.loads(out.read_text()) if out.is_file() else {}
    stored[f"batch {args.batch or 'recipe'}"] = {"passes": passes, "results": results}
    out.write_text(json.dumps(stored, indent=2))


if __name__ == "__main__":
    main()
