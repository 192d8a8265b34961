"""The sequential winner rule: re-runs one seed at a time, stops when the decision is clear, within the steps left."""

from __future__ import annotations

import numpy as np
import pytest

from hpo import SearchConfigError
from hpo.results import SearchResult, TrialRecord
from hpo.rung_signal import RungSignal
from hpo.sequential_winner import select_winner_sequentially
from hpo.winner_rule import SelectionSettings, pick_candidates

SETTINGS = SelectionSettings(top_k=3, seeds=2, sequential=True)


def _result(search_values: list[float], direction: str = "maximize", pruned_baseline: bool = False) -> SearchResult:
    """Trial 0 is the untuned baseline; the others are challengers with the given search scores."""
    trials = [
        TrialRecord(
            number=n,
            state="PRUNED" if n == 0 and pruned_baseline else "COMPLETE",
            value=value,
            params={"n": n},
            steps=10,
            seconds=1.0,
            extra={"role": "untuned"} if n == 0 else {},
        )
        for n, value in enumerate(search_values)
    ]
    return SearchResult("t", None, direction, "budget", trials, steps_spent=10 * len(trials), wall_seconds_spent=1.0)


def _select(result, scores: dict[int, list[float]], *, steps_left=None, length=None, settings=SETTINGS, constant=None):
    """Re-run replicate r of trial n scores scores[n][r]; returns the selection and the re-runs in order."""
    calls = []

    def rerun(record, replicate):
        calls.append((record.number, replicate))
        return scores[record.number][replicate], (length or {}).get(record.number, 10)

    picked = pick_candidates(result, settings.candidates)
    selection = select_winner_sequentially(
        result,
        rerun,
        settings=settings,
        picked=picked,
        steps_left=steps_left,
        rerun_length=lambda record: (length or {}).get(record.number, 10),
        constant_prediction=constant,
    )
    return selection, calls


def test_a_clear_win_needs_no_baseline_rerun_and_ranks_challengers_by_their_reruns():
    # Validation losses of a causal-LM search: trial 1 (a short trial) topped it by luck (0.096, re-run 0.158),
    # trial 2 holds its score; the untuned baseline is far behind (0.95).
    result = _result([0.95, 0.096, 0.100], direction="minimize")
    selection, calls = _select(result, {1: [0.158, 0.16], 2: [0.095, 0.09]})
    assert calls == [(1, 0), (2, 0)]  # each challenger once; the baseline's full-length re-runs are saved
    assert selection.winner == 2
    assert selection.candidate(0).values == []
    assert "beats the baseline" in selection.reason


def test_a_very_lucky_challenger_makes_the_noise_large_and_the_baseline_is_re_run():
    # The pooled noise counts a challenger's search score: a drop of 0.25 on re-running is read as noise
    # (the estimate errs large), so a 0.39 gain is not clear until the baseline has a re-run of its own.
    result = _result([0.50, 0.95, 0.90])
    selection, calls = _select(result, {0: [0.50, 0.51], 1: [0.70, 0.71], 2: [0.89, 0.90]})
    assert calls[:3] == [(1, 0), (2, 0), (0, 0)]
    assert selection.winner == 2


def test_an_unclear_gap_re_runs_the_baseline_then_the_best_challenger_up_to_seeds():
    result = _result([0.80, 0.84, 0.70])
    selection, calls = _select(result, {0: [0.81, 0.80], 1: [0.82, 0.83], 2: [0.65, 0.66]})
    assert calls == [(1, 0), (2, 0), (0, 0), (1, 1), (0, 1)]
    assert selection.kept_baseline
    assert "no further re-run fits" in selection.reason


def test_re_runs_stay_within_the_steps_left():
    # Challengers of 12 and 30 steps, the baseline 60: 50 steps left pay for the challengers only.
    result = _result([0.80, 0.84, 0.83])
    length = {0: 60, 1: 12, 2: 30}
    selection, calls = _select(result, {1: [0.82, 0.83], 2: [0.83, 0.84]}, steps_left=50, length=length)
    assert calls == [(1, 0), (2, 0)]  # then the baseline (60) does not fit, nor does it pay to re-run trial 2 alone
    assert selection.kept_baseline and selection.steps <= 50


def test_a_baseline_whose_search_trial_stopped_early_is_re_run_once_before_any_decision():
    result = _result([0.50, 0.95, 0.90], pruned_baseline=True)
    result.trials[0].value = None
    selection, calls = _select(result, {0: [0.50, 0.51], 1: [0.94, 0.95], 2: [0.90, 0.91]})
    assert calls[:3] == [(1, 0), (2, 0), (0, 0)]
    assert selection.candidate(0).values[0] == 0.50


