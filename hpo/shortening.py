"""A shorter version of a proposed trial, for when the proposal does not fit what the step budget has left.

hpo.rerun_budget lets a trial start only if the candidates' re-runs still fit after it. A proposal that
does not fit used to be refused and recorded as infeasible; TPE then held its learning rate (and every
other value) against it, not only its length. Measured on the LoRA peers benchmark (benchmarks/RESULTS.md,
2026-11-30): proposals at the learning rates that work there (1e-3 and up) were refused for being 4-5
epochs long, and the sampler moved to learning rates that never leave the majority class.
Now the longest variant that fits runs instead: fewer epochs, or a larger effective batch (fewer optimizer
steps per epoch), values the search space allows, everything else as proposed. The proposal itself is
discarded (the sampler never sees it) and the variant runs as the next trial, so the sampler learns from
what actually ran.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hpo.space import EFFECTIVE_BATCH_SIZE, SearchSpace, finite_values

EPOCHS = "training.num_train_epochs"
SHORTENED_ATTR = "shortened"  # on the trial that replaced a proposal: what was proposed, and why it did not run


def shorter_variants(params: dict[str, Any], space: SearchSpace) -> list[dict[str, Any]]:
    """``params`` with fewer epochs and/or a larger effective batch, each value one the space allows."""
    epochs = _options(space, params, EPOCHS, shorter=lambda value: value <= params[EPOCHS])
    batches = _options(space, params, EFFECTIVE_BATCH_SIZE, shorter=lambda value: value >= params[EFFECTIVE_BATCH_SIZE])
    variants = []
    for epoch_count in epochs:
        for batch in batches:
            variant = {**params}
            if epoch_count is not None:
                variant[EPOCHS] = epoch_count
            if batch is not None:
                variant[EFFECTIVE_BATCH_SIZE] = batch
            if variant != params:
                variants.append(variant)
    return variants


def longest_fitting(
    params: dict[str, Any],
    space: SearchSpace,
    *,
    length: Callable[[dict[str, Any]], int],
    fits: Callable[[int], bool],
) -> tuple[dict[str, Any], int] | None:
    """The variant with the most optimizer steps that still ``fits``, with its length; None when none fits.
    Ties go to the fewest values changed, then to the proposed batch kept (fewer epochs instead)."""
    best, best_rank = None, None
    for variant in shorter_variants(params, space):
        steps = length(variant)
        if not fits(steps):
            continue
        changed = sum(variant[key] != params[key] for key in variant)
        rank = (steps, -changed, variant.get(EFFECTIVE_BATCH_SIZE) == params.get(EFFECTIVE_BATCH_SIZE))
        if best_rank is None or rank > best_rank:
            best, best_rank = (variant, steps), rank
    return best


def _options(space: SearchSpace, params: dict[str, Any], key: str, *, shorter: Callable[[Any], bool]) -> list[Any]:
    """The values of ``key`` the space allows that make a run no longer; [None] when it is not searched."""
    parameter = space.parameters.get(key)
    if key not in params or parameter is None:
        return [None]
    values = finite_values(parameter)
    if values is None:
        return [params[key]]  # a float or log range: keep the proposed value
    return [value for value in values if shorter(value)]
