"""Admission of trials under one step budget that pays for exploring and for choosing the winner.

The winner is chosen by re-running the top candidates with fresh seeds (hpo.winner_rule), and those
re-runs are paid from the same step budget as the search, which is never exceeded. Two candidates must
always be re-run: the baseline (the untuned run) and the best challenger; further challengers (up to
top_k) are re-run only if they fit in what exploration left. A candidate's re-runs cost its own length,
known only once the sampler has proposed it (a 5-epoch trial costs 5/3 of a 3-epoch untuned run, each
time it is re-run). So before a trial starts, its planned length is checked (RerunBudget.admit): it may
start only if, once it has finished, the baseline's and the best challenger's re-runs still fit in what
is left, whether it becomes the best challenger or not. Reserving room for all top_k candidates instead
would let a poor but long third candidate end exploration early. The sequential rule
(hpo.sequential_winner) reserves one re-run each of the baseline and of its top_k - 1 best challengers
instead: re-running every challenger once is how it exposes a lucky trial. And once the untuned trial has
scored what a constant prediction scores (it learnt nothing), the sequential rule can beat it without
re-running it, so its re-run is no longer reserved: that full run goes to exploring, or to the selection
if the rule needs it after all.

A proposal that does not fit runs shortened when it can (longest_fitting: fewer epochs, a value the space
allows, everything else as proposed), never below SHORTENED_EVALUATIONS of the untuned run's evaluation
intervals (SearchPlan.shortest_trial_steps): a shorter trial would pass no rung and inform the search of
little but its first steps, while paying for its model loading and evaluations. The proposal is discarded,
so the sampler learns from what actually ran rather than holding the proposal's learning rate against it.
A joint sampler's proposal is refused instead until it keeps missing (shortens_now): its learning rate was
chosen with its epochs, and shortening runs it with fewer.
When no shorter version fits either, the trial is not run and is recorded as infeasible. Exploration
ends when what is left after the current candidates' re-runs is shorter than any useful trial, or when
the sampler keeps proposing trials that do not fit.

Two budget rules, two moments. Before anything runs, check_room_to_explore asks for the worst case in
whole runs: every one of the top_k candidates re-run at the untuned run's length, and one full run left
to explore; a budget below that is refused at load time with the settings to change. Unless the user
names the rule, the fixed one is taken only where its worst case fits and the sequential one otherwise
(SelectionSettings.for_budget), so only a budget under top_k + 1 full runs is refused. During the search,
RerunBudget does the exact accounting with the lengths actually proposed, which usually leaves more to
explore than the worst case.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna

from finetune.errors import ConfigError
from hpo import attributes
from hpo.errors import InfeasibleTrial, SearchDone
from hpo.results import SearchResult, TrialRecord
from hpo.rung_signal import RungSignal
from hpo.samplers import JOINT_SAMPLERS
from hpo.space import SearchSpace, finite_values
from hpo.winner_rule import SelectionSettings, pick_candidates

EPOCHS = "training.num_train_epochs"
MAX_REFUSED_IN_A_ROW = 20  # then the sampler is not finding anything that fits: exploration ends
# A sampler that draws a trial's parameters from one model of all of them (hpo.samplers.JOINT_SAMPLERS) chose
# its learning rate for the epochs it proposed: a proposal that does not fit is refused, so that it draws a
# configuration that fits from its own model, until this many in a row were refused; then it is shortened.
SHORTEN_AFTER_REFUSALS = MAX_REFUSED_IN_A_ROW // 2
# A shortened trial runs at least this many of the untuned run's evaluation intervals, unrounded: about the
# schedulers' second rung (the first is one interval, reduction factor 3), so it is compared with its peers
# at one or two rungs before it can be stopped (a 60-step run's third, 20 steps, ends before the rounded
# second rung at 21).
SHORTENED_EVALUATIONS = 3
# Re-ranking's reserve: the untuned trial's cost, which a search without a baseline does not pay.
RERANK_RESERVE_FULL_RUNS = 1.0


def rerun_steps(picked: list[TrialRecord], seeds: int, full_run_steps: int) -> int:
    """Optimizer steps the re-runs of ``picked`` will take: each candidate at its own length (a complete
    trial's, or its planned length), the baseline at the full run's (its search trial may have been pruned)."""
    total = 0
    for trial in picked:
        if trial.extra.get(attributes.ROLE) == attributes.UNTUNED:
            length = full_run_steps
        else:
            length = int(trial.extra.get(attributes.PLANNED_STEPS) or trial.steps)
        total += seeds * length
    return total


def affordable_candidates(
    result: SearchResult, top_k: int, *, seeds: int, full_run_steps: int, max_steps: int
) -> list[TrialRecord]:
    """The baseline and the best challenger (always: without them there is no selection), then the next
    best challengers whose re-runs still fit in ``max_steps`` (one too long is passed over), ``top_k`` in all
    at most. Only the first two can take the re-runs past ``max_steps``."""
    ranked = pick_candidates(result, len(result.trials) + 1)
    chosen = ranked[:2]
    used = rerun_steps(chosen, seeds, full_run_steps)
    for trial in ranked[2:]:
        if len(chosen) >= top_k:
            break
        cost = rerun_steps([trial], seeds, full_run_steps)
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
    shortest_useful_steps: int  # e.g. one evaluation interval: a shorter room ends exploration
    # The fewest steps any trial the sampler proposes can run, shortened or not (hpo.finetune.plan's
    # _fewest_steps_proposed, at most SearchPlan.shortest_trial_steps; 0: unknown): a shorter room ends
    # exploration for a sampled trial, where one interval would let it refuse MAX_REFUSED_IN_A_ROW first.
    shortest_proposal_steps: int = 0
    # Challengers whose re-runs are reserved: the best one for the fixed rule; the sequential rule re-runs
    # each of its top_k - 1 once (ranking them by fresh seeds is what exposes a lucky trial).
    challengers: int = 1
    # Where the metric starts (hpo.rung_signal): an untuned trial scoring there needs no reserved re-run.
    # Only for the sequential rule, which can decide without that re-run; None: always reserved.
    constant_prediction: RungSignal | None = None
    # Re-ranking (selection.seeds 1, hpo.rerank_winner): no baseline; the top_k best trials, whatever their
    # role, are re-run once each while they fit, from a reserve of RERANK_RESERVE_FULL_RUNS (rerank_reserve).
    rerank: bool = False
    refused_in_a_row: int = 0

    @classmethod
    def for_selection(
        cls,
        selection: SelectionSettings,
        *,
        total_steps: int,
        full_run_steps: int,
        shortest_useful_steps: int,
        shortest_proposal_steps: int = 0,
        constant_prediction: RungSignal | None = None,
    ) -> RerunBudget:
        """The reserve ``selection``'s rule needs: ``seeds`` re-runs of the baseline and the best challenger
        (fixed rule), or one of the baseline (unless it learnt nothing) and of each of the top_k - 1
        challengers (sequential rule)."""
        return cls(
            total_steps=total_steps,
            full_run_steps=full_run_steps,
            top_k=selection.candidates,
            seeds=reserved_reruns(selection),
            shortest_useful_steps=shortest_useful_steps,
            shortest_proposal_steps=shortest_proposal_steps,
            challengers=selection.candidates - 1 if selection.sequential else 1,
            constant_prediction=constant_prediction if selection.sequential else None,
            rerank=selection.rerank,
        )

    def baseline_rerun_steps(self, baseline: TrialRecord) -> int:
        """The baseline's reserved re-runs: none once its search trial scored a constant prediction's score."""
        signal = self.constant_prediction
        if signal is not None and baseline.state == "COMPLETE" and baseline.value is not None:
            if signal.is_flat(baseline.value):
                return 0
        return rerun_steps([baseline], self.seeds, self.full_run_steps)

    def planned_reserve_steps(self) -> int:
        """The steps kept to choose the winner as planned before the search: the baseline's ``seeds`` re-runs
        at full length (the challengers' are reserved as their lengths become known), or re-ranking's
        RERANK_RESERVE_FULL_RUNS full runs (rerank_reserve: the real top trials' lengths decide)."""
        if self.rerank:
            return round(RERANK_RESERVE_FULL_RUNS * self.full_run_steps)
        return self.seeds * self.full_run_steps

    def exploration_steps(self) -> int:
        """The most exploration can ever get: all but the baseline's re-runs, or everything where the reserve
        may turn out smaller than planned (a baseline that learns nothing; re-ranking short top trials):
        admission then holds the reserve back for as long as it is needed, where a cap here would stop a
        running trial once exploration reached it."""
        if self.constant_prediction or self.rerank:
            return self.total_steps
        return self.total_steps - self.planned_reserve_steps()

    def rerun_steps_now(self, result: SearchResult) -> int:
        """The re-runs that must happen: the baseline's and the reserved challengers' (without the best
        challenger's, no selection); re-ranking: its reserve for the top trials."""
        if self.rerank:
            return self.rerank_reserve(self._top_lengths(result))
        baseline, *top = pick_candidates(result, 1 + self.challengers)
        return self.baseline_rerun_steps(baseline) + rerun_steps(top, self.seeds, self.full_run_steps)

    def rerun_steps_after(self, result: SearchResult, length: int) -> int:
        """The re-runs that must happen once a trial of ``length`` steps has finished, at most: it may stay
        behind the reserved challengers, or take the place of the last of them (re-ranking: any place)."""
        if self.rerank:
            top = self._top_lengths(result)
            placed = [top[:i] + [length] + top[i:] for i in range(len(top) + 1)]
            return max(self.rerank_reserve(lengths[: self.top_k]) for lengths in [top, *placed])
        baseline, *top = pick_candidates(result, 1 + self.challengers)
        lengths = [rerun_steps([trial], 1, self.full_run_steps) for trial in top]
        if len(lengths) < self.challengers:
            challengers = sum(lengths) + length
        else:
            challengers = max(sum(lengths), sum(lengths[:-1]) + length)
        return self.baseline_rerun_steps(baseline) + self.seeds * challengers

    def rerank_reserve(self, lengths: list[int]) -> int:
        """Steps kept for re-ranking trials of these re-run ``lengths`` (best first): all of them up to
        RERANK_RESERVE_FULL_RUNS full runs, and at least the best trial's re-run and the shortest of the others'
        whatever their lengths (one re-run alone ranks nothing: a 3-epoch batch-32 best trial is a full run).
        Reserving every top trial's re-run would starve exploration: with the field's recipes as the first
        trials, a 48- and a 32-step reference and an 8-step one held 88 of a 192-step search, and then only
        12-step trials fit."""
        if not lengths:
            return 0
        least = lengths[0] + min(lengths[1:], default=0)
        return max(least, min(sum(lengths), round(RERANK_RESERVE_FULL_RUNS * self.full_run_steps)))

    def _top_lengths(self, result: SearchResult) -> list[int]:
        return [rerun_steps([trial], 1, self.full_run_steps) for trial in result.ranked()[: self.top_k]]

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
                f"step budget spent: {spent} of {self.total_steps} steps explored, the rest is kept "
                "for the candidates' re-runs"
            )
        # A queued trial (the untuned one, a field recipe) may lie outside the space and be shorter than
        # anything the sampler proposes: only a sampled one says the space has nothing left that fits.
        if not is_queued(trial) and left < self.shortest_proposal_steps:
            raise SearchDone(
                f"step budget spent: {spent} of {self.total_steps} steps explored; the {left} steps left after "
                f"the candidates' re-runs are fewer than the shortest trial the space allows "
                f"({self.shortest_proposal_steps} steps)"
            )
        if self.refused_in_a_row >= MAX_REFUSED_IN_A_ROW:
            raise SearchDone(
                f"step budget spent: the last {self.refused_in_a_row} trials proposed were too long to fit, with "
                f"their re-runs, in the {left} steps left after the candidates' re-runs"
            )
        trial.set_user_attr(attributes.NOT_RUN, True)
        raise InfeasibleTrial(
            f"not run: {length} steps, then its re-runs, would take the search to {needed} steps, over "
            f"the budget of {self.total_steps}"
        )

    def candidates(self, result: SearchResult) -> list[TrialRecord]:
        """The baseline and the best challenger, then the next challengers whose re-runs fit what is left;
        re-ranking: the top_k best trials (the rule re-runs those that fit)."""
        if self.rerank:
            return result.ranked()[: self.top_k]
        return affordable_candidates(
            result,
            self.top_k,
            seeds=self.seeds,
            full_run_steps=self.full_run_steps,
            max_steps=self.total_steps - result.steps_spent,
        )


def is_queued(trial: optuna.Trial) -> bool:
    """Whether ``trial`` was queued (the untuned run, a grid point, a field recipe) rather than sampled."""
    return bool(trial.user_attrs.get(attributes.PLANNED)) or attributes.GIVEN_PARAMS in trial.user_attrs


def shortens_now(budget: RerunBudget, trial: optuna.Trial, sampler: str) -> bool:
    """Whether a proposal that does not fit may run shortened now rather than be refused: a grid point never
    (a grid runs its own points); a queued trial is not drawn again, and an independent sampler's learning rate
    does not depend on its epochs, so both are shortened at once; a joint sampler's proposal only after
    SHORTEN_AFTER_REFUSALS refusals in a row."""
    if sampler == "grid":
        return False
    if sampler not in JOINT_SAMPLERS or is_queued(trial):
        return True
    return budget.refused_in_a_row >= SHORTEN_AFTER_REFUSALS


def shorter_variants(params: dict[str, Any], space: SearchSpace) -> list[dict[str, Any]]:
    """``params`` with fewer epochs, each a value the space allows. Not a larger batch: budget steps count
    the rows trained on (hpo.finetune.plan.SearchPlan.work_per_step), which a larger batch does not lower."""
    epochs = _options(space, params, EPOCHS, shorter=lambda value: value < params[EPOCHS])
    return [{**params, EPOCHS: count} for count in epochs if count is not None and count < params[EPOCHS]]


def longest_fitting(
    params: dict[str, Any],
    space: SearchSpace,
    *,
    length: Callable[[dict[str, Any]], int],
    fits: Callable[[int], bool],
    shortest: int = 1,
) -> tuple[dict[str, Any], int] | None:
    """The variant with the most budget steps that still ``fits``, with its length; None when none of at
    least ``shortest`` steps fits."""
    best = None
    for variant in shorter_variants(params, space):
        steps = length(variant)
        if steps >= shortest and fits(steps) and (best is None or steps > best[1]):
            best = (variant, steps)
    return best


def _options(space: SearchSpace, params: dict[str, Any], key: str, *, shorter: Callable[[Any], bool]) -> list[Any]:
    """The values of ``key`` the space allows that pass ``shorter``; [None] when it is not searched."""
    parameter = space.parameters.get(key)
    if key not in params or parameter is None:
        return [None]
    values = finite_values(parameter)
    if values is None:
        return [params[key]]  # a float or log range: keep the proposed value
    return [value for value in values if shorter(value)]


def reserved_reruns(selection: SelectionSettings) -> int:
    """Re-runs per candidate set aside while exploring: all ``seeds`` for the fixed rule; the first one
    for the sequential rule (its further re-runs come from whatever the search left); re-ranking has one."""
    return 1 if selection.sequential else selection.seeds


def check_room_to_explore(full_runs: float, selection: SelectionSettings) -> None:
    """Refuse a budget of ``full_runs`` full-run equivalents that cannot re-run every candidate at the untuned
    run's length and still explore one full run (the worst case; RerunBudget counts the real lengths)."""
    reserve = reserved_reruns(selection) * selection.candidates if selection.enabled else 0
    if selection.enabled and selection.rerank:
        reserve = RERANK_RESERVE_FULL_RUNS
    if full_runs - reserve < 1:
        raise ConfigError(
            f"search.budget: {full_runs:g} full-run equivalents leave less than one full run to explore "
            f"after the selection reserve of {reserve} full runs (search.selection: "
            f"top_k={selection.candidates} x seeds={selection.seeds}); raise the budget to at least "
            f"{reserve + 1} or lower search.selection.top_k / seeds (seeds: 0 turns re-runs off)"
        )
