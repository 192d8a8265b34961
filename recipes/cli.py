"""The `tunelab` command line."""

from __future__ import annotations

import argparse
import json
import sys

from finetune.errors import TunelabError


def _train(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    import finetune

    config = finetune.FinetuneConfig.from_yaml(args.config, args.overrides)
    result = finetune.train(config)
    if not PartialState().is_main_process:
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


def _evaluate(args: argparse.Namespace) -> int:
    import finetune

    if args.untrained:
        # RUN_DIR is then a config: how good is the model before any fine-tuning?
        config = finetune.FinetuneConfig.from_yaml(args.run_dir, args.overrides)
        metrics = finetune.evaluate_untrained(config, args.split)
    else:
        metrics = finetune.evaluate(args.run_dir, args.split)
    print(json.dumps(metrics, indent=2))
    return 0


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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except TunelabError as exc:
        print(f"tunelab: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
