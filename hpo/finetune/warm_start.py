"""Warm start: configurations worth trying before anything sampled (e.g. the field's recipes for the method,
`search.warm_start` in a recipe), run right after the untuned trial as written (a per-device batch over
search.max_per_device_batch accumulated, as in every trial: the same rows per optimizer step).

Each is a set of overrides of the base (untuned) config, and its trial trains that config: the space's keys
take the config's values (derived keys such as the effective batch included), and overrides of keys the
space does not search ride along. hpo.optimize enqueues a trial the space holds as a point the sampler
learns from; one it cannot hold (a batch size or rank the space does not offer) runs as given and competes
for best on its value. Projecting it onto the space instead would try something else under the recipe's
name (Axolotl's batch 4 as batch 8 is half its steps). The trials compete like any other: the scheduler
may stop them, the budget may shorten them.

search.warm_start_share caps the share of the steps to explore the warm start may take (within_share), the
longest configuration left out first (`tunelab run` still trains and compares it as a reference arm). None
here (no cap); a recipe that warm-starts from the field's recipes caps them at half (recipes.recipe): at 4
full-run equivalents the three take 80 of sst2_words' 144 steps to explore and 100 of dolly_short_qa's 150,
and with the cap the sampler's own trials beat every reference on 3 of 5 sst2_words searches
(benchmarks/RESULTS.md, 2026-12-06).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from finetune import FinetuneConfig
from hpo.finetune.config_space import (
    EFFECTIVE_BATCH_SIZE,
    LORA_ALPHA_MULTIPLIER,
    flatten,
    trial_config,
    untuned_params,
)
from hpo.space import SearchSpace

if TYPE_CHECKING:
    from hpo.finetune.plan import SearchPlan
    from hpo.finetune.settings import SearchSettings

# Config keys a derived space key stands for: the trial sets them from the derived value.
STANDS_FOR = {
    EFFECTIVE_BATCH_SIZE: ("training.per_device_train_batch_size", "training.gradient_accumulation_steps"),
    LORA_ALPHA_MULTIPLIER: ("method.lora_alpha",),
}


def warm_start_params(space: SearchSpace, base: FinetuneConfig, overrides: dict[str, Any]) -> dict[str, Any]:
    """The trial params that train ``base`` with ``overrides``: the space's keys, then the overridden keys
    the space does not cover whose values differ from ``base``'s."""
    values = flatten(base.with_overrides(overrides))
    params = untuned_params(space, values)
    covered = set(params) | {key for derived in params for key in STANDS_FOR.get(derived, ())}
    base_values = flatten(base)
    extra = {key: values[key] for key in overrides if key not in covered and values[key] != base_values[key]}
    return {**params, **extra}


def warm_start_config(
    base: FinetuneConfig, overrides: dict[str, Any], plan: SearchPlan, settings: SearchSettings
) -> FinetuneConfig:
    """The config the warm-start trial of ``overrides`` trains: what ``base.with_overrides(overrides)``
    trains, its batch split as any trial's (torchtune's batch of 16 runs as 8 x 2 accumulated on a config of
    per-device batch 8). `tunelab run` trains its reference arms so: the same runs as their trials."""
    return trial_config(base, warm_start_params(plan.space, base, overrides), plan, settings)


def within_share(lengths: list[int], explore_steps: int | None, share: float | None) -> list[int]:
    """Indices of the warm-start configurations kept, in order: all of them when their ``lengths`` (budget
    steps) sum to at most ``share`` of ``explore_steps``; otherwise without the longest (of equals, the last)
    until they do. No cap without a share or a step budget."""
    kept = list(range(len(lengths)))
    if share is None or explore_steps is None:
        return kept
    while kept and sum(lengths[i] for i in kept) > share * explore_steps:
        longest = max(lengths[i] for i in kept)
        kept.remove(max(i for i in kept if lengths[i] == longest))
    return kept
