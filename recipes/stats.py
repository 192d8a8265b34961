"""Tuned vs untuned over seeds: difference of means, its 95% interval, Welch's t-test.

The interval is Welch's t interval, the one that matches the test (the same standard error and
Welch-Satterthwaite degrees of freedom), so "CI excludes 0" and "p < 0.05" agree. With a few seeds per
arm a percentile bootstrap is far too narrow (it cannot see spread the seeds did not show), so it is
used only when each arm has at least BOOTSTRAP_MIN_SEEDS seeds.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

BOOTSTRAP_MIN_SEEDS = 10


@dataclass(frozen=True)
class Comparison:
    tuned_mean: float
    tuned_std: float
    untuned_mean: float
    untuned_std: float
    difference: float  # tuned - untuned, in the metric's units
    ci_low: float
    ci_high: float
    ci_method: str  # "welch" or "bootstrap"
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
    if min(len(a), len(b)) >= BOOTSTRAP_MIN_SEEDS:
        rng = np.random.default_rng(seed)
        # Percentile bootstrap of the difference of means, resampling each arm's seeds independently.
        boot = rng.choice(a, (resamples, len(a))).mean(axis=1) - rng.choice(b, (resamples, len(b))).mean(axis=1)
        (low, high), method = np.quantile(boot, [alpha / 2, 1 - alpha / 2]), "bootstrap"
    else:
        (low, high), method = welch_interval(a, b, alpha), "welch"
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
        ci_method=method,
        p_value=p_value,
        significant=p_value < alpha,
        n_tuned=len(a),
        n_untuned=len(b),
    )


def welch_interval(a: np.ndarray, b: np.ndarray, alpha: float = 0.05) -> tuple[float, float]:
    """Two-sided (1 - alpha) interval of mean(a) - mean(b) with unequal variances (Welch-Satterthwaite df)."""
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    difference = float(a.mean() - b.mean())
    if va + vb == 0:
        return difference, difference  # no spread in either arm: nothing to widen it by
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = float(stats.t.ppf(1 - alpha / 2, df)) * math.sqrt(va + vb)
    return difference - half, difference + half


def mean_std(values: list[float]) -> str:
    """``values`` as "mean +/- sample std" (3 decimals) for a report."""
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return f"{mean:.3f} +/- {std:.3f}"
