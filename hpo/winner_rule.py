"""Noise-aware choice of a search's winner: re-run the top candidates with fresh seeds, keep the baseline
unless a candidate beats it by more than the noise measured across those seeds.

A search's best validation score is the maximum of many noisy single-seed scores: it over-estimates the
winner (the winner's curse), and on small fine-tunes it often picks a configuration no better than the
untuned one (Liu and Wang, ACL 2021). So the winner is not the best trial. The top ``top_k`` complete
trials by validation (the baseline always among them) are re-run ``seeds`` times each with fresh seeds;
the candidate with the best mean replaces the baseline only if

    mean(candidate) - mean(baseline) > t(q, df) * s * sqrt(1/n_candidate + 1/n_baseline)

(signs flipped when minimizing), where ``s`` is the pooled standard deviation across the re-runs of all
candidates (df = sum of n_i - 1) and q = 1 - (1 - confidence) / (number of challengers): a one-sided test,
Bonferroni-corrected because the best of several challengers is the one tested. The baseline's own
search score counts as one more sample: it is unbiased, since the baseline is re-run whatever its rank
(a challenger's search score is not: it was picked for being high).

Measured on synthetic scores with unit noise (benchmarks/selection_noise.py, top_k=3, seeds=2,
confidence=0.98): with equal true scores the baseline is kept in 98% of runs; a challenger better by
4, 5 or 6 noise standard deviations is chosen in 71%, 88% and 96% of runs. More seeds buy power.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from scipy import stats

from hpo import attributes
from hpo.errors import SearchConfigError
from hpo.results import SearchResult, TrialRecord

# rerun(trial, replicate) -> (score, steps) or (score, steps, row_scores): one fresh-seed re-run of a search
# trial; row_scores (where given) are each validation row's share of the score, their mean the score.
Rerun = Callable[[TrialRecord, int], tuple[float, int] | tuple[float, int, list[float] | None]]


# Candidates re-run at most, the baseline included, when search.selection.top_k is not given: the fixed rule
# re-runs 3; the sequential rule (small budgets) 2: every further challenger's re-run is a step less to
# explore, and its scores would pool into the noise estimate: a short trial still learning (0.658 in the
# search, 0.796 re-run) then widens the margin past a clear gap (0.279 for a challenger at 0.846 and 0.864).
FIXED_TOP_K = 3
SEQUENTIAL_TOP_K = 2


@dataclass(frozen=True, kw_only=True)
class SelectionSettings:
    # Candidates re-run at most, the baseline included (beyond 2, only if they fit the budget); None (auto):
    # FIXED_TOP_K under the fixed rule, SEQUENTIAL_TOP_K under the sequential one (``for_budget``).
    top_k: int | None = None
    # Fresh seeds per candidate: >= 2 measure the noise; 1 re-ranks the top_k trials by one re-run each, the
    # best re-run winning with no noise test (hpo.rerank_winner); 0: no re-runs, the best trial wins.
    seeds: int = 2
    confidence: float = 0.98  # one-sided, over all challengers together
    # One re-run at a time, stopping once the decision is clear (hpo.sequential_winner); ``seeds`` is then
    # the most re-runs per candidate, and one re-run of the baseline and of each challenger is reserved.
    # None (auto): the fixed rule where the budget holds its reserve and a full run to explore, else this
    # one (``for_budget``), so a small budget is explored instead of refused.
    sequential: bool | None = None
    # Re-ranking (seeds: 1): a sampled trial replaces the best re-run warm-start or untuned trial (a
    # configuration the user would launch without the search: a field's recipe) only when its re-run beats
    # that one's by more than this many standard errors of their row-by-row difference on the re-runs'
    # shared validation rows (hpo.rerank_winner); None: the best re-run wins.
    incumbent_z: float | None = None

    def __post_init__(self) -> None:
        top_k = self.top_k
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise SearchConfigError(f"search.selection.top_k: expected an integer >= 1 or null (auto), got {top_k!r}")
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or self.seeds < 0:
            raise SearchConfigError(
                f"search.selection.seeds: expected 0 (no re-runs: the best trial wins), 1 (re-rank the top_k "
                f"trials by one fresh re-run each) or an integer >= 2 (re-runs that measure the noise), "
                f"got {self.seeds!r}"
            )
        if self.sequential is not None and not isinstance(self.sequential, bool):
            raise SearchConfigError(
                f"search.selection.sequential: expected true, false or null (auto), got {self.sequential!r}"
            )
        if self.seeds == 1 and self.sequential:
            raise SearchConfigError(
                "search.selection: sequential: true needs seeds >= 2 (seeds: 1 re-ranks by one re-run each)"
            )
        z = self.incumbent_z
        if z is not None and (isinstance(z, bool) or not isinstance(z, (int, float)) or not 0 <= z < math.inf):
            raise SearchConfigError(
                f"search.selection.incumbent_z: expected a number >= 0 (standard errors) or null, got {z!r}"
            )
        if z is not None and self.seeds != 1:
            raise SearchConfigError(
                f"search.selection.incumbent_z applies to re-ranking (seeds: 1), not to seeds: {self.seeds}"
            )
        if not 0.5 <= self.confidence < 1:
            raise SearchConfigError(
                f"search.selection.confidence: expected a value in [0.5, 1), got {self.confidence!r}"
            )

    @property
    def enabled(self) -> bool:
        return self.seeds >= 1 and (self.top_k is None or self.top_k >= 2)

    @property
    def rerank(self) -> bool:
        """One fresh re-run per candidate and the best re-run wins: no baseline, no noise test."""
        return self.seeds == 1

    @property
    def candidates(self) -> int:
        """top_k, or what auto means for the rule (the fixed one while ``sequential`` is undecided)."""
        return self.top_k or (SEQUENTIAL_TOP_K if self.sequential else FIXED_TOP_K)

    def for_budget(self, full_runs: float) -> SelectionSettings:
        """These settings with ``sequential`` and ``top_k`` decided for a budget of ``full_runs`` full-run
        equivalents (math.inf: no step budget): when auto, the fixed rule if its reserve (``top_k x seeds`` full
        runs at worst) leaves one full run to explore, the sequential rule (one re-run per candidate reserved)
        otherwise; then top_k as the rule's default where it is not given."""
        sequential = self.sequential
        if self.rerank:
            sequential = False  # one re-run each, whatever the budget: there is no decision to stop early
        elif sequential is None:
            sequential = (self.top_k or FIXED_TOP_K) * self.seeds + 1 > full_runs
        decided = replace(self, sequential=sequential)
        return replace(decided, top_k=decided.candidates)


