"""Re-ranking (selection.seeds 1): the top trials re-run once each, the best re-run wins, within the steps left."""

from __future__ import annotations

import pytest

from hpo import SearchConfigError
from hpo.finetune.admission import RerunBudget, check_room_to_explore
from hpo.rerank_winner import rerank_candidates, select_winner_by_reruns
from hpo.results import SearchResult, TrialRecord
from hpo.winner_rule import SelectionSettings


def _result(values: list[float], steps: list[int], direction: str = "minimize", untuned: int | None = None):
    trials = [
        TrialRecord(
            number=n,
            state="COMPLETE",
            value=value,
            params={"n": n},
            steps=length,
            seconds=1.0,
            extra={"role": "untuned"} if n == untuned else {"planned_steps": length},
        )
        for n, (value, length) in enumerate(zip(values, steps, strict=True))
    ]
    return SearchResult("t", None, direction, "budget", trials, steps_spent=sum(steps), wall_seconds_spent=1.0)


def _rerank(result, scores: dict[int, float], *, top_k=3, steps_left=None, fail=()):
    calls = []

    def rerun(record, replicate):
        calls.append((record.number, replicate))
        if record.number in fail:
            raise RuntimeError("loss is NaN")
        return scores[record.number], record.steps

    picked = rerank_candidates(result, top_k)
    selection = select_winner_by_reruns(
        result, rerun, picked=picked, steps_left=steps_left, rerun_length=lambda record: record.steps
    )
    return selection, calls


def test_a_lucky_short_trial_loses_to_the_best_re_run():
    # Validation losses of a causal-LM LoRA search: trial 1 (12 steps) topped it by luck, trial 2 holds.
    result = _result([0.58, 0.088, 0.140, 0.148, 0.30], [48, 12, 32, 8, 4], untuned=0)
    selection, calls = _rerank(result, {1: 0.155, 2: 0.139, 3: 0.150})
    assert calls == [(1, 0), (2, 0), (3, 0)]  # best first, once each; the untuned run is not among the top
    assert selection.winner == 2
    assert selection.baseline == 1  # what the search alone would have chosen
    assert not selection.kept_baseline
    assert selection.winners_curse == pytest.approx(0.140 - 0.139)
    assert selection.steps == 12 + 32 + 8
    assert "trial 2 has the best fresh re-run" in selection.reason


def test_maximizing_and_the_untuned_trial_competes_only_by_its_rank():
    result = _result([0.90, 0.85, 0.80, 0.70], [10, 10, 10, 10], direction="maximize", untuned=0)
    selection, calls = _rerank(result, {0: 0.86, 1: 0.87, 2: 0.95}, top_k=3)
    assert [n for n, _ in calls] == [0, 1, 2]
    assert selection.winner == 2


def test_re_runs_that_do_not_fit_are_skipped_and_a_failing_one_cannot_win():
    result = _result([0.10, 0.12, 0.13], [40, 30, 10])
    # 45 steps left: trial 0 (40) runs, trial 1 (30) no longer fits, trial 2 (10) does not either (5 left).
    selection, calls = _rerank(result, {0: 0.20, 1: 0.05, 2: 0.01}, steps_left=45)
    assert calls == [(0, 0)]
    assert selection.winner == 0
    assert "too long for the budget left: trials [1, 2]" in selection.reason
    selection, calls = _rerank(result, {0: 0.20, 1: 0.05, 2: 0.01}, fail={2})
    assert selection.winner == 1
    assert selection.candidate(2).failure == "RuntimeError: loss is NaN"


def test_with_no_re_run_the_best_search_trial_wins():
    result = _result([0.10, 0.12], [40, 30])
    selection, calls = _rerank(result, {}, steps_left=5)
    assert calls == []
    assert selection.winner == 0 and selection.kept_baseline
    assert "no re-run finished" in selection.reason


