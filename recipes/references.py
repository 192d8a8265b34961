"""Reference arms: the hyperparameters the field's fine-tuning projects ship, as tunelab config overrides.

A user who does not tune would not launch transformers' defaults alone: they would copy the learning
rate, rank and schedule of their favourite project's recipe. `tunelab run` trains those too, with the
same seeds, data and test split as the tuned and untuned arms, so the report answers "does tuning beat
the untuned run and the best reference?". Each project is one YAML file in recipes/references/, one
section per method family (lora: LoRA and DoRA; full), each key a section.key override of the recipe's
untuned config and each value cited in a comment from the project's own shipped config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from finetune import FinetuneConfig
from finetune.errors import ConfigError

REFERENCES_DIR = Path(__file__).resolve().parent / "references"
# The section of a reference file that applies to each fine-tuning method.
METHOD_FAMILIES = {"lora": "lora", "dora": "lora", "full": "full"}


def known_references() -> list[str]:
    return sorted(path.stem for path in REFERENCES_DIR.glob("*.yaml"))


def reference_overrides(name: str, method: str) -> dict[str, Any]:
    """The section.key overrides of reference ``name`` for ``method``; a clear error when it has none."""
    known = known_references()
    if name not in known:
        raise ConfigError(f"compare.references: unknown reference {name!r}; known: {', '.join(known)}")
    raw = yaml.safe_load((REFERENCES_DIR / f"{name}.yaml").read_text())
    family = METHOD_FAMILIES.get(method)
    if family is None or family not in raw:
        offered = sorted(m for m, f in METHOD_FAMILIES.items() if f in raw)
        raise ConfigError(
            f"compare.references: {name} ships no configuration for method {method!r} (it has: {', '.join(offered)})"
        )
    return dict(raw[family])


def reference_config(name: str, untuned: FinetuneConfig) -> FinetuneConfig:
    """The recipe's untuned config with reference ``name``'s hyperparameters: same data, model and precision."""
    return untuned.with_overrides(reference_overrides(name, untuned.method.name))


def default_references(untuned: FinetuneConfig) -> list[str]:
    """On by default for causal LMs (where the field's recipes come from), for the methods they cover."""
    if untuned.model.task != "causal_lm" or untuned.method.name not in METHOD_FAMILIES:
        return []
    return known_references()


def resolve_references(raw: Any, untuned: FinetuneConfig) -> list[str]:
    """compare.references as written (None: the default) -> checked names, each with a config for the method."""
    if raw is None:
        return default_references(untuned)
    if isinstance(raw, str) or not isinstance(raw, list) or not all(isinstance(n, str) for n in raw):
        raise ConfigError(f"compare.references: expected a list of names (known: {known_references()}), got {raw!r}")
    if len(set(raw)) != len(raw):
        raise ConfigError(f"compare.references: duplicates in {raw}")
    for name in raw:
        reference_config(name, untuned)  # unknown names, methods without a reference, bad values fail here
    return list(raw)


def arm_names(results: dict[str, Any]) -> list[str]:
    """The arms of a `tunelab run`'s results in the order tables and plots show them: untuned, the
    references, tuned."""
    return ["untuned", *(results.get("references") or {}), "tuned"]
