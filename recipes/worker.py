"""tunelab worker RECIPE --storage postgresql://...: join a shared search, train trials until its budget is spent.

Start as many as you have GPUs or nodes, whenever you like (a Slurm job array, a Kubernetes Job: see
recipes/cluster/). They share the recipe's search through the database: one budget, one grid, one pruner.
A worker that dies has its trial retried by another after the heartbeat grace period. When the budget is
spent every worker exits 0; then `tunelab run RECIPE search.storage=<same URL>` chooses the winner,
retrains both arms over seeds and writes the report.

    tunelab worker recipes/configs/sst2_minilm_lora.yaml --storage postgresql://user:pw@db:5432/tunelab
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import zlib

from finetune.errors import ConfigError, TunelabError
from hpo.finetune_search import search_finetune
from hpo.workers import rejoin_on_connection_loss
from recipes.recipe import load_recipe


def worker_seed(base: int) -> int:
    """A sampler seed of this worker's own: identical seeds would make workers propose the same points."""
    return (base + zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode())) % 2**31


def run_worker(recipe_path: str, overrides: list[str], storage: str | None, study: str | None, run_dir: str | None):
    recipe = load_recipe(recipe_path, overrides)
    s = recipe.search
    storage = storage or s.storage
    if not storage or "://" not in storage:
        raise ConfigError("tunelab worker needs a database all workers reach: --storage postgresql://... ")
    run_dir = run_dir or f"{recipe.finetune.training.output_dir}_worker_{socket.gethostname()}_{os.getpid()}"
    arguments = recipe.search.search_arguments()
    arguments.update(
        storage=storage,
        study_name=study or s.study_name,
        seed=worker_seed(s.seed),
        choose_winner=False,  # `tunelab run` chooses, once the budget is spent
    )
    # Trials start only if the candidates' re-runs still fit after them, exactly as in `tunelab run`.
    return rejoin_on_connection_loss(lambda: search_finetune(recipe.untuned, run_dir=run_dir, **arguments))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tunelab worker", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*", help="key=value: section.key of the config, or search.*")
    parser.add_argument("--storage", help="database URL shared by all workers (default: the recipe's search.storage)")
    parser.add_argument("--study", help="study name (default: the recipe's search.study_name)")
    parser.add_argument("--run-dir", help="this worker's local trial folder (default: per host and process)")
    args = parser.parse_args(argv)
    try:
        search = run_worker(args.recipe, args.overrides, args.storage, args.study, args.run_dir)
    except TunelabError as exc:
        print(f"tunelab: error: {exc}", file=sys.stderr)
        return 2
    if search is not None:
        result = search.result
        counts = {state: result.count(state) for state in ("COMPLETE", "PRUNED", "FAIL")}
        print(f"[worker] done: {result.stop_reason}; study trials {counts}, {result.steps_spent} steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
