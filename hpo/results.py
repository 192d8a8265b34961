"""Search results: one record per trial (what Optuna stores, read back), the ranking and the best trial."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo import attributes
from hpo.budget import spent, trial_seconds


@dataclass
class TrialRecord:
    number: int
    state: str  # COMPLETE, PRUNED, FAIL, RUNNING, WAITING
    value: float | None
    params: dict[str, Any]
    steps: int
    seconds: float
    failure: str | None = None
    stop_reason: str | None = None
    feasible: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. checkpoint path, metrics


def to_record(trial: FrozenTrial) -> TrialRecord:
    attrs = trial.user_attrs
    known = {
        attributes.PARAMS,
        attributes.GIVEN_PARAMS,
        attributes.STEPS,
        attributes.FAILURE,
        attributes.STOP_REASON,
        attributes.LAST_VALUE,
    }
    return TrialRecord(
        number=trial.number,
        state=trial.state.name,
        value=trial.value if trial.state == TrialState.COMPLETE else _last_value(trial),
        params=attrs.get(attributes.PARAMS, dict(trial.params)),
        steps=int(attrs.get(attributes.STEPS, 0)),
        seconds=trial_seconds(trial),
        failure=attrs.get(attributes.FAILURE),
        stop_reason=attrs.get(attributes.STOP_REASON),
        feasible=not any(v > 0 for v in trial.constraints.values()),
        extra={k: v for k, v in attrs.items() if k not in known},
    )


def discarded_numbers(study: optuna.Study) -> dict[int, str]:
    """Trial numbers asked for but never run, and why (replaced proposals name the trial that ran instead)."""
    trials = study.get_trials(deepcopy=False)
    replaced_by = {t.user_attrs[attributes.REPLACES]: t.number for t in trials if attributes.REPLACES in t.user_attrs}
    discarded = {}
    for t in trials:
        why = t.user_attrs.get(attributes.DISCARDED)
        if why:
            replacement = replaced_by.get(t.number)
            discarded[t.number] = f"not run: replaced by trial {replacement}" if replacement else str(why)
    return discarded


def trial_records(study: optuna.Study) -> list[TrialRecord]:
    return [
        to_record(t)
        for t in study.get_trials(deepcopy=False)
        if t.state != TrialState.WAITING and not t.user_attrs.get(attributes.DISCARDED)
    ]


def counted_once(trials: list[TrialRecord]) -> list[TrialRecord]:
    """The trials without those lost with their worker and retried (hpo.workers): the retry carries the lost
    trial's notes, and one proposal counts once."""
    retried = {t.extra[attributes.RETRY_OF] for t in trials if attributes.RETRY_OF in t.extra}
    return [t for t in trials if t.number not in retried]


@dataclass
class SearchResult:
    study_name: str
    storage: str | None
    direction: str
    stop_reason: str
    trials: list[TrialRecord]
    steps_spent: int
    wall_seconds_spent: float
    study: optuna.Study | None = field(default=None, repr=False, compare=False)  # for importances and plots
    discarded: dict[int, str] = field(default_factory=dict)  # numbers asked for but never run, and why

    def ranked(self) -> list[TrialRecord]:
        """Complete, feasible trials, best first (pruned and failed trials never rank); ties keep trial order."""
        finished = [t for t in self.trials if t.state == "COMPLETE" and t.feasible and t.value is not None]
        return sorted(finished, key=lambda t: t.value, reverse=self.direction == "maximize")

    @property
    def best_trial(self) -> TrialRecord | None:
        ranked = self.ranked()
        return ranked[0] if ranked else None

    @property
    def best_params(self) -> dict[str, Any]:
        return self.best_trial.params if self.best_trial else {}

    @property
    def best_value(self) -> float | None:
        return self.best_trial.value if self.best_trial else None

    def count(self, state: str) -> int:
        return sum(t.state == state for t in self.trials)

    @classmethod
    def from_study(cls, study: optuna.Study, stop_reason: str, storage: str | None) -> SearchResult:
        used = spent(study)
        return cls(
            study_name=study.study_name,
            storage=storage,
            direction=study.direction.name.lower(),
            stop_reason=stop_reason,
            trials=trial_records(study),
            steps_spent=used.steps,
            wall_seconds_spent=used.wall_seconds,
            discarded=discarded_numbers(study),
        )

    @classmethod
    def from_folder(cls, folder: str | Path) -> SearchResult:
        """Read back what write_search_outputs wrote (trials.json, summary.json): no storage needed."""
        folder = Path(folder)
        summary = json.loads((folder / "summary.json").read_text())
        trials = [TrialRecord(**row) for row in json.loads((folder / "trials.json").read_text())]
        return cls(
            study_name=summary.get("study_name", "search"),
            storage=summary.get("storage"),
            direction=summary["direction"],
            stop_reason=summary["stop_reason"],
            trials=trials,
            steps_spent=summary["steps_spent"],
            wall_seconds_spent=summary["trial_seconds_spent"],
            discarded={int(k): v for k, v in summary.get("discarded_trials", {}).items()},
        )

    def anytime_curve(self) -> list[tuple[int, float]]:
        """(cumulative steps, best complete value so far), in trial order."""
        points, total, best = [], 0, None
        better = (lambda a, b: a > b) if self.direction == "maximize" else (lambda a, b: a < b)
        for trial in sorted(self.trials, key=lambda t: t.number):
            total += trial.steps
            if trial.state == "COMPLETE" and trial.feasible and trial.value is not None:
                if best is None or better(trial.value, best):
                    best = trial.value
            if best is not None:
                points.append((total, best))
        return points


def _last_value(trial: FrozenTrial) -> float | None:
    """A stopped trial's metric: its last report (the scheduler saw a rung signal instead where one was used)."""
    if attributes.LAST_VALUE in trial.user_attrs:
        return trial.user_attrs[attributes.LAST_VALUE]
    if not trial.intermediate_values:
        return None
    return trial.intermediate_values[max(trial.intermediate_values)]
