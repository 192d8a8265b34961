"""Tuned vs untuned over seeds: difference of means, 95% bootstrap interval, Welch's t-test."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Comparison:
    tuned_mean: float
    tuned_std: float
    untuned_mean: float
    untuned_std: float
    difference: float  # tuned - untuned, in the metric's units
    ci_low: float
    ci_high: float
    p_value: float  # Welch's two-sided t-test
    significant: bool  # p < 0.05
    n_tuned: int
    n_untuned: int

    def to_dict(self) -> dict:
        return asdict(self)


def compare(
    tuned: list[float], untuned: list[float], *, resamples: int = 10_000, seed: int = 0, alpha: float = 0.05
) -> Comparison:
    """Compare per-seed scores of two arms (needs at least 2 scores per arm)."""
    a, b = np.asarray(tuned, dtype=float), np.asarray(untuned, dtype=float)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"need at least 2 seeds per arm to compare, got {len(a)} and {len(b)}")
    rng = np.random.default_rng(seed)
    # Percentile bootstrap of the difference of means, resampling each arm's seeds independently.
    boot = rng.choice(a, (resamples, len(a))).mean(axis=1) - rng.choice(b, (resamples, len(b))).mean(axis=1)
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    if a.std() == 0 and b.std() == 0:
        p_value = 1.0 if a.mean() == b.mean() else 0.0  # no spread at all: the t-test is undefined
    else:
        p_value = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    p_value = 1.0 if math.isnan(p_value) else p_value
    return Comparison(
        tuned_mean=float(a.mean()),
        tuned_std=float(a.std(ddof=1)),
        untuned_mean=float(b.mean()),
        untuned_std=float(b.std(ddof=1)),
        difference=float(a.mean() - b.mean()),
        ci_low=float(low),
        ci_high=float(high),
        p_value=p_value,
        significant=p_value < alpha,
        n_tuned=len(a),
        n_untuned=len(b),
    )
