"""The `tunelab` command line."""

from __future__ import annotations

import argparse
import json
import sys

from finetune.errors import ConfigError, TunelabError
from recipes.recipe import load_finetune_config


def _train(args: argparse.Namespace) -> int:
    import finetune
    from finetune.train import process_state

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
    from recipes.run import main as run_main

    return run_main([args.recipe, *args.overrides, *(["--run-dir", args.run_dir] if args.run_dir else [])])


def _worker(args: argparse.Namespace) -> int:
    from recipes.worker import main as worker_main

    extra = [f"--{k.replace('_', '-')}={v}" for k, v in (("storage", args.storage), ("study", args.study)) if v]
    return worker_main([args.recipe, *args.overrides, *extra, *(["--run-dir", args.run_dir] if args.run_dir else [])])


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

    if args.untrained:
        # RUN_DIR is then a config: how good is the model before any fine-tuning?
        config = load_finetune_config(args.run_dir, args.overrides)
        metrics = finetune.evaluate_untrained(config, args.split)
    else:
        metrics = finetune.evaluate(args.run_dir, args.split)
    print(json.dumps(metrics, indent=2))
    return 0


def _search(args: argparse.Namespace) -> int:
    import yaml

    from hpo import Budget, SearchSpace
    from hpo.finetune_search import Objective, search_finetune
    from hpo.selection import SelectionSettings

    config = load_finetune_config(args.config, args.overrides)
    space = SearchSpace.from_dict(yaml.safe_load(open(args.space))) if args.space else None
    has_budget = any(v is not None for v in (args.budget_trials, args.budget_steps, args.budget_minutes))
    budget = (
        Budget(
            trials=args.budget_trials,
            steps=args.budget_steps,
            wall_seconds=args.budget_minutes * 60 if args.budget_minutes else None,
        )
        if has_budget
        else None
    )
    fre = args.budget_fre if args.budget_fre is not None or budget is not None else 8.0
    run_dir = args.run_dir or f"{config.training.output_dir}_search"
    search = search_finetune(
        config,
        run_dir=run_dir,
        space=space,
        sampler=args.sampler,
        scheduler=args.scheduler,
        budget=budget,
        full_run_equivalents=fre,
        objective=Objective(metric=args.metric, use=args.use, cv_folds=_cv_folds(args.cv_folds)),
        also_tune=args.also_tune.split(",") if args.also_tune else (),
        selection=SelectionSettings(top_k=args.top_k, seeds=args.selection_seeds),
        storage=args.storage,
        seed=args.seed,
        max_per_device_batch=args.max_per_device_batch,
        include_untuned=not args.no_untuned,
        isolation=args.isolation,
    )
    if search is None:
        return 0  # a non-main process under accelerate launch: the main process reports
    result = search.result
    winner = search.selection.winner if search.selection else (result.best_trial.number)
    chosen = next(t for t in result.trials if t.number == winner)
    selection_steps = search.selection.steps if search.selection else 0
    print(
        json.dumps(
            {
                "run_dir": run_dir,
                "stop_reason": result.stop_reason,
                "best_value": result.best_value,
                "metric": search.metric,
                "winner_trial": winner,
                "winner_role": chosen.extra.get("role"),
                "selection": search.selection.reason if search.selection else "best trial (no re-runs)",
                "best_params": chosen.params,
                "best_checkpoint": search.best_checkpoint,
                "best_config": f"{run_dir}/best_config.yaml",
                "steps_spent": result.steps_spent,
                "selection_steps": selection_steps,
                "full_run_equivalents_spent": round((result.steps_spent + selection_steps) / search.full_run_steps, 2),
                "trials": {s: result.count(s) for s in ("COMPLETE", "PRUNED", "FAIL")},
            },
            indent=2,
            default=str,
        )
    )
    return 0


def _trials(args: argparse.Namespace) -> int:
    from pathlib import Path

    path = Path(args.run_dir) / "trials.json"
    if not path.is_file():
        print(f"tunelab: error: {args.run_dir} has no trials.json (is it a search run folder?)", file=sys.stderr)
        return 2
    trials = json.loads(path.read_text())
    keys = sorted({k for t in trials for k in t["params"]})
    short = [k.split(".")[-1] for k in keys]
    print(" | ".join(["#", "state", "value", "steps", "sec", *short, "note"]))
    for t in trials:
        value = "" if t["value"] is None else f"{t['value']:.4f}"
        params = [_fmt(t["params"].get(k, "")) for k in keys]
        note = t.get("failure") or t.get("stop_reason") or t.get("extra", {}).get("role") or ""
        print(" | ".join([str(t["number"]), t["state"], value, str(t["steps"]), f"{t['seconds']:.0f}", *params, note]))
    return 0


