"""How often noise-aware selection keeps the baseline, or finds a better challenger, on synthetic scores.

Three candidates (the baseline and two challengers, as with top_k=3); each re-run scores its true value
plus unit Gaussian noise; the baseline's search score counts as one more sample. One challenger is better
by `gap` noise standard deviations, the other equals the baseline. Prints a table; not part of CI.

    python benchmarks/selection_noise.py [--runs 4000]
"""

from __future__ import annotations

import argparse

import numpy as np

from hpo.winner_rule import Candidate, decide


def rate(gap: float, seeds: int, confidence: float, runs: int, rng: np.random.Generator) -> float:
    hits = 0
    for _ in range(runs):
        base = Candidate(
            trial=0,
            role="untuned",
            params={},
            search_value=float(rng.normal()),
            values=list(rng.normal(0.0, 1.0, seeds)),
            counts_search_value=True,
        )
        better = Candidate(trial=1, role=None, params={}, search_value=None, values=list(rng.normal(gap, 1.0, seeds)))
        equal = Candidate(trial=2, role=None, params={}, search_value=None, values=list(rng.normal(0.0, 1.0, seeds)))
        winner = decide([base, better, equal], baseline=0, direction="maximize", confidence=confidence).winner
        hits += winner == (0 if gap == 0 else 1)
    return hits / runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=4000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    gaps = (0, 2, 3, 4, 5, 6)
    print("| seeds | confidence | " + " | ".join(f"gap {g}" for g in gaps) + " |")
    print("|---|---|" + "---|" * len(gaps))
    for seeds, confidence in ((2, 0.98), (2, 0.95), (3, 0.98)):
        cells = [f"{rate(g, seeds, confidence, args.runs, rng):.3f}" for g in gaps]
        print(f"| {seeds} | {confidence} | " + " | ".join(cells) + " |")
    print("\ngap 0: share of runs that keep the baseline; gap > 0: share that choose the better challenger")


if __name__ == "__main__":
    main()
