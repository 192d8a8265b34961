"""Noise-aware winner selection: the rule on known inputs, and its error rates on noisy synthetic searches."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from hpo import Budget, Float, SearchConfigError, SearchSpace, StudySettings, optimize
from hpo.optimize import PlannedTrial
from hpo.winner_rule import (
    Candidate,
    SelectionSettings,
    decide,
    select_winner,
)

NOISE = 1.0  # standard deviation of one run's validation score
UNTUNED_X = 0.1
X = "training.weight_decay"  # any config key: the synthetic objective reads it as x in [0, 1]
SPACE = SearchSpace({X: Float(low=0.0, high=1.0)})


def test_margin_is_the_bonferroni_t_bound_on_pooled_noise():
    candidates = [
        Candidate(trial=0, role="untuned", params={}, search_value=0.80, values=[0.80, 0.82]),
        Candidate(trial=3, role=None, params={}, search_value=0.90, values=[0.83, 0.85]),
        Candidate(trial=5, role=None, params={}, search_value=0.88, values=[0.79, 0.80]),
    ]
    selection = decide(candidates, baseline=0, direction="maximize", confidence=0.95)
    variances = [np.var(v, ddof=1) for v in ([0.80, 0.82], [0.83, 0.85], [0.79, 0.80])]
    pooled = math.sqrt(sum(variances) / 3)
    assert selection.noise_std == pytest.approx(pooled)
    assert selection.margin == pytest.approx(stats.t.ppf(1 - 0.05 / 2, 3) * pooled)
    assert selection.kept_baseline  # +0.03 is within a margin of ~0.04
    assert selection.winners_curse == pytest.approx(0.80 - 0.81)
    clear = [Candidate(trial=0, role="untuned", params={}, search_value=0.5, values=[0.50, 0.51])]
    clear.append(Candidate(trial=2, role=None, params={}, search_value=0.9, values=[0.80, 0.81]))
    won = decide(clear, baseline=0, direction="maximize", confidence=0.95)
    assert won.winner == 2 and won.winners_curse == pytest.approx(0.9 - 0.805)


def test_the_reason_says_whether_a_kept_baseline_was_level_or_better():
    def reason(challenger_values):
        candidates = [
            Candidate(trial=0, role="untuned", params={}, search_value=0.80, values=[0.80, 0.81]),
            Candidate(trial=1, role=None, params={}, search_value=0.90, values=challenger_values),
        ]
        return decide(candidates, baseline=0, direction="maximize", confidence=0.95).reason

    assert "within the noise margin" in reason([0.80, 0.82])
    assert "worse by more than the noise margin" in reason([0.50, 0.51])


def test_the_baseline_search_score_is_one_more_sample():
    base = Candidate(trial=0, role="untuned", params={}, search_value=0.7, values=[0.8, 0.9], counts_search_value=True)
    assert base.scores == [0.7, 0.8, 0.9] and base.mean == pytest.approx(0.8) and base.rerun_mean == pytest.approx(0.85)


def test_minimize_flips_the_sign():
    candidates = [
        Candidate(trial=0, role="untuned", params={}, search_value=2.0, values=[2.00, 2.01]),
        Candidate(trial=1, role=None, params={}, search_value=1.0, values=[1.50, 1.51]),
    ]
    assert decide(candidates, baseline=0, direction="minimize", confidence=0.95).winner == 1
    assert decide(candidates, baseline=0, direction="maximize", confidence=0.95).winner == 0


def test_a_failing_rerun_disqualifies_its_candidate_only():
    result = _search(gap=10.0, seed=0)

    def rerun(record, replicate):
        if record.extra.get("role") != "untuned":
            raise RuntimeError("out of memory")
        return 0.0, 10

    selection = select_winner(result, rerun, settings=SelectionSettings())
    assert selection.kept_baseline
    assert all(c.failure == "RuntimeError: out of memory" for c in selection.candidates if c.role is None)


@pytest.mark.parametrize(
    "raw", [{"seeds": 1, "sequential": True}, {"seeds": -2}, {"top_k": 0}, {"confidence": 1.0}, {"top_k": True}]
)
def test_bad_settings_are_named(raw):
    with pytest.raises(SearchConfigError, match="search.selection"):
        SelectionSettings(**raw)


def _true_score(x: float, gap: float) -> float:
    """Configurations with x > 0.5 are better by ``gap``; the untuned one (x = 0.1) is not."""
    return gap if x > 0.5 else 0.0


def _search(gap: float, seed: int):
    """A 12-trial random search on a noisy objective whose single-seed scores carry the winner's curse."""
    rng = np.random.default_rng(seed)

    def objective(params, reporter):
        value = _true_score(params[X], gap) + rng.normal(0.0, NOISE)
        reporter.report(10, value)
        return value

    return optimize(
        objective,
        SPACE,
        budget=Budget(trials=12),
        first_params=[PlannedTrial({X: UNTUNED_X}, role="untuned")],
        settings=StudySettings(sampler="random", seed=seed, progress=False),
    )


def _select(gap: float, seed: int):
    result = _search(gap, seed)
    rng = np.random.default_rng(10_000 + seed)  # fresh seeds: noise independent of the search's

    def rerun(record, replicate):
        return _true_score(record.params[X], gap) + rng.normal(0.0, NOISE), 10

    return select_winner(result, rerun, settings=SelectionSettings())


def test_pure_noise_keeps_the_untuned_configuration():
    """Equal true scores: the search's best trial looks better by chance; the untuned one is kept."""
    runs = [_select(gap=0.0, seed=seed) for seed in range(50)]
    assert all(r.candidate(r.winner).search_value is not None for r in runs)
    kept = sum(r.kept_baseline for r in runs)
    assert kept >= 45, f"untuned kept in {kept}/50 runs"
    # The winner's curse is real here: the best search score over-estimates what re-runs give.
    best_challengers = [max(c.search_value for c in r.candidates if c.role is None) for r in runs]
    assert np.mean(best_challengers) > 1.0 * NOISE


def test_a_real_gap_is_found():
    """A gap of 6 noise standard deviations: the better region is chosen."""
    runs = [_select(gap=6.0 * NOISE, seed=seed) for seed in range(50)]
    better = sum(_true_score(r.candidate(r.winner).params[X], 6.0) > 0 for r in runs)
    assert better >= 45, f"better configuration chosen in {better}/50 runs"
