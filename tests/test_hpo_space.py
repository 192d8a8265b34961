import optuna
import pytest

from finetune import ConfigError
from hpo import Categorical, Fixed, Float, Int, SearchConfigError, SearchSpace
from hpo.finetune.config_space import check_combinations, check_space_keys, derive_batch


def test_from_yaml_dict_with_condition():
    space = SearchSpace.from_dict(
        {
            "method.name": {"type": "categorical", "choices": ["lora", "full"]},
            "training.learning_rate": {"type": "float", "low": "1e-5", "high": 1e-3, "log": True},
            "method.lora_r": {"type": "categorical", "choices": [8, 16], "when": {"method.name": "lora"}},
            "training.num_train_epochs": {"type": "int", "low": 1, "high": 3},
            "training.weight_decay": {"type": "fixed", "value": 0.01},
        }
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        params = space.suggest(study.ask())
        assert 1e-5 <= params["training.learning_rate"] <= 1e-3
        assert params["training.weight_decay"] == 0.01
        assert ("method.lora_r" in params) == (params["method.name"] == "lora")
        seen.add(params["method.name"])
    assert seen == {"lora", "full"}
    assert SearchSpace.from_dict(space.to_dict()).parameters == space.parameters


def test_condition_on_base_config():
    space = SearchSpace({"method.lora_r": Categorical(choices=(8, 16), when={"method.name": ["lora", "dora"]})})
    study = optuna.create_study()
    assert "method.lora_r" in space.suggest(study.ask(), {"method.name": "dora"})
    assert space.suggest(study.ask(), {"method.name": "full"}) == {}


def test_grid_points_respect_conditions_and_dedupe():
    space = SearchSpace(
        {
            "method.name": Categorical(choices=("lora", "full")),
            "method.lora_r": Categorical(choices=(8, 16), when={"method.name": "lora"}),
            "training.learning_rate": Float(low=1e-5, high=1e-3, log=True, grid=(1e-4, 1e-3)),
        }
    )
    points = space.grid_points()
    # lora: 2 ranks x 2 LRs; full: 2 LRs (lora_r inactive, not duplicated).
    assert len(points) == 6
    assert {"method.name": "full", "training.learning_rate": 1e-4} in points


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"training.learning_rate": Float(low=1e-3, high=1e-3)}, "empty range"),
        ({"training.learning_rate": Float(low=1e-3, high=1e-4)}, "empty range"),
        ({"training.learning_rate": Float(low=0.0, high=1e-3, log=True)}, "log range needs low > 0"),
        ({"method.lora_r": Categorical(choices=())}, "empty list of choices"),
        ({"training.learning_rate": Float(low=1e-5, high=1e-3, grid=(1.0,))}, "grid: values must lie in"),
    ],
)
def test_impossible_spaces_are_rejected(parameters, message):
    with pytest.raises(SearchConfigError, match=message):
        SearchSpace(parameters)


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"training.lr": Float(low=1e-5, high=1e-3)}, "unknown key 'training.lr'"),
        ({"trainer.lr": Float(low=1e-5, high=1e-3)}, "unknown key 'trainer.lr'"),
        ({"training.seed": Int(low=1, high=40)}, "training.seed cannot be searched: seeds are replicates"),
        ({"method.lora_r": Categorical(choices=(8,), when={"method.kind": "lora"})}, "unknown key 'method.kind'"),
        ({"training.effective_batch_size": Categorical(choices=(8, 0))}, "positive integers"),
    ],
)
def test_spaces_of_keys_a_finetune_config_lacks_are_rejected(parameters, message):
    with pytest.raises(ConfigError, match=message):
        check_space_keys(SearchSpace(parameters))


def test_yaml_errors_name_the_field():
    with pytest.raises(SearchConfigError, match="search.space.training.learning_rate.type: expected one of"):
        SearchSpace.from_dict({"training.learning_rate": {"type": "loguniform", "low": 1, "high": 2}})
    with pytest.raises(SearchConfigError, match=r"unknown field\(s\) \['lo'\]"):
        SearchSpace.from_dict({"training.learning_rate": {"type": "float", "lo": 1, "high": 2}})
    with pytest.raises(SearchConfigError, match="grid sampler needs 'grid"):
        SearchSpace({"training.learning_rate": Float(low=1e-5, high=1e-3)}).grid_points()


