"""Warm start: overrides of the untuned config tried right after it, exactly as written."""

import dataclasses

import pytest
import yaml
from conftest import classification_config

from finetune import ConfigError, FinetuneConfig
from hpo import Budget, Categorical, Float, SearchSpace
from hpo.finetune import SearchSettings, search_finetune
from hpo.finetune.warm_start import warm_start_params, within_share

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


def test_warm_start_params_train_the_overridden_config_exactly(tiny_bert, sentiment_files, tmp_path):
    base = _base(tiny_bert, sentiment_files, tmp_path)
    overrides = {
        "training.learning_rate": 2e-2,  # above the space's range: kept, so the trial runs as given
        "training.per_device_train_batch_size": 4,
        "training.gradient_accumulation_steps": 4,  # the space's effective batch: 16
        "method.lora_r": 32,  # not offered: kept
        "training.warmup_ratio": 0.1,  # not searched: rides along
        "training.weight_decay": 0.0,  # the base's own value: nothing to say
    }
    params = warm_start_params(SPACE, base, overrides)
    assert params == {
        "training.learning_rate": 2e-2,
        "training.effective_batch_size": 16,
        "method.lora_r": 32,
        "training.warmup_ratio": 0.1,
    }
    assert not SPACE.contains(params)
    inside = warm_start_params(SPACE, base, {"training.learning_rate": 3e-3, "method.lora_r": 4})
    assert inside == {"training.learning_rate": 3e-3, "training.effective_batch_size": 8, "method.lora_r": 4}
    assert SPACE.contains(inside)  # the sampler learns from it


def test_a_search_runs_the_warm_start_trials_right_after_the_untuned_one(tiny_bert, sentiment_files, tmp_path):
    base = _base(tiny_bert, sentiment_files, tmp_path)
    warm = (
        {"training.learning_rate": 3e-3, "method.lora_r": 4},
        {"training.learning_rate": 1e-3, "training.per_device_train_batch_size": 4, "method.lora_r": 32},
    )
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
    assert trials[2].params["training.effective_batch_size"] == 4 and trials[2].params["method.lora_r"] == 32

    def ran(number):
        path = tmp_path / "search" / "trials" / f"trial_{number:04d}" / "tunelab_config.yaml"
        return yaml.safe_load(path.read_text())

    assert ran(1)["training"]["learning_rate"] == 3e-3 and ran(1)["method"]["lora_r"] == 4
    # Outside the space (batch 4, rank 32): run as written, not as the nearest point the space offers.
    assert ran(2)["training"]["per_device_train_batch_size"] == 4 and ran(2)["method"]["lora_r"] == 32
    assert ran(2)["training"]["learning_rate"] == 1e-3


def test_the_warm_start_keeps_within_its_share_leaving_out_the_longest_first():
    assert within_share([20, 60, 20], 150, 0.5) == [0, 2]  # 100 > 75: the 60-step one goes
    assert within_share([16, 48, 16], 144, 0.5) == [0, 2]
    assert within_share([550, 1650, 550], 9800, 0.5) == [0, 1, 2]  # 2750 <= 4900: all
    assert within_share([30, 30, 30], 100, 0.5) == [0]  # of equals, the last goes first
    assert within_share([80], 100, 0.5) == []
    assert within_share([20, 60, 20], 150, None) == [0, 1, 2] and within_share([20, 60], None, 0.5) == [0, 1]


def test_a_search_leaves_the_longest_warm_start_out_past_its_share(tiny_bert, sentiment_files, tmp_path, capsys):
    from hpo import SelectionSettings

    base = _base(tiny_bert, sentiment_files, tmp_path)  # 96 rows at batch 8, 1 epoch: 12 steps
    warm = (
        {"training.learning_rate": 3e-3},
        {"training.learning_rate": 1e-3, "training.num_train_epochs": 3},  # 36 steps
        {"training.learning_rate": 2e-4},
    )
    settings = SearchSettings(
        space=SPACE,
        sampler="random",
        scheduler="none",
        budget=Budget(steps=60),
        selection=SelectionSettings(seeds=0),
        warm_start=warm,
        warm_start_names=("hot", "long", "cool"),
        warm_start_share=0.5,
    )
    search = search_finetune(base, settings, run_dir=tmp_path / "search")
    # 60 steps to explore, 30 for the warm start: 12 + 36 + 12 does not fit, 12 + 12 does.
    assert "left out long (36 steps)" in capsys.readouterr().out
    trials = search.result.trials
    assert [t.extra.get("role") for t in trials[:3]] == ["untuned", "warm_start", "warm_start"]
    assert [t.params["training.learning_rate"] for t in trials[1:3]] == [3e-3, 2e-4]
    assert all(t.extra.get("role") != "warm_start" for t in trials[3:]) and len(trials) > 3

    everything = dataclasses.replace(settings, warm_start_share=None, progress=False)
    again = search_finetune(base, everything, run_dir=tmp_path / "all")
    assert [t.params.get("training.num_train_epochs") for t in again.result.trials[1:3]] == [None, 3]


@pytest.mark.parametrize("share", [0, 1.5, "half", True])
def test_a_bad_warm_start_share_is_named(share):
    with pytest.raises(ConfigError, match="search.warm_start_share"):
        SearchSettings(warm_start_share=share)


def test_warm_start_configurations_are_named_by_index_unless_named():
    warm = ({"training.learning_rate": 1e-3}, {"training.learning_rate": 2e-4})
    assert SearchSettings(warm_start=warm).warm_start_name(1) == "search.warm_start[1]"
    assert SearchSettings(warm_start=warm, warm_start_names=["fast", "slow"]).warm_start_name(1) == "slow"
    with pytest.raises(ConfigError, match="search.warm_start_names: 1 names for 2 search.warm_start configurations"):
        SearchSettings(warm_start=warm, warm_start_names=["fast"])
    with pytest.raises(ConfigError, match="search.warm_start_names: expected a list of names"):
        SearchSettings(warm_start=warm, warm_start_names="fast")


@pytest.mark.parametrize("raw", [{"training.learning_rate": 1e-3}, [{"training.nope": 1}], ["lr"]])
def test_bad_warm_start_settings_are_named(raw):
    with pytest.raises(ConfigError, match="search.warm_start"):
        SearchSettings(warm_start=raw)
