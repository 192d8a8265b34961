"""Search budgets: trials, steps (also as full-run equivalents) and wall time, spent as measured."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo import attributes
from hpo.errors import SearchConfigError


@dataclass(frozen=True, kw_only=True)
class Budget:
    trials: int | None = None
    steps: int | None = None
    wall_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.trials is None and self.steps is None and self.wall_seconds is None:
            raise SearchConfigError(
                "search.budget: give at least one of trials, steps, full_run_equivalents, wall_seconds"
            )
        for name in ("trials", "steps", "wall_seconds"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise SearchConfigError(f"search.budget.{name} must be > 0, got {value}")

    @classmethod
    def from_full_runs(cls, full_runs: float, steps_per_full_run: int, **others) -> Budget:
        """A step budget of ``full_runs`` times the untuned run's steps."""
        if full_runs <= 0:
            raise SearchConfigError(f"search.budget.full_run_equivalents must be > 0, got {full_runs}")
        return cls(steps=int(round(full_runs * steps_per_full_run)), **others)


@dataclass(frozen=True)
class Spent:
    trials: int
    steps: int
    wall_seconds: float


def spent(study: optuna.Study, *, before: int | None = None) -> Spent:
    """What the study has used so far, over every session and worker; only steps actually run count.

    A trial lost with its worker and queued again (hpo.workers) is not counted: its retry is.
    ``before``: only the trials numbered below it (what was started before that trial).
    """
    everything = study.get_trials(deepcopy=False)
    if before is not None:
        everything = [t for t in everything if t.number < before]
    retried = {t.user_attrs[attributes.RETRY_OF] for t in everything if attributes.RETRY_OF in t.user_attrs}
    counted = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
    trials = [
        t
        for t in everything
        if t.state in counted and t.number not in retried and not t.user_attrs.get(attributes.DISCARDED)
    ]
    steps = sum(int(t.user_attrs.get(attributes.STEPS, 0)) for t in trials)
    seconds = sum(trial_seconds(t) for t in trials)
    return Spent(trials=len(trials), steps=steps, wall_seconds=seconds)


def exhausted(budget: Budget, used: Spent) -> str | None:
    """Why the budget is spent, or None."""
    if budget.trials is not None and used.trials >= budget.trials:
        return f"trial budget spent ({used.trials}/{budget.trials} trials)"
    if budget.steps is not None and used.steps >= budget.steps:
        return f"step budget spent ({used.steps}/{budget.steps} steps)"
    if budget.wall_seconds is not None and used.wall_seconds >= budget.wall_seconds:
        return f"time budget spent ({used.wall_seconds:.0f}/{budget.wall_seconds:.0f} s of trial time)"
    return None


def trial_seconds(trial: FrozenTrial) -> float:
    """Wall seconds of a trial: start to finish, or start to now while it runs."""
    if trial.datetime_start is None:
        return 0.0
    end = trial.datetime_complete or datetime.datetime.now()
    return (end - trial.datetime_start).total_seconds()
