"""The step budget shared by exploration and the candidates' re-runs: what a trial may cost before it starts."""

import pytest

from hpo import attributes
from hpo.attributes import NOT_RUN
from hpo.errors import InfeasibleTrial, SearchDone
from hpo.finetune.admission import (
    EPOCHS,
    MAX_REFUSED_IN_A_ROW,
    SHORTEN_AFTER_REFUSALS,
    RerunBudget,
    affordable_candidates,
    rerun_steps,
    shortens_now,
)
from hpo.results import SearchResult, TrialRecord
from hpo.rung_signal import RungSignal
from hpo.winner_rule import SelectionSettings, pick_candidates


def _trial(number, value, steps, role=None, state="COMPLETE"):
    extra = {"role": role} if role else {"planned_steps": steps}
    return TrialRecord(number=number, state=state, value=value, params={}, steps=steps, seconds=0.0, extra=extra)


def _result(trials):
    return SearchResult(
        study_name="s",
        storage=None,
        direction="maximize",
        stop_reason="",
        trials=trials,
        steps_spent=sum(t.steps for t in trials),
        wall_seconds_spent=0,
    )


class _Trial:
    def __init__(self):
        self.user_attrs = {}

    def set_user_attr(self, key, value):
        self.user_attrs[key] = value


def _budget(total=1000, shortest=10):
    return RerunBudget(total_steps=total, full_run_steps=100, top_k=3, seeds=2, shortest_useful_steps=shortest)


def test_rerun_cost_and_affordable_candidates():
    result = _result(
        [
            _trial(0, 0.70, 40, role="untuned", state="PRUNED"),  # pruned in the search: re-run at the full length
            _trial(1, 0.90, 300),  # the best, but long
            _trial(2, 0.85, 50),
            _trial(3, 0.80, 60),
            _trial(4, 0.75, 70),
        ]
    )
    picked = pick_candidates(result, 3)
    assert [t.number for t in picked] == [0, 1, 2]
    assert rerun_steps(picked, 2, 100) == 2 * (100 + 300 + 50)
    # 1,000 steps left: the baseline (200) and the best challenger (trial 1: 600) always; then trial 2 (100)
    # fits, trial 3 (120) does not, trial 4 (140) does not.
    cheap = affordable_candidates(result, 4, seeds=2, full_run_steps=100, max_steps=1000)
    assert [t.number for t in cheap] == [0, 1, 2]
    # 700 left: the first two go over it (800), nothing else is added.
    tight = affordable_candidates(result, 3, seeds=2, full_run_steps=100, max_steps=700)
    assert [t.number for t in tight] == [0, 1]
    roomy = affordable_candidates(result, 3, seeds=2, full_run_steps=100, max_steps=10_000)
    assert [t.number for t in roomy] == [0, 1, 2]


def test_a_trial_starts_only_if_the_reruns_it_may_cause_still_fit():
    budget = _budget(total=1000)
    # Spent 150; the untuned run and one 50-step challenger must be re-run: 2 x 100 + 2 x 50 = 300.
    result = _result([_trial(0, 0.5, 100, role="untuned"), _trial(1, 0.6, 50)])
    assert budget.rerun_steps_now(result) == 300
    # A trial of L steps may become the best challenger: then 2 x 100 + 2 x L; else it stays 300.
    assert budget.rerun_steps_after(result, 100) == 400
    assert budget.rerun_steps_after(result, 20) == 300
    budget.admit(result, 216, _Trial())  # the longest that fits: 150 + 216 + 632 = 998
    with pytest.raises(InfeasibleTrial):
        budget.admit(result, 217, _Trial())  # 150 + 217 + 634 = 1001
    trial = _Trial()
    with pytest.raises(InfeasibleTrial, match="not run: 250 steps, then its re-runs, would take the search to 1100"):
        budget.admit(result, 250, trial)
    assert trial.user_attrs == {NOT_RUN: True}


