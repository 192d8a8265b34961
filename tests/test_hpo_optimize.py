"""Conformance suite every sampler passes, scheduler behaviour on synthetic curves, budgets, failures, resume."""

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from synthetic import SPACE, curve_objective, quality

from hpo import (
    SAMPLERS,
    Budget,
    Categorical,
    Float,
    PlannedTrial,
    ReplaceTrial,
    SearchConfigError,
    SearchDone,
    SearchError,
    SearchSpace,
    StudySettings,
    optimize,
)
from hpo.results import SearchResult

HERE = Path(__file__).resolve().parent
GRID_SPACE = SearchSpace(
    {
        "training.learning_rate": Float(low=1e-5, high=1e-1, log=True, grid=(1e-4, 1e-3, 1e-2)),
        "training.num_train_epochs": Categorical(choices=(1, 3)),
        "training.lr_scheduler_type": Categorical(choices=("linear", "cosine")),
    }
)


def _run(sampler, seed=0, trials=12, objective=None, space=None, first_params=None, **kwargs) -> SearchResult:
    return optimize(
        objective or curve_objective(max_steps=3),
        space or (GRID_SPACE if sampler == "grid" else SPACE),
        budget=Budget(trials=trials),
        settings=StudySettings(sampler=sampler, seed=seed, progress=False, **kwargs),
        first_params=first_params,
    )