def test_a_failing_challenger_is_disqualified_and_minimize_flips_the_sign():
    result = _result([2.0, 0.5, 0.9], direction="minimize")

    def rerun(record, replicate):
        if record.number == 1:
            raise RuntimeError("out of memory")
        return {0: [2.0, 2.02], 2: [0.9, 0.91]}[record.number][replicate], 10

    picked = pick_candidates(result, 3)
    selection = select_winner_sequentially(
        result, rerun, settings=SETTINGS, picked=picked, steps_left=None, rerun_length=lambda record: 10
    )
    assert selection.candidate(1).failure == "RuntimeError: out of memory"
    assert selection.winner == 2  # 0.9 loss against the baseline's 2.0


def test_pure_noise_keeps_the_baseline_and_a_large_gap_is_found_without_baseline_reruns():
    """Synthetic searches: 12 trials with unit noise; half the challengers truly better by ``gap``."""

    def run(gap: float, seed: int):
        rng = np.random.default_rng(seed)
        truth = [0.0] + [gap if n % 2 else 0.0 for n in range(1, 12)]
        result = _result([t + rng.normal() for t in truth])
        scores = {n: [truth[n] + rng.normal() for _ in range(2)] for n in range(12)}
        selection, _ = _select(result, scores, settings=SelectionSettings(top_k=4, seeds=2, sequential=True))
        return selection, truth

    kept = sum(run(0.0, seed)[0].kept_baseline for seed in range(60))
    assert kept >= 55, f"untuned kept in {kept}/60 noise-only searches"
    found = [run(20.0, seed) for seed in range(20)]
    assert all(truth[s.winner] == 20.0 for s, truth in found)
    assert sum(len(s.candidate(0).values) for s, _ in found) <= 2  # the baseline is (almost) never re-run


def test_sequential_must_be_a_boolean():
    with pytest.raises(SearchConfigError, match="search.selection.sequential"):
        SelectionSettings(sequential="yes")


def test_a_zero_spread_decides_nothing_and_the_baseline_is_re_run():
    # Accuracy on a few hundred rows can repeat exactly: 0.86 in the search and in the re-run. That pair alone
    # measures no noise; a zero margin would let any gain win. The baseline is re-run first.
    result = _result([0.592, 0.86])
    settings = SelectionSettings(top_k=2, seeds=2, sequential=True)
    selection, calls = _select(result, {0: [0.578, 0.58], 1: [0.86, 0.85]}, settings=settings)
    assert calls[:2] == [(1, 0), (0, 0)]
    assert selection.winner == 1 and selection.margin > 0


def test_an_untuned_run_that_learnt_nothing_is_beaten_without_re_running_it():
    """SST-2 LoRA at 4 full runs: the untuned run scores the majority share (0.592 against 0.576, standard error
    0.022 on 500 rows); one challenger scored 0.806 and 0.766 on a fresh seed."""
    constant = RungSignal(flat=0.576, noise=0.0224)
    top2 = SelectionSettings(top_k=2, seeds=2, sequential=True)
    result = _result([0.592, 0.806])
    selection, calls = _select(result, {0: [0.578, 0.58], 1: [0.766, 0.77]}, settings=top2, constant=constant)
    assert calls == [(1, 0)] and selection.winner == 1
    # margin = z(1 - 0.02 / 4) * sqrt((2 x 0.0224)^2 / 1 + 0.0224^2) = 2.576 x 0.0501
    assert selection.margin == pytest.approx(2.5758 * 0.0224 * 5**0.5, rel=1e-3)
    assert "learnt nothing" in selection.reason
    # Without knowing where the metric starts, the same scores re-run the baseline and keep it (margin 0.258).
    unknown, calls = _select(result, {0: [0.578, 0.58], 1: [0.766, 0.77]}, settings=top2, steps_left=10 + 10)
    assert calls == [(1, 0), (0, 0)] and unknown.kept_baseline
    # A challenger that has not clearly left the band: the baseline is re-run as before.
    close = _result([0.592, 0.66])
    selection, calls = _select(close, {0: [0.578, 0.58], 1: [0.64, 0.65]}, settings=top2, constant=constant)
    assert calls[:2] == [(1, 0), (0, 0)] and "learnt nothing" not in selection.reason
    # An untuned run that learnt (beyond the band) is compared by its re-runs as before.
    learnt = _result([0.70, 0.806])
    selection, calls = _select(learnt, {0: [0.71, 0.70], 1: [0.80, 0.81]}, settings=top2, constant=constant)
    assert (0, 0) in calls and "learnt nothing" not in selection.reason


def test_a_flat_untuned_run_is_kept_against_challengers_that_learnt_nothing_either():
    """Pure noise around the constant prediction: the shortcut must not pick a lucky non-learner."""
    rng = np.random.default_rng(1)
    constant = RungSignal(flat=0.0, noise=1.0)
    top2 = SelectionSettings(top_k=2, seeds=2, sequential=True)
    kept = 0
    for _ in range(300):
        values = [float(rng.uniform(-1, 1)), *(float(v) for v in rng.normal(0.0, 1.0, 11))]
        scores = {n: list(rng.normal(0.0, 1.0, 2)) for n in range(12)}
        selection, _ = _select(_result(values), scores, settings=top2, constant=constant)
        kept += selection.kept_baseline
    assert kept >= 0.96 * 300