def test_settings_seeds_1_means_re_ranking_and_its_reserve():
    settings = SelectionSettings(top_k=3, seeds=1)
    assert settings.enabled and settings.rerank
    decided = settings.for_budget(4)
    assert decided.sequential is False and decided.candidates == 3
    check_room_to_explore(2, decided)  # re-ranking keeps one full run: one more to explore
    with pytest.raises(Exception, match="raise the budget to at least 2"):
        check_room_to_explore(1.5, decided)
    with pytest.raises(SearchConfigError, match="sequential: true needs seeds >= 2"):
        SelectionSettings(top_k=3, seeds=1, sequential=True)
    assert not SelectionSettings(top_k=1, seeds=1).enabled  # one trial: nothing to re-rank


def test_the_reserve_is_one_full_run_and_always_two_re_runs():
    budget = RerunBudget.for_selection(
        SelectionSettings(top_k=3, seeds=1).for_budget(4), total_steps=192, full_run_steps=48, shortest_useful_steps=4
    )
    assert budget.rerank and budget.seeds == 1
    assert budget.exploration_steps() == 192  # nothing set aside for an untuned re-run
    assert budget.planned_reserve_steps() == 48  # what check and the ETA count before the lengths are known
    assert budget.rerun_steps_after(_result([], []), 32) == 32  # the new trial's own re-run
    # The top 3 would re-run for 12 + 32 + 8 = 52 steps: one full run (48) is kept.
    result = _result([0.088, 0.140, 0.148], [12, 32, 8])
    assert budget.rerun_steps_now(result) == 48
    # A 64-step trial may become the best: its re-run and the shortest other top trial's (12) are kept whatever
    # their lengths (52 + 64 + 76 = 192).
    assert budget.steps_needed(result, 64) == 192 and budget.fits(result, 64)
    assert not budget.fits(result, 65)
    assert budget.rerank_reserve([12, 8]) == 20 and budget.rerank_reserve([]) == 0
    assert budget.rerank_reserve([48, 16, 48]) == 64  # the best alone would be a full run: a second is kept
    assert budget.rerank_reserve([48]) == 48
    assert [t.number for t in budget.candidates(result)] == [0, 1, 2]
    # The references as the first trials (48, 16 and 16 steps at the untuned batch): one full run kept, and a
    # full-run trial still fits (80 + 48 + 64 = 192: were it the best, its re-run and a 16-step one's).
    references = _result([0.152, 0.140, 0.189], [48, 16, 16])
    assert budget.rerun_steps_now(references) == 48 and budget.fits(references, 48)
    assert not budget.fits(references, 49)


def test_re_runs_that_do_not_fit_the_reserve_are_passed_over_for_shorter_ones():
    # 48 steps left: the best trial (32) is re-run, the second (48) no longer fits, the third (8) does.
    result = _result([0.140, 0.152, 0.189], [32, 48, 8])
    selection, calls = _rerank(result, {0: 0.15, 1: 0.10, 2: 0.14}, steps_left=48)
    assert calls == [(0, 0), (2, 0)]
    assert selection.winner == 2 and "trials [1]" in selection.reason


def test_re_run_seeds_differ_per_search_seed_and_replicate_and_stay_valid_numpy_seeds():
    from hpo.finetune.reruns import rerun_seed

    seeds = {rerun_seed(search, replicate) for search in range(5) for replicate in range(3)}
    assert len(seeds) == 15 and min(seeds) == 10_000
    assert rerun_seed(0, 1) == 10_001  # search seed 0 keeps the seeds earlier versions used
    assert 10_000 <= rerun_seed(2**31 - 1, 2) < 2**32


def _rerank_with_rows(result, rows: dict[int, list[float]], z: float | None = 1.645):
    def rerun(record, replicate):
        values = rows[record.number]
        return sum(values) / len(values), record.steps, values

    picked = rerank_candidates(result, 3)
    return select_winner_by_reruns(
        result, rerun, picked=picked, steps_left=None, rerun_length=lambda record: record.steps, incumbent_z=z
    )


def _with_warm_start(result, number: int):
    result.trials[number].extra["role"] = "warm_start"
    return result


# Validation rows' losses: the incumbent (a field's recipe as a warm-start trial) and a sampled trial that
# differs from it on a few rows only, as two decent fine-tunes do.
INCUMBENT_ROWS = [0.02, 0.03, 0.01, 1.20, 0.02, 0.90, 0.04, 0.02, 0.03, 0.60]