# ---------------------------------------------------------------- conformance: every sampler


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_sampler_respects_types_and_bounds(sampler):
    result = _run(sampler)
    assert result.count("COMPLETE") == 12
    for trial in result.trials:
        p = trial.params
        assert isinstance(p["training.learning_rate"], float) and 1e-5 <= p["training.learning_rate"] <= 1e-1
        assert isinstance(p["training.num_train_epochs"], int) and 1 <= p["training.num_train_epochs"] <= 5
        assert p["training.lr_scheduler_type"] in ("linear", "cosine", "constant")


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_sampler_warns_the_user_of_nothing(sampler):
    """Optuna's notices about its own experimental options are not for a tunelab user (quiet output)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _run(sampler, trials=12)
    assert [str(w.message) for w in caught if "optuna" in w.filename] == []


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_sampler_is_reproducible_with_a_seed(sampler):
    first, second = _run(sampler, seed=3), _run(sampler, seed=3)
    assert [t.params for t in first.trials] == [t.params for t in second.trials]
    if sampler != "grid":
        assert [t.params for t in _run(sampler, seed=4).trials] != [t.params for t in first.trials]


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_sampler_survives_failed_trials(sampler):
    calls = {"n": 0}
    inner = curve_objective(max_steps=3)

    def flaky(params, reporter):
        calls["n"] += 1
        if calls["n"] % 3 == 0:
            raise RuntimeError("CUDA out of memory (simulated)")
        return inner(params, reporter)

    result = _run(sampler, objective=flaky)
    assert result.count("FAIL") == 4 and result.count("COMPLETE") == 8
    assert all("simulated" in t.failure for t in result.trials if t.state == "FAIL")
    assert result.best_trial is not None and result.best_trial.state == "COMPLETE"


def test_grid_enumerates_every_point_exactly_once():
    result = _run("grid", trials=20)
    points = [tuple(sorted(t.params.items())) for t in result.trials]
    assert len(points) == 12 and len(set(points)) == 12
    assert result.stop_reason == "grid complete"


def test_grid_too_large_for_the_budget():
    with pytest.raises(SearchConfigError, match="the grid has 12 points but the budget allows 5 trials"):
        _run("grid", trials=5)


@pytest.mark.parametrize("sampler", ["tpe", "gp"])
def test_model_based_samplers_beat_random_on_a_smooth_objective(sampler):
    def best(s, seed):
        return _run(s, seed=seed, trials=30, objective=lambda params, reporter: quality(params)).best_value

    model = sorted(best(sampler, seed) for seed in range(3))[1]
    random = sorted(best("random", seed) for seed in range(3))[1]
    assert model >= random - 0.01 and model > 0.9


# ---------------------------------------------------------------- schedulers on synthetic curves


@pytest.mark.parametrize("scheduler", ["median", "sha", "hyperband"])
def test_scheduler_stops_bad_trials_early_and_keeps_the_best(scheduler):
    good = {"training.learning_rate": 1e-3, "training.num_train_epochs": 3, "training.lr_scheduler_type": "cosine"}
    # Two middling trials, then four clearly bad ones (quality <= 0.13 against 0.6 and 1.0).
    others = [
        {"training.learning_rate": lr, "training.num_train_epochs": 1, "training.lr_scheduler_type": "linear"}
        for lr in (1e-2, 1e-4, 1e-5, 1e-1, 2e-5, 7e-2)
    ]
    result = optimize(
        curve_objective(max_steps=81),
        SPACE,
        budget=Budget(trials=7),
        first_params=[good, *others],
        settings=StudySettings(
            sampler="random", scheduler=scheduler, min_steps=3, max_steps=81, progress=False, seed=0
        ),
    )
    by_lr = {t.params["training.learning_rate"]: t for t in result.trials}
    assert by_lr[1e-3].state == "COMPLETE" and by_lr[1e-3].steps == 81
    assert result.best_params == good
    stopped = [t for t in result.trials if t.state == "PRUNED"]
    assert len(stopped) >= 2 and all(t.steps < 81 for t in stopped)
    assert all(quality(t.params) < quality(good) for t in stopped)


# ---------------------------------------------------------------- budget, objective, failures


def test_step_budget_counts_only_steps_run_and_says_so():
    result = optimize(
        curve_objective(max_steps=30),
        SPACE,
        budget=Budget(steps=200),
        settings=StudySettings(sampler="random", scheduler="sha", min_steps=3, max_steps=30, progress=False),
    )
    assert result.stop_reason.startswith("step budget spent")
    assert result.steps_spent == sum(t.steps for t in result.trials)
    # Trials that would overrun are stopped when the budget is spent: the total lands on it.
    assert 200 <= result.steps_spent <= 200 + 1
    assert any(t.state == "PRUNED" and t.steps < 30 for t in result.trials)


def _search_of_30_step_runs(budget_steps: int) -> SearchResult:
    """Trials of 30 steps, evaluated every 5, under a step budget."""
    objective = curve_objective(max_steps=30, eval_every=5)
    return optimize(
        objective, SPACE, budget=Budget(steps=budget_steps), settings=StudySettings(sampler="random", progress=False)
    )


def test_a_trial_that_reaches_its_end_on_the_budget_completes():
    # The budget is spent exactly at the first trial's last evaluation: stopping there would save nothing,
    # so the trial completes (it used to be stopped, and a search of one run ended with no result).
    result = _search_of_30_step_runs(30)
    assert [(t.state, t.steps) for t in result.trials] == [("COMPLETE", 30)]
    assert result.best_trial is not None and result.stop_reason.startswith("step budget spent")


def test_a_budget_smaller_than_one_run_says_so():
    with pytest.raises(SearchError, match=r"no trial finished: 1 stopped before their end .*raise search.budget"):
        _search_of_30_step_runs(12)


def test_the_later_of_two_workers_racing_for_the_last_trial_gives_way():
    """Workers check the budget, then ask for a trial: two can pass the check for the last slot at once."""
    import optuna

    from hpo.attributes import DISCARDED, RETRY_OF
    from hpo.optimize import _run_trial

    study = optuna.create_study(direction="maximize")
    other = study.ask()  # another worker's trial, asked between our check and our ask: the budget's last slot
    calls = []

    def objective(params, reporter):
        calls.append(params)
        return 1.0

    _run_trial(study, objective, SPACE, Budget(trials=1), base=None)
    ours = study.trials[-1]
    assert calls == [] and ours.user_attrs.get(DISCARDED) and other.number < ours.number
    assert [r.number for r in SearchResult.from_study(study, "", None).trials] == [other.number]
    # A lost trial's retry still runs when the budget is full: it replaces the work that was lost.
    study.enqueue_trial({"training.learning_rate": 1e-4}, user_attrs={RETRY_OF: other.number})
    _run_trial(study, objective, SPACE, Budget(trials=1), base=None)
    assert len(calls) == 1 and study.trials[-1].state.name == "COMPLETE"


def test_wall_time_budget():
    result = optimize(
        curve_objective(max_steps=5, sleep=0.01),
        SPACE,
        budget=Budget(wall_seconds=0.5),
        settings=StudySettings(sampler="random", progress=False),
    )
    assert result.stop_reason.startswith("time budget spent") and result.wall_seconds_spent >= 0.5


def test_an_objective_can_end_the_search_and_keeps_what_finished():
    def until_four(params, reporter):
        if reporter.trial.number == 4:
            raise SearchDone("nothing more fits")
        return quality(params)

    result = optimize(
        until_four, SPACE, budget=Budget(trials=50), settings=StudySettings(sampler="random", progress=False)
    )
    assert result.stop_reason == "nothing more fits"
    assert [t.number for t in result.trials] == [0, 1, 2, 3]  # the trial that ended it is not a trial
    assert all(t.state == "COMPLETE" for t in result.trials)


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_an_objective_can_replace_its_trial_with_other_params(sampler):
    # Trial 2's proposal is replaced (e.g. by a shorter run): it is not a trial, the replacement runs
    # next with the given params and attributes, and only what ran counts and is seen by the sampler.
    replacement = {
        "training.learning_rate": 1e-3,
        "training.num_train_epochs": 1,
        "training.lr_scheduler_type": "linear",
    }
    proposals = []

    def replace_second(params, reporter):
        proposals.append(params)
        if len(proposals) == 3:
            raise ReplaceTrial(replacement, {"shortened": "too long"})
        return quality(params)

    result = optimize(
        replace_second, SPACE, budget=Budget(trials=5), settings=StudySettings(sampler=sampler, seed=1, progress=False)
    )
    assert [t.number for t in result.trials] == [0, 1, 3, 4, 5]  # trial 2 was replaced: not a trial
    assert proposals[3] == replacement and result.trials[2].params == replacement
    assert result.trials[2].extra["shortened"] == "too long"
    assert all(t.state == "COMPLETE" for t in result.trials)


def test_a_lost_replacement_is_retried_with_its_notes_and_counted_once(tmp_path):
    # A warm start shortened by the budget (a replacement) is lost with its worker: its retry is still that
    # recipe and still shortened, the replaced proposal names the retry, and the summary counts it once.
    import optuna

    from hpo.results import counted_once
    from hpo.storage import open_storage
    from hpo.workers import retry_lost_trial

    recipe = {"training.learning_rate": 1e-3, "training.num_train_epochs": 3, "training.lr_scheduler_type": "linear"}
    shortened = {**recipe, "training.num_train_epochs": 1}
    ran = []

    def shorten_the_recipe(params, reporter):
        if params == recipe:
            raise ReplaceTrial(shortened, {"shortened": "too long"})
        ran.append(params)
        return quality(params)

    settings = StudySettings(sampler="random", storage=str(tmp_path / "study.journal"), progress=False)
    planned = [PlannedTrial(recipe, role="warm_start")]
    first = optimize(shorten_the_recipe, SPACE, budget=Budget(trials=2), settings=settings, first_params=planned)
    assert [t.number for t in first.trials] == [1, 2] and first.trials[0].extra["role"] == "warm_start"
    study = optuna.load_study(study_name=settings.study_name, storage=open_storage(settings.storage))
    retry_lost_trial(study, study.trials[1])  # as Optuna's stale-trial callback does when a worker dies
    again = optimize(shorten_the_recipe, SPACE, budget=Budget(trials=2), settings=settings, first_params=planned)
    retry = again.trials[-1]
    assert retry.params == shortened and ran[-1] == shortened and retry.extra["retry_of"] == 1
    assert retry.extra["role"] == "warm_start" and retry.extra["shortened"] == "too long"
    assert again.discarded[0] == f"not run: replaced by trial {retry.number}"
    assert [t.number for t in counted_once(again.trials)] == [2, retry.number]


def test_every_trial_failing_is_an_error_with_the_first_failure():
    def broken(params, reporter):
        raise ValueError(f"bad column in trial with lr={params['training.learning_rate']:.0e}")

    with pytest.raises(SearchError, match=r"every trial failed \(5\); the first failure was: ValueError: bad column"):
        optimize(broken, SPACE, budget=Budget(trials=50), settings=StudySettings(sampler="random", progress=False))


def test_nan_objective_is_a_failed_trial():
    calls = {"n": 0}

    def sometimes_nan(params, reporter):
        calls["n"] += 1
        return float("nan") if calls["n"] == 2 else quality(params)

    result = optimize(
        sometimes_nan, SPACE, budget=Budget(trials=4), settings=StudySettings(sampler="random", progress=False)
    )
    assert [t.state for t in result.trials].count("FAIL") == 1
    assert "objective returned nan" in next(t.failure for t in result.trials if t.state == "FAIL")


def test_minimize_direction():
    result = optimize(
        lambda p, r: -quality(p),
        SPACE,
        budget=Budget(trials=15),
        settings=StudySettings(sampler="tpe", direction="minimize", progress=False),
    )
    assert result.best_value == min(t.value for t in result.trials)


def test_first_params_run_first():
    untuned = {"training.learning_rate": 5e-5, "training.num_train_epochs": 3, "training.lr_scheduler_type": "linear"}
    result = _run("tpe", trials=3, first_params=[untuned])
    assert result.trials[0].params == untuned


# ---------------------------------------------------------------- storage: resume and shared workers


def _worker(storage, trials, sleep, seed=0):
    return subprocess.Popen(
        [
            sys.executable,
            str(HERE / "synthetic.py"),
            "--storage",
            storage,
            "--trials",
            str(trials),
            "--sleep",
            str(sleep),
            "--seed",
            str(seed),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_killed_search_resumes_without_losing_trials(tmp_path):
    storage = str(tmp_path / "study.journal")
    worker = _worker(storage, trials=12, sleep=0.05)
    # Kill it hard once some trials are done.
    deadline = time.time() + 60
    while time.time() < deadline:
        time.sleep(0.5)
        if _finished(storage) >= 4:
            break
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    done_before = _finished(storage)
    assert 4 <= done_before < 12
    resumed = _worker(storage, trials=12, sleep=0.0)
    assert resumed.wait(timeout=120) == 0, resumed.stderr.read()
    result = _study_result(storage)
    finished = [t for t in result.trials if t.state in ("COMPLETE", "FAIL", "PRUNED")]
    # The trial killed mid-run stays RUNNING in storage (counted by the budget); nothing completed is lost.
    assert len(finished) + sum(t.state == "RUNNING" for t in result.trials) == 12
    assert sum(t.state == "COMPLETE" for t in result.trials) >= done_before


@pytest.mark.parametrize("backend", ["sqlite", "journal"])
def test_two_workers_share_one_search(tmp_path, backend):
    storage = f"sqlite:///{tmp_path / 'study.db'}" if backend == "sqlite" else str(tmp_path / "study.journal")
    workers = [_worker(storage, trials=16, sleep=0.01, seed=seed) for seed in (1, 2)]
    for worker in workers:
        assert worker.wait(timeout=180) == 0, worker.stderr.read()
        assert "database is locked" not in worker.stderr.read()
    result = _study_result(storage)
    numbers = [t.number for t in result.trials]
    assert len(numbers) == len(set(numbers))
    # Each worker checks the shared budget before starting a trial; at most one extra per other worker.
    assert 16 <= sum(t.state == "COMPLETE" for t in result.trials) <= 17


def _study_result(storage):
    import optuna

    from hpo.storage import open_storage

    study = optuna.load_study(study_name="shared", storage=open_storage(storage))
    return SearchResult.from_study(study, "", storage)


def _finished(storage) -> int:
    if not Path(storage).exists():
        return 0
    try:
        return sum(t.state == "COMPLETE" for t in _study_result(storage).trials)
    except Exception:  # the study may not exist yet
        return 0


def test_a_first_trial_outside_the_space_runs_as_given():
    from hpo.optimize import PlannedTrial

    untuned = {"training.learning_rate": 5e-5, "training.num_train_epochs": 9, "training.lr_scheduler_type": "poly"}
    result = _run("tpe", trials=4, first_params=[PlannedTrial(untuned, role="untuned")])
    first = result.trials[0]
    assert first.params == untuned and first.state == "COMPLETE" and first.extra["role"] == "untuned"
    assert all(SPACE.contains(t.params) for t in result.trials[1:])
    assert not SPACE.contains(untuned)


def test_progress_prints_a_line_only_when_something_changed(capsys):
    """A discarded proposal (run shortened as another trial) changes nothing: no repeated line."""
    import optuna

    from hpo.budget import Budget
    from hpo.progress import Progress

    study = optuna.create_study(direction="maximize")
    progress = Progress(budget=Budget(trials=4), planned_trials=4, direction="maximize")
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=0.5))
    progress.update(study)
    progress.update(study)
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=0.6))
    progress.update(study)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[hpo] trials")]
    assert [line.split(" | ")[0] for line in lines] == ["[hpo] trials 1/4", "[hpo] trials 2/4"]


def test_the_progress_eta_covers_what_runs_after_exploring():
    """One ETA for the whole command: the budget left plus the caller's re-runs and retrains, at the
    seconds per step measured so far."""
    from hpo.budget import Budget
    from hpo.progress import Progress

    progress = Progress(budget=Budget(steps=100), planned_trials=None, direction="maximize", steps_after=50)
    progress.started = time.perf_counter() - 10.0  # 20 steps in 10 s: 0.5 s per step
    assert progress._eta(1, 20) == pytest.approx((100 - 20 + 50) * 0.5, rel=0.02)
