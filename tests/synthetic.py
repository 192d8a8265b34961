"""Cheap objectives with known optima, used by the hpo tests (and runnable as a worker process)."""

from __future__ import annotations

import argparse
import math
import time

from hpo import Budget, Categorical, Float, Int, SearchSpace, optimize

SPACE = SearchSpace(
    {
        "training.learning_rate": Float(low=1e-5, high=1e-1, log=True),
        "training.num_train_epochs": Int(low=1, high=5),
        "training.lr_scheduler_type": Categorical(choices=("linear", "cosine", "constant")),
    }
)


def quality(params: dict) -> float:
    """Peaks at lr=1e-3, 3 epochs, cosine: 1.0 at the optimum."""
    lr_term = (math.log10(params["training.learning_rate"]) + 3.0) ** 2 / 4
    return (
        1.0
        - lr_term
        - 0.05 * abs(params["training.num_train_epochs"] - 3)
        - (0.0 if params["training.lr_scheduler_type"] == "cosine" else 0.05)
    )


def curve_objective(max_steps: int = 81, eval_every: int = 1, sleep: float = 0.0):
    """A learning curve rising to quality(params); reports every eval_every steps and obeys should_stop()."""

    def objective(params, reporter):
        q = quality(params)
        value = None
        for step in range(eval_every, max_steps + 1, eval_every):
            value = q * (1 - math.exp(-step / 10))
            if sleep:
                time.sleep(sleep)
            reporter.report(step, value)
            if reporter.should_stop():
                break
        return value

    return objective


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--storage", required=True)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    optimize(
        curve_objective(max_steps=5, sleep=args.sleep),
        SPACE,
        sampler="random",
        budget=Budget(trials=args.trials),
        storage=args.storage,
        study_name="shared",
        seed=args.seed,
        progress=True,
    )


if __name__ == "__main__":
    main()
