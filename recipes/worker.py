"""tunelab worker RECIPE --storage postgresql://...: join a shared search, train trials until its budget is spent.

Start as many as you have GPUs or nodes, whenever you like (a Slurm job array, a Kubernetes Job: see
recipes/cluster/). They share the recipe's search through the database: one budget, one grid, one pruner.
A worker that dies has its trial retried by another after the heartbeat grace period. When the budget is
spent every worker exits 0; then `tunelab run RECIPE search.storage=<same URL>` chooses the winner,
retrains both arms over seeds and writes the report.

    tunelab worker recipes/configs/sst2_minilm_lora.yaml --storage postgresql://user:pw@db:5432/tunelab
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
import zlib

from finetune.errors import ConfigError
from hpo.finetune import FinetuneSearch, search_finetune
from hpo.workers import rejoin_on_connection_loss
from recipes.recipe import load_recipe


def worker_seed(base: int) -> int:
    """A sampler seed of this worker's own: identical seeds would make workers propose the same points."""
    return (base + zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode())) % 2**31


def run_worker(
    recipe_path: str, overrides: list[str], *, storage: str | None, study: str | None, run_dir: str | None
) -> FinetuneSearch | None:
    recipe = load_recipe(recipe_path, overrides)
    storage = storage or recipe.search.storage
    if not storage or "://" not in storage:
        raise ConfigError("tunelab worker needs a database all workers reach: --storage postgresql://... ")
    run_dir = run_dir or f"{recipe.finetune.training.output_dir}_worker_{socket.gethostname()}_{os.getpid()}"
    settings = dataclasses.replace(
        recipe.search,
        storage=storage,
        study_name=study or recipe.search.study_name,
        seed=worker_seed(recipe.search.seed),
        choose_winner=False,  # `tunelab run` chooses, once the budget is spent
    )
    # Trials start only if the candidates' re-runs still fit after them, exactly as in `tunelab run`.
    return rejoin_on_connection_loss(lambda: search_finetune(recipe.untuned, settings, run_dir=run_dir))


def main(argv: list[str] | None = None) -> int:
    """``python -m recipes.worker``: the same as ``tunelab worker``."""
    from recipes.cli import main as cli_main

    return cli_main(["worker", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