def test_a_sampled_trial_ahead_of_the_field_recipe_by_less_than_the_rows_noise_does_not_replace_it():
    result = _with_warm_start(_result([0.10, 0.12, 0.20], [16, 32, 16]), 1)
    # Trial 0 gains 0.3 on one row and loses 0.2 on another: a mean gain of 0.01, its standard error 0.038.
    challenger = [*INCUMBENT_ROWS]
    challenger[3], challenger[5] = 0.90, 1.10
    selection = _rerank_with_rows(result, {0: challenger, 1: INCUMBENT_ROWS, 2: [v + 0.5 for v in INCUMBENT_ROWS]})
    assert selection.winner == 1
    assert "within 1.645 standard errors against warm_start trial 1 by +0.01 on the re-runs' 10" in selection.reason
    assert selection.noise_std == pytest.approx(0.0379, abs=1e-4)  # the standard error of the mean gain
    assert selection.margin == pytest.approx(1.645 * selection.noise_std)
    # Without the test, the best re-run wins as before; the reason still says by how much, row by row.
    plain = _rerank_with_rows(result, {0: challenger, 1: INCUMBENT_ROWS, 2: INCUMBENT_ROWS}, z=None)
    assert plain.winner == 0 and plain.margin == 0.0
    assert (
        "it beats warm_start trial 1 by +0.01 on the re-runs' 10 validation rows (standard error 0.038)" in plain.reason
    )


def test_a_sampled_trial_that_beats_the_field_recipe_on_most_rows_wins():
    result = _with_warm_start(_result([0.10, 0.12, 0.20], [16, 32, 16]), 1)
    challenger = [v * 0.5 for v in INCUMBENT_ROWS]  # better on every row
    selection = _rerank_with_rows(result, {0: challenger, 1: INCUMBENT_ROWS, 2: INCUMBENT_ROWS})
    assert selection.winner == 0
    assert "it beats warm_start trial 1 by +0.1435" in selection.reason
    assert "by more than 1.645 standard errors" in selection.reason


def test_the_incumbent_test_needs_an_incumbent_and_rows_on_both_sides():
    # The best re-run is the warm-start trial itself: nothing to test.
    result = _with_warm_start(_result([0.10, 0.12, 0.20], [16, 32, 16]), 0)
    assert (
        _rerank_with_rows(result, {0: INCUMBENT_ROWS, 1: [v + 0.1 for v in INCUMBENT_ROWS], 2: INCUMBENT_ROWS}).winner
        == 0
    )
    # No warm-start or untuned trial among the re-run: the best re-run wins, and the reason says so.
    plain = _result([0.10, 0.12, 0.20], [16, 32, 16])
    selection = _rerank_with_rows(plain, {0: INCUMBENT_ROWS, 1: [v + 0.1 for v in INCUMBENT_ROWS], 2: INCUMBENT_ROWS})
    assert selection.winner == 0
    assert "no warm-start or untuned trial was re-run" in selection.reason

    # Re-runs without row scores (a metric other than one split's loss): the best re-run wins.
    def rerun(record, replicate):
        return {0: 0.10, 1: 0.11, 2: 0.3}[record.number], record.steps, None

    result = _with_warm_start(_result([0.10, 0.12, 0.20], [16, 32, 16]), 1)
    selection = select_winner_by_reruns(
        result, rerun, picked=rerank_candidates(result, 3), steps_left=None, rerun_length=lambda r: 0, incumbent_z=1.0
    )
    assert selection.winner == 0
    assert "no row-by-row scores to test it against trial 1" in selection.reason


def test_incumbent_z_is_checked_and_belongs_to_re_ranking():
    assert SelectionSettings(seeds=1, incumbent_z=1.645).incumbent_z == 1.645
    with pytest.raises(SearchConfigError, match="search.selection.incumbent_z: expected a number >= 0"):
        SelectionSettings(seeds=1, incumbent_z=-1)
    with pytest.raises(SearchConfigError, match="applies to re-ranking"):
        SelectionSettings(seeds=2, incumbent_z=1.0)
