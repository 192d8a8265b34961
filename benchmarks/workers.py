"""Trials per minute with 1, 2 and 4 workers sharing one search through PostgreSQL, and the storage's
added latency per trial against the default journal file and in-memory storage. Not part of CI.

The objective is the cheap synthetic curve (5 reported steps); `--step-seconds` sleeps per step to stand
in for training (sleeping uses no CPU, so workers can overlap even on 2 cores). Rates are measured from
the study's own timestamps (first trial start to last trial end), so process start-up is not counted.

    bash .ci/postgres.sh start        # prints the URL (default below)
    python benchmarks/workers.py [--url postgresql://...] [--trials 60] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import optuna

from hpo import Budget, Categorical, Float, SearchSpace, StudySettings, optimize
from hpo.storage import open_storage

SPACE = SearchSpace(
    {
        "training.learning_rate": Float(low=1e-5, high=1e-1, log=True),
        "training.lr_scheduler_type": Categorical(choices=("linear", "cosine")),
    }
)
STEPS = 5


def objective_with(step_seconds: float):
    def objective(params, reporter):
        value = 0.0
        for step in range(1, STEPS + 1):
            if step_seconds:
                time.sleep(step_seconds)
            value = -abs(math.log10(params["training.learning_rate"]) + 3) * (1 - math.exp(-step))
            reporter.report(step, value)
            if reporter.should_stop():
                break
        return value

    return objective


def worker(storage: str, study: str, trials: int, step_seconds: float, seed: int) -> None:
    optimize(
        objective_with(step_seconds),
        SPACE,
        budget=Budget(trials=trials),
        settings=StudySettings(sampler="random", storage=storage, study_name=study, seed=seed, progress=False),
    )


def run(storage: str | None, workers: int, trials: int, step_seconds: float) -> float:
    """Completed trials per minute of one shared search."""
    study = f"bench-{uuid.uuid4().hex[:8]}"
    if storage is None:  # in memory: one process only
        worker_started = time.perf_counter()
        worker(None, study, trials, step_seconds, 0)
        return trials / (time.perf_counter() - worker_started) * 60
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=worker, args=(storage, study, trials, step_seconds, s)) for s in range(workers)]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    loaded = optuna.load_study(study_name=study, storage=open_storage(storage, heartbeat_seconds=0))
    done = [t for t in loaded.get_trials(deepcopy=False) if t.datetime_complete is not None]
    span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    return len(done) / span * 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="postgresql://postgres:tunelab@127.0.0.1:5432/postgres")
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--step-seconds", type=float, default=0.05)
    parser.add_argument("--quick", action="store_true", help="20 trials, 1 repeat")
    args = parser.parse_args()
    if args.quick:
        args.trials, args.repeats = 20, 1
    folder = Path(tempfile.mkdtemp(prefix="tunelab-bench-"))

    def median_rate(storage_for, workers: int, step_seconds: float) -> float:
        return statistics.median(run(storage_for(i), workers, args.trials, step_seconds) for i in range(args.repeats))

    def journal(i: int) -> str:
        return str(folder / f"journal-{uuid.uuid4().hex[:6]}.log")

    print(f"{args.trials} trials of {STEPS} reported steps; median of {args.repeats} runs; trials per minute\n")
    print(f"| workers | PostgreSQL, {args.step_seconds:g} s/step | PostgreSQL, no sleep | journal file, no sleep |")
    print("|---|---|---|---|")
    for workers in (1, 2, 4):
        pg_work = median_rate(lambda i: args.url, workers, args.step_seconds)
        pg_bare = median_rate(lambda i: args.url, workers, 0.0)
        journal_bare = median_rate(journal, workers, 0.0)
        print(f"| {workers} | {pg_work:.0f} | {pg_bare:.0f} | {journal_bare:.0f} |")
    memory = median_rate(lambda i: None, 1, 0.0)
    pg_one = median_rate(lambda i: args.url, 1, 0.0)
    journal_one = median_rate(journal, 1, 0.0)
    print("\nstorage latency per trial, one worker, no sleep (60 s / rate):")
    print("| storage | ms per trial | added over in-memory (ms) |")
    print("|---|---|---|")
    for name, rate in (("in memory", memory), ("journal file", journal_one), ("PostgreSQL", pg_one)):
        print(f"| {name} | {60e3 / rate:.1f} | {60e3 / rate - 60e3 / memory:+.1f} |")


if __name__ == "__main__":
    main()
