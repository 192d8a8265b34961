"""How often noise-aware selection keeps the baseline, or finds a better challenger, on synthetic scores.

Three candidates (the baseline and two challengers, as with top_k=3); each re-run scores its true value
plus unit Gaussian noise; the baseline's search score counts as one more sample. One challenger is better
by `gap` noise standard deviations, the other equals the baseline. Prints a table; not part of CI.

--sequential compares the fixed rule (hpo.winner_rule) with the sequential one (hpo.sequential_winner) on
synthetic searches: 12 trials, the untuned one (true score 0) first, half of the others better by `gap`,
each scored once with unit noise; the top_k candidates by search score (the winner's curse included) are
re-run by each rule. Prints how often each rule is right (gap 0: keeps the baseline; gap > 0: picks a better
challenger) and the re-runs it spent (the baseline's are full runs).

--flat: the sequential rule with and without the knowledge that the untuned run learnt nothing
(hpo.sequential_winner's constant prediction): in units of the constant prediction's standard error, the
untuned run's search score lies within 1 of 0 (it scored what a constant prediction scores) and its re-runs
score N(0, 1); the other trials score N(gap, spread) in the search and in re-runs (half at gap, half at 0).

    python benchmarks/selection_noise.py [--runs 4000] [--sequential | --flat]
"""

from __future__ import annotations

import argparse

import numpy as np

from hpo.results import SearchResult, TrialRecord
from hpo.rung_signal import RungSignal
from hpo.sequential_winner import select_winner_sequentially
from hpo.winner_rule import Candidate, SelectionSettings, decide, pick_candidates, select_winner

SEARCH_TRIALS = 12


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


def synthetic_search(
    gap: float, rng: np.random.Generator, *, spread: float = 1.0, untuned_score: float | None = None
) -> tuple[SearchResult, dict[int, float]]:
    """A finished search: trial 0 untuned (true score 0), then trials alternately better by ``gap`` or not,
    each scored with noise of ``spread``; ``untuned_score``: trial 0's search score (default: noise of 1)."""
    truth = {n: (gap if n % 2 else 0.0) for n in range(SEARCH_TRIALS)}
    trials = [
        TrialRecord(
            number=n,
            state="COMPLETE",
            value=untuned_score
            if n == 0 and untuned_score is not None
            else float(truth[n] + (1.0 if n == 0 else spread) * rng.normal()),
            params={},
            steps=10,
            seconds=1.0,
            extra={"role": "untuned"} if n == 0 else {},
        )
        for n in truth
    ]
    result = SearchResult("synthetic", None, "maximize", "budget", trials, steps_spent=120, wall_seconds_spent=1.0)
    return result, truth


def compare_rules(gap: float, settings: SelectionSettings, runs: int, rng: np.random.Generator) -> dict[str, tuple]:
    """rule -> (share of right decisions, mean re-runs of the baseline, mean re-runs of challengers)."""
    tallies = {"fixed": [0, 0, 0], "sequential": [0, 0, 0]}
    for _ in range(runs):
        result, truth = synthetic_search(gap, rng)
        picked = pick_candidates(result, settings.top_k)
        noise = {(n, r): float(rng.normal()) for n in truth for r in range(settings.seeds)}  # same for both rules

        def rerun(record: TrialRecord, replicate: int, truth=truth, noise=noise) -> tuple[float, int]:
            return truth[record.number] + noise[record.number, replicate], 10

        for rule, tally in tallies.items():
            if rule == "fixed":
                chosen = select_winner(result, rerun, settings=settings, picked=picked)
            else:
                chosen = select_winner_sequentially(
                    result, rerun, settings=settings, picked=picked, steps_left=None, rerun_length=lambda r: 10
                )
            right = chosen.kept_baseline if gap == 0 else truth[chosen.winner] == gap
            tally[0] += right
            tally[1] += len(chosen.candidate(0).values)
            tally[2] += sum(len(c.values) for c in chosen.candidates if c.trial != 0)
    return {rule: (t[0] / runs, t[1] / runs, t[2] / runs) for rule, t in tallies.items()}