def _fmt(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tunelab", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="fine-tune once from a config")
    train.add_argument("config", help="YAML config with model, data, method, training sections")
    train.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. training.learning_rate=1e-4")
    train.set_defaults(func=_train)

    evaluate = commands.add_parser("evaluate", help="evaluate a saved run on a split")
    evaluate.add_argument("run_dir", help="a finished run folder (or, with --untrained, a config)")
    evaluate.add_argument("overrides", nargs="*", help="with --untrained: section.key=value overrides")
    evaluate.add_argument("--untrained", action="store_true", help="evaluate the model before fine-tuning")
    evaluate.add_argument("--split", default="test", choices=["train", "validation", "test"])
    evaluate.set_defaults(func=_evaluate)

    from hpo.samplers import SAMPLERS, SCHEDULERS

    search = commands.add_parser("search", help="search hyperparameters around a fine-tuning config")
    search.add_argument("config")
    search.add_argument("overrides", nargs="*", help="section.key=value overrides of the base (untuned) config")
    search.add_argument("--space", help="YAML search space (default: the method-aware default space)")
    search.add_argument("--sampler", default="tpe", choices=SAMPLERS)
    search.add_argument("--scheduler", default="hyperband", choices=SCHEDULERS)
    search.add_argument("--budget-fre", type=float, help="budget in full-run equivalents (default 8)")
    search.add_argument("--budget-trials", type=int)
    search.add_argument("--budget-steps", type=int)
    search.add_argument("--budget-minutes", type=float)
    search.add_argument("--metric", default="auto", help="accuracy, macro_f1, loss... (default by task)")
    search.add_argument("--use", default="best", choices=["best", "last"], help="which evaluation scores a trial")
    search.add_argument(
        "--cv-folds", default="auto", help="k-fold cross-validation: k >= 2, auto (small validation splits) or none"
    )
    search.add_argument("--also-tune", help="groups added to the default space: optimizer,head,architecture")
    search.add_argument("--storage", help="journal file path or SQLAlchemy URL (default: in the run folder)")
    search.add_argument("--run-dir", help="default: <training.output_dir>_search")
    search.add_argument("--seed", type=int, default=0, help="sampler seed")
    search.add_argument("--max-per-device-batch", type=int, default=32)
    search.add_argument("--no-untuned", action="store_true", help="do not evaluate the untuned config first")
    search.add_argument(
        "--top-k", type=int, default=3, help="candidates re-run to choose the winner (untuned included)"
    )
    search.add_argument(
        "--selection-seeds", type=int, default=2, help="fresh seeds per candidate; 0: the best trial wins, no re-runs"
    )
    search.add_argument(
        "--isolation",
        default="none",
        choices=["none", "subprocess"],
        help="subprocess: each trial in its own process (GPU memory fully returned)",
    )
    search.set_defaults(func=_search)

    run = commands.add_parser("run", help="tune, retrain best and untuned over seeds, compare on test, report")
    run.add_argument("recipe")
    run.add_argument("overrides", nargs="*", help="key=value: section.key, search.*, seeds")
    run.add_argument("--run-dir", help="default: <training.output_dir>_run")
    run.set_defaults(func=_run)

    worker = commands.add_parser(
        "worker", help="join a search shared through a database; train until its budget is spent"
    )
    worker.add_argument("recipe")
    worker.add_argument("overrides", nargs="*", help="key=value: section.key, search.*")
    worker.add_argument("--storage", help="postgresql://... shared by all workers (default: search.storage)")
    worker.add_argument("--study", help="study name (default: search.study_name)")
    worker.add_argument("--run-dir", help="this worker's local trial folder")
    worker.set_defaults(func=_worker)

    report = commands.add_parser("report", help="regenerate report.md/html of a finished `tunelab run` folder")
    report.add_argument("run_dir")
    report.set_defaults(func=_report)

    compare = commands.add_parser("compare", help="compare the arms of finished `tunelab run` folders")
    compare.add_argument("run_dirs", nargs="+")
    compare.set_defaults(func=_compare)

    trials = commands.add_parser("trials", help="print the trials table of a search run folder")
    trials.add_argument("run_dir")
    trials.set_defaults(func=_trials)
    return parser


def _cv_folds(text: str) -> int | str | None:
    if text in ("none", "null", "0", "1"):
        return None
    if text == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError as exc:
        raise ConfigError(f"--cv-folds: expected an integer >= 2, auto or none, got {text!r}") from exc


def main(argv: list[str] | None = None) -> int:
    from finetune.train import end_processes

    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except TunelabError as exc:
        print(f"tunelab: error: {exc}", file=sys.stderr)
        return 2
    end_processes()
    return code


if __name__ == "__main__":
    sys.exit(main())
