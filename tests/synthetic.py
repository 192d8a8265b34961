"""Cheap objectives with known optima, used by the hpo tests (and runnable as a worker process)."""

from __future__ import annotations

import argparse
import math
import time

from hpo import Budget, Categorical, Float, Int, SearchSpace, StudySettings, optimize

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
        - 0.05 * abs(params.get("training.num_train_epochs", 3) - 3)
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
            if reporter.should_stop(run_ends=step + eval_every > max_steps):
                break
        return value

    return objective


GRID_SPACE = SearchSpace(
    {
        "training.learning_rate": Categorical(choices=(1e-4, 3e-4, 1e-3, 3e-3)),
        "training.lr_scheduler_type": Categorical(choices=("linear", "cosine", "constant")),
    }
)


def main() -> None:
    """One worker of a shared search (what `tunelab worker` does, on a cheap objective)."""
    from hpo.workers import rejoin_on_connection_loss

    parser = argparse.ArgumentParser()
    parser.add_argument("--storage", required=True)
    parser.add_argument("--study", default="shared")
    parser.add_argument("--trials", type=int)
    parser.add_argument("--steps", type=int, help="step budget shared by all workers")
    parser.add_argument("--grid", action="store_true")
    parser.add_argument("--max-steps", type=int, default=5)
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds per step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--heartbeat", type=int)
    args = parser.parse_args()
    budget = Budget(trials=args.trials, steps=args.steps) if args.trials or args.steps else Budget(trials=20)
    rejoin_on_connection_loss(
        lambda: optimize(
            curve_objective(max_steps=args.max_steps, sleep=args.sleep),
            GRID_SPACE if args.grid else SPACE,
            budget=budget,
            settings=StudySettings(
                sampler="grid" if args.grid else "random",
                storage=args.storage,
                study_name=args.study,
                seed=args.seed,
                progress=True,
                heartbeat_seconds=args.heartbeat,
            ),
        )
    )


if __name__ == "__main__":
    main()
