"""The field's recipes as reference arms (recipes.references): loading, defaults and bad input."""

import re

import pytest
import yaml
from conftest import causal_config, classification_config

from finetune import ConfigError, FinetuneConfig
from recipes.recipe import recipe_from_dict
from recipes.references import (
    REFERENCES_DIR,
    default_references,
    known_references,
    reference_config,
    reference_overrides,
)


def _causal(tmp_path, method="lora"):
    raw = causal_config("unused-model", str(tmp_path / "train.jsonl"), tmp_path / "out", method={"name": method})
    return FinetuneConfig.from_dict(raw)


def test_the_three_projects_ship_lora_and_full_references_each_value_cited():
    assert known_references() == ["axolotl", "llama_factory", "torchtune"]
    for name in known_references():
        text = (REFERENCES_DIR / f"{name}.yaml").read_text()
        raw = yaml.safe_load(text)
        assert raw["name"] == name and set(raw) >= {"lora", "full"}
        # Each section starts by naming the project's config file it was read from.
        for family in ("lora", "full"):
            section = text.split(f"\n{family}:\n", 1)[1]
            assert re.match(r"\s+# \S+\.ya?ml", section), (name, family)
        assert re.search(r"@[0-9a-f]{8}", text), name  # the commit it was read at


@pytest.mark.parametrize("name", ["axolotl", "llama_factory", "torchtune"])
@pytest.mark.parametrize("method", ["lora", "dora", "full"])
def test_every_reference_makes_a_valid_config(tmp_path, name, method):
    untuned = _causal(tmp_path, method)
    config = reference_config(name, untuned)
    overrides = reference_overrides(name, method)
    assert config.training.learning_rate == overrides["training.learning_rate"]
    assert config.data == untuned.data and config.model == untuned.model  # only hyperparameters change
    if method != "full":
        assert config.method.lora_r == overrides["method.lora_r"]


def test_the_values_read_from_the_projects(tmp_path):
    lora = {name: reference_config(name, _causal(tmp_path)) for name in known_references()}
    assert lora["torchtune"].training.learning_rate == 2e-3 and lora["torchtune"].training.warmup_steps == 100
    assert lora["axolotl"].training.learning_rate == 2e-4 and lora["axolotl"].method.lora_alpha == 32
    assert lora["llama_factory"].training.num_train_epochs == 3 and lora["llama_factory"].method.lora_alpha == 16


def test_defaults_cover_causal_lms_and_the_methods_the_projects_ship(tmp_path, tiny_bert, sentiment_files):
    assert default_references(_causal(tmp_path)) == known_references()
    assert default_references(_causal(tmp_path, "ia3")) == []
    classification = FinetuneConfig.from_dict(classification_config(tiny_bert, sentiment_files, tmp_path / "o"))
    assert default_references(classification) == []


@pytest.mark.parametrize(
    ("compare", "message"),
    [
        ({"references": ["unsloth"]}, "unknown reference 'unsloth'; known: axolotl, llama_factory, torchtune"),
        ({"references": "torchtune"}, "expected a list of names"),
        ({"references": ["axolotl", "axolotl"]}, "duplicates"),
        ({"refs": []}, "compare: expected a mapping with the key references"),
    ],
)
def test_bad_compare_sections(tmp_path, compare, message):
    raw = causal_config("unused-model", str(tmp_path / "train.jsonl"), tmp_path / "out")
    with pytest.raises(ConfigError, match=re.escape(message)):
        recipe_from_dict({**raw, "compare": compare})


def test_a_method_without_a_reference_is_named(tmp_path):
    raw = causal_config("unused-model", str(tmp_path / "train.jsonl"), tmp_path / "out", method={"name": "ia3"})
    with pytest.raises(
        ConfigError, match="torchtune ships no configuration for method 'ia3' .it has: dora, full, lora"
    ):
        recipe_from_dict({**raw, "compare": {"references": ["torchtune"]}})
    assert recipe_from_dict({**raw, "compare": {"references": []}}).references == []


def test_the_references_as_warm_start_trials(tmp_path):
    raw = causal_config("unused-model", str(tmp_path / "train.jsonl"), tmp_path / "out")
    recipe = recipe_from_dict({**raw, "search": {"warm_start": "references"}, "compare": {"references": ["axolotl"]}})
    assert recipe.search.warm_start == (reference_overrides("axolotl", "lora"),)
    assert recipe_from_dict({**raw, "compare": {"references": []}}).search.warm_start == ()
    # The default for a causal LM: every default reference, in order; `warm_start: []` (or null) turns it off.
    default = recipe_from_dict(raw)
    assert default.search.warm_start == tuple(reference_overrides(n, "lora") for n in default.references)
    assert len(default.search.warm_start) == 3
    # Capped at half the steps to explore, unless the recipe says (null: no cap); a warm start of its own is not.
    assert default.search.warm_start_share == 0.5
    assert [default.search.warm_start_name(i) for i in range(3)] == default.references
    assert recipe_from_dict({**raw, "search": {"warm_start_share": None}}).search.warm_start_share is None
    assert recipe_from_dict({**raw, "search": {"warm_start_share": 0.8}}).search.warm_start_share == 0.8
    own = recipe_from_dict({**raw, "search": {"warm_start": [{"training.learning_rate": 1e-3}]}})
    assert own.search.warm_start_share is None
    assert recipe_from_dict({**raw, "search": {"warm_start": []}}).search.warm_start == ()
    assert recipe_from_dict({**raw, "search": {"warm_start": None}}).search.warm_start == ()
    # Classification compares with no reference by default, so nothing is warm-started.
    files = {split: "x.jsonl" for split in ("train", "validation", "test")}
    classification = classification_config("unused-model", files, tmp_path)
    assert recipe_from_dict(classification).search.warm_start == ()
    with pytest.raises(ConfigError, match="search.warm_start: expected a list of mappings"):
        recipe_from_dict({**raw, "search": {"warm_start": "refs"}})


