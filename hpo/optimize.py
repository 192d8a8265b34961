"""hpo.optimize: a search loop over any objective(params, reporter), with Optuna for state and sampling.

Read like Optuna's Study.optimize: open (or join) the study, queue the planned trials once, then ask,
run and tell one trial at a time until the budget is spent; every finished trial is kept in storage.
"""

from __future__ import annotations

import math
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from hpo import attributes
from hpo.budget import Budget, exhausted, spent
from hpo.errors import InfeasibleTrial, ReplaceTrial, SearchConfigError, SearchDone, SearchError, TrialPruned
from hpo.progress import Progress
from hpo.reporter import Reporter
from hpo.results import SearchResult, trial_records
from hpo.rung_signal import RungSignal
from hpo.samplers import REDUCTION_FACTOR, build_pruner, build_sampler
from hpo.space import SearchSpace
from hpo.storage import open_storage
from hpo.workers import (
    beat_now,
    create_or_join,
    fail_lost_trials,
    heartbeat,
    heartbeats_enabled,
    others_running,
    retry_lost_trial,
    wait_until_queued,
)

ObjectiveFn = Callable[[dict[str, Any], Reporter], float]


@dataclass(frozen=True, kw_only=True)
class StudySettings:
    """How the loop samples, stops trials early, stores its study and reports: all but what is searched."""

    sampler: str = "tpe"
    scheduler: str = "none"
    direction: str = "maximize"
    seed: int | None = 0
    storage: str | None = None  # None: in memory; a journal file path or a database URL (hpo.storage)
    study_name: str = "tunelab"
    min_steps: int = 1  # the schedulers' first rung, in the steps the objective reports
    max_steps: int | None = None
    reduction_factor: int = REDUCTION_FACTOR
    heartbeat_seconds: int | None = None  # databases only: a silent worker's trial is retried
    max_initial_failures: int = 5  # the first N trials all failing stops the search: it is broken
    progress: bool = True
    # Steps the caller runs once this search has explored (re-runs, retrains): the progress line's ETA
    # covers them at the seconds per step measured so far, so it is one ETA for the whole command.
    steps_after: int = 0
    # What the schedulers compare at their rungs (hpo.rung_signal); None: the reported metric itself.
    rung_signal: RungSignal | None = None

    def __post_init__(self) -> None:
        if self.direction not in ("maximize", "minimize"):
            raise SearchConfigError(
                f"search.objective.direction must be 'maximize' or 'minimize', got {self.direction!r}"
            )


@dataclass(frozen=True)
class PlannedTrial:
    """A trial to run before anything sampled; ``role`` is kept in the trial's attributes (e.g. "untuned")."""

    params: dict[str, Any]
    role: str | None = None


def optimize(
    objective: ObjectiveFn,
    space: SearchSpace,
    *,
    budget: Budget,
    settings: StudySettings = StudySettings(),
    base: dict[str, Any] | None = None,
    first_params: list[dict[str, Any] | PlannedTrial] | None = None,
    on_trial_end: Callable[[SearchResult], None] | None = None,
) -> SearchResult:
    """Run (or resume, or join) a search until the budget is spent; every finished trial is kept in storage.

    ``first_params`` are evaluated before anything sampled (e.g. the untuned configuration); ``base`` holds
    the values ``when`` conditions read for keys the space does not search. ``on_trial_end`` sees the
    results after every trial (e.g. to delete all but the best checkpoints). Several workers may share one
    study (a database storage): the budget, the grid and the pruning decisions are the study's, not a
    worker's; with heartbeats a dead worker's trial is retried by another, and each worker returns only
    once no trial is running anywhere.
    """
    with _optuna_quiet():
        return _optimize(objective, space, budget, settings, base, first_params, on_trial_end)


