"""A recipe: a fine-tuning config plus how to tune it, what the untuned baseline is, and how many seeds.

A recipe YAML holds the four finetune sections (model, data, method, training) and three more:

    search:   {sampler, scheduler, budget: {full_run_equivalents, trials, steps, minutes},
               objective: {metric, direction, use}, space (null: method-aware default),
               selection: {top_k, seeds, confidence} (how the winner is chosen: hpo.selection),
               max_per_device_batch, isolation, storage, study_name, heartbeat_seconds}
    baseline: section.key overrides of the untuned run (default: TrainingArguments defaults and the
              method's peft defaults, i.e. what a user launches without tuning)
    seeds:    replicate seeds for the final comparison (a count or a list; default 3)

`tunelab train RECIPE` trains the four finetune sections as written (hand-chosen values);
`tunelab run RECIPE` tunes from the untuned baseline and compares.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune.config import SECTIONS, FinetuneConfig, MethodConfig, TrainingConfig, apply_overrides, load_yaml
from finetune.config_checks import parse_override_value
from finetune.errors import ConfigError
from hpo import Budget, SearchSpace
from hpo.default_spaces import EXTRAS
from hpo.finetune_search import Objective, flatten
from hpo.samplers import SAMPLERS, SCHEDULERS
from hpo.selection import SelectionSettings

RECIPE_SECTIONS = ("search", "baseline", "seeds")
# Hyperparameters the untuned baseline takes from the library defaults, not from the recipe.
UNTUNED_TRAINING_KEYS = (
    "learning_rate",
    "lr_scheduler_type",
    "warmup_ratio",
    "weight_decay",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "num_train_epochs",
    "max_steps",
    "max_grad_norm",
    "optimizer",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "momentum",
    "nesterov",
)
# The model's own linear head is the untuned head; a from-scratch architecture stays as the recipe writes it.
UNTUNED_METHOD_KEYS = ("lora_r", "lora_alpha", "lora_dropout", "use_rslora", "num_virtual_tokens", "head")


@dataclass(kw_only=True)
class SearchSettings:
    sampler: str = "tpe"
    scheduler: str = "hyperband"
    budget: Budget | None = None
    full_run_equivalents: float | None = 8.0
    objective: Objective = field(default_factory=Objective)
    selection: SelectionSettings = field(default_factory=SelectionSettings)
    space: SearchSpace | None = None
    max_per_device_batch: int = 32
    isolation: str = "none"
    seed: int = 0
    # Shared search (tunelab worker): a database URL all workers reach, the study's name, heartbeat period.
    storage: str | None = None
    study_name: str = "search"
    heartbeat_seconds: int | None = None
    # Groups added to the default space (hpo.default_spaces.EXTRAS): optimizer, head, architecture.
    also_tune: list[str] = field(default_factory=list)

    def search_arguments(self) -> dict[str, Any]:
        """Keyword arguments of hpo.search_finetune: each field has the parameter's name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass(kw_only=True)
class Recipe:
    finetune: FinetuneConfig  # as written: what `tunelab train` runs
    untuned: FinetuneConfig  # the baseline arm and the search's first trial
    search: SearchSettings
    seeds: list[int]
    path: str | None = None


def finetune_sections(raw: dict[str, Any]) -> dict[str, Any]:
    """The four finetune sections of a recipe (or of a plain finetune config)."""
    return {k: v for k, v in raw.items() if k not in RECIPE_SECTIONS}


def load_finetune_config(path: str | Path, overrides: list[str] | None = None) -> FinetuneConfig:
    """A finetune config file, or the four finetune sections of a recipe (search/baseline/seeds ignored)."""
    raw = apply_overrides(finetune_sections(load_yaml(path)), overrides or [])
    return FinetuneConfig.from_dict(raw, base_dir=Path(path).parent)


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    raw = load_yaml(path)
    finetune_overrides, recipe_overrides = [], []
    for item in overrides or []:
        (recipe_overrides if item.split(".", 1)[0].split("=", 1)[0] in RECIPE_SECTIONS else finetune_overrides).append(
            item
        )
    raw = apply_overrides(raw, finetune_overrides)
    for item in recipe_overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value")
        dotted, text = item.split("=", 1)
        _set_nested(raw, dotted.strip().split("."), parse_override_value(text))
    return recipe_from_dict(raw, base_dir=Path(path).parent, path=str(path))