@pytest.mark.parametrize(
    ("effective", "max_per_device", "world", "expected"),
    [(32, 32, 1, (32, 1)), (64, 16, 1, (16, 4)), (24, 16, 1, (12, 2)), (32, 8, 2, (8, 2)), (8, 64, 1, (8, 1))],
)
def test_derive_batch(effective, max_per_device, world, expected):
    per_device, accumulation = derive_batch(effective, max_per_device, world)
    assert (per_device, accumulation) == expected
    assert per_device * accumulation * world == effective


def test_fixed_parameter():
    assert SearchSpace({"training.weight_decay": Fixed(value=0.1)}).grid_points() == [{"training.weight_decay": 0.1}]


def test_heads_that_do_not_divide_a_searched_width_are_refused_before_training():
    base = {"model.hidden_size": None, "model.num_attention_heads": None, "model.init": "scratch"}
    bad = SearchSpace(
        {
            "model.hidden_size": Categorical(choices=(64, 100)),
            "model.num_attention_heads": Categorical(choices=(4, 8)),
        }
    )
    with pytest.raises(ConfigError, match="model.num_attention_heads=8 with model.hidden_size=100"):
        check_combinations(bad, base)
    # Conditioned on the width, the same choices are fine.
    conditioned = SearchSpace(
        {
            "model.hidden_size": Categorical(choices=(64, 100)),
            "model.num_attention_heads": Categorical(choices=(4, 8), when={"model.hidden_size": 64}),
        }
    )
    check_combinations(conditioned, base)
    # A searched head count against the base config's fixed width.
    with pytest.raises(ConfigError, match="num_attention_heads=3 with model.hidden_size=32"):
        check_combinations(
            SearchSpace({"model.num_attention_heads": Int(low=2, high=4)}), {**base, "model.hidden_size": 32}
        )
    check_combinations(SearchSpace({"model.num_attention_heads": Fixed(value=4)}), {**base, "model.hidden_size": 32})
    with pytest.raises(ConfigError, match="categorical or a stepped int"):
        check_combinations(
            SearchSpace({"model.hidden_size": Int(low=32, high=256, log=True)}),
            {**base, "model.num_attention_heads": 4},
        )


def test_also_tune_adds_groups_to_the_default_space_only_when_asked():
    from hpo.finetune.default_spaces import default_space

    plain = default_space("lora", "classification")
    assert not any(k.startswith(("model.", "method.head")) or "beta" in k for k in plain.parameters)
    extended = default_space("lora", "classification", also_tune=("optimizer", "head"))
    assert {"training.adam_beta1", "training.momentum", "method.head", "method.head_activation"} <= set(
        extended.parameters
    )
    scratch = default_space("full", "classification", also_tune=["architecture"])
    check_combinations(scratch, {"model.init": "scratch"})  # every default width/heads pair divides
    with pytest.raises(ConfigError, match="'architecture' trains from scratch"):
        default_space("lora", "classification", also_tune=["architecture"])
    with pytest.raises(ConfigError, match="unknown group"):
        default_space("lora", "classification", also_tune=["momentum"])


def test_causal_lm_lora_space_searches_the_llm_knobs_and_holds_the_untuned_config():
    from finetune import FinetuneConfig
    from hpo.finetune.config_space import flatten, to_overrides, untuned_params
    from hpo.finetune.default_spaces import default_space

    space = default_space("lora", "causal_lm")
    knobs = {"method.target_modules", "method.use_rslora", "training.neftune_noise_alpha"}
    assert knobs <= set(space.parameters) and not knobs & set(default_space("lora", "classification").parameters)
    assert "method.lora_dropout" in space.parameters
    assert space.parameters["training.learning_rate"].high >= 2e-3  # torchtune's small-model LoRA LR is inside
    untuned = FinetuneConfig.from_dict({"model": {"name": "m", "task": "causal_lm"}, "data": {"train_file": "t"}})
    params = untuned_params(check_space_keys(space), flatten(untuned))
    assert params["method.target_modules"] == "all-linear"  # "auto" is all linear layers for LoRA
    assert space.contains(params)  # the untuned run is a point the sampler models
    sampled = space.suggest(optuna.trial.FixedTrial({**params, "method.target_modules": "attention"}))
    config = untuned.with_overrides(to_overrides(sampled, flatten(untuned), max_per_device=8))
    assert config.method.target_modules == "attention" and config.training.neftune_noise_alpha == 0.0
