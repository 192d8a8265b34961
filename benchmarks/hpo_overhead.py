"""hpo's own time per trial (sampling, storage, bookkeeping) against raw Optuna with the same sampler.

    python benchmarks/hpo_overhead.py           # 100 and 1,000 trials, median of 3 runs
    python benchmarks/hpo_overhead.py --quick   # 50 and 200 trials, 1 run

The objective does nothing (it reports one value), so all time measured is overhead. Both run in
this process, alternating, with the same TPE sampler and seed, in memory and on a journal file.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402

from hpo import Budget, Categorical, Float, Int, SearchSpace, StudySettings, optimize  # noqa: E402
from hpo.samplers import build_sampler  # noqa: E402
from hpo.storage import open_storage  # noqa: E402

SPACE = SearchSpace(
    {
        "training.learning_rate": Float(low=1e-5, high=1e-2, log=True),
        "training.num_train_epochs": Int(low=1, high=5),
        "training.lr_scheduler_type": Categorical(choices=("linear", "cosine")),
    }
)


def value(params: dict) -> float:
    return -abs(params["training.learning_rate"] - 1e-3) - 0.01 * params["training.num_train_epochs"]


def tunelab_run(trials: int, storage: str | None) -> float:
    def objective(params, reporter):
        reporter.report(1, value(params))
        reporter.should_stop()
        return value(params)

    started = time.perf_counter()
    optimize(
        objective,
        SPACE,
        budget=Budget(trials=trials),
        settings=StudySettings(sampler="tpe", seed=0, storage=storage, progress=False),
    )
    return time.perf_counter() - started


def optuna_run(trials: int, storage: str | None) -> float:
    def objective(trial):
        params = {
            "training.learning_rate": trial.suggest_float("training.learning_rate", 1e-5, 1e-2, log=True),
            "training.num_train_epochs": trial.suggest_int("training.num_train_epochs", 1, 5),
            "training.lr_scheduler_type": trial.suggest_categorical("training.lr_scheduler_type", ["linear", "cosine"]),
        }
        trial.report(value(params), 1)
        trial.should_prune()
        return value(params)

    started = time.perf_counter()
    study = optuna.create_study(
        direction="maximize", sampler=build_sampler("tpe", seed=0), storage=open_storage(storage)
    )
    study.optimize(objective, n_trials=trials)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sizes, repeats = ((50, 200), 1) if args.quick else ((100, 1000), 3)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print("| trials | storage | tunelab ms/trial | raw Optuna ms/trial | ratio |")
    print("|---|---|---|---|---|")
    for trials in sizes:
        for kind in ("memory", "journal"):
            ours, theirs = [], []
            for i in range(repeats):
                with tempfile.TemporaryDirectory() as scratch:
                    storage = None if kind == "memory" else str(Path(scratch) / f"s{i}.journal")
                    other = None if kind == "memory" else str(Path(scratch) / f"o{i}.journal")
                    pair = [(ours, tunelab_run, storage), (theirs, optuna_run, other)]
                    for sink, run, where in pair if i % 2 == 0 else pair[::-1]:
                        sink.append(run(trials, where))
            a, b = statistics.median(ours) / trials * 1e3, statistics.median(theirs) / trials * 1e3
            print(f"| {trials} | {kind} | {a:.2f} | {b:.2f} | {a / b:.2f} |", flush=True)


if __name__ == "__main__":
    main()
