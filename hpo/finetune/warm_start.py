"""Warm start: configurations worth trying before anything sampled (e.g. the field's recipes for the method,
`search.warm_start` in a recipe), run right after the untuned trial as the search space can express them.

Each is a set of overrides of the base (untuned) config. Its trial is that config projected onto the space:
every searched key takes the config's value, or the nearest value the space allows (a float or int clipped
to its range, a number among categorical choices by ratio, a name not offered: the first choice); keys the
space does not search keep the base config's values, as in every trial. The trials compete like any other
(the scheduler may stop them, the budget may shorten them), and the sampler learns from them.
"""

from __future__ import annotations

import math
from typing import Any

from finetune import FinetuneConfig
from hpo.finetune.config_space import flatten, untuned_params
from hpo.space import Categorical, Fixed, Float, Int, SearchSpace

WARM_START = "warm_start"  # the role of a warm-start trial (hpo.attributes.ROLE)


def warm_start_params(space: SearchSpace, base: FinetuneConfig, overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides``, in the space's keys and values."""
    values = flatten(base.with_overrides(overrides))
    return {key: nearest_allowed(space.parameters[key], value) for key, value in untuned_params(space, values).items()}


def nearest_allowed(parameter: Any, value: Any) -> Any:
    """``value`` if ``parameter`` allows it, else the allowed value closest to it."""
    if isinstance(parameter, Fixed):
        return parameter.value
    if isinstance(parameter, Float):
        return min(max(float(value), parameter.low), parameter.high)
    if isinstance(parameter, Int):
        stepped = parameter.low + round((int(value) - parameter.low) / parameter.step) * parameter.step
        return min(max(stepped, parameter.low), parameter.high)
    if isinstance(parameter, Categorical):
        if value in parameter.choices:
            return value
        numbers = [c for c in parameter.choices if _is_number(c)]
        if _is_number(value) and numbers:
            return min(numbers, key=lambda choice: _distance(choice, value))
        return parameter.choices[0]
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _distance(choice: float, value: float) -> float:
    """By ratio for positive numbers (learning rates, ranks, batch sizes), else by difference."""
    if choice > 0 and value > 0:
        return abs(math.log(choice / value))
    return abs(choice - value)
