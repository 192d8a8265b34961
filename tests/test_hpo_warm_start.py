"""Warm start: overrides of the untuned config tried right after it, as the search space can express them."""

import pytest
import yaml
from conftest import classification_config

from finetune import ConfigError, FinetuneConfig
from hpo import Budget, Categorical, Float, Int, SearchSpace
from hpo.finetune import SearchSettings, search_finetune
from hpo.finetune.warm_start import nearest_allowed, warm_start_params
from hpo.space import Fixed

SPACE = SearchSpace(
    {
        "training.learning_rate": Float(low=1e-4, high=1e-2, log=True),
        "training.effective_batch_size": Categorical(choices=(8, 16)),
        "method.lora_r": Categorical(choices=(4, 8)),
    }
)


def _base(tiny_bert, sentiment_files, tmp_path):
    training = {"max_steps": -1, "num_train_epochs": 1, "eval_steps": None, "learning_rate": 5e-5}
    return FinetuneConfig.from_dict(
        classification_config(tiny_bert, sentiment_files, tmp_path / "unused", training=training)
    )


def test_values_the_space_does_not_offer_become_the_nearest_it_does():
    assert nearest_allowed(Float(low=1e-4, high=1e-2, log=True), 2e-2) == 1e-2
    assert nearest_allowed(Float(low=1e-4, high=1e-2, log=True), 3e-3) == 3e-3
    assert nearest_allowed(Int(low=1, high=5), 9) == 5
    assert nearest_allowed(Categorical(choices=(8, 16, 32)), 4) == 8  # by ratio
    assert (
        nearest_allowed(Categorical(choices=(8, 16, 32)), 22) == 16
        and nearest_allowed(Categorical(choices=(8, 16, 32)), 23) == 32  # 23/16 > 32/23
    )
    assert nearest_allowed(Categorical(choices=("linear", "cosine")), "constant") == "linear"
    assert nearest_allowed(Fixed(value=0.01), 0.1) == 0.01


def test_warm_start_params_project_the_overridden_config(tiny_bert, sentiment_files, tmp_path):
    base = _base(tiny_bert, sentiment_files, tmp_path)
    overrides = {
        "training.learning_rate": 2e-2,  # above the space: its high end
        "training.per_device_train_batch_size": 4,
        "training.gradient_accumulation_steps": 4,  # effective batch 16
        "method.lora_r": 32,  # not offered: the nearest choice
    }
    params = warm_start_params(SPACE, base, overrides)
    assert params == {"training.learning_rate": 1e-2, "training.effective_batch_size": 16, "method.lora_r": 8}


def test_a_search_runs_the_warm_start_trials_right_after_the_untuned_one(tiny_bert, sentiment_files, tmp_path):
    base = _base(tiny_bert, sentiment_files, tmp_path)
    warm = ({"training.learning_rate": 3e-3, "method.lora_r": 4}, {"training.learning_rate": 1e-3})
    search = search_finetune(
        base,
        SearchSettings(
            space=SPACE, sampler="random", scheduler="none", budget=Budget(trials=4), warm_start=warm, progress=False
        ),
        run_dir=tmp_path / "search",
    )
    trials = search.result.trials
    assert [t.extra.get("role") for t in trials[:3]] == ["untuned", "warm_start", "warm_start"]
    assert trials[1].params["training.learning_rate"] == 3e-3 and trials[1].params["method.lora_r"] == 4
    assert trials[2].params["training.learning_rate"] == 1e-3 and trials[2].params["method.lora_r"] == 8
    ran = yaml.safe_load((tmp_path / "search" / "trials" / "trial_0001" / "tunelab_config.yaml").read_text())
    assert ran["training"]["learning_rate"] == 3e-3 and ran["method"]["lora_r"] == 4


@pytest.mark.parametrize("raw", [{"training.learning_rate": 1e-3}, [{"training.nope": 1}], ["lr"]])
def test_bad_warm_start_settings_are_named(raw):
    with pytest.raises(ConfigError, match="search.warm_start"):
        SearchSettings(warm_start=raw)
