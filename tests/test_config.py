import pytest

from finetune import ConfigError, FinetuneConfig
from finetune.config import apply_overrides

BASE = {"model": {"name": "m"}, "data": {"train_file": "t.jsonl"}}


def test_defaults_are_transformers_defaults():
    config = FinetuneConfig.from_dict(BASE)
    t = config.training
    assert (t.learning_rate, t.lr_scheduler_type, t.warmup_ratio, t.weight_decay) == (5e-5, "linear", 0.0, 0.0)
    assert (t.per_device_train_batch_size, t.num_train_epochs) == (8, 3.0)
    assert (config.method.lora_r, config.method.lora_alpha) == (8, 8)


def test_yaml_with_typed_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {name: m}\ndata: {train_file: data/t.jsonl}\ntraining: {learning_rate: 1.0e-3}\n")
    config = FinetuneConfig.from_yaml(
        path,
        [
            "training.learning_rate=1e-4",
            "method.name=dora",
            "training.eval_steps=10",
            "method.target_modules=[query, value]",
            "training.mixed_precision=no",  # YAML 1.1 reads a bare no as false: the word is meant
        ],
    )
    assert config.training.learning_rate == pytest.approx(1e-4)
    assert isinstance(config.training.learning_rate, float)
    assert config.method.name == "dora" and config.training.eval_steps == 10
    assert config.method.target_modules == ["query", "value"]
    assert config.training.mixed_precision == "no"
    # Relative data paths resolve against the YAML's folder, not the working directory.
    assert config.data.train_file == str((tmp_path / "data" / "t.jsonl").resolve())


def test_with_overrides_returns_new_validated_config():
    config = FinetuneConfig.from_dict(BASE)
    changed = config.with_overrides({"training.learning_rate": 3e-4, "method.lora_r": 16})
    assert changed.training.learning_rate == 3e-4 and changed.method.lora_r == 16
    assert config.training.learning_rate == 5e-5
    with pytest.raises(ConfigError, match="method.lora_r must be > 0"):
        config.with_overrides({"method.lora_r": 0})


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({**BASE, "trainer": {}}, r"unknown config section\(s\) \['trainer'\]"),
        ({**BASE, "training": {"lr": 1}}, r"unknown key 'training.lr'.*learning_rate"),
        ({**BASE, "training": {"num_train_epochs": "many"}}, r"training.num_train_epochs: expected float"),
        ({**BASE, "training": {"per_device_train_batch_size": 2.5}}, r"per_device_train_batch_size: expected int"),
        ({**BASE, "method": {"name": "qlora9"}}, r"method.name: expected one of 'full', 'lora'"),
        ({**BASE, "model": {"name": "m", "task": "ner"}}, r"model.task: expected one of 'classification'"),
        ({**BASE, "data": {"train_file": "t", "max_length": 0}}, r"data.max_length must be > 0"),
        ({**BASE, "data": {"train_file": "t", "max_length": -5}}, r"data.max_length must be > 0"),
        ({**BASE, "training": {"learning_rate": -1}}, r"training.learning_rate must be > 0"),
        ({**BASE, "training": {"warmup_ratio": 1.5}}, r"warmup_ratio must be in \[0, 1\)"),
        ({**BASE, "method": {"lora_dropout": 1.0}}, r"lora_dropout must be in \[0, 1\)"),
        ({**BASE, "method": {"target_modules": "everything"}}, r"target_modules must be a list"),
        ({**BASE, "data": {"train_file": "t", "columns": {"answer": "x"}}}, r"data.columns has unknown key"),
        ({"data": {"train_file": "t"}}, r"model.name is required"),
        ({"model": {"name": "m"}}, r"data.train_file or data.dataset is required"),
        ({**BASE, "training": {"learning_rate": True}}, r"learning_rate: expected float"),
    ],
)
def test_bad_config_names_the_key(raw, message):
    with pytest.raises(ConfigError, match=message):
        FinetuneConfig.from_dict(raw)


def test_malformed_yaml_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: {name: m\ndata: [\n")
    with pytest.raises(ConfigError, match="malformed YAML in .*bad.yaml"):
        FinetuneConfig.from_yaml(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        FinetuneConfig.from_yaml(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("training.lr=1e-4", r"unknown key 'training.lr'; allowed keys in 'training'"),
        ("optim.lr=1", r"unknown config section 'optim'"),
        ("learning_rate=1", r"must be section.key"),
        ("training.learning_rate", r"must look like section.key=value"),
    ],
)
def test_bad_override(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(BASE, [override])


def test_the_evaluation_batch_defaults_by_task():
    def eval_batch(task, **training):
        raw = {"model": {"name": "m", "task": task}, "data": {"train_file": "t"}, "training": training}
        return FinetuneConfig.from_dict(raw).training.per_device_eval_batch_size

    # Causal LMs evaluate 8 rows at a time: a batch's logits over the vocabulary are most of their memory.
    assert (
        eval_batch("classification"),
        eval_batch("causal_lm"),
        eval_batch("causal_lm", per_device_eval_batch_size=4),
    ) == (32, 8, 4)
