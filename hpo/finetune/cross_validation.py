"""k-fold cross-validation as a trial's objective: k runs on k stratified folds, scored by their mean.

The folds are data.cv_folds / data.cv_fold (finetune.data deals them from every labelled row that is not
test). Fold f's run reports to the trial at step offset + s, where offset is the steps the earlier folds
ran, with the value the running mean across folds 0..f at the same within-fold step s; so schedulers
compare trials on the mean across folds at equal steps, and the step budget counts every fold.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Literal

from finetune import FinetuneConfig
from finetune.data import load_splits
from finetune.errors import ConfigError

# search.objective.cv_folds: "auto" uses AUTO_FOLDS folds when the validation split has fewer than
# AUTO_MAX_VALIDATION_ROWS rows (one split that small is a noisy judge: at 300 rows and 85% accuracy, one
# standard error is 2 points) and there are at least AUTO_MIN_POOL_ROWS labelled rows (folds of >= 100).
AUTO_FOLDS = 5
AUTO_MAX_VALIDATION_ROWS = 300
AUTO_MIN_POOL_ROWS = 500

CvFolds = int | Literal["auto"] | None


def resolve_folds(cv_folds: CvFolds, base: FinetuneConfig) -> tuple[int | None, str]:
    """(folds or None, why) for the objective's cv_folds setting on ``base``'s data."""
    if cv_folds is None or cv_folds == 1:
        return None, "one validation split (search.objective.cv_folds: null)"
    if cv_folds != "auto":
        if isinstance(cv_folds, bool) or not isinstance(cv_folds, int) or cv_folds < 2:
            raise ConfigError(f"search.objective.cv_folds: expected an integer >= 2, 'auto' or null, got {cv_folds!r}")
        return cv_folds, f"{cv_folds}-fold cross-validation (search.objective.cv_folds: {cv_folds})"
    splits = load_splits(base.data)
    validation_rows, pool = len(splits.validation), len(splits.train) + len(splits.validation)
    if validation_rows < AUTO_MAX_VALIDATION_ROWS and pool >= AUTO_MIN_POOL_ROWS:
        return AUTO_FOLDS, (
            f"{AUTO_FOLDS}-fold cross-validation, chosen automatically: the validation split has {validation_rows} "
            f"rows (< {AUTO_MAX_VALIDATION_ROWS}) and there are {pool} labelled rows (>= {AUTO_MIN_POOL_ROWS})"
        )
    reason = (
        f"{validation_rows} rows >= {AUTO_MAX_VALIDATION_ROWS}"
        if validation_rows >= AUTO_MAX_VALIDATION_ROWS
        else f"only {pool} labelled rows < {AUTO_MIN_POOL_ROWS}"
    )
    return None, f"one validation split (cv_folds auto: {reason})"


def fold_config(config: FinetuneConfig, folds: int, fold: int, output_dir: str) -> FinetuneConfig:
    return config.with_overrides({"data.cv_folds": folds, "data.cv_fold": fold, "training.output_dir": output_dir})


def value_at(curve: list[tuple[int, float]], step: int) -> float:
    """A fold's value at ``step``: its last evaluation at or before it (its first if none)."""
    before = [value for s, value in curve if s <= step]
    return before[-1] if before else curve[0][1]


class FoldReporter:
    """What one fold's run reports to: forwards to the trial's Reporter with offset steps and the running mean
    (of the metric in ``curves``, of the validation loss in ``loss_curves``), each fold's value at a step
    being its last evaluation at or before that step."""

    def __init__(
        self,
        reporter,
        offset: int,
        curves: list[list[tuple[int, float]]],
        fold: int,
        loss_curves: list[list[tuple[int, float]]] | None = None,
    ):
        self.reporter, self.offset, self.curves, self.fold = reporter, offset, curves, fold
        self.loss_curves = loss_curves or [[] for _ in curves]

    @property
    def trial(self):
        return self.reporter.trial

    @property
    def stop_reason(self) -> str | None:
        return self.reporter.stop_reason

    def report(self, step: int, value: float, smooth: float | None = None) -> None:
        mean_value = _running_mean(self.curves, self.fold, step, value)
        mean_smooth = None if smooth is None else _running_mean(self.loss_curves, self.fold, step, smooth)
        self.reporter.report(self.offset + int(step), mean_value, mean_smooth)

    def add_steps(self, steps: int) -> None:
        self.reporter.add_steps(self.offset + int(steps))

    def should_stop(self, *, run_ends: bool = False) -> bool:
        # Only the last fold's end is the trial's end: stopping after an earlier fold still saves the rest.
        return self.reporter.should_stop(run_ends=run_ends and self.fold == len(self.curves) - 1)


def _running_mean(curves: list[list[tuple[int, float]]], fold: int, step: int, value: float) -> float:
    """Record ``value`` at ``step`` for ``fold``; the mean of it and the earlier folds' values at ``step``."""
    curves[fold].append((int(step), float(value)))
    earlier = [value_at(curve, step) for curve in curves[:fold] if curve]
    return statistics.fmean([*earlier, float(value)])


@dataclass(frozen=True)
class CvScore:
    mean: float
    std: float
    fold_scores: list[float]
    steps: int


def cv_score(fold_scores: list[float], steps: int) -> CvScore:
    std = statistics.stdev(fold_scores) if len(fold_scores) > 1 else 0.0
    return CvScore(mean=statistics.fmean(fold_scores), std=std, fold_scores=list(fold_scores), steps=steps)