def test_only_the_best_challenger_must_be_rerun_further_ones_when_they_fit():
    result = _result([_trial(0, 0.5, 100, role="untuned"), _trial(1, 0.7, 300), _trial(2, 0.6, 50)])
    budget = _budget(total=2000)
    # The second challenger (trial 2) holds no room: 2 x (100 + 300) = 800 must be re-run.
    assert budget.rerun_steps_now(result) == 800
    assert budget.rerun_steps_after(result, 400) == 1000
    budget.admit(result, 400, _Trial())  # 450 + 400 + 1000 = 1850
    with pytest.raises(InfeasibleTrial):
        budget.admit(result, 700, _Trial())  # 450 + 700 + 1600 = 2750
    # At the end trial 2 is re-run only if its 100 steps fit in what is left.
    assert [t.number for t in budget.candidates(result)] == [0, 1, 2]  # 2000 - 450 = 1550 left, 900 needed
    assert [t.number for t in _budget(total=1300).candidates(result)] == [0, 1]  # 850 left


def test_exploration_ends_when_nothing_useful_fits_or_the_sampler_keeps_missing():
    result = _result([_trial(0, 0.5, 100, role="untuned"), _trial(1, 0.6, 50)])
    # 1000 - 150 spent - 300 re-runs = 550 left: a 5-step trial would be useless (shortest useful: 600).
    with pytest.raises(SearchDone, match="step budget spent: 150 of 1000"):
        _budget(total=1000, shortest=600).admit(result, 500, _Trial())
    budget = _budget(total=1000)
    for _ in range(MAX_REFUSED_IN_A_ROW - 1):
        with pytest.raises(InfeasibleTrial):
            budget.admit(result, 400, _Trial())
    budget.admit(result, 10, _Trial())  # one that fits starts the count again
    for _ in range(MAX_REFUSED_IN_A_ROW - 1):
        with pytest.raises(InfeasibleTrial):
            budget.admit(result, 400, _Trial())
    with pytest.raises(SearchDone, match=f"the last {MAX_REFUSED_IN_A_ROW} trials proposed were too long"):
        budget.admit(result, 400, _Trial())


def test_a_sampled_trial_ends_exploration_once_the_room_is_shorter_than_anything_the_space_proposes():
    """The dolly_short_qa case: 10 steps left, and no trial of the space runs fewer than 20 (one epoch of 3,
    the shortening floor). Counting one evaluation interval (7), the search refused 20 proposals first."""
    result = _result([_trial(0, 0.5, 100, role="untuned"), _trial(1, 0.6, 50)])  # 1000 - 150 - 300 = 550 left
    budget = RerunBudget(
        total_steps=1000, full_run_steps=100, top_k=3, seeds=2, shortest_useful_steps=10, shortest_proposal_steps=600
    )
    with pytest.raises(SearchDone, match="550 steps left .* fewer than the shortest trial the space allows"):
        budget.admit(result, 700, _Trial())
    # A queued trial may be shorter than the space allows (a field recipe outside it): refused, not the end.
    for attrs in ({attributes.PLANNED: True}, {attributes.GIVEN_PARAMS: {EPOCHS: 1}}):
        queued = _Trial()
        queued.user_attrs.update(attrs)
        with pytest.raises(InfeasibleTrial):
            budget.admit(result, 700, queued)
    budget.admit(result, 10, _Trial())  # one that fits still runs: the bound only ends a search on a refusal


def test_a_joint_samplers_proposal_is_shortened_only_once_it_keeps_missing():
    budget = _budget()
    sampled, queued = _Trial(), _Trial()
    queued.user_attrs[attributes.PLANNED] = True
    assert 0 < SHORTEN_AFTER_REFUSALS < MAX_REFUSED_IN_A_ROW  # some room to shorten before the search ends
    for refused in range(MAX_REFUSED_IN_A_ROW):
        budget.refused_in_a_row = refused
        assert (
            shortens_now(budget, sampled, "tpe")
            == shortens_now(budget, sampled, "gp")
            == (refused >= SHORTEN_AFTER_REFUSALS)
        )
        # An independent sampler's draw, or a queued trial (not drawn again), is shortened at once.
        assert shortens_now(budget, sampled, "random") and shortens_now(budget, sampled, "qmc")
        assert shortens_now(budget, queued, "tpe")
        assert not shortens_now(budget, sampled, "grid") and not shortens_now(budget, queued, "grid")


def test_exploration_never_gets_the_baselines_reruns():
    assert _budget(total=1000).exploration_steps() == 800