@dataclass
class Candidate:
    trial: int  # the search trial it comes from
    role: str | None  # "untuned" for the baseline
    params: dict[str, Any]
    search_value: float | None  # its single-seed validation score during the search
    values: list[float] = field(default_factory=list)  # validation scores of the fresh-seed re-runs
    counts_search_value: bool = False  # the baseline's search score is an unbiased extra sample
    steps: int = 0  # steps of the re-runs (a fine-tune search: at the untuned run's batch)
    failure: str | None = None  # a re-run failed: the candidate cannot win
    # Per re-run that gave them: each validation row's share of its score (rows in the split's order).
    row_scores: list[list[float]] = field(default_factory=list)

    @classmethod
    def of_trial(cls, record: TrialRecord, *, baseline: bool) -> Candidate:
        """A candidate for a search trial, before any re-run; the baseline's search score counts as a sample."""
        return cls(
            trial=record.number,
            role=record.extra.get(attributes.ROLE),
            params=record.params,
            search_value=record.value if record.state == "COMPLETE" else None,
            counts_search_value=baseline,
        )

    def add_rerun(self, rerun: Rerun, record: TrialRecord) -> bool:
        """Run replicate ``len(values)`` of ``record`` and record it; False, with ``failure`` set, when it
        raises or scores NaN: a failing re-run disqualifies its candidate, never the selection."""
        replicate = len(self.values)
        try:
            outcome = rerun(record, replicate)
        except Exception as exc:
            self.failure = f"{type(exc).__name__}: {exc}"
            return False
        score, steps = outcome[0], outcome[1]
        if not math.isfinite(score):
            self.failure = f"re-run {replicate} scored {score!r}"
            return False
        self.values.append(float(score))
        self.steps += int(steps)
        if len(outcome) > 2 and outcome[2] is not None:
            self.row_scores.append([float(v) for v in outcome[2]])
        return True

    @property
    def scores(self) -> list[float]:
        """What the decision uses: the re-runs, plus the search score where it is unbiased."""
        extra = [self.search_value] if self.counts_search_value and self.search_value is not None else []
        return [*extra, *self.values]

    @property
    def mean(self) -> float:
        scores = self.scores
        return sum(scores) / len(scores) if scores else math.nan

    @property
    def rerun_mean(self) -> float:
        return sum(self.values) / len(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        scores = self.scores
        if len(scores) < 2:
            return 0.0
        mean = self.mean
        return math.sqrt(sum((v - mean) ** 2 for v in scores) / (len(scores) - 1))


@dataclass
class Selection:
    candidates: list[Candidate]
    winner: int  # trial number of the chosen candidate
    baseline: int  # trial number of the baseline
    noise_std: float  # pooled standard deviation of one re-run's score
    margin: float  # how much the best challenger had to beat the baseline by
    reason: str

    @property
    def kept_baseline(self) -> bool:
        return self.winner == self.baseline

    def candidate(self, trial: int) -> Candidate:
        return next(c for c in self.candidates if c.trial == trial)

    @property
    def winners_curse(self) -> float | None:
        """The winner's search score minus its mean over the fresh re-runs (the over-estimate)."""
        winner = self.candidate(self.winner)
        return None if winner.search_value is None or not winner.values else winner.search_value - winner.rerun_mean

    @property
    def steps(self) -> int:
        return sum(c.steps for c in self.candidates)

    def to_dict(self) -> dict[str, Any]:
        return {
            **{k: v for k, v in asdict(self).items() if k != "candidates"},
            "candidates": [
                {
                    **asdict(c),
                    "mean": c.mean if c.scores else None,
                    "rerun_mean": c.rerun_mean if c.values else None,
                    "std": c.std,
                }
                for c in self.candidates
            ],
            "kept_baseline": self.kept_baseline,
            "winners_curse": self.winners_curse,
            "steps": self.steps,
        }


def pick_candidates(result: SearchResult, top_k: int) -> list[TrialRecord]:
    """The untuned (baseline) trial, then the best complete feasible trials by search value, ``top_k`` in all."""
    baseline = [t for t in result.trials if t.extra.get(attributes.ROLE) == attributes.UNTUNED]
    if not baseline:
        raise SearchConfigError(f"selection: the search has no {attributes.UNTUNED!r} trial to compare candidates with")
    challengers = [t for t in result.ranked() if t.number != baseline[0].number]
    return [baseline[0], *challengers[: max(0, top_k - 1)]]


def trial_score(values: list[float], use: str, direction: str) -> float:
    """A run's score from its evaluations: the last one, or the best (``use``: "last" or "best")."""
    if use == "last":
        return values[-1]
    return max(values) if direction == "maximize" else min(values)


def noise_margin(quantile: float, df: int, noise: float, n_challenger: int, n_baseline: int) -> float:
    """How far a challenger's mean must beat the baseline's: the one-sided t bound on their difference.

    Infinite where no spread was measured: accuracy on a few hundred rows can repeat exactly (0.86 in the
    search and in the re-run), and a zero margin would let any gain win."""
    if noise <= 0:
        return math.inf
    return float(stats.t.ppf(quantile, df)) * noise * math.sqrt(1 / n_challenger + 1 / n_baseline)


def decide(candidates: list[Candidate], baseline: int, direction: str, confidence: float) -> Selection:
    """Keep the baseline unless the best challenger's mean beats it by more than the measured noise."""
    base = next(c for c in candidates if c.trial == baseline)
    challengers = [c for c in candidates if c.trial != baseline and c.failure is None]
    sign = 1.0 if direction == "maximize" else -1.0
    if not challengers:
        return Selection(candidates, baseline, baseline, 0.0, 0.0, "no challenger finished its re-runs")
    if base.failure is not None:
        best = max(challengers, key=lambda c: sign * c.mean)
        reason = f"the baseline failed its re-runs ({base.failure}); trial {best.trial} has the best mean"
        return Selection(candidates, best.trial, baseline, 0.0, 0.0, reason)
    finished = [base, *challengers]
    df = sum(len(c.scores) - 1 for c in finished)
    if df < 1:
        raise SearchConfigError("selection: need at least 2 re-runs of some candidate to measure the noise")
    pooled = math.sqrt(sum((len(c.scores) - 1) * c.std**2 for c in finished) / df)
    best = max(challengers, key=lambda c: sign * c.mean)
    margin = noise_margin(1 - (1 - confidence) / len(challengers), df, pooled, len(best.scores), len(base.scores))
    gain = sign * (best.mean - base.mean)
    if gain > margin:
        reason = (
            f"trial {best.trial} beats the baseline by {gain:.4g} over {len(best.values)} fresh seeds, "
            f"more than the noise margin {margin:.4g}"
        )
        return Selection(candidates, best.trial, baseline, pooled, margin, reason)
    # A challenger can also be worse than the baseline by more than the noise: say so, not "within".
    verdict = "within" if gain >= -margin else "worse by more than"
    reason = (
        f"the best challenger (trial {best.trial}) is {gain:+.4g} from the baseline over fresh seeds, "
        f"{verdict} the noise margin {margin:.4g}: the baseline is kept"
    )
    return Selection(candidates, baseline, baseline, pooled, margin, reason)


def select_winner(
    result: SearchResult,
    rerun: Rerun,
    *,
    settings: SelectionSettings,
    picked: list[TrialRecord] | None = None,
) -> Selection:
    """Re-run the top candidates (``rerun(trial, replicate) -> (score, steps)``) and decide the winner.

    ``replicate`` counts 0..seeds-1; the caller maps it to fresh seeds (never the search's own), and runs
    the same replicate index identically for every candidate, so candidates are compared on equal terms.
    """
    picked = picked or pick_candidates(result, settings.candidates)
    candidates = []
    for record in picked:
        candidate = Candidate.of_trial(record, baseline=record.number == picked[0].number)
        for _ in range(settings.seeds):
            if not candidate.add_rerun(rerun, record):
                break
        candidates.append(candidate)
    return decide(candidates, picked[0].number, result.direction, settings.confidence)
