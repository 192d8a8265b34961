"""tunelab run RECIPE: tune, retrain the winner and the untuned baseline over seeds, compare on test, report.

Read this file top to bottom: it is the whole recipe. Every finished piece is stored in the run folder,
so running the same command again after a kill continues where it stopped.

    tunelab run recipes/configs/sst2_minilm_lora.yaml [key=value ...]
    accelerate launch -m recipes.run recipes/configs/sst2_minilm_lora.yaml
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import finetune
from finetune import FinetuneConfig
from finetune.errors import ConfigError
from finetune.train import process_state
from hpo.attributes import UNTUNED
from hpo.finetune import search_finetune
from recipes.recipe import Recipe
from recipes.report import write_report
from recipes.stats import compare

ARMS = ("tuned", "untuned")


def run_recipe(recipe: Recipe, run_dir: str | Path) -> dict | None:
    run_dir = Path(run_dir)
    require_test_split(recipe.untuned)
    started = time.perf_counter()
    main = process_state().is_main_process

    # 1. Search, starting from the untuned configuration (its first trial), then choose the winner by
    #    re-running the top candidates with fresh seeds (the untuned one is kept unless beaten beyond
    #    the noise). Resumes from its journal and its stored re-runs.
    #    search.storage None: a journal in the run folder; a database URL: shared with `tunelab worker`s.
    search = search_finetune(recipe.untuned, recipe.search, run_dir=run_dir / "search")
    process_state().wait_for_everyone()  # the main process has written the search's outputs
    if not main:
        # Other processes of a multi-process launch followed the search; they train the arms too.
        best_config = FinetuneConfig.from_yaml(run_dir / "search" / "best_config.yaml")
    else:
        best_config = search.best_config

    # 2. Retrain the winner and the untuned baseline with the same replicate seeds; evaluate on test.
    #    When the untuned configuration won, both arms are the same runs: nothing to retrain.
    runs = {"untuned": [_seed_run(recipe.untuned, "untuned", seed, run_dir) for seed in recipe.seeds]}
    summary = json.loads((run_dir / "search" / "summary.json").read_text())
    if summary["winner_role"] == UNTUNED:
        runs["tuned"] = [{**record, "arm": "tuned"} for record in runs["untuned"]]
    else:
        runs["tuned"] = [_seed_run(best_config, "tuned", seed, run_dir) for seed in recipe.seeds]
    if not main:
        return None

    # 3. Compare on the held-out test split and write the report.
    metric = search.metric.removeprefix("eval_")
    scores = {arm: [r["test"][f"test_{metric}"] for r in runs[arm]] for arm in ARMS}
    comparison = compare(scores["tuned"], scores["untuned"])
    results = {
        "recipe": recipe.path,
        "metric": metric,
        "direction": search.result.direction,
        "comparison": comparison.to_dict(),
        "runs": runs,
        "search": summary,
        "best_config": best_config.to_dict(),
        "untuned_config": recipe.untuned.to_dict(),
        "seeds": recipe.seeds,
        "wall_seconds_this_invocation": time.perf_counter() - started,
    }
    (run_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    write_report(run_dir, results, search.result)
    return results


def _seed_run(config: FinetuneConfig, arm: str, seed: int, run_dir: Path) -> dict:
    """Train ``config`` with ``seed`` (unless already done) and evaluate it on the test split."""
    out = run_dir / arm / f"seed_{seed}"
    done = out / "test_metrics.json"
    if done.is_file():
        return json.loads(done.read_text())
    overrides = {"training.seed": seed, "training.output_dir": str(out), "training.run_name": f"{arm}/seed_{seed}"}
    result = finetune.train(config.with_overrides(overrides))
    record = {
        "arm": arm,
        "seed": seed,
        "validation": result.final_metrics,
        "evaluations": result.evaluations,
        "train_losses": result.train_losses,
        "optimizer_steps": result.optimizer_steps,
        "wall_seconds": result.wall_seconds,
        "trainable_params": result.trainable_params,
        "total_params": result.total_params,
    }
    # On every process: evaluation is collective. A causal LM also answers the test prompts (greedy), so
    # the report can show exact match and token F1 per arm, and the answers side by side.
    causal = config.model.task == "causal_lm"
    record["test"] = finetune.evaluate(out, "test", generate=causal)
    if causal:
        record["generations"] = str(out / "generations_test.jsonl")
    if process_state().is_main_process:
        done.write_text(json.dumps(record, indent=2))
    return record


def require_test_split(config: FinetuneConfig) -> None:
    data = config.data
    has_test = data.test_file or data.test_size > 0 or data.dataset
    if not has_test:
        raise ConfigError(
            "a recipe reports on a held-out test split: set data.test_file or data.test_size > 0 "
            "(selection happens on the validation split)"
        )


def main(argv: list[str] | None = None) -> int:
    """``python -m recipes.run`` (e.g. under accelerate launch): the same as ``tunelab run``."""
    from recipes.cli import main as cli_main

    return cli_main(["run", *(sys.argv[1:] if argv is None else argv)])


def regenerate_report(run_dir: str | Path) -> Path:
    """Rewrite report.md/html of a finished run from its results.json and the search's stored tables."""
    from hpo.results import SearchResult

    run_dir = Path(run_dir)
    path = run_dir / "results.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a finished `tunelab run` folder: results.json is missing")
    results = json.loads(path.read_text())
    write_report(run_dir, results, SearchResult.from_folder(run_dir / "search"))
    return run_dir / "report.md"


if __name__ == "__main__":
    sys.exit(main())
