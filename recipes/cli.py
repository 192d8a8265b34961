"""The `tunelab` command line.

Only argparse is imported before the arguments are parsed, so `--help` answers at once; torch,
transformers and the rest load when a command runs.

Exit codes: 0 done; 2 bad input (a config key, a file, a model, a search setting: the message names it);
3 the work itself failed (training diverged, every trial of a search failed); 130 interrupted (Ctrl-C):
what finished is stored in the run folder, and the same command resumes from it.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys

EXIT_BAD_INPUT = 2
EXIT_FAILED = 3
EXIT_INTERRUPTED = 130  # the shell's code for SIGINT
# hpo.SAMPLERS and hpo.SCHEDULERS, named here so that --help needs no import (a test keeps them equal).
SAMPLER_NAMES = ("grid", "random", "qmc", "tpe", "gp")
SCHEDULER_NAMES = ("none", "median", "sha", "hyperband")


def _train(args: argparse.Namespace) -> int:
    import finetune
    from finetune.train import process_state
    from recipes.recipe import load_finetune_config

    config = load_finetune_config(args.config, args.overrides)
    result = finetune.train(config)
    if not process_state().is_main_process:
        return 0  # under accelerate launch, one process reports
    summary = {
        "output_dir": result.output_dir,
        "final_metrics": result.final_metrics,
        "optimizer_steps": result.optimizer_steps,
        "tokens_seen": result.tokens_seen,
        "wall_seconds": round(result.wall_seconds, 1),
        "trainable_params": result.trainable_params,
        "total_params": result.total_params,
    }
    print(json.dumps(summary, indent=2))
    return 0


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from recipes.recipe import load_recipe
    from recipes.run import run_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    run_dir = args.run_dir or f"{recipe.finetune.training.output_dir}_run"
    results = run_recipe(recipe, run_dir)
    if results is not None:  # the main process: print the report's answer
        print((Path(run_dir) / "report.md").read_text().split("\n\n")[1])
        print(f"\nreport: {Path(run_dir) / 'report.html'}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from recipes.check import check_recipe, format_check
    from recipes.recipe import load_recipe

    report = check_recipe(load_recipe(args.recipe, args.overrides), time_steps=not args.no_timing)
    print(json.dumps(report, indent=2) if args.json else format_check(report))
    return 0


def _worker(args: argparse.Namespace) -> int:
    from recipes.worker import run_worker

    search = run_worker(args.recipe, args.overrides, storage=args.storage, study=args.study, run_dir=args.run_dir)
    if search is not None:
        result = search.result
        counts = {state: result.count(state) for state in ("COMPLETE", "PRUNED", "FAIL")}
        print(f"[worker] done: {result.stop_reason}; study trials {counts}, {result.steps_spent} steps")
    return 0


def _report(args: argparse.Namespace) -> int:
    from recipes.run import regenerate_report

    print(regenerate_report(args.run_dir))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from recipes.compare import compare_runs

    print(compare_runs(args.run_dirs), end="")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import finetune
    from recipes.recipe import load_finetune_config

    if args.untrained:
        # RUN_DIR is then a config: how good is the model before any fine-tuning?
        config = load_finetune_config(args.run_dir, args.overrides)
        metrics = finetune.evaluate_untrained(config, args.split, generate=args.generate)
    else:
        metrics = finetune.evaluate(args.run_dir, args.split, generate=args.generate)
    print(json.dumps(metrics, indent=2))
    return 0


def _search(args: argparse.Namespace) -> int:
    from finetune.train import process_state
    from hpo import attributes
    from hpo.finetune import search_finetune
    from recipes.recipe import load_finetune_config, recipe_sections_in

    config = load_finetune_config(args.config, args.overrides)
    ignored = recipe_sections_in(args.config)
    if ignored and process_state().is_main_process:
        # Said, not silent: the shipped recipes' search sections (e.g. the references first) differ from the flags'.
        print(
            f"[tunelab] {args.config}: its {', '.join(ignored)} section(s) are read by `tunelab run` and `tunelab "
            "worker`, not here: `tunelab search` searches from the finetune sections with the flags' settings",
            file=sys.stderr,
        )
    run_dir = args.run_dir or f"{config.training.output_dir}_search"
    search = search_finetune(config, _search_settings(args), run_dir=run_dir)
    if search is None:
        return 0  # a non-main process under accelerate launch: the main process reports
    result, selection = search.result, search.selection
    winner = selection.winner if selection else result.best_trial.number
    chosen = next(t for t in result.trials if t.number == winner)
    selection_steps = selection.steps if selection else 0
    summary = {
        "run_dir": run_dir,
        "stop_reason": result.stop_reason,
        "best_value": result.best_value,
        "metric": search.metric,
        "winner_trial": winner,
        "winner_role": chosen.extra.get(attributes.ROLE),
        "selection": selection.reason if selection else "best trial (no re-runs)",
        "best_params": chosen.params,
        "best_checkpoint": search.best_checkpoint,
        "best_config": f"{run_dir}/best_config.yaml",
        "lr_range_test": search.lr_range_test.reading.reason if search.lr_range_test else None,
        "lr_range_test_steps": search.lr_range_test.steps if search.lr_range_test else 0,
        "steps_spent": result.steps_spent,
        "selection_steps": selection_steps,
        "full_run_equivalents_spent": round(search.steps_spent / search.full_run_steps, 2),
        "trials": {s: result.count(s) for s in ("COMPLETE", "PRUNED", "FAIL")},
    }
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _search_settings(args: argparse.Namespace):
    """The flags given, as a recipe's ``search:`` mapping: every default and check is SearchSettings'."""
    import yaml

    from hpo.finetune import SearchSettings

    raw = {
        "sampler": args.sampler,
        "scheduler": args.scheduler,
        "storage": args.storage,
        "seed": args.seed,
        "max_per_device_batch": args.max_per_device_batch,
        "isolation": args.isolation,
        "space": yaml.safe_load(open(args.space)) if args.space else None,
        "also_tune": args.also_tune.split(",") if args.also_tune else None,
        "include_untuned": False if args.no_untuned else None,
        "lr_range_test": args.lr_range_test,
        "min_trial_optimizer_steps": args.min_trial_optimizer_steps,
        "budget": _given(
            full_run_equivalents=args.budget_fre,
            trials=args.budget_trials,
            steps=args.budget_steps,
            minutes=args.budget_minutes,
        ),
        "objective": _given(metric=args.metric, use=args.use, rungs=args.rungs),
        "selection": _given(top_k=args.top_k, seeds=args.selection_seeds, sequential=args.sequential),
    }
    if args.cv_folds is not None:
        raw["objective"]["cv_folds"] = _cv_folds(args.cv_folds)
    return SearchSettings.from_dict(_given(**raw))


def _given(**values):
    return {key: value for key, value in values.items() if value is not None and value != {}}


def _trials(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hpo import attributes
    from hpo.result_files import shown_state

    path = Path(args.run_dir) / "trials.json"
    if not path.is_file():
        print(f"tunelab: error: {args.run_dir} has no trials.json (is it a search run folder?)", file=sys.stderr)
        return 2
    trials = json.loads(path.read_text())
    keys = sorted({k for t in trials for k in t["params"]})
    short = [k.split(".")[-1] for k in keys]
    print(" | ".join(["#", "state", "value", "steps", "sec", *short, "note"]))
    for t in trials:
        state, value = shown_state(t["state"], t["value"], feasible=t.get("feasible", True))
        value = "" if value is None else f"{value:.4f}"
        params = [_fmt(t["params"].get(k, "")) for k in keys]
        note = t.get("failure") or t.get("stop_reason") or t.get("extra", {}).get(attributes.ROLE) or ""
        print(" | ".join([str(t["number"]), state, value, str(t["steps"]), f"{t['seconds']:.0f}", *params, note]))
    return 0


def _fmt(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunelab", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"tunelab {_version()}")
    # Every command takes --verbose: without it, libraries' progress bars, load reports and warnings are hidden.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--verbose", action="store_true", help="show the libraries' own output (progress bars, load reports, warnings)"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func, help_text: str, examples: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=help_text,
            description=help_text,
            parents=[common],
            epilog="examples:\n" + examples,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(func=func)
        return sub

    train = command(
        "train",
        _train,
        "fine-tune once from a config",
        "  tunelab train recipes/configs/sst2_minilm_lora.yaml\n"
        "  tunelab train recipes/configs/sst2_minilm_lora.yaml training.learning_rate=1e-3 method.lora_r=16",
    )
    train.add_argument("config", help="YAML config with model, data, method, training sections")
    train.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. training.learning_rate=1e-4")

    evaluate = command(
        "evaluate",
        _evaluate,
        "evaluate a saved run on a split",
        "  tunelab evaluate runs/sst2_minilm_lora --split test\n"
        "  tunelab evaluate runs/sst2_words_smollm2_lora --split test --generate\n"
        "  tunelab evaluate recipes/configs/sst2_words_smollm2_lora.yaml --untrained --generate",
    )
    evaluate.add_argument("run_dir", help="a finished run folder (or, with --untrained, a config)")
    evaluate.add_argument("overrides", nargs="*", help="with --untrained: section.key=value overrides")
    evaluate.add_argument("--untrained", action="store_true", help="evaluate the model before fine-tuning")
    evaluate.add_argument(
        "--split", default="test", choices=["train", "validation", "test"], help="the split to score (default: test)"
    )
    evaluate.add_argument(
        "--generate",
        action="store_true",
        help="causal LMs: also generate greedily and score exact match and token F1 against the references "
        "(data.answer_pattern, data.max_new_tokens); writes generations_<split>.jsonl",
    )

    search = command(
        "search",
        _search,
        "search hyperparameters around a fine-tuning config",
        "  tunelab search recipes/configs/sst2_minilm_lora.yaml\n"
        "  tunelab search recipes/configs/sst2_minilm_lora.yaml --sampler random --scheduler none --budget-trials 10",
    )
    search.add_argument("config", help="YAML config (a recipe's search: section is not read: use the flags)")
    search.add_argument("overrides", nargs="*", help="section.key=value overrides of the base (untuned) config")
    search.add_argument("--space", help="YAML search space (default: the method-aware default space)")
    search.add_argument("--sampler", choices=SAMPLER_NAMES, help="default: tpe")
    search.add_argument("--scheduler", choices=SCHEDULER_NAMES, help="default: hyperband")
    search.add_argument(
        "--budget-fre", type=float, help="budget in full-run equivalents (default 8 with no other budget)"
    )
    search.add_argument("--budget-trials", type=int, help="budget in trials (default: none)")
    search.add_argument(
        "--budget-steps",
        type=int,
        help="budget in steps of the untuned run's effective batch, all trials together (default: none)",
    )
    search.add_argument("--budget-minutes", type=float, help="budget in wall-clock minutes (default: none)")
    search.add_argument("--metric", help="accuracy, macro_f1, loss... (default: by task)")
    search.add_argument("--use", choices=["best", "last"], help="which evaluation scores a trial (default: best)")
    search.add_argument(
        "--rungs",
        choices=["auto", "metric", "smooth"],
        help="what early stopping compares: the metric (default), or smooth: the loss where the metric has not moved",
    )
    search.add_argument(
        "--cv-folds", help="k-fold cross-validation: k >= 2, auto (small validation splits; the default) or none"
    )
    search.add_argument("--also-tune", help="groups added to the default space: optimizer,head,architecture")
    search.add_argument("--storage", help="journal file path or SQLAlchemy URL (default: in the run folder)")
    search.add_argument("--run-dir", help="default: <training.output_dir>_search")
    search.add_argument("--seed", type=int, help="sampler seed (default: 0)")
    search.add_argument(
        "--max-per-device-batch",
        type=int,
        help="a trial's largest per-device batch; larger effective batches accumulate gradients (default: the config's "
        "per_device_train_batch_size)",
    )
    search.add_argument(
        "--min-trial-optimizer-steps",
        type=int,
        help="a sampled trial's fewest optimizer steps, reached by a smaller effective batch (default: a third of "
        "the untuned run's, at most 100; 0: no floor)",
    )
    search.add_argument("--no-untuned", action="store_true", help="do not evaluate the untuned config first")
    search.add_argument(
        "--top-k",
        type=int,
        help="candidates re-run to choose the winner, untuned included (default: 3; 2 under the sequential rule)",
    )
    search.add_argument(
        "--selection-seeds",
        type=int,
        help="fresh seeds per candidate (default: 2); 1: the top_k trials re-run once each, the best re-run wins; "
        "0: the best trial wins, no re-runs",
    )
    search.add_argument(
        "--sequential",
        action=argparse.BooleanOptionalAction,
        help="choose the winner one re-run at a time, the untuned run re-run only when the gap is unclear "
        "(default: when the budget cannot hold top_k x seeds re-runs and one full run to explore)",
    )
    search.add_argument(
        "--lr-range-test",
        action=argparse.BooleanOptionalAction,
        help="sweep the learning rate before the first trial to place the searched LR range, paid from the budget "
        "(default: with the default space, where the sweep costs at most half a run)",
    )
    search.add_argument(
        "--isolation",
        choices=["none", "subprocess"],
        help="subprocess: each trial in its own process, GPU memory fully returned (default: none)",
    )

    run = command(
        "run",
        _run,
        "tune, retrain best and untuned over seeds, compare on test, report",
        "  tunelab run recipes/configs/sst2_minilm_lora.yaml\n"
        "  tunelab run recipes/configs/sst2_words_smollm2_lora.yaml seeds=5 search.budget.full_run_equivalents=6\n"
        "  accelerate launch --config_file recipes/accelerate/multi_gpu.yaml -m recipes.run RECIPE",
    )
    run.add_argument("recipe", help="YAML recipe: a fine-tuning config plus search:, baseline: and seeds:")
    run.add_argument("overrides", nargs="*", help="key=value: section.key, search.*, seeds")
    run.add_argument("--run-dir", help="default: <training.output_dir>_run")

    check = command(
        "check",
        _check,
        "show what `tunelab run` would do (data, model, steps, estimated time) before training",
        "  tunelab check recipes/configs/sst2_minilm_lora.yaml\n"
        "  tunelab check recipes/configs/sst2_words_smollm2_lora.yaml search.budget.full_run_equivalents=6 --json",
    )
    check.add_argument("recipe", help="YAML recipe, as given to `tunelab run`")
    check.add_argument("overrides", nargs="*", help="key=value: section.key, search.*, seeds")
    check.add_argument("--no-timing", action="store_true", help="plan only: do not time a few training steps")
    check.add_argument("--json", action="store_true", help="print the plan as JSON")

    worker = command(
        "worker",
        _worker,
        "join a search shared through a database; train until its budget is spent",
        "  tunelab worker recipes/configs/sst2_minilm_lora.yaml --storage postgresql://user:pw@host/tunelab",
    )
    worker.add_argument("recipe", help="the YAML recipe every worker of the search shares")
    worker.add_argument("overrides", nargs="*", help="key=value: section.key, search.*")
    worker.add_argument("--storage", help="postgresql://... shared by all workers (default: search.storage)")
    worker.add_argument("--study", help="study name (default: search.study_name)")
    worker.add_argument("--run-dir", help="this worker's local trial folder")

    report = command(
        "report",
        _report,
        "regenerate report.md/html of a finished `tunelab run` folder",
        "  tunelab report runs/sst2_minilm_lora_run",
    )
    report.add_argument("run_dir", help="a `tunelab run` folder (holds results.json)")

    compare = command(
        "compare",
        _compare,
        "compare the arms of finished `tunelab run` folders",
        "  tunelab compare runs/sst2_minilm_lora_run runs/sst2_minilm_full_run",
    )
    compare.add_argument("run_dirs", nargs="+", help="one or more `tunelab run` folders")

    trials = command(
        "trials",
        _trials,
        "print the trials table of a search run folder",
        "  tunelab trials runs/sst2_minilm_lora_search\n  tunelab trials runs/sst2_minilm_lora_run/search",
    )
    trials.add_argument("run_dir", help="a `tunelab search` folder, or the search/ folder of a `tunelab run`")
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tunelab")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _cv_folds(text: str) -> int | str | None:
    if text in ("none", "null", "0", "1"):
        return None
    if text == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError as exc:
        from finetune.errors import ConfigError

        raise ConfigError(f"--cv-folds: expected an integer >= 2, auto or none, got {text!r}") from exc


def quiet_libraries() -> None:
    """One line per event from tunelab: the libraries' progress bars, load reports and deprecation warnings
    off (set here, at the command line's entry, not on import)."""
    import warnings

    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    # The libraries' advice to their own developers (tensor copies, pinned memory...): not the user's to act on.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(torch|transformers|datasets|peft|accelerate)\b")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; section.key=value overrides may also come after the flags, as people type them."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    stray = [item for item in extra if item.startswith("-") or "=" not in item]
    if extra and (stray or not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)  # --help and --version end here, before anything heavy is imported
    if not args.verbose:
        quiet_libraries()
    from finetune.errors import TrainingError, TunelabError
    from finetune.train import end_processes
    from hpo.errors import SearchConfigError, SearchError

    # Each run ends with gc.collect() (tunelab's and accelerate's), and a full collection walks every live
    # object: torch's and transformers' alone are about 450k, 0.2-0.4 s a collection. Frozen now, they are
    # left out; what the command makes later is still collected.
    gc.freeze()
    try:
        code = args.func(args)
    except (TunelabError, SearchConfigError) as exc:  # bad input the user can fix
        print(f"tunelab: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (TrainingError, SearchError) as exc:  # the input was fine; the training or the search failed
        print(f"tunelab: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(
            "tunelab: interrupted; finished trials and runs are stored in the run folder: "
            "run the same command again to resume",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    end_processes()
    return code


if __name__ == "__main__":
    sys.exit(main())
