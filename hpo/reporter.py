"""The Reporter an objective gets with each trial: report(step, value), then ask should_stop()."""

from __future__ import annotations

import math

import optuna

from hpo import attributes
from hpo.budget import Budget, exhausted, spent
from hpo.results import SearchResult
from hpo.rung_signal import RungSignal


class Reporter:
    """Handed to the objective: report(step, value) after each evaluation, then ask should_stop()."""

    def __init__(self, trial: optuna.Trial, study: optuna.Study, budget: Budget, rung_signal: RungSignal | None = None):
        self.trial = trial
        self._study = study
        self._budget = budget
        self._rung_signal = rung_signal
        self.steps = 0
        self._saved_steps = 0
        self.values: list[tuple[int, float]] = []
        self.stop_reason: str | None = None

    def report(self, step: int, value: float, smooth: float | None = None) -> None:
        """``value``: the objective's metric at ``step``; ``smooth``: the validation loss there, which a
        rung signal (hpo.rung_signal) lets the scheduler compare where the metric cannot tell trials apart."""
        self.steps = max(self.steps, int(step))
        if value is not None and math.isfinite(value):
            self.values.append((int(step), float(value)))
            rung_value = float(value)
            if self._rung_signal is not None and smooth is not None and math.isfinite(smooth):
                maximize = self._study.direction == optuna.study.StudyDirection.MAXIMIZE
                rung_value = self._rung_signal.value(float(value), float(smooth), maximize=maximize)
                self.trial.set_user_attr(attributes.LAST_VALUE, float(value))  # a stopped trial's value
            self.trial.report(rung_value, int(step))
        self.save_steps()

    def add_steps(self, steps: int) -> None:
        """Steps run since the last report (e.g. after the last evaluation) that the budget must count."""
        self.steps = max(self.steps, int(steps))

    def save_steps(self) -> None:
        """Make the steps run so far visible to the budget (and to other workers sharing the study)."""
        if self.steps != self._saved_steps:
            self.trial.set_user_attr(attributes.STEPS, self.steps)
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