def test_the_sequential_rule_reserves_one_rerun_of_each_top_challenger():
    budget = RerunBudget(
        total_steps=1000, full_run_steps=100, top_k=3, seeds=1, shortest_useful_steps=10, challengers=2
    )
    result = _result([_trial(0, 0.70, 100, role="untuned"), _trial(1, 0.90, 30)])
    # One challenger so far: a new trial of 50 steps joins the two reserved ones whatever it scores.
    assert budget.rerun_steps_now(result) == 100 + 30
    assert budget.rerun_steps_after(result, 50) == 100 + 30 + 50
    result = _result([_trial(0, 0.70, 100, role="untuned"), _trial(1, 0.90, 30), _trial(2, 0.80, 20)])
    # Two: a new trial may take the second one's place (30 + 60) or stay out of the top two (30 + 20).
    assert budget.rerun_steps_after(result, 60) == 100 + 30 + 60
    assert budget.rerun_steps_after(result, 10) == 100 + 30 + 20


def test_an_untuned_run_that_learnt_nothing_reserves_no_rerun_under_the_sequential_rule():
    constant = RungSignal(flat=0.576, noise=0.022)
    sequential = SelectionSettings(top_k=2, seeds=2, sequential=True)
    budget = RerunBudget.for_selection(
        sequential, total_steps=700, full_run_steps=189, shortest_useful_steps=21, constant_prediction=constant
    )
    flat = _result([_trial(0, 0.592, 189, role="untuned"), _trial(1, 0.80, 128)])
    assert budget.rerun_steps_now(flat) == 128  # the challenger's re-run only
    assert budget.rerun_steps_after(flat, 96) == 128
    # 317 spent + 100 + the challenger's 128 fit in 700; with the untuned re-run's 189 they would not.
    assert budget.fits(flat, 100) and not _budget_without(sequential).fits(flat, 100)
    learnt = _result([_trial(0, 0.70, 189, role="untuned"), _trial(1, 0.80, 128)])  # beyond the band
    assert budget.rerun_steps_now(learnt) == 189 + 128
    stopped = _result([_trial(0, 0.58, 60, role="untuned", state="PRUNED"), _trial(1, 0.80, 128)])
    assert budget.rerun_steps_now(stopped) == 189 + 128  # no complete score: it must be re-run
    # The fixed rule re-runs the baseline whatever it scored: its reserve stays.
    fixed = RerunBudget.for_selection(
        SelectionSettings(top_k=2, seeds=2, sequential=False),
        total_steps=1500,
        full_run_steps=189,
        shortest_useful_steps=21,
        constant_prediction=constant,
    )
    assert fixed.constant_prediction is None and fixed.rerun_steps_now(flat) == 2 * 189 + 2 * 128
    # Exploration is capped below the baseline's reserve only where that reserve can never be released.
    assert budget.exploration_steps() == 700 and _budget_without(sequential).exploration_steps() == 700 - 189
    assert fixed.exploration_steps() == 1500 - 2 * 189


def _budget_without(selection):
    """The same budget as if the metric's starting point were unknown."""
    return RerunBudget.for_selection(selection, total_steps=700, full_run_steps=189, shortest_useful_steps=21)


def test_the_trials_table_shows_a_refused_trial_as_infeasible_without_a_value(tmp_path, capsys):
    import csv

    from hpo.result_files import write_trial_tables

    refused = TrialRecord(
        number=2,
        state="COMPLETE",
        value=0.5,
        params={"lr": 0.1},
        steps=0,
        seconds=0.0,
        feasible=False,
        failure="infeasible: not run: 160 steps, then its re-runs, would take the search to 941 optimizer steps",
    )  # stored complete at the worst value so the sampler avoids the region
    result = _result([_trial(0, 0.6, 10, role="untuned"), _trial(1, 0.8, 10), refused])
    result.discarded = {3: "not run: the search ended (step budget spent)"}
    write_trial_tables(result, tmp_path)
    with open(tmp_path / "trials.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["number"], row["state"], row["value"]) for row in rows] == [
        ("0", "COMPLETE", "0.6"),
        ("1", "COMPLETE", "0.8"),
        ("2", "INFEASIBLE", ""),
        ("3", "DISCARDED", ""),
    ]
    assert rows[2]["note"].startswith("infeasible: not run: 160 steps")
    # `tunelab trials` reads trials.json and says the same.
    from recipes.cli import main

    assert main(["trials", str(tmp_path)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[3].startswith("2 | INFEASIBLE |  | 0 |")