def flat_baseline_rules(gap: float, spread: float, runs: int, rng: np.random.Generator) -> dict[str, tuple]:
    """rule -> (share of right decisions, mean re-runs of the baseline), top_k 2 x seeds 2, sequential."""
    settings = SelectionSettings(top_k=2, seeds=2, sequential=True)
    constant = RungSignal(flat=0.0, noise=1.0)
    tallies = {"re-runs the baseline": [0, 0], "knows it learnt nothing": [0, 0]}
    for _ in range(runs):
        untuned = float(rng.uniform(-1.0, 1.0))  # a search score inside the constant prediction's band
        result, truth = synthetic_search(gap, rng, spread=spread, untuned_score=untuned)
        picked = pick_candidates(result, settings.top_k)
        noise = {(n, r): float(rng.normal()) * (1.0 if n == 0 else spread) for n in truth for r in range(2)}

        def rerun(record: TrialRecord, replicate: int, truth=truth, noise=noise) -> tuple[float, int]:
            return truth[record.number] + noise[record.number, replicate], 10

        for rule, tally in tallies.items():
            chosen = select_winner_sequentially(
                result,
                rerun,
                settings=settings,
                picked=picked,
                steps_left=None,
                rerun_length=lambda r: 10,
                constant_prediction=constant if rule == "knows it learnt nothing" else None,
            )
            tally[0] += chosen.kept_baseline if gap == 0 else truth[chosen.winner] == gap
            tally[1] += len(chosen.candidate(0).values)
    return {rule: (t[0] / runs, t[1] / runs) for rule, t in tallies.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=4000)
    parser.add_argument("--sequential", action="store_true", help="the fixed rule against the sequential one")
    parser.add_argument("--flat", action="store_true", help="the sequential rule, an untuned run that learnt nothing")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    if args.flat:
        print("| challengers' spread | gap | re-runs the baseline: right, baseline re-runs | knows: right, re-runs |")
        print("|---|---|---|---|")
        for spread in (1.0, 2.0, 4.0):
            for gap in (0, 3, 5, 8, 12, 20):
                rules = flat_baseline_rules(gap, spread, args.runs, rng)
                cells = [f"{r[0]:.3f}, {r[1]:.2f}" for r in rules.values()]
                print(f"| {spread:g} | {gap} | " + " | ".join(cells) + " |")
        return
    if args.sequential:
        print(
            "| top_k x seeds | gap | fixed: right | fixed: re-runs (baseline + challengers) "
            "| sequential: right | sequential: re-runs (baseline + challengers) |"
        )
        print("|---|---|---|---|---|---|")
        for top_k, seeds in ((2, 2), (2, 3), (3, 2), (4, 2), (3, 3)):
            settings = SelectionSettings(top_k=top_k, seeds=seeds)
            for gap in (0, 2, 4, 6, 10, 20):
                rules = compare_rules(gap, settings, args.runs, rng)
                cells = [f"{r[0]:.3f} | {r[1]:.2f} + {r[2]:.2f}" for r in rules.values()]
                print(f"| {top_k} x {seeds} | {gap} | " + " | ".join(cells) + " |")
        return
    gaps = (0, 2, 3, 4, 5, 6)
    print("| seeds | confidence | " + " | ".join(f"gap {g}" for g in gaps) + " |")
    print("|---|---|" + "---|" * len(gaps))
    for seeds, confidence in ((2, 0.98), (2, 0.95), (3, 0.98)):
        cells = [f"{rate(g, seeds, confidence, args.runs, rng):.3f}" for g in gaps]
        print(f"| {seeds} | {confidence} | " + " | ".join(cells) + " |")
    print("\ngap 0: share of runs that keep the baseline; gap > 0: share that choose the better challenger")


if __name__ == "__main__":
    main()
