"""Sequential choice of a search's winner: one fresh-seed re-run at a time, stopping once the decision is clear.

The fixed rule (hpo.winner_rule.select_winner) re-runs every candidate ``seeds`` times, the untuned baseline
included, whatever the scores say. When a challenger is far beyond the untuned run (a tuned LoRA at 0.10
validation loss against an untuned one at 0.65), the baseline's re-runs, each a full run, change nothing.
And the best challenger by search score is often a lucky short trial (the winner's curse), which one
fresh re-run of each challenger exposes for a fraction of a full run. So here:

1. every challenger is re-run once, in search order, each at its own length while it fits in
   ``steps_left``; challengers are then ranked by their fresh re-runs only (their search scores were picked
   for being high);
2. the best challenger is tested against the baseline with hpo.winner_rule's margin,

       mean(best re-runs) - mean(baseline scores) > t(q, df) * s * sqrt(1/n_best + 1/n_baseline),

   where the baseline's search score is one unbiased sample, and ``s`` pools every candidate's scores with
   its search score included: a challenger's search score sits above its re-runs by the winner's curse,
   so ``s`` errs large and the test errs towards keeping the baseline;
3. beaten by more than the margin: the challenger wins; worse by more than the margin: the baseline is
   kept; in between: one more re-run, of the baseline while it has no more samples than the best
   challenger, else of the best challenger, each at most ``seeds`` times and only while it fits. When
   nothing more fits, the baseline is kept.

q = 1 - (1 - confidence) / (challengers x looks): Bonferroni over the challengers and over the decision
points, at most 2 x seeds (the first round, then each further re-run of the baseline or the challenger).

Measured on synthetic searches (benchmarks/selection_noise.py --sequential, 1,000 runs, confidence 0.98,
top_k 2-4 x seeds 2-3): with equal true scores the baseline is kept in 98.4-99.1% of runs (the fixed rule:
97.8-98.8%); a challenger better by 6 noise standard deviations is chosen in 81-99% (fixed: 96-100%); where
the gap is 20, the baseline is re-run 0.03-0.91 times instead of ``seeds`` times (with one challenger, its
single re-run gives 1 degree of freedom: the baseline's re-run is what makes a clear gap clear).

A baseline that learnt nothing needs no re-run. Given ``constant_prediction`` (what a constant prediction
scores on validation, ``flat``, and that score's standard error on the validation rows, ``band``;
hpo.rung_signal), a baseline whose search score lies within ``band`` of ``flat`` is a constant predictor
give or take its validation rows: its score's noise is ``band``, known without re-running it. While it
has no re-run, the best challenger wins at any look where

    mean(best re-runs) - baseline's search score > z(q) * sqrt(s^2 / n_best + band^2),

``s`` being the challengers' pooled spread, never taken below 2 x ``band``: one or two degrees of freedom
under-estimate it often, and a challenger's seed-to-seed spread is not bounded by the rows' sampling
noise. Otherwise the rule goes on as above (re-running the baseline where that fits). On synthetic
searches (benchmarks/selection_noise.py --flat, top_k 2 x seeds 2, 1,000 runs, units of ``band``): with
challengers no better than the baseline, it keeps the baseline as often as re-running it does where
their spread is 1 or 2 (0.983, 0.973), less where it is 4 (0.912 against 0.953); a challenger 8 ahead
(spread 1) is chosen in 0.986 of runs with 0.10 baseline re-runs instead of 0.973 with 1.12. A LoRA
search whose untuned run sits at the majority share then reserves no untuned re-run, a full run (a quarter
of a 4-full-run budget) that goes to exploring instead (hpo.finetune.admission).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from scipy import stats

from hpo.results import SearchResult, TrialRecord
from hpo.rung_signal import RungSignal
from hpo.winner_rule import Candidate, Rerun, Selection, SelectionSettings, noise_margin

SPREAD_FLOOR = 2.0  # the least challenger spread assumed against a baseline that learnt nothing, in its bands


def select_winner_sequentially(
    result: SearchResult,
    rerun: Rerun,
    *,
    settings: SelectionSettings,
    picked: list[TrialRecord],
    steps_left: int | None,
    rerun_length: Callable[[TrialRecord], int],
    constant_prediction: RungSignal | None = None,
) -> Selection:
    """Re-run ``picked`` (the baseline first, then the challengers in search order) one seed at a time with
    ``rerun(trial, replicate) -> (score, steps)``; ``rerun_length(trial)``: the steps one re-run will take,
    checked against ``steps_left`` (None: no step budget) before it starts. ``constant_prediction``: where
    the metric starts (None: unknown, the baseline is always compared by its re-runs)."""
    sign = 1.0 if result.direction == "maximize" else -1.0
    baseline, challengers = picked[0], picked[1:]
    candidates = {record.number: Candidate.of_trial(record, baseline=record is baseline) for record in picked}
    left = [math.inf if steps_left is None else steps_left]

    def run_once(record: TrialRecord) -> bool:
        """One more re-run of ``record`` if it may have one and it fits; whether it ran and scored."""
        candidate = candidates[record.number]
        if candidate.failure is not None or len(candidate.values) >= settings.seeds:
            return False
        if rerun_length(record) > left[0]:
            return False
        steps_before = candidate.steps
        if not candidate.add_rerun(rerun, record):
            return False
        left[0] -= candidate.steps - steps_before
        return True

    for record in challengers:
        run_once(record)
    base = candidates[baseline.number]
    if not base.scores:  # its search trial was stopped early: it needs a score of its own
        run_once(baseline)
    # Decision points: after the first round, then after each further re-run: the baseline's (``seeds`` at
    # most) and the best challenger's (``seeds`` - 1 more at most).
    looks = 2 * settings.seeds
    while True:
        tested = [candidates[r.number] for r in challengers]
        tested = [c for c in tested if c.values and c.failure is None]
        if not tested:
            return _selection(candidates, baseline.number, baseline.number, 0.0, 0.0, "no challenger finished a re-run")
        if base.failure is not None or not base.scores:
            best = max(tested, key=lambda c: sign * c.rerun_mean)
            why = base.failure or "no score"
            reason = f"the baseline has no score ({why}); trial {best.trial} has the best re-run mean"
            return _selection(candidates, best.trial, baseline.number, 0.0, 0.0, reason)
        best = max(tested, key=lambda c: sign * c.rerun_mean)
        quantile = 1 - (1 - settings.confidence) / (len(challengers) * looks)
        if baseline_learnt_nothing(base, constant_prediction):
            band = constant_prediction.noise
            spread, _ = _pooled_noise([candidates[r.number] for r in challengers])
            spread = max(spread, SPREAD_FLOOR * band)
            margin = float(stats.norm.ppf(quantile)) * math.sqrt(spread**2 / len(best.values) + band**2)
            gain = sign * (best.rerun_mean - base.mean)
            if gain > margin:
                reason = (
                    f"the untuned run learnt nothing (search score {base.mean:.4g}, within {band:.3g} of a constant "
                    f"prediction's {constant_prediction.flat:.4g}); trial {best.trial} beats it by {gain:.4g} over "
                    f"{len(best.values)} re-run(s), beyond the margin {margin:.4g}"
                )
                return _selection(candidates, best.trial, baseline.number, spread, margin, reason)
        noise, df = _pooled_noise(list(candidates.values()))
        margin = math.inf  # no degrees of freedom (or, noise_margin, no spread): wait for another re-run
        if df >= 1:
            margin = noise_margin(quantile, df, noise, len(best.values), len(base.scores))
        gain = sign * (best.rerun_mean - base.mean)
        runs = f"{len(best.values)} re-run(s) against the baseline's {len(base.scores)} score(s)"
        if gain > margin:
            reason = f"trial {best.trial} beats the baseline by {gain:.4g} over {runs}, beyond the margin {margin:.4g}"
            return _selection(candidates, best.trial, baseline.number, noise, margin, reason)
        if gain < -margin:
            reason = (
                f"the best challenger (trial {best.trial}) is {gain:+.4g} from the baseline over {runs}, "
                f"worse by more than the noise margin {margin:.4g}: the baseline is kept"
            )
            return _selection(candidates, baseline.number, baseline.number, noise, margin, reason)
        best_record = next(r for r in challengers if r.number == best.trial)
        order = [baseline, best_record] if len(base.scores) <= len(best.values) else [best_record, baseline]
        if not any(run_once(record) for record in order):
            reason = (
                f"the best challenger (trial {best.trial}) is {gain:+.4g} from the baseline over {runs}, within "
                f"the noise margin {margin:.4g}, and no further re-run fits: the baseline is kept"
            )
            return _selection(candidates, baseline.number, baseline.number, noise, margin, reason)


def baseline_learnt_nothing(baseline: Candidate, constant_prediction: RungSignal | None) -> bool:
    """Whether the baseline, not re-run yet, scored in the search what a constant prediction scores, within
    that score's standard error."""
    if constant_prediction is None or baseline.values or baseline.search_value is None:
        return False
    return constant_prediction.is_flat(baseline.search_value)


def _pooled_noise(candidates: list[Candidate]) -> tuple[float, int]:
    """The pooled standard deviation of one run's score and its degrees of freedom, over every candidate's
    scores with its search score included (a challenger's is biased high: the estimate errs large)."""
    squares, df = 0.0, 0
    for candidate in candidates:
        values = list(candidate.values)
        if candidate.search_value is not None:
            values.append(candidate.search_value)
        if candidate.failure is not None or len(values) < 2:
            continue
        mean = sum(values) / len(values)
        squares += sum((v - mean) ** 2 for v in values)
        df += len(values) - 1
    return (math.sqrt(squares / df) if df else 0.0), df


def _selection(
    candidates: dict[int, Candidate], winner: int, baseline: int, noise: float, margin: float, reason: str
) -> Selection:
    return Selection(list(candidates.values()), winner, baseline, noise, margin, reason)
