"""What the search raises: bad search settings, a search with no result, and the signals an objective
raises to steer the loop (stop this trial, it cannot run, run something else instead, stop searching)."""

from __future__ import annotations

from typing import Any


class SearchConfigError(ValueError):
    """A search setting, space or budget is impossible; the message names the key and what was expected."""


class SearchError(RuntimeError):
    """The search could not produce any result (e.g. every trial failed)."""


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
    the next trial with ``attrs`` among its user attributes, beside what it keeps of this trial's (its role,
    and why this trial itself replaced another: hpo.attributes.STAND_IN_KEEPS)."""

    def __init__(self, params: dict[str, Any], attrs: dict[str, Any]):
        super().__init__(f"replaced by {params}")
        self.params, self.attrs = params, attrs
