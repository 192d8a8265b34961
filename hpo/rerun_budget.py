"""One step budget for exploring and for re-running the candidates (hpo.selection), never exceeded.

The winner is chosen by re-running the top candidates with fresh seeds, and those re-runs are paid from
the same budget as the search. Two must always be re-run: the baseline (the untuned run) and the best
challenger; further challengers (up to top_k candidates) are re-run only if they fit in what exploration
left. A candidate's re-runs cost its own length, which is only known once the sampler has proposed it (a
5-epoch trial costs 5/3 of a 3-epoch untuned run, each time it is re-run). So before a trial starts, its
planned length is checked: it may start only if, once it has finished, the baseline's and the best
challenger's re-runs still fit in what is left, whether it becomes the best challenger or not.
A trial that does not fit runs shortened when it can (hpo.shortening: fewer epochs or a larger batch);
when no shorter version fits either, it is not run and is recorded as infeasible. Exploration ends when
what is left after the current candidates' re-runs is shorter than any useful trial, or when the sampler
keeps proposing trials that do not fit.

Earlier versions set a fixed reserve aside at the untuned run's length and gave the unneeded part back;
a longer best trial found with it was re-run whatever its length, and searches ended 14-49% over budget.
Holding room for all top_k candidates instead let a poor but long second challenger stop exploration
(benchmarks/RESULTS.md, 2026-11-28).
"""

from __future__ import annotations

from dataclasses import dataclass

import optuna

from hpo.optimize import InfeasibleTrial, SearchDone
from hpo.results import SearchResult, TrialRecord
from hpo.selection import pick_candidates

NOT_RUN_ATTR = "not_run"  # a trial refused because its re-runs would not fit the budget
MAX_REFUSED_IN_A_ROW = 20  # then the sampler is not finding anything that fits: exploration ends


def rerun_steps(picked: list[TrialRecord], seeds: int, full_run_steps: int, baseline_role: str) -> int:
    """Optimizer steps the re-runs of ``picked`` will take: each candidate at its own length (a complete
    trial's, or its planned length), the baseline at the full run's (its search trial may have been pruned)."""
    total = 0
    for trial in picked:
        if trial.extra.get("role") == baseline_role:
            length = full_run_steps
        else:
            length = int(trial.extra.get("planned_steps") or trial.steps)
        total += seeds * length
    return total


def affordable_candidates(
    result: SearchResult, top_k: int, baseline_role: str, *, seeds: int, full_run_steps: int, max_steps: int
) -> list[TrialRecord]:
    """The baseline and the best challenger (always: without them there is no selection), then the next
    best challengers whose re-runs still fit in ``max_steps`` (one too long is passed over), ``top_k`` in all
    at most. Only the first two can take the re-runs past ``max_steps``."""
    ranked = pick_candidates(result, len(result.trials) + 1, baseline_role)
    chosen = ranked[:2]
    used = rerun_steps(chosen, seeds, full_run_steps, baseline_role)
    for trial in ranked[2:]:
        if len(chosen) >= top_k:
            break
        cost = rerun_steps([trial], seeds, full_run_steps, baseline_role)
        if used + cost <= max_steps:
            chosen.append(trial)
            used += cost
    return chosen


@dataclass(kw_only=True)
class RerunBudget:
    """The whole step budget of a search with re-runs; ``admit`` is asked before each trial starts."""

    total_steps: int
    full_run_steps: int
    top_k: int
    seeds: int
    baseline_role: str
    shortest_useful_steps: int  # e.g. one evaluation interval: a shorter room ends exploration
    refused_in_a_row: int = 0

    def exploration_steps(self) -> int:
        """The most exploration can ever get: all but the baseline's re-runs (always needed)."""
        return self.total_steps - self.seeds * self.full_run_steps

    def rerun_steps_now(self, result: SearchResult) -> int:
        """The re-runs that must happen: the baseline's and the best challenger's (without them, no selection)."""
        picked = pick_candidates(result, 2, self.baseline_role)
        return rerun_steps(picked, self.seeds, self.full_run_steps, self.baseline_role)

    def rerun_steps_after(self, result: SearchResult, length: int) -> int:
        """The re-runs that must happen once a trial of ``length`` steps has finished, at most: it may stay
        behind the best challenger, or take its place."""
        baseline, *best = pick_candidates(result, 2, self.baseline_role)
        best_length = rerun_steps(best, 1, self.full_run_steps, self.baseline_role)
        return rerun_steps([baseline], self.seeds, self.full_run_steps, self.baseline_role) + self.seeds * max(
            length, best_length
        )

    def steps_needed(self, result: SearchResult, length: int) -> int:
        """Where a trial of ``length`` planned steps would take the search: spent, itself, and its re-runs."""
        return result.steps_spent + length + self.rerun_steps_after(result, length)

    def fits(self, result: SearchResult, length: int) -> bool:
        """Whether a trial of ``length`` planned steps may start now (its re-runs included)."""
        return self.steps_needed(result, length) <= self.total_steps

    def admit(self, result: SearchResult, length: int, trial: optuna.Trial) -> None:
        """Return if a trial of ``length`` planned steps fits with every re-run it may cause; otherwise raise
        InfeasibleTrial (not run), or SearchDone when nothing useful can fit any more."""
        spent, needed = result.steps_spent, self.steps_needed(result, length)
        if needed <= self.total_steps:
            self.refused_in_a_row = 0
            return
        self.refused_in_a_row += 1
        left = self.total_steps - spent - self.rerun_steps_now(result)
        if left < self.shortest_useful_steps:
            raise SearchDone(
                f"step budget spent: {spent} of {self.total_steps} optimizer steps explored, the rest is kept "
                "for the candidates' re-runs"
            )
        if self.refused_in_a_row >= MAX_REFUSED_IN_A_ROW:
            raise SearchDone(
                f"step budget spent: the last {self.refused_in_a_row} trials proposed were too long to fit, with "
                f"their re-runs, in the {left} steps left after the candidates' re-runs"
            )
        trial.set_user_attr(NOT_RUN_ATTR, True)
        raise InfeasibleTrial(
            f"not run: {length} steps, then its re-runs, would take the search to {needed} optimizer steps, over "
            f"the budget of {self.total_steps}"
        )

    def candidates(self, result: SearchResult) -> list[TrialRecord]:
        """The baseline and the best challenger, then the next challengers whose re-runs fit what is left."""
        return affordable_candidates(
            result,
            self.top_k,
            self.baseline_role,
            seeds=self.seeds,
            full_run_steps=self.full_run_steps,
            max_steps=self.total_steps - result.steps_spent,
        )
