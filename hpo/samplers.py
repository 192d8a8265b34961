"""Samplers and schedulers by name, on top of Optuna's."""

from __future__ import annotations

import warnings

import optuna

from hpo.errors import SearchConfigError

SAMPLERS = ("grid", "random", "qmc", "tpe", "gp")
JOINT_SAMPLERS = ("tpe", "gp")  # draw a trial's parameters from one model of all of them (TPE: multivariate)
SCHEDULERS = ("none", "median", "sha", "hyperband")
RUNG_SCHEDULERS = ("sha", "hyperband")  # compare trials only at min_steps x reduction_factor^k
REDUCTION_FACTOR = 3  # successive halving keeps a third of the trials at each rung


def build_sampler(name: str, *, seed: int | None, n_startup_trials: int = 5) -> optuna.samplers.BaseSampler:
    """``grid`` is driven by enqueued points (see hpo.optimize); its sampler only fills nothing-left gaps."""
    if name in ("random", "grid"):
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "qmc":
        # Scrambled Sobol points; a seed fixes the scrambling, so runs are reproducible.
        return optuna.samplers.QMCSampler(
            qmc_type="sobol", scramble=True, seed=seed, warn_asynchronous_seeding=False, warn_independent_sampling=False
        )
    if name == "tpe":
        # multivariate and group are chosen on purpose (conditional spaces); Optuna's notice that they are
        # experimental is not for the user.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                seed=seed,
                n_startup_trials=n_startup_trials,
                multivariate=True,
                group=True,  # warn_independent_sampling is off by default since Optuna 4.9 (and deprecated)
            )
    if name == "gp":
        return optuna.samplers.GPSampler(
            seed=seed,
            n_startup_trials=n_startup_trials,
            warn_independent_sampling=False,
        )
    raise SearchConfigError(f"search.sampler: unknown sampler {name!r}; expected one of {', '.join(SAMPLERS)}")


def rung_steps(*, min_steps: int, reduction_factor: int = REDUCTION_FACTOR, up_to: int) -> list[int]:
    """The steps where successive halving and every Hyperband bracket compare trials, up to ``up_to``:
    min_steps x reduction_factor^k (optuna's rungs with min_early_stopping_rate 0 and its brackets')."""
    steps, step = [], min_steps
    while step <= up_to:
        steps.append(step)
        step *= reduction_factor
    return steps


def build_pruner(
    name: str, *, min_steps: int, max_steps: int | None = None, reduction_factor: int = REDUCTION_FACTOR
) -> optuna.pruners.BasePruner:
    """Early-stopping schedulers; resources are the steps given to report() (a fine-tune search: steps at the
    untuned run's effective batch, so trials meet the rungs at equal rows trained on)."""
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=min_steps)
    if name == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=min_steps, reduction_factor=reduction_factor)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=min_steps, max_resource=max_steps or "auto", reduction_factor=reduction_factor
        )
    raise SearchConfigError(f"search.scheduler: unknown scheduler {name!r}; expected one of {', '.join(SCHEDULERS)}")
