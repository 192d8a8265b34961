"""A recipe: a fine-tuning config plus how to tune it, what the untuned baseline is, and how many seeds.

A recipe YAML holds the four finetune sections (model, data, method, training) and four more:

    search:   hpo.finetune.SearchSettings, read by SearchSettings.from_dict: {sampler, scheduler,
               budget: {full_run_equivalents, trials, steps, minutes}, objective: {metric, direction, use,
               cv_folds, rungs}, space (null: method-aware default), also_tune, selection: {top_k, seeds,
               confidence, sequential} (how the winner is chosen: hpo.winner_rule), warm_start (a list
               of section.key overrides tried right after the untuned run, or `references`: the compare
               references' hyperparameters, the default, within warm_start_share 0.5 of the steps to explore
               and named after them (warm_start_names); then, unless the recipe sets them, include_untuned
               false and selection {top_k: 3, seeds: 1, incumbent_z: 1.645}: hpo.rerank_winner), include_untuned,
               max_per_device_batch, isolation, storage, study_name, heartbeat_seconds}
    baseline: section.key overrides of the untuned run (default: TrainingArguments defaults and the
              method's peft defaults, i.e. what a user launches without tuning)
    seeds:    replicate seeds for the final comparison (a count or a list; default 3)
    compare:  {references: [...]}: the field's recipes trained as further arms (recipes.references;
              default: all of them for causal LMs, none for classification; [] for none)

`tunelab train RECIPE` trains the four finetune sections as written (hand-chosen values);
`tunelab run RECIPE` tunes from the untuned baseline and compares.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune.config import SECTIONS, FinetuneConfig, MethodConfig, TrainingConfig, apply_overrides, load_yaml
from finetune.config_checks import parse_override_value
from finetune.errors import ConfigError
from hpo.finetune import SearchSettings
from hpo.finetune.config_space import check_combinations, flatten
from recipes.references import reference_overrides, resolve_references

# How a search warm-started from the references chooses its winner, unless the recipe says (recipe_from_dict).
REFERENCES_SELECTION = {"top_k": 3, "seeds": 1, "incumbent_z": 1.645}
# The most of the steps to explore the references take as warm-start trials, unless the recipe says: the longest
# is left out first (it is still trained and compared as an arm), leaving the sampler room (recipe_from_dict).
REFERENCES_WARM_START_SHARE = 0.5

RECIPE_SECTIONS = ("search", "baseline", "seeds", "compare")
# Hyperparameters the untuned baseline takes from the library defaults, not from the recipe.
UNTUNED_TRAINING_KEYS = (
    "learning_rate",
    "lr_scheduler_type",
    "warmup_ratio",
    "warmup_steps",
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
class Recipe:
    finetune: FinetuneConfig  # as written: what `tunelab train` runs
    untuned: FinetuneConfig  # the baseline arm and the search's first trial
    search: SearchSettings
    seeds: list[int]
    references: list[str] = field(default_factory=list)  # recipes.references names, trained as further arms
    path: str | None = None


def finetune_sections(raw: dict[str, Any]) -> dict[str, Any]:
    """The four finetune sections of a recipe (or of a plain finetune config)."""
    return {k: v for k, v in raw.items() if k not in RECIPE_SECTIONS}


def recipe_sections_in(path: str | Path) -> list[str]:
    """The recipe sections (search, baseline, seeds, compare) the file at ``path`` has, in that order."""
    raw = load_yaml(path)
    return [section for section in RECIPE_SECTIONS if section in raw]


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
    compare = raw.get("compare") or {}
    if not isinstance(compare, dict) or set(compare) - {"references"}:
        raise ConfigError(f"compare: expected a mapping with the key references, got {compare!r}")
    references = resolve_references(compare.get("references"), untuned)
    search_raw = dict(raw.get("search") or {})
    # The field's recipes, tried right after the untuned run: by default wherever they are compared with
    # (causal LMs); on sst2_words they made every search seed's winner beat the best reference on test loss
    # (5 of 5 against 4 of 5 without, benchmarks/RESULTS.md). `warm_start: []` turns it off.
    if search_raw.get("warm_start", "references") == "references":
        search_raw["warm_start"] = [reference_overrides(name, untuned.method.name) for name in references]
        search_raw.setdefault("warm_start_names", list(references))
        # At 4 full runs the three references took 80 of sst2_words' 144 steps to explore and 100 of
        # dolly_short_qa's 150, leaving one or two short sampled trials. Capped at half (LLaMA-Factory's 3 epochs
        # left out), the sst2_words searches' median test loss went 0.148 -> 0.130 (the grid's best 0.129; 3 of
        # 5 beat every reference, one fell under Axolotl's by 0.015) and dolly_short_qa's stayed (2.102 -> 2.103).
        search_raw.setdefault("warm_start_share", REFERENCES_WARM_START_SHARE)
        # With the references among the trials, the untuned run (far behind them on a causal LM: validation
        # loss 0.58 against 0.14 on sst2_words) is left out of the search, its full run spent on re-ranking the
        # top 3 trials by one fresh re-run each (hpo.rerank_winner): a short trial that won by luck is exposed
        # (0.094 -> 0.130, 0.142 -> 0.208 on sst2_words). `tunelab run` still trains and tests the untuned arm.
        # A sampled winner replaces a re-run reference only if it beats it by more than 1.645 standard errors
        # row by row (one-sided 95%): on sst2_words three of four sampled winners were within the rows' noise,
        # one of those three tested worse than Axolotl's recipe; with the test every search met the best
        # reference's floor (5 of 5 against 4 of 5), the median test loss 0.130 -> 0.148; on dolly_short_qa no
        # search re-ran a reference, so nothing changed there (benchmarks/RESULTS.md).
        # A recipe that sets either key chooses for itself.
        if references and not {"selection", "include_untuned"} & set(search_raw):
            search_raw |= {"include_untuned": False, "selection": dict(REFERENCES_SELECTION)}
    search = SearchSettings.from_dict(search_raw)
    if search.max_per_device_batch is None:  # the batch the recipe states, not the untuned run's default
        search.max_per_device_batch = finetune.training.per_device_train_batch_size
    if search.space is not None:
        check_combinations(search.space, flatten(untuned))  # impossible combinations fail at load
    return Recipe(
        finetune=finetune,
        untuned=untuned,
        search=search,
        seeds=list(seeds),
        references=references,
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


def _set_nested(raw: dict[str, Any], keys: list[str], value: Any) -> None:
    target = raw
    for key in keys[:-1]:
        target = target.setdefault(key, {})
        if not isinstance(target, dict):
            raise ConfigError(f"override {'.'.join(keys)}: {key} is not a mapping")
    target[keys[-1]] = value