@contextmanager
def _optuna_quiet() -> Iterator[None]:
    """Optuna's per-trial INFO lines off while the search runs (our progress line says more); restored after."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def _optimize(
    objective: ObjectiveFn,
    space: SearchSpace,
    budget: Budget,
    settings: StudySettings,
    base: dict[str, Any] | None,
    first_params: list[dict[str, Any] | PlannedTrial] | None,
    on_trial_end: Callable[[SearchResult], None] | None,
) -> SearchResult:
    study, planned = _open_study(space, budget, settings, base, first_params)
    tracker = Progress(
        budget=budget,
        planned_trials=planned,
        direction=settings.direction,
        enabled=settings.progress,
        steps_after=settings.steps_after,
    )
    stop_reason = done = None
    while True:
        fail_lost_trials(study)
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        stop_reason = exhausted(budget, spent(study)) or done
        if settings.sampler == "grid" and not waiting:
            stop_reason = stop_reason or "grid complete"
        # A lost trial's retry runs even when the budget is spent: it replaces work that was lost.
        if stop_reason and not any(attributes.RETRY_OF in t.user_attrs for t in waiting):
            if heartbeats_enabled(study) and others_running(study):
                time.sleep(2.0)  # their trials may still win, or be lost and need a retry
                continue
            break
        only_planned = settings.sampler == "grid"
        done = _run_trial(study, objective, space, budget, base, only_planned, settings.rung_signal) or done
        tracker.update(study)
        if on_trial_end is not None:
            on_trial_end(SearchResult.from_study(study, "", settings.storage))
        if _all_failed(study, settings.max_initial_failures):
            break
    study.set_user_attr(attributes.SEARCH_STOP_REASON, stop_reason)
    result = SearchResult.from_study(study, stop_reason or "every trial failed", settings.storage)
    if result.best_trial is None:
        raise SearchError(_why_no_result(study))
    tracker.finish(result)
    return result


def _open_study(
    space: SearchSpace,
    budget: Budget,
    settings: StudySettings,
    base: dict[str, Any] | None,
    first_params: list[dict[str, Any] | PlannedTrial] | None,
) -> tuple[optuna.Study, int | None]:
    """Create the study (and queue its planned trials) or join it; also how many trials are planned."""
    storage = open_storage(settings.storage, heartbeat_seconds=settings.heartbeat_seconds)

    def make_study(load_if_exists: bool) -> optuna.Study:
        return optuna.create_study(
            storage=storage,
            sampler=build_sampler(settings.sampler, seed=settings.seed),
            pruner=build_pruner(
                settings.scheduler,
                min_steps=settings.min_steps,
                max_steps=settings.max_steps,
                reduction_factor=settings.reduction_factor,
            ),
            study_name=settings.study_name,
            direction=settings.direction,
            load_if_exists=load_if_exists,
        )

    study, created = create_or_join(make_study)
    if created or study.user_attrs.get(attributes.QUEUED):
        return study, _enqueue_planned(study, space, settings.sampler, budget, base, first_params)
    wait_until_queued(study)
    return study, study.user_attrs.get(attributes.PLANNED_TRIALS)


def _why_no_result(study: optuna.Study) -> str:
    records = trial_records(study)
    failures = [r for r in records if r.state == "FAIL"]
    if failures:
        return f"every trial failed ({len(failures)}); the first failure was: {failures[0].failure}"
    stopped = [r for r in records if r.state == "PRUNED"]
    message = f"no trial finished: {len(stopped)} stopped before their end"
    if stopped:
        message += f" (the first: {stopped[0].stop_reason})"
    if any("budget" in (r.stop_reason or "") for r in stopped):
        message += "; the budget is smaller than one run: raise search.budget"
    return message


def _run_trial(
    study: optuna.Study,
    objective: ObjectiveFn,
    space: SearchSpace,
    budget: Budget,
    base: dict[str, Any] | None,
    only_planned: bool = False,
    rung_signal: RungSignal | None = None,
) -> str | None:
    """Run one trial; returns why the search is done when the objective said so (SearchDone)."""
    with warnings.catch_warnings():  # Optuna warns that heartbeats are meant for Study.optimize; we send them
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        trial = study.ask()
    beat_now(study, trial)  # before anything else: a worker killed from here on leaves a trial others retry
    # Workers check, then ask: between the two another worker may take the last queued grid point, or the
    # budget's last trial (then the one asked for later, with the higher number, gives way). A lost trial's
    # retry always runs: it replaces work that was lost.
    retry = attributes.RETRY_OF in trial.user_attrs
    grid_ran_out = only_planned and not (trial.user_attrs.get(attributes.PLANNED) or retry)
    if grid_ran_out or (
        budget.trials is not None and not retry and spent(study, before=trial.number).trials >= budget.trials
    ):
        _discard(study, trial, "not run: every grid point was taken" if grid_ran_out else "not run: trial budget spent")
        return None
    reporter = Reporter(trial, study, budget, rung_signal)
    try:
        with heartbeat(study, trial):
            state, value, feasible = _objective_outcome(trial, study, objective, space, base, reporter)
    except SearchDone as done:
        _discard(study, trial, f"not run: the search ended ({done})")
        return str(done)
    except ReplaceTrial as replace:
        _discard(study, trial, f"not run: replaced by {replace.params}")
        _enqueue_replacement(study, trial, replace, space, base)  # the next ask() takes it
        return None
    except KeyboardInterrupt:
        _interrupted(study, trial, reporter)
        raise
    reporter.save_steps()
    if state == TrialState.COMPLETE:
        # Every complete trial carries the constraint (GP needs it on all of them); > 0 is infeasible.
        trial.set_constraint(attributes.INFEASIBLE_CONSTRAINT, 0.0 if feasible else 1.0)
    study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
    return None


def _interrupted(study: optuna.Study, trial: optuna.Trial, reporter: Reporter) -> None:
    """Ctrl-C mid-trial: the trial is failed and queued again, as a lost worker's would be, so the same
    command resumes the search with it (its steps are not counted twice: the retry's are)."""
    reporter.save_steps()
    trial.set_user_attr(attributes.FAILURE, "interrupted (Ctrl-C)")
    study.tell(trial, state=TrialState.FAIL)
    retry_lost_trial(study, next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number))


def _discard(study: optuna.Study, trial: optuna.Trial, why: str) -> None:
    trial.set_user_attr(attributes.DISCARDED, why)  # nothing was run: not a trial at all (trials.csv says why)
    study.tell(trial, state=TrialState.FAIL)


