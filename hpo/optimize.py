"""hpo.optimize: a search loop over any objective(params, reporter), with Optuna for state and sampling."""

from __future__ import annotations

import math
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from finetune.errors import ConfigError
from hpo.budget import STEPS_ATTR, Budget, exhausted, spent
from hpo.progress import Progress
from hpo.results import FAILURE_ATTR, STOP_REASON_ATTR, SearchResult, trial_records
from hpo.samplers import CONSTRAINT_NAME, build_pruner, build_sampler
from hpo.space import SearchSpace
from hpo.storage import open_storage
from hpo.workers import (
    DISCARDED_ATTR,
    PLANNED_ATTR,
    QUEUED_ATTR,
    RETRY_OF_ATTR,
    create_or_join,
    fail_lost_trials,
    heartbeat,
    heartbeats_enabled,
    others_running,
    wait_until_queued,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


class TrialPruned(Exception):
    """Raise from an objective to stop a trial early (the scheduler or the budget said so)."""


class InfeasibleTrial(Exception):
    """Raise when a configuration cannot run at all (e.g. out of memory even at half batch)."""


class SearchDone(Exception):
    """Raise from an objective when no further trial can be of use (e.g. none would fit what the budget has
    left): the trial is discarded and the search ends, with the message as its stop reason."""


class ReplaceTrial(Exception):
    """Raise from an objective, before running anything, to run other params instead (e.g. a shorter
    variant that fits the budget): this trial is discarded, the sampler never sees it, and ``params`` run as
    the next trial with ``attrs`` among its user attributes."""

    def __init__(self, params: dict[str, Any], attrs: dict[str, Any]):
        super().__init__(f"replaced by {params}")
        self.params, self.attrs = params, attrs


class SearchError(RuntimeError):
    """The search could not produce any result (e.g. every trial failed)."""


class Reporter:
    """Handed to the objective: report(step, value) after each evaluation, then ask should_stop()."""

    def __init__(self, trial: optuna.Trial, study: optuna.Study, budget: Budget):
        self.trial = trial
        self._study = study
        self._budget = budget
        self.steps = 0
        self._saved_steps = 0
        self.values: list[tuple[int, float]] = []
        self.stop_reason: str | None = None

    def report(self, step: int, value: float) -> None:
        self.steps = max(self.steps, int(step))
        if value is not None and math.isfinite(value):
            self.values.append((int(step), float(value)))
            self.trial.report(float(value), int(step))
        self.save_steps()

    def add_steps(self, steps: int) -> None:
        """Steps run since the last report (e.g. after the last evaluation) that the budget must count."""
        self.steps = max(self.steps, int(steps))

    def save_steps(self) -> None:
        """Make the steps run so far visible to the budget (and to other workers sharing the study)."""
        if self.steps != self._saved_steps:
            self.trial.set_user_attr(STEPS_ATTR, self.steps)
            self._saved_steps = self.steps

    def search_so_far(self) -> SearchResult:
        """Every trial of the study as it stands (this one included, running), over all workers."""
        return SearchResult.from_study(self._study, "", None)

    def should_stop(self, *, run_ends: bool = False) -> bool:
        """Whether the trial must stop now. At the run's last evaluation (``run_ends``) stopping saves nothing,
        so no new decision is taken there: a trial that reached its end completes."""
        if self.stop_reason is None and not run_ends:
            if self.trial.should_prune():
                self.stop_reason = "pruned by the scheduler"
            elif self._budget.steps is not None or self._budget.wall_seconds is not None:
                reason = exhausted(self._budget, spent(self._study))
                # The trial counting itself does not make a trial budget "spent" mid-trial.
                if reason and not reason.startswith("trial budget"):
                    self.stop_reason = f"stopped: {reason}"
        return self.stop_reason is not None


ObjectiveFn = Callable[[dict[str, Any], Reporter], float]


@dataclass(frozen=True)
class PlannedTrial:
    """A trial to run before anything sampled; ``role`` is kept in the trial's attributes (e.g. "untuned")."""

    params: dict[str, Any]
    role: str | None = None


def optimize(
    objective: ObjectiveFn,
    space: SearchSpace,
    *,
    sampler: str = "tpe",
    scheduler: str = "none",
    budget: Budget,
    direction: str = "maximize",
    seed: int = 0,
    storage: str | None = None,
    study_name: str = "tunelab",
    min_steps: int = 1,
    max_steps: int | None = None,
    reduction_factor: int = 3,
    base: dict[str, Any] | None = None,
    first_params: list[dict[str, Any] | PlannedTrial] | None = None,
    max_initial_failures: int = 5,
    progress: bool = True,
    on_trial_end: Callable[[SearchResult], None] | None = None,
    heartbeat_seconds: int | None = None,
) -> SearchResult:
    """Run (or resume, or join) a search until the budget is spent; every finished trial is kept in ``storage``.

    ``first_params`` are evaluated before anything sampled (e.g. the untuned configuration).
    ``on_trial_end`` sees the results after every trial (e.g. to delete all but the best checkpoint).
    Several workers may share one study (a database ``storage``): the budget, the grid and the pruning
    decisions are the study's, not a worker's; with ``heartbeat_seconds`` a dead worker's trial is
    retried by another, and each worker returns only once no trial is running anywhere.
    """
    if direction not in ("maximize", "minimize"):
        raise ConfigError(f"search.objective.direction must be 'maximize' or 'minimize', got {direction!r}")
    opened = open_storage(storage, heartbeat_seconds=heartbeat_seconds)

    def make_study(load_if_exists: bool) -> optuna.Study:
        return optuna.create_study(
            storage=opened,
            sampler=build_sampler(sampler, seed=seed),
            pruner=build_pruner(scheduler, min_steps=min_steps, max_steps=max_steps, reduction_factor=reduction_factor),
            study_name=study_name,
            direction=direction,
            load_if_exists=load_if_exists,
        )

    study, created = create_or_join(make_study)
    if created or study.user_attrs.get(QUEUED_ATTR):
        planned = _enqueue_planned(study, space, sampler, budget, base, first_params)
    else:
        wait_until_queued(study)
        planned = study.user_attrs.get("planned_trials")
    tracker = Progress(budget=budget, planned_trials=planned, direction=direction, enabled=progress)
    stop_reason = done = None
    while True:
        fail_lost_trials(study)
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        stop_reason = exhausted(budget, spent(study)) or done
        if sampler == "grid" and not waiting:
            stop_reason = stop_reason or "grid complete"
        # A lost trial's retry runs even when the budget is spent: it replaces work that was lost.
        if stop_reason and not any(RETRY_OF_ATTR in t.user_attrs for t in waiting):
            if heartbeats_enabled(study) and others_running(study):
                time.sleep(2.0)  # their trials may still win, or be lost and need a retry
                continue
            break
        done = _run_trial(study, objective, space, budget, base, only_planned=sampler == "grid") or done
        tracker.update(study)
        if on_trial_end is not None:
            on_trial_end(SearchResult.from_study(study, "", storage))
        if _all_failed(study, max_initial_failures):
            break
    study.set_user_attr(STOP_REASON_ATTR, stop_reason)
    result = SearchResult.from_study(study, stop_reason or "every trial failed", storage)
    if result.best_trial is None:
        records = trial_records(study)
        failures = [r for r in records if r.state == "FAIL"]
        if failures:
            raise SearchError(f"every trial failed ({len(failures)}); the first failure was: {failures[0].failure}")
        stopped = [r for r in records if r.state == "PRUNED"]
        message = f"no trial finished: {len(stopped)} stopped before their end"
        if stopped:
            message += f" (the first: {stopped[0].stop_reason})"
        if any("budget" in (r.stop_reason or "") for r in stopped):
            message += "; the budget is smaller than one run: raise search.budget"
        raise SearchError(message)
    tracker.finish(result)
    return result


def _run_trial(
    study: optuna.Study,
    objective: ObjectiveFn,
    space: SearchSpace,
    budget: Budget,
    base: dict[str, Any] | None,
    only_planned: bool = False,
) -> str | None:
    """Run one trial; returns why the search is done when the objective said so (SearchDone)."""
    with warnings.catch_warnings():  # Optuna warns that heartbeats are meant for Study.optimize; we send them
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        trial = study.ask()
    # Workers check, then ask: between the two another worker may take the last queued grid point, or the
    # budget's last trial (then the one asked for later, with the higher number, gives way). A lost trial's
    # retry always runs: it replaces work that was lost.
    retry = RETRY_OF_ATTR in trial.user_attrs
    grid_ran_out = only_planned and not (trial.user_attrs.get(PLANNED_ATTR) or retry)
    if grid_ran_out or (
        budget.trials is not None and not retry and spent(study, before=trial.number).trials >= budget.trials
    ):
        _discard(study, trial)
        return None
    reporter = Reporter(trial, study, budget)
    try:
        with heartbeat(study, trial):
            state, value, feasible = _objective_outcome(trial, study, objective, space, base, reporter)
    except SearchDone as done:
        _discard(study, trial)
        return str(done)
    except ReplaceTrial as replace:
        _discard(study, trial)
        study.enqueue_trial(replace.params, user_attrs=replace.attrs)  # the next ask() takes it
        return None
    reporter.save_steps()
    if state == TrialState.COMPLETE:
        # Every complete trial carries the constraint (GP needs it on all of them); > 0 is infeasible.
        trial.set_constraint(CONSTRAINT_NAME, 0.0 if feasible else 1.0)
    study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
    return None


def _discard(study: optuna.Study, trial: optuna.Trial) -> None:
    trial.set_user_attr(DISCARDED_ATTR, True)  # nothing was run: not a trial at all
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
        given = trial.user_attrs.get("given_params")
        params = dict(given) if given is not None else space.suggest(trial, base)
        if params != trial.params:
            trial.set_user_attr("params", params)  # fixed values are not in trial.params
        value = objective(params, reporter)
        if reporter.stop_reason:
            raise TrialPruned(reporter.stop_reason)
        if value is None or not math.isfinite(value):
            raise ValueError(f"objective returned {value!r}")
        state = TrialState.COMPLETE
    except TrialPruned as stop:
        state = TrialState.PRUNED
        trial.set_user_attr("stop_reason", str(stop) or "pruned")
    except (SearchDone, ReplaceTrial):
        raise
    except InfeasibleTrial as exc:
        # Recorded as complete with a violated constraint so TPE/GP learn to avoid the region.
        trial.set_user_attr(FAILURE_ATTR, f"infeasible: {exc}")
        value, feasible = _worst_value(study), False
        state = TrialState.COMPLETE
    except Exception as exc:  # a failing trial never kills the search
        trial.set_user_attr(FAILURE_ATTR, f"{type(exc).__name__}: {exc}")
        print(f"[hpo] trial {trial.number} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        traceback.print_exc(limit=3, file=sys.stderr)
    return state, value, feasible


def _enqueue_planned(
    study: optuna.Study,
    space: SearchSpace,
    sampler: str,
    budget: Budget,
    base: dict[str, Any] | None,
    first_params: list[dict[str, Any]] | None,
) -> int | None:
    """Queue the first trials (and, for grid, every grid point) once; a resumed study keeps its queue."""
    if study.user_attrs.get(QUEUED_ATTR):
        return study.user_attrs.get("planned_trials")
    planned = budget.trials
    points = [p if isinstance(p, PlannedTrial) else PlannedTrial(p) for p in first_params or []]
    if sampler == "grid":
        grid = space.grid_points(base)
        if budget.trials is not None and len(grid) + len(points) > budget.trials:
            raise ConfigError(
                f"search: the grid has {len(grid)} points but the budget allows {budget.trials} "
                "trials; shrink the grid or raise search.budget.trials"
            )
        points += [PlannedTrial(point) for point in grid]
        planned = len(points)
    for point in points:
        if space.contains(point.params, base):
            attrs = {PLANNED_ATTR: True, **({"role": point.role} if point.role else {})}
            study.enqueue_trial(point.params, user_attrs=attrs, skip_if_exists=point.role is None)
        else:
            # Outside the space (e.g. an untuned warmup the space does not offer): run it as given; the
            # sampler cannot model it, but it competes for best on its value.
            study.enqueue_trial({}, user_attrs={PLANNED_ATTR: True, "role": point.role, "given_params": point.params})
    study.set_user_attr(QUEUED_ATTR, True)
    study.set_user_attr("planned_trials", planned)
    return planned


def _worst_value(study: optuna.Study) -> float:
    values = [t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    if not values:
        return 0.0
    return min(values) if study.direction == optuna.study.StudyDirection.MAXIMIZE else max(values)


def _all_failed(study: optuna.Study, limit: int) -> bool:
    """Stop early when the first ``limit`` trials all failed: the search is broken, not unlucky."""
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    finished = [t for t in finished if not t.user_attrs.get(DISCARDED_ATTR)]
    return len(finished) >= limit and all(t.state == TrialState.FAIL for t in finished)
