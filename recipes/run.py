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
from finetune.train import CONFIG_FILE, RESULT_FILE, RunResult, process_state
from hpo.attributes import UNTUNED
from hpo.finetune import search_finetune, warm_start_config
from hpo.finetune.plan import SearchPlan, plan_search
from hpo.finetune.reruns import kept_reruns
from hpo.finetune.trial_training import release_memory
from recipes.progress import RunProgress
from recipes.recipe import Recipe
from recipes.references import reference_overrides
from recipes.report import write_report
from recipes.stats import compare
from recipes.time_table import run_time_breakdown

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
    plan = plan_search(recipe.untuned, recipe.search, world_size=process_state().num_processes)
    # The untuned configuration's re-runs double as untuned-arm seeds (step 2); the rest are retrained,
    # at the untuned run's length until the winner is known.
    # Each reference arm trains what its warm-start trial trains (its batch split at most the recipe's
    # per-device batch, the one its user knows fits): a winning reference's runs are then its arm's.
    references = {name: reference_arm_config(name, recipe, plan) for name in recipe.references}
    reused_planned = reused_untuned_runs(plan, len(recipe.seeds))
    retrains = (2 + len(references)) * len(recipe.seeds) - reused_planned
    # Every arm trains on the recipe's rows: its train split is loaded once for all of them. Progress counts
    # budget steps, as the search does (a step of a larger batch takes longer).
    optimizer_steps = _step_counter(recipe.untuned)

    def steps(config: FinetuneConfig) -> int:
        return plan.budget_steps(config, optimizer_steps(config))

    progress = RunProgress(
        search_steps=plan.total_steps or 0,
        # The tuned arm at the untuned run's length until the winner is known.
        retrain_steps=retrain_steps(
            seeds=len(recipe.seeds),
            fresh_untuned=len(recipe.seeds) - reused_planned,
            untuned_steps=steps(recipe.untuned),
            arm_steps=[steps(recipe.untuned), *(steps(config) for config in references.values())],
        ),
        enabled=main,
    )
    progress.say(f"searching: up to {progress.search_steps} steps, then {retrains} retrains")
    searched_before = (run_dir / "search" / "summary.json").is_file()
    search = search_finetune(
        recipe.untuned,
        recipe.search,
        run_dir=run_dir / "search",
        plan=plan,
        keep_untuned_reruns=True,
        steps_after_search=progress.retrain_steps,
    )
    process_state().wait_for_everyone()  # the main process has written the search's outputs
    if not main:
        # Other processes of a multi-process launch followed the search; they train the arms too.
        best_config = FinetuneConfig.from_yaml(run_dir / "search" / "best_config.yaml")
    else:
        best_config = search.best_config
    summary = json.loads((run_dir / "search" / "summary.json").read_text())
    progress.search_steps = round(summary["full_run_equivalents_spent"] * summary["full_run_steps"])
    progress.add(progress.search_steps, resumed=searched_before)

    # 2. Test both arms over the recipe's seeds. The untuned configuration was not selected on, so its
    #    re-runs from choosing the winner are untuned-arm seeds as they are: tested, not trained again;
    #    fresh untuned runs fill the remaining seeds. Seed k of the tuned arm trains on the rows that seed k
    #    of the untuned arm trained on (the same validation split), with a fresh training seed. Where runs
    #    are reused, every run evaluates on the search's schedule, so "the best checkpoint" means the same
    #    in every arm; otherwise on the recipe's. When the untuned configuration won, both arms are the same
    #    runs. The field's recipes (recipes.references) train as further arms, on the tuned arm's seeds and rows;
    #    when the winner is one of them (a warm-start trial), the tuned arm is that reference's runs.
    reused = _untuned_reruns(summary, run_dir / "search" / "selection")[: len(recipe.seeds)]
    split_seeds = [r["overrides"].get("data.validation_split_seed") for r in reused]
    split_seeds += [None] * (len(recipe.seeds) - len(reused))

    def scheduled(config: FinetuneConfig) -> FinetuneConfig:
        return config.with_overrides(plan.evaluation_schedule(config)) if reused else config

    arms = [("untuned", scheduled(recipe.untuned))]
    reference_arms = {name: scheduled(config) for name, config in references.items()}
    tuned = scheduled(best_config)
    tuned_runs_of = "untuned" if summary["winner_role"] == UNTUNED else same_runs_as(tuned, reference_arms)
    if tuned_runs_of is None:
        arms.append(("tuned", tuned))
    elif tuned_runs_of != "untuned":
        progress.say(f"the search chose {tuned_runs_of}'s recipe: the tuned arm is its runs, trained once")
    arms += list(reference_arms.items())
    fresh_untuned = len(recipe.seeds) - len(reused)
    progress.retrain_steps = retrain_steps(
        seeds=len(recipe.seeds),
        fresh_untuned=fresh_untuned,
        untuned_steps=steps(recipe.untuned),
        arm_steps=[steps(config) for arm, config in arms[1:]],
    )
    runs: dict[str, list[dict]] = {"untuned": []}
    for index, rerun in enumerate(reused, start=1):
        progress.say(f"testing untuned, seed {index} of {len(recipe.seeds)} (a re-run from choosing the winner)")
        runs["untuned"].append(_tested_rerun(rerun, run_dir))
    for arm, config in arms:
        runs.setdefault(arm, [])
        for index, (seed, split_seed) in enumerate(zip(recipe.seeds, split_seeds, strict=True), start=1):
            if arm == "untuned" and index <= len(reused):
                continue
            progress.say(f"retraining {arm}, seed {index} of {len(recipe.seeds)}, then testing")
            record, resumed = seed_run(config, arm, seed, split_seed, run_dir)
            runs[arm].append(record)
            progress.add(plan.budget_steps(config, record["optimizer_steps"]), resumed=resumed)
    if tuned_runs_of is not None:
        runs["tuned"] = [{**record, "arm": "tuned", "same_runs_as": tuned_runs_of} for record in runs[tuned_runs_of]]
    progress.say("writing the report")
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
        "references": _reference_results(recipe, runs, scores["tuned"], metric, search.result.direction),
        "runs": runs,
        "search": summary,
        "best_config": best_config.to_dict(),
        "untuned_config": recipe.untuned.to_dict(),
        "seeds": recipe.seeds,
        "time_breakdown": run_time_breakdown(runs, summary),
        "wall_seconds_this_invocation": time.perf_counter() - started,
    }
    (run_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    write_report(run_dir, results, search.result)
    return results


def _reference_results(
    recipe: Recipe, runs: dict[str, list[dict]], tuned: list[float], metric: str, direction: str
) -> dict[str, dict]:
    """Each reference arm's hyperparameters and the tuned arm against it; "best" marks the best test mean."""
    out = {}
    for name in recipe.references:
        scores = [r["test"][f"test_{metric}"] for r in runs[name]]
        out[name] = {
            "overrides": reference_overrides(name, recipe.untuned.method.name),
            "comparison": compare(tuned, scores).to_dict(),  # tuned - reference
            "best": False,
        }
    if out:
        pick = max if direction == "maximize" else min
        best = pick(out, key=lambda name: out[name]["comparison"]["untuned_mean"])  # the reference's mean
        out[best]["best"] = True
    return out


def reference_arm_config(name: str, recipe: Recipe, plan: SearchPlan) -> FinetuneConfig:
    """Reference ``name``'s arm: the recipe's untuned config with its values, trained as its warm-start trial
    trains it (torchtune's batch of 16 as 8 x 2 accumulated where the recipe's per-device batch is 8)."""
    overrides = reference_overrides(name, recipe.untuned.method.name)
    return warm_start_config(recipe.untuned, overrides, plan, recipe.search)


def same_runs_as(config: FinetuneConfig, arms: dict[str, FinetuneConfig]) -> str | None:
    """The arm whose runs ``config``'s would be, or None: the same configuration, trained by seed_run on the
    same seeds and rows (it sets the seed, the output folder and the run name)."""

    def trained(candidate: FinetuneConfig) -> FinetuneConfig:
        return candidate.with_overrides({"training.seed": 0, "training.output_dir": "", "training.run_name": None})

    return next((name for name, other in arms.items() if trained(other) == trained(config)), None)


def retrain_steps(*, seeds: int, fresh_untuned: int, untuned_steps: int, arm_steps: list[int]) -> int:
    """Budget steps of the retrains: the untuned arm's fresh seeds, and every seed of each other arm at its
    own length (1 epoch of torchtune's batch of 16 is a third of the untuned run's 3 epochs at 8: counting
    every retrain as a whole run made the causal-LM demo's first ETA 48 min where 31 remained)."""
    return untuned_steps * fresh_untuned + sum(arm_steps) * seeds


def _step_counter(base: FinetuneConfig):
    """planned_steps of any config on ``base``'s train split, under this launch's processes."""
    from finetune.data import load_splits
    from finetune.train import planned_steps

    rows, world = len(load_splits(base.data).train), process_state().num_processes
    return lambda config: planned_steps(config, rows, world)


def reused_untuned_runs(plan: SearchPlan, seeds: int) -> int:
    """How many untuned-arm seeds the search's re-runs of the untuned configuration will provide (a k-fold
    re-run is k models, none trained on all the rows: not reusable). The sequential rule re-runs the untuned
    configuration only when the decision needs it, re-ranking only where it ranks among the best: none is
    counted on."""
    selection = plan.selection
    reusable = selection.enabled and not selection.sequential and not selection.rerank and not plan.scoring.folds
    return min(plan.selection.seeds, seeds) if reusable else 0


def _untuned_reruns(summary: dict, folder: Path) -> list[dict]:
    """The untuned configuration's re-runs from choosing the winner whose model was kept."""
    selection = summary.get("selection")
    if not selection or summary.get("cross_validation_folds"):
        return []
    return kept_reruns(folder, selection["baseline"])


def _tested_rerun(rerun: dict, run_dir: Path) -> dict:
    """An untuned re-run from choosing the winner, moved to untuned/seed_SEED and evaluated on test."""
    seed = rerun["overrides"]["training.seed"]
    out = run_dir / "untuned" / f"seed_{seed}"
    done = out / "test_metrics.json"
    if done.is_file():
        return json.loads(done.read_text())
    if process_state().is_main_process and not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        Path(rerun["output_dir"]).rename(out)
    process_state().wait_for_everyone()
    result = RunResult.from_json((out / RESULT_FILE).read_text())
    split_seed = rerun["overrides"].get("data.validation_split_seed")
    record = _test_record(FinetuneConfig.from_yaml(out / CONFIG_FILE), "untuned", seed, split_seed, result, out)
    record["reused_from"] = rerun["output_dir"]  # trained once, to choose the winner; not selected on
    if process_state().is_main_process:
        done.write_text(json.dumps(record, indent=2))
    return record


def seed_run(config: FinetuneConfig, arm: str, seed: int, split_seed: int | None, run_dir: Path) -> tuple[dict, bool]:
    """Train ``config`` with ``seed`` (and validation split ``split_seed``, None: the config's) and evaluate
    it on the test split; (the record, whether it was stored by an earlier invocation and only read back)."""
    out = run_dir / arm / f"seed_{seed}"
    done = out / "test_metrics.json"
    if done.is_file():
        return json.loads(done.read_text()), True
    overrides = {"training.seed": seed, "training.output_dir": str(out), "training.run_name": f"{arm}/seed_{seed}"}
    if split_seed is not None:
        overrides["data.validation_split_seed"] = split_seed
    result = finetune.train(config.with_overrides(overrides))
    record = _test_record(config, arm, seed, split_seed, result, out)
    release_memory()  # the next arm's run starts from what this one held
    if process_state().is_main_process:
        done.write_text(json.dumps(record, indent=2))
    return record, False


def _test_record(
    config: FinetuneConfig, arm: str, seed: int, split_seed: int | None, result: RunResult, out: Path
) -> dict:
    record = {
        "arm": arm,
        "seed": seed,
        "validation_split_seed": split_seed,
        "validation": result.final_metrics,
        "evaluations": result.evaluations,
        "train_losses": result.train_losses,
        "optimizer_steps": result.optimizer_steps,
        "wall_seconds": result.wall_seconds,
        "time_breakdown": result.time_breakdown,
        "trainable_params": result.trainable_params,
        "total_params": result.total_params,
    }
    # On every process: evaluation is collective. A causal LM also answers the test prompts (greedy), so
    # the report can show exact match and token F1 per arm, and the answers side by side.
    causal = config.model.task == "causal_lm"
    started = time.perf_counter()
    record["test"] = finetune.evaluate(out, "test", generate=causal)
    record["test_seconds"] = time.perf_counter() - started
    if causal:
        record["generations"] = str(out / "generations_test.jsonl")
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
