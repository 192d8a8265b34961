"""Search quality on cheap functions with known optima: simple regret after N evaluations.

    python benchmarks/search_quality.py           # 10 seeds, 40 evaluations
    python benchmarks/search_quality.py --quick   # 3 seeds, 20 evaluations

Functions: Branin (2-D, optimum 0.397887), Hartmann-6 (6-D, optimum -3.32237), and a multi-fidelity
Hartmann-6 whose value at step s approaches the true value as 1 - exp(-s/30) with noise that shrinks
with s (for the schedulers, budget in steps). Prints tables and writes benchmarks/search_quality.json.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hpo import Budget, Float, SearchSpace, StudySettings, optimize  # noqa: E402

# Search spaces address config keys; the functions only read the values.
KEYS = [
    f"training.{k}"
    for k in ("learning_rate", "warmup_ratio", "weight_decay", "max_grad_norm", "num_train_epochs", "lora_dropout")
]
KEYS[5] = "method.lora_dropout"
HARTMANN_A = np.array(
    [[10, 3, 17, 3.5, 1.7, 8], [0.05, 10, 17, 0.1, 8, 14], [3, 3.5, 1.7, 10, 17, 8], [17, 8, 0.05, 10, 0.1, 14]]
)
HARTMANN_P = 1e-4 * np.array(
    [
        [1312, 1696, 5569, 124, 8283, 5886],
        [2329, 4135, 8307, 3736, 1004, 9991],
        [2348, 1451, 3522, 2883, 3047, 6650],
        [4047, 8828, 8732, 5743, 1091, 381],
    ]
)
HARTMANN_ALPHA = np.array([1.0, 1.2, 3.0, 3.2])


def branin(x1: float, x2: float) -> float:
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return (x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10


def hartmann6(x: np.ndarray) -> float:
    return float(-np.sum(HARTMANN_ALPHA * np.exp(-np.sum(HARTMANN_A * (x - HARTMANN_P) ** 2, axis=1))))


def unit_space(dims: int, lows=None, highs=None) -> SearchSpace:
    lows = lows or [0.0] * dims
    highs = highs or [1.0] * dims
    return SearchSpace({KEYS[i]: Float(low=lows[i], high=highs[i]) for i in range(dims)})


PROBLEMS = {
    "branin": (unit_space(2, [-5.0, 0.0], [10.0, 15.0]), lambda p: branin(p[KEYS[0]], p[KEYS[1]]), 0.397887),
    "hartmann6": (unit_space(6), lambda p: hartmann6(np.array([p[k] for k in KEYS])), -3.32237),
}


def regret(sampler: str, problem: str, evaluations: int, seed: int) -> float:
    space, function, optimum = PROBLEMS[problem]
    result = optimize(
        lambda params, reporter: function(params),
        space,
        budget=Budget(trials=evaluations),
        settings=StudySettings(sampler=sampler, direction="minimize", seed=seed, progress=False),
    )
    return result.best_value - optimum


def multi_fidelity_regret(sampler: str, scheduler: str, steps_budget: int, seed: int) -> float:
    space, function, optimum = PROBLEMS["hartmann6"]
    rng = np.random.default_rng(seed)
    max_steps = 90

    def objective(params, reporter):
        true = function(params)
        value = None
        for step in range(10, max_steps + 1, 10):
            value = true * (1 - math.exp(-step / 30)) + rng.normal(0, 0.05 * math.exp(-step / 45))
            reporter.report(step, value)
            if reporter.should_stop():
                break
        return value

    result = optimize(
        objective,
        space,
        budget=Budget(steps=steps_budget),
        settings=StudySettings(
            sampler=sampler,
            scheduler=scheduler,
            direction="minimize",
            seed=seed,
            min_steps=10,
            max_steps=max_steps,
            progress=False,
        ),
    )
    # Regret of the configuration chosen, at its true (full-fidelity, noise-free) value.
    return function(result.best_params) - optimum


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    seeds, evaluations = (range(3), 20) if args.quick else (range(10), 40)
    out: dict[str, dict] = {}
    print(f"\nSimple regret after {evaluations} evaluations, median over {len(seeds)} seeds (lower is better)\n")
    print("| sampler | branin | hartmann6 |")
    print("|---|---|---|")
    for sampler in ("random", "qmc", "tpe", "gp"):
        row = {p: statistics.median(regret(sampler, p, evaluations, s) for s in seeds) for p in PROBLEMS}
        out[sampler] = row
        print(f"| {sampler} | {row['branin']:.4f} | {row['hartmann6']:.4f} |", flush=True)
    budget = evaluations * 90 // 2
    print(
        f"\nMulti-fidelity Hartmann-6, budget {budget} steps (= {evaluations // 2} full runs of 90 steps), "
        f"regret of the chosen configuration, median over {len(seeds)} seeds\n"
    )
    print("| sampler | scheduler | regret |")
    print("|---|---|---|")
    for sampler in ("random", "tpe"):
        for scheduler in ("none", "median", "sha", "hyperband"):
            value = statistics.median(multi_fidelity_regret(sampler, scheduler, budget, s) for s in seeds)
            out[f"mf/{sampler}/{scheduler}"] = value
            print(f"| {sampler} | {scheduler} | {value:.4f} |", flush=True)
    (ROOT / "benchmarks" / "search_quality.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