def recipe_from_dict(raw: dict[str, Any], *, base_dir: str | Path | None = None, path: str | None = None) -> Recipe:
    finetune = FinetuneConfig.from_dict(finetune_sections(raw), base_dir=base_dir)
    untuned = untuned_config(finetune, raw.get("baseline") or {})
    seeds = raw.get("seeds", 3)
    if isinstance(seeds, bool) or not isinstance(seeds, (int, list)):
        raise ConfigError(f"seeds: expected a count or a list of integers, got {seeds!r}")
    if isinstance(seeds, int):
        seeds = list(range(seeds))
    if len(seeds) < 2 or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"seeds: need at least 2 integer seeds to compare arms, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds: duplicates in {seeds}")
    search = search_settings(raw.get("search") or {})
    if search.space is not None:
        search.space.check_combinations(flatten(untuned))  # impossible combinations fail at load
    return Recipe(
        finetune=finetune,
        untuned=untuned,
        search=search,
        seeds=list(seeds),
        path=path,
    )


def untuned_config(finetune: FinetuneConfig, baseline: dict[str, Any]) -> FinetuneConfig:
    """TrainingArguments defaults and peft defaults for the hyperparameters, then the recipe's baseline."""
    if not isinstance(baseline, dict):
        raise ConfigError(f"baseline: expected a mapping of section.key overrides, got {baseline!r}")
    defaults = {f"training.{k}": getattr(TrainingConfig(), k) for k in UNTUNED_TRAINING_KEYS}
    defaults.update({f"method.{k}": getattr(MethodConfig(), k) for k in UNTUNED_METHOD_KEYS})
    defaults["method.target_modules"] = "peft-default"  # peft's own per-architecture default
    for key in baseline:
        if key.split(".")[0] not in SECTIONS:
            raise ConfigError(f"baseline: keys look like section.key with section in {sorted(SECTIONS)}, got {key!r}")
    return finetune.with_overrides({**defaults, **baseline})


def search_settings(raw: dict[str, Any]) -> SearchSettings:
    allowed = {f.name for f in dataclasses.fields(SearchSettings)}
    unknown = set(raw) - allowed
    if unknown:
        raise ConfigError(f"search: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    raw = copy.deepcopy(raw)
    settings = SearchSettings()
    if raw.get("sampler", "tpe") not in SAMPLERS:
        raise ConfigError(f"search.sampler: expected one of {SAMPLERS}, got {raw['sampler']!r}")
    if raw.get("scheduler", "hyperband") not in SCHEDULERS:
        raise ConfigError(f"search.scheduler: expected one of {SCHEDULERS}, got {raw['scheduler']!r}")
    budget = raw.pop("budget", None) or {}
    if not isinstance(budget, dict):
        raise ConfigError(f"search.budget: expected a mapping, got {budget!r}")
    unknown = set(budget) - {"full_run_equivalents", "trials", "steps", "minutes"}
    if unknown:
        raise ConfigError(
            f"search.budget: unknown key(s) {sorted(unknown)}; allowed: full_run_equivalents, trials, steps, minutes"
        )
    settings.full_run_equivalents = budget.get("full_run_equivalents", None if budget else 8.0)
    if any(budget.get(k) is not None for k in ("trials", "steps", "minutes")):
        minutes = budget.get("minutes")
        settings.budget = Budget(
            trials=budget.get("trials"), steps=budget.get("steps"), wall_seconds=minutes * 60 if minutes else None
        )
    objective = raw.pop("objective", None) or {}
    try:
        settings.objective = Objective(**objective)
    except TypeError as exc:
        raise ConfigError(f"search.objective: {exc}; allowed: metric, direction, use, cv_folds") from exc
    selection = raw.pop("selection", None) or {}
    if not isinstance(selection, dict):
        raise ConfigError(f"search.selection: expected a mapping (top_k, seeds, confidence), got {selection!r}")
    try:
        settings.selection = SelectionSettings(**selection)
    except TypeError as exc:
        raise ConfigError(f"search.selection: {exc}; allowed: top_k, seeds, confidence") from exc
    if settings.full_run_equivalents is not None:
        settings.selection.check_budget(settings.full_run_equivalents)
    space = raw.pop("space", None)
    settings.space = SearchSpace.from_dict(space) if space else None
    also_tune = raw.pop("also_tune", None) or []
    if not isinstance(also_tune, list) or set(also_tune) - set(EXTRAS):
        raise ConfigError(f"search.also_tune: expected a list drawn from {list(EXTRAS)}, got {also_tune!r}")
    if also_tune and settings.space is not None:
        raise ConfigError("search.also_tune extends the default space; with search.space, list the parameters in it")
    settings.also_tune = also_tune
    for key, value in raw.items():
        setattr(settings, key, value)
    return settings


def _set_nested(raw: dict[str, Any], keys: list[str], value: Any) -> None:
    target = raw
    for key in keys[:-1]:
        target = target.setdefault(key, {})
        if not isinstance(target, dict):
            raise ConfigError(f"override {'.'.join(keys)}: {key} is not a mapping")
    target[keys[-1]] = value
