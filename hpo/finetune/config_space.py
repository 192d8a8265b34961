"""Search-space keys as FinetuneConfig keys: which keys may be searched, the derived keys searched in
place of real ones (effective batch, LoRA alpha multiplier), and sampled values turned into config overrides
and into the config a trial trains (trial_config)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from finetune import FinetuneConfig
from finetune.config import SECTIONS
from finetune.errors import ConfigError
from hpo.space import Categorical, Fixed, SearchSpace, finite_values, is_active

if TYPE_CHECKING:
    from hpo.finetune.plan import SearchPlan
    from hpo.finetune.settings import SearchSettings

# Searched in place of per-device batch and accumulation, which are derived from it (see derive_batch).
EFFECTIVE_BATCH_SIZE = "training.effective_batch_size"
# Searched in place of lora_alpha: alpha = multiplier x lora_r keeps the "alpha = r or 2r" prior.
LORA_ALPHA_MULTIPLIER = "method.lora_alpha_multiplier"
DERIVED_KEYS = (EFFECTIVE_BATCH_SIZE, LORA_ALPHA_MULTIPLIER)
# (divisor, multiple): every searched combination must divide exactly.
DIVIDES = (("model.num_attention_heads", "model.hidden_size"),)
# Config values that name a searched choice differently (LoRA's target_modules "auto" is all linear layers).
SAME_CHOICE = {"method.target_modules": {"auto": "all-linear"}}
NEVER_SEARCHED = {
    "training.seed": "seeds are replicates, never a searched value (recipes run several seeds)",
    "training.output_dir": "each trial gets its own output folder",
}


def check_space_keys(space: SearchSpace) -> SearchSpace:
    """Refuse a space whose keys (or ``when`` keys) are not config keys, or that searches what must not be."""
    for key, parameter in space.parameters.items():
        if key in NEVER_SEARCHED:
            raise ConfigError(f"search.space: {key} cannot be searched: {NEVER_SEARCHED[key]}")
        if key not in DERIVED_KEYS:
            check_config_key(key, "search.space")
        for when_key in parameter.when or {}:
            check_config_key(when_key, f"search.space.{key}.when")
        if key == EFFECTIVE_BATCH_SIZE:
            values = (
                parameter.choices
                if isinstance(parameter, Categorical)
                else ([parameter.value] if isinstance(parameter, Fixed) else [parameter.low, parameter.high])
            )
            if any(not isinstance(v, int) or v <= 0 for v in values):
                raise ConfigError(
                    f"search.space.{key}: effective batch sizes must be positive integers, got {list(values)}"
                )
    return space


def check_combinations(space: SearchSpace, base: dict[str, Any]) -> None:
    """Refuse, before anything trains, a space in which some sampled combination cannot be built
    (attention heads that do not divide the hidden size); conditions (``when``) are respected."""
    for divisor_key, multiple_key in DIVIDES:
        if divisor_key not in space.parameters and multiple_key not in space.parameters:
            continue
        bad = []
        for multiple in _values(space, multiple_key, base):
            point = {multiple_key: multiple}
            divisor = space.parameters.get(divisor_key)
            if divisor is not None and not is_active(divisor.when, point, base):
                continue
            for value in _values(space, divisor_key, base):
                if value is not None and multiple is not None and multiple % value:
                    bad.append(f"{divisor_key}={value} with {multiple_key}={multiple}")
        if bad:
            raise ConfigError(
                f"search.space: {divisor_key} must divide {multiple_key}, and these combinations do not: "
                f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}; choose values that divide every "
                f"{multiple_key}, or condition {divisor_key} on it with 'when'"
            )


def _values(space: SearchSpace, key: str, base: dict[str, Any]) -> list[Any]:
    parameter = space.parameters.get(key)
    if parameter is None:
        return [base.get(key)]  # None: the model's own value, checked when the model is built
    values = finite_values(parameter)
    if values is None:
        raise ConfigError(f"search.space.{key}: give it as categorical or a stepped int, so every value can be checked")
    return values


def derive_batch(effective: int, max_per_device: int, world_size: int = 1) -> tuple[int, int]:
    """(per_device_train_batch_size, gradient_accumulation_steps) whose product x world size is ``effective``.

    The per-device batch is the largest divisor of effective/world_size that fits ``max_per_device``.
    """
    if effective % world_size:
        raise ConfigError(f"{EFFECTIVE_BATCH_SIZE}={effective} is not divisible by the {world_size} processes")
    per_process = effective // world_size
    per_device = max(d for d in range(1, min(per_process, max_per_device) + 1) if per_process % d == 0)
    return per_device, per_process // per_device


def to_overrides(
    params: dict[str, Any], base: dict[str, Any], max_per_device: int, world_size: int = 1
) -> dict[str, Any]:
    """Config overrides for sampled params, with derived keys turned into real config keys."""
    overrides = {k: v for k, v in params.items() if k not in DERIVED_KEYS}
    if EFFECTIVE_BATCH_SIZE in params:
        per_device, accumulation = derive_batch(params[EFFECTIVE_BATCH_SIZE], max_per_device, world_size)
        overrides["training.per_device_train_batch_size"] = per_device
        overrides["training.gradient_accumulation_steps"] = accumulation
    if LORA_ALPHA_MULTIPLIER in params:
        rank = overrides.get("method.lora_r", base.get("method.lora_r"))
        overrides["method.lora_alpha"] = int(params[LORA_ALPHA_MULTIPLIER] * rank)
    return overrides


def trial_config(
    base: FinetuneConfig, params: dict[str, Any], plan: SearchPlan, settings: SearchSettings
) -> FinetuneConfig:
    """The config a trial of ``params`` trains: ``base`` with them, derived keys made config keys (the
    effective batch split over the plan's processes), and per device at most search.max_per_device_batch
    (by default the base config's: the batch its user knows fits), the rest accumulated. A per-device batch
    given as such (a warm start's, where the space does not search the batch) is split the same way."""
    cap = settings.max_per_device_batch or base.training.per_device_train_batch_size
    config = base.with_overrides(to_overrides(params, plan.base_values, cap, plan.world_size))
    training = config.training
    if training.per_device_train_batch_size <= cap:
        return config
    rows_per_step = training.per_device_train_batch_size * training.gradient_accumulation_steps
    per_device, accumulation = derive_batch(rows_per_step, cap)
    return config.with_overrides(
        {"training.per_device_train_batch_size": per_device, "training.gradient_accumulation_steps": accumulation}
    )


def flatten(config: FinetuneConfig) -> dict[str, Any]:
    """{"training.learning_rate": 5e-5, ...}: the dotted values conditions and untuned params read."""
    return {f"{section}.{key}": value for section, values in config.to_dict().items() for key, value in values.items()}


def untuned_params(space: SearchSpace, base_values: dict[str, Any]) -> dict[str, Any]:
    """The untuned config expressed in the space's keys (for the trials table and for enqueueing)."""
    params = {}
    for key, parameter in space.parameters.items():
        if not is_active(parameter.when, params, base_values):
            continue  # e.g. the MLP head's width when the untuned head is linear
        if key == EFFECTIVE_BATCH_SIZE:
            params[key] = (
                base_values["training.per_device_train_batch_size"]
                * base_values["training.gradient_accumulation_steps"]
            )
        elif key == LORA_ALPHA_MULTIPLIER:
            ratio = base_values["method.lora_alpha"] / base_values["method.lora_r"]
            params[key] = int(ratio) if ratio.is_integer() else ratio
        elif key not in DERIVED_KEYS:
            value = base_values[key]
            if isinstance(parameter, Categorical) and value not in parameter.choices:
                value = SAME_CHOICE.get(key, {}).get(value, value)
            params[key] = value
    return params


def check_config_key(key: str, where: str) -> None:
    section, _, name = key.partition(".")
    if section not in SECTIONS:
        raise ConfigError(
            f"{where}: unknown key {key!r}; keys look like section.key with section in {sorted(SECTIONS)}"
        )
    allowed = {f.name for f in dataclasses.fields(SECTIONS[section])}
    if name not in allowed and key not in DERIVED_KEYS:
        raise ConfigError(f"{where}: unknown key {key!r}; allowed keys in {section!r}: {sorted(allowed)}")