def _objective_outcome(
    trial: optuna.Trial,
    study: optuna.Study,
    objective: ObjectiveFn,
    space: SearchSpace,
    base: dict[str, Any] | None,
    reporter: Reporter,
) -> tuple[TrialState, float | None, bool]:
    state, value, feasible = TrialState.FAIL, None, True
    try:
        given = trial.user_attrs.get(attributes.GIVEN_PARAMS)
        params = dict(given) if given is not None else space.suggest(trial, base)
        if params != trial.params:
            trial.set_user_attr(attributes.PARAMS, params)  # fixed values are not in trial.params
        value = objective(params, reporter)
        if reporter.stop_reason:
            raise TrialPruned(reporter.stop_reason)
        if value is None or not math.isfinite(value):
            raise ValueError(f"objective returned {value!r}")
        state = TrialState.COMPLETE
    except TrialPruned as stop:
        state = TrialState.PRUNED
        trial.set_user_attr(attributes.STOP_REASON, str(stop) or "pruned")
    except (SearchDone, ReplaceTrial):
        raise
    except InfeasibleTrial as exc:
        # Recorded as complete with a violated constraint so TPE/GP learn to avoid the region.
        trial.set_user_attr(attributes.FAILURE, f"infeasible: {exc}")
        value, feasible = _worst_value(study), False
        state = TrialState.COMPLETE
    except Exception as exc:  # a failing trial never kills the search
        trial.set_user_attr(attributes.FAILURE, f"{type(exc).__name__}: {exc}")
        print(f"[hpo] trial {trial.number} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        traceback.print_exc(limit=3, file=sys.stderr)
    return state, value, feasible


def _enqueue_replacement(
    study: optuna.Study, trial: optuna.Trial, replace: ReplaceTrial, space: SearchSpace, base: dict[str, Any] | None
) -> None:
    """Queue what replaces ``trial``. It keeps the trial's role (a warm start shortened by the budget is still
    that recipe, and runs as one) and why the trial itself replaced another (a lowered batch, then shortened:
    the trial that runs names every change made to what the sampler proposed), ``replace.attrs`` adding the
    latest; params the space cannot hold (a recipe's batch the space does not offer) run as given, as the
    planned trial they replace did: Optuna cannot fix them to a value outside its distributions."""
    carried = {key: trial.user_attrs[key] for key in attributes.STAND_IN_KEEPS if key in trial.user_attrs}
    attrs = {**carried, **replace.attrs, attributes.REPLACES: trial.number}
    if space.contains(replace.params, base):
        study.enqueue_trial(replace.params, user_attrs=attrs)
    else:
        study.enqueue_trial({}, user_attrs={**attrs, attributes.GIVEN_PARAMS: replace.params})


def _enqueue_planned(
    study: optuna.Study,
    space: SearchSpace,
    sampler: str,
    budget: Budget,
    base: dict[str, Any] | None,
    first_params: list[dict[str, Any]] | None,
) -> int | None:
    """Queue the first trials (and, for grid, every grid point) once; a resumed study keeps its queue."""
    if study.user_attrs.get(attributes.QUEUED):
        return study.user_attrs.get(attributes.PLANNED_TRIALS)
    planned = budget.trials
    points = [p if isinstance(p, PlannedTrial) else PlannedTrial(p) for p in first_params or []]
    if sampler == "grid":
        grid = space.grid_points(base)
        if budget.trials is not None and len(grid) + len(points) > budget.trials:
            raise SearchConfigError(
                f"search: the grid has {len(grid)} points but the budget allows {budget.trials} "
                "trials; shrink the grid or raise search.budget.trials"
            )
        points += [PlannedTrial(point) for point in grid]
        planned = len(points)
    for point in points:
        if space.contains(point.params, base):
            attrs = {attributes.PLANNED: True, **({attributes.ROLE: point.role} if point.role else {})}
            study.enqueue_trial(point.params, user_attrs=attrs, skip_if_exists=point.role is None)
        else:
            # Outside the space (e.g. an untuned warmup the space does not offer): run it as given; the
            # sampler cannot model it, but it competes for best on its value.
            attrs = {attributes.PLANNED: True, attributes.ROLE: point.role, attributes.GIVEN_PARAMS: point.params}
            study.enqueue_trial({}, user_attrs=attrs)
    study.set_user_attr(attributes.QUEUED, True)
    study.set_user_attr(attributes.PLANNED_TRIALS, planned)
    return planned


def _worst_value(study: optuna.Study) -> float:
    values = [t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    if not values:
        return 0.0
    return min(values) if study.direction == optuna.study.StudyDirection.MAXIMIZE else max(values)


def _all_failed(study: optuna.Study, limit: int) -> bool:
    """Stop early when the first ``limit`` trials all failed: the search is broken, not unlucky."""
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    finished = [t for t in finished if not t.user_attrs.get(attributes.DISCARDED)]
    return len(finished) >= limit and all(t.state == TrialState.FAIL for t in finished)