def test_a_search_warm_started_from_the_references_re_ranks_without_the_untuned_trial(tmp_path):
    raw = causal_config("unused-model", str(tmp_path / "train.jsonl"), tmp_path / "out")
    search = recipe_from_dict(raw).search
    assert not search.include_untuned and search.selection.rerank and search.selection.top_k == 3
    # A sampled winner must beat a re-run reference beyond the validation rows' noise to replace it.
    assert search.selection.incumbent_z == 1.645
    # A recipe that sets either key keeps the usual rules; so does one with no reference to start from.
    kept = recipe_from_dict({**raw, "search": {"selection": {"seeds": 2}}}).search
    assert kept.include_untuned and kept.selection.seeds == 2
    assert recipe_from_dict({**raw, "search": {"include_untuned": True}}).search.selection.seeds == 2
    assert recipe_from_dict({**raw, "compare": {"references": []}}).search.include_untuned
    assert recipe_from_dict({**raw, "search": {"warm_start": []}}).search.include_untuned


def test_same_runs_as_matches_only_what_seed_run_would_train_the_same(tmp_path):
    from recipes.run import same_runs_as

    axolotl = reference_config("axolotl", _causal(tmp_path))
    arms = {"torchtune": reference_config("torchtune", _causal(tmp_path)), "axolotl": axolotl}
    elsewhere = {"training.seed": 7, "training.output_dir": str(tmp_path / "x"), "training.run_name": "trial_3"}
    assert same_runs_as(axolotl.with_overrides(elsewhere), arms) == "axolotl"
    assert same_runs_as(axolotl.with_overrides({"training.learning_rate": 2.1e-4}), arms) is None
    assert same_runs_as(axolotl.with_overrides({"data.max_length": 33}), arms) is None


def test_a_reference_arm_trains_at_most_the_recipes_per_device_batch(tiny_llama, sft_files, tmp_path):
    """The batch the recipe states is the one its user knows fits: torchtune's 16 rows a step train as 4 x 4
    accumulated, as its warm-start trial trains them, everything else as the project ships it."""
    from hpo.finetune import plan_search
    from recipes.run import reference_arm_config

    recipe = recipe_from_dict(causal_config(tiny_llama, sft_files["messages"], tmp_path / "out"))
    plan = plan_search(recipe.untuned, recipe.search)  # the default space: the effective batch is searched
    batch = ("training.per_device_train_batch_size", "training.gradient_accumulation_steps")
    for name, split in (("torchtune", (4, 4)), ("axolotl", (4, 1)), ("llama_factory", (4, 2))):
        shipped = reference_config(name, recipe.untuned)
        assert reference_arm_config(name, recipe, plan) == shipped.with_overrides(dict(zip(batch, split, strict=True)))


# Axolotl's batch (4) fits the recipe's per-device batch (4); torchtune's (16) trains as 4 x 4 accumulated, in
# its warm-start trial and in its arm alike.
@pytest.mark.parametrize("name, per_device, accumulation", [("axolotl", 4, 1), ("torchtune", 4, 4)])
def test_a_winning_reference_is_the_tuned_arm_without_training_it_again(
    tiny_llama, sft_files, tmp_path, name, per_device, accumulation
):
    import json

    import yaml
    from conftest import write_recipe

    from recipes.run import main as run_main

    raw = causal_config(tiny_llama, sft_files["messages"], tmp_path / "out", data={"test_size": 4, "max_new_tokens": 2})
    raw["compare"] = {"references": [name]}
    # One trial, warm-started from the reference: the search can only choose its recipe.
    recipe = write_recipe(raw, tmp_path / "recipe.yaml", budget={"trials": 1}, warm_start="references")
    assert run_main([recipe, "--run-dir", str(tmp_path / "run")]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    tuned, reference = results["runs"]["tuned"], results["runs"][name]
    assert [r["same_runs_as"] for r in tuned] == [name, name]
    assert [r["test"] for r in tuned] == [r["test"] for r in reference]
    assert not (tmp_path / "run" / "tuned").exists()
    tested = sum(r["test_seconds"] for r in results["runs"]["untuned"] + reference)  # each run counted once
    assert results["time_breakdown"]["testing_seconds"] == pytest.approx(tested, abs=1e-3)
    report = (tmp_path / "run" / "report.md").read_text()
    assert f"The search chose {name}'s recipe: the tuned arm is its runs" in report
    for folder in (tmp_path / "run" / "search" / "trials").iterdir():
        trained = yaml.safe_load((folder / "tunelab_config.yaml").read_text())["training"]
        assert (trained["per_device_train_batch_size"], trained["gradient_accumulation_steps"]) == (
            per_device,
            accumulation,
        )
    arm = yaml.safe_load((tmp_path / "run" / name / "seed_0" / "tunelab_config.yaml").read_text())["training"]
    assert (arm["per_device_train_batch_size"], arm["gradient_accumulation_steps"]) == (per_device, accumulation)
