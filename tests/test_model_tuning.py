"""Model tuning beyond the learning rate: optimizers, an MLP head, from-scratch architectures, k-fold CV."""

import json

import pytest
import torch
from conftest import classification_config, write_jsonl
from transformers import TrainerCallback

import finetune
from finetune import ConfigError, FinetuneConfig
from finetune.train import training_arguments


def _config(tiny_bert, sentiment_files, out, method=None, model=None, **training):
    raw = classification_config(tiny_bert, sentiment_files, out, training=training)
    raw["method"].update(method or {})
    raw["model"].update(model or {})
    return FinetuneConfig.from_dict(raw)


class OptimizerSpy(TrainerCallback):
    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        self.optimizer = optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer


@pytest.mark.parametrize(
    ("training", "kind", "group_values"),
    [
        ({"optimizer": "sgd", "momentum": 0.9, "nesterov": True}, torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
        ({"adam_beta1": 0.8, "adam_beta2": 0.95, "adam_epsilon": 1e-6}, torch.optim.AdamW, {"betas": (0.8, 0.95)}),
        ({"optimizer": "adafactor"}, None, {}),
    ],
)
def test_optimizer_settings_reach_the_optimizer(tiny_bert, sentiment_files, tmp_path, training, kind, group_values):
    config = _config(tiny_bert, sentiment_files, tmp_path / "run", **training)
    spy = OptimizerSpy()
    result = finetune.train(config, callbacks=[spy])
    assert result.optimizer_steps == 6
    if kind is None:
        assert type(spy.optimizer).__name__ == "Adafactor"
    else:
        assert isinstance(spy.optimizer, kind)
    for key, value in group_values.items():
        assert spy.optimizer.param_groups[0][key] == value
    if "adam_epsilon" in training:
        assert spy.optimizer.param_groups[0]["eps"] == training["adam_epsilon"]


@pytest.mark.parametrize(
    ("training", "message"),
    [
        ({"momentum": 0.9}, "apply to optimizer 'sgd'"),
        ({"optimizer": "sgd", "nesterov": True}, "nesterov needs training.momentum"),
        ({"adam_beta1": 1.0}, "adam_beta1 must be in [0, 1)"),
        ({"optimizer": "lamb"}, "training.optimizer: expected one of"),
    ],
)
def test_bad_optimizer_settings_name_the_field(tiny_bert, sentiment_files, tmp_path, training, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        _config(tiny_bert, sentiment_files, tmp_path, **training)


def test_sgd_arguments(tiny_bert, sentiment_files, tmp_path):
    config = _config(tiny_bert, sentiment_files, tmp_path, optimizer="sgd", momentum=0.5)
    args = training_arguments(config, tmp_path)
    assert args.optim == "sgd" and args.optim_args == "momentum=0.5,nesterov=False"


MLP = {"head": "mlp", "head_layers": 2, "head_hidden_size": 24, "head_activation": "tanh", "head_dropout": 0.0}


@pytest.mark.parametrize("method", ["full", "lora", "ia3"])
def test_mlp_head_trains_saves_and_reloads_with_identical_predictions(tiny_bert, sentiment_files, tmp_path, method):
    config = _config(tiny_bert, sentiment_files, tmp_path / "run", method={"name": method, **MLP})
    result = finetune.train(config)
    model, _, _ = finetune.load_trained(tmp_path / "run")
    head = model.classifier if method == "full" else model.base_model.model.classifier.modules_to_save["default"]
    linears = [m for m in head if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(32, 24), (24, 24), (24, 2)]
    assert sum(isinstance(m, torch.nn.Tanh) for m in head) == 2
    reloaded = finetune.evaluate(tmp_path / "run", "validation")
    assert reloaded["validation_loss"] == pytest.approx(result.final_metrics["eval_loss"], abs=1e-5)
    assert reloaded["validation_accuracy"] == result.final_metrics["eval_accuracy"]
    if method == "lora":  # the head is trained whole, not adapted: no LoRA layer inside it
        assert not any("lora" in name for name, _ in head.named_modules())


def test_linear_head_settings_are_not_silently_used_by_causal_models(tiny_llama, sft_files, tmp_path):
    from conftest import causal_config

    raw = causal_config(tiny_llama, sft_files["text"], tmp_path, method={"head": "mlp"})
    with pytest.raises(ConfigError, match="method.head='mlp'.*classification"):
        FinetuneConfig.from_dict(raw)


SCRATCH = {"init": "scratch", "num_hidden_layers": 1, "hidden_size": 24, "intermediate_size": 40}


def test_scratch_model_has_the_searched_shape_and_reloads(tiny_bert, sentiment_files, tmp_path):
    model = {**SCRATCH, "num_attention_heads": 3, "hidden_act": "relu"}
    config = _config(tiny_bert, sentiment_files, tmp_path / "run", method={"name": "full", **MLP}, model=model)
    result = finetune.train(config)
    trained, _, _ = finetune.load_trained(tmp_path / "run")
    shape = trained.config
    assert (shape.num_hidden_layers, shape.hidden_size, shape.intermediate_size) == (1, 24, 40)
    assert (shape.num_attention_heads, shape.hidden_act) == (3, "relu")
    assert result.trainable_params == sum(p.numel() for p in trained.parameters())
    reloaded = finetune.evaluate(tmp_path / "run", "validation")
    assert reloaded["validation_loss"] == pytest.approx(result.final_metrics["eval_loss"], abs=1e-5)


def test_scratch_weights_are_random_not_pretrained(tiny_bert, sentiment_files, tmp_path):
    from finetune.models import build_model, load_tokenizer, resolve_source

    pretrained = _config(tiny_bert, sentiment_files, tmp_path, method={"name": "full"})
    scratch = _config(tiny_bert, sentiment_files, tmp_path, method={"name": "full"}, model={"init": "scratch"})
    source = resolve_source(pretrained.model)
    tokenizer = load_tokenizer(pretrained.model, source)
    torch.manual_seed(1)
    a = build_model(pretrained, source, tokenizer, ["neg", "pos"]).bert.embeddings.word_embeddings.weight
    torch.manual_seed(1)
    b = build_model(scratch, source, tokenizer, ["neg", "pos"]).bert.embeddings.word_embeddings.weight
    assert a.shape == b.shape and not torch.equal(a, b)


@pytest.mark.parametrize(
    ("model", "method", "message"),
    [
        ({"init": "scratch", "hidden_size": 30, "num_attention_heads": 4}, "full", "must divide model.hidden_size=30"),
        ({"hidden_size": 64}, "full", "set model.init: scratch"),
        ({"init": "scratch"}, "lora", "needs method.name='full'"),
        ({"init": "scratch", "hidden_act": "swish2"}, "full", "model.hidden_act: expected one of"),
    ],
)
def test_impossible_architectures_fail_before_training(tiny_bert, sentiment_files, tmp_path, model, method, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        _config(tiny_bert, sentiment_files, tmp_path, method={"name": method}, model=model)


def test_scratch_heads_must_divide_the_models_own_hidden_size(tiny_bert, sentiment_files, tmp_path):
    # hidden_size not set: the model's own (32) is checked when the model is built, before training.
    config = _config(
        tiny_bert,
        sentiment_files,
        tmp_path / "run",
        method={"name": "full"},
        model={"init": "scratch", "num_attention_heads": 3},
    )
    with pytest.raises(ConfigError, match="num_attention_heads=3 must divide model.hidden_size=32"):
        finetune.train(config)
    assert not (tmp_path / "run").exists()


# Cross-validation ----------------------------------------------------------------------------------------


def _cv_base(tiny_bert, sentiment_files, tmp_path, **data):
    raw = classification_config(
        tiny_bert,
        sentiment_files,
        tmp_path / "unused",
        training={"max_steps": -1, "num_train_epochs": 1, "eval_steps": None, "learning_rate": 1e-3},
    )
    raw["data"].update(data)
    return FinetuneConfig.from_dict(raw)


def test_folds_are_stratified_deterministic_disjoint_and_never_touch_test(tiny_bert, sentiment_files, tmp_path):
    from finetune.data import load_splits

    labels = ["pos" if i % 3 else "neg" for i in range(90)]  # 2:1, so stratification is visible
    train = write_jsonl(
        tmp_path / "train.jsonl", [{"id": i, "sentence": "good", "label": labels[i]} for i in range(90)]
    )
    test = write_jsonl(
        tmp_path / "test.jsonl", [{"id": 1000 + i, "sentence": "bad", "label": "neg"} for i in range(20)]
    )
    base = _cv_base(tiny_bert, sentiment_files, tmp_path).with_overrides(
        {"data.train_file": train, "data.validation_file": None, "data.validation_size": 15, "data.test_file": test}
    )
    held_out = []
    for fold in range(4):
        data = base.with_overrides({"data.cv_folds": 4, "data.cv_fold": fold}).data
        splits, again = load_splits(data), load_splits(data)
        assert list(splits.validation["id"]) == list(again.validation["id"])  # same seed, same folds
        assert list(splits.test["id"]) == list(range(1000, 1020))  # the test split never moves
        train_ids, validation_ids = set(splits.train["id"]), set(splits.validation["id"])
        assert not train_ids & validation_ids and train_ids | validation_ids == set(range(90))
        fold_labels = list(splits.validation["label"])
        assert abs(fold_labels.count("pos") - len(fold_labels) * 2 / 3) <= 1  # stratified: within one row
        held_out += list(splits.validation["id"])
    assert sorted(held_out) == list(range(90))  # every non-test row is validation exactly once
    seven = base.with_overrides({"data.cv_folds": 4, "data.cv_fold": 0, "data.validation_split_seed": 7})
    first = base.with_overrides({"data.cv_folds": 4, "data.cv_fold": 0})
    assert list(load_splits(seven.data).validation["id"]) != list(load_splits(first.data).validation["id"])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"cv_folds": 1, "cv_fold": 0}, "data.cv_folds must be >= 2"),
        ({"cv_folds": 3}, "go together"),
        ({"cv_folds": 3, "cv_fold": 3}, r"data.cv_fold must be in \[0, 3\)"),
    ],
)
def test_bad_fold_settings(tiny_bert, sentiment_files, tmp_path, data, message):
    with pytest.raises(ConfigError, match=message):
        _cv_base(tiny_bert, sentiment_files, tmp_path, **data)


def test_cv_objective_is_the_mean_of_the_per_fold_runs(tiny_bert, sentiment_files, tmp_path):
    from hpo import Budget, Categorical, SearchSpace
    from hpo.finetune import Objective, SearchSettings, search_finetune
    from hpo.winner_rule import SelectionSettings

    base = _cv_base(tiny_bert, sentiment_files, tmp_path).with_overrides({"training.per_device_train_batch_size": 32})
    search = search_finetune(
        base,
        SearchSettings(
            space=SearchSpace({"training.learning_rate": Categorical(choices=(1e-3, 3e-3))}),
            sampler="random",
            scheduler="none",
            budget=Budget(trials=2),
            objective=Objective(cv_folds=2),
            selection=SelectionSettings(top_k=2, seeds=2),
            progress=False,
        ),
        run_dir=tmp_path / "search",
    )
    summary = json.loads((tmp_path / "search" / "summary.json").read_text())
    assert summary["cross_validation_folds"] == 2
    # 128 pool rows, 2 folds: 64 training rows, batch 32, one epoch = 2 steps per fold; the unit is all folds.
    assert search.full_run_steps == 2 * 2
    untuned = search.result.trials[0]
    per_fold = []
    for fold in range(2):
        run = finetune.train(
            base.with_overrides(
                {
                    "data.cv_folds": 2,
                    "data.cv_fold": fold,
                    "training.eval_steps": 1,  # max(1, round(2 / 9)): the search's evaluation period
                    "training.output_dir": str(tmp_path / f"fold_{fold}"),
                }
            )
        )
        per_fold.append(run.best_metrics["eval_accuracy"])
    assert untuned.extra["cv_fold_scores"] == pytest.approx(per_fold)
    assert untuned.value == pytest.approx(sum(per_fold) / 2)
    assert untuned.extra["optimizer_steps"] == 4
    # Selection re-runs are whole k-fold runs too: 2 candidates x 2 seeds x 2 folds.
    assert search.selection.steps == 2 * 2 * 4
    assert not list((tmp_path / "search" / "trials").glob("trial_*/fold_*"))  # fold models are not kept


def test_cv_auto_threshold(tiny_bert, sentiment_files, tmp_path):
    from hpo.finetune.cross_validation import resolve_folds

    base = _cv_base(tiny_bert, sentiment_files, tmp_path)
    folds, why = resolve_folds("auto", base)
    assert folds is None and "only 128 labelled rows < 500" in why
    assert resolve_folds(4, base)[0] == 4 and resolve_folds(None, base)[0] is None
    with pytest.raises(ConfigError, match="cv_folds: expected an integer >= 2"):
        resolve_folds(0, base)
    rows = [
        {"sentence": f"good movie {i}" if i % 2 else f"bad movie {i}", "label": "pos" if i % 2 else "neg"}
        for i in range(600)
    ]
    big = write_jsonl(tmp_path / "big.jsonl", rows)
    small_validation = base.with_overrides(
        {"data.train_file": big, "data.validation_file": None, "data.validation_size": 100}
    )
    folds, why = resolve_folds("auto", small_validation)
    assert folds == 5 and "100 rows (< 300)" in why and "600 labelled rows" in why
    large_validation = small_validation.with_overrides({"data.validation_size": 300})
    assert resolve_folds("auto", large_validation)[0] is None


# Fit diagnostics -----------------------------------------------------------------------------------------


def test_each_evaluation_records_training_metrics_next_to_validation(
    tiny_bert, tiny_llama, sentiment_files, sft_files, tmp_path
):
    from conftest import causal_config

    result = finetune.train(_config(tiny_bert, sentiment_files, tmp_path / "cls"))
    assert [e["step"] for e in result.evaluations] == [3, 6]
    for entry in result.evaluations:
        assert {"eval_loss", "eval_accuracy", "train_loss", "train_accuracy", "train_macro_f1"} <= set(entry)
        assert 0 <= entry["train_accuracy"] <= 1 and entry["train_loss"] > 0
    causal = finetune.train(FinetuneConfig.from_dict(causal_config(tiny_llama, sft_files["text"], tmp_path / "lm")))
    assert all({"train_loss", "train_perplexity", "eval_loss"} <= set(e) for e in causal.evaluations)


def test_training_metrics_can_be_turned_off_without_changing_the_run(tiny_bert, sentiment_files, tmp_path):
    measured = finetune.train(_config(tiny_bert, sentiment_files, tmp_path / "on"))
    config = _config(tiny_bert, sentiment_files, tmp_path / "off").with_overrides(
        {"training.train_split_metrics": False}
    )
    skipped = finetune.train(config)
    assert not any(key.startswith("train_") for e in skipped.evaluations for key in e)
    # Measuring runs in eval mode on a fixed sample: it must not move the training run at all.
    assert [e["eval_loss"] for e in skipped.evaluations] == [e["eval_loss"] for e in measured.evaluations]


def test_training_metrics_are_measured_in_eval_mode_on_a_fixed_sample(tiny_bert, sentiment_files, tmp_path):
    from finetune.inputs import prepare_inputs
    from finetune.models import build_model, load_tokenizer, resolve_source
    from finetune.train_metrics import TrainSplitMetrics

    config = _config(tiny_bert, sentiment_files, tmp_path, method={"name": "full"})
    source = resolve_source(config.model)
    tokenizer = load_tokenizer(config.model, source)
    inputs = prepare_inputs(config, tokenizer)
    model = build_model(config, source, tokenizer, inputs.label_names).train()
    measure = TrainSplitMetrics(inputs.train, inputs.collator, 16, "classification")
    first, second = measure.measure(model), measure.measure(model)
    assert first == second and model.training  # deterministic (no dropout), and the mode is restored


def test_search_tunes_a_from_scratch_architecture(tiny_bert, sentiment_files, tmp_path):
    from hpo import Budget
    from hpo.finetune import SearchSettings, search_finetune
    from hpo.winner_rule import SelectionSettings

    base = _cv_base(tiny_bert, sentiment_files, tmp_path).with_overrides(
        {"model.init": "scratch", "model.hidden_size": 64, "model.num_attention_heads": 2, "method.name": "full"}
    )
    search = search_finetune(
        base,
        SearchSettings(
            sampler="random",
            scheduler="none",
            budget=Budget(trials=3),
            also_tune=["architecture"],
            selection=SelectionSettings(seeds=0),
            progress=False,
        ),
        run_dir=tmp_path / "search",
    )
    searched = [t for t in search.result.trials if t.extra.get("role") != "untuned"]
    assert len(searched) == 2 and all(t.state == "COMPLETE" for t in search.result.trials)
    for trial in searched:
        assert {"model.num_hidden_layers", "model.hidden_size", "model.hidden_act"} <= set(trial.params)
        assert 1e-4 <= trial.params["training.learning_rate"] <= 3e-3  # the from-scratch range
        assert trial.params["model.hidden_size"] % trial.params["model.num_attention_heads"] == 0


def test_fold_reports_are_the_running_mean_across_folds_at_equal_steps():
    from hpo.finetune.cross_validation import FoldReporter

    class Inner:
        stop_reason, trial = None, None

        def __init__(self):
            self.reports, self.losses, self.steps = [], [], 0

        def report(self, step, value, smooth=None):
            self.reports.append((step, value))
            self.losses.append(smooth)

        def add_steps(self, steps):
            self.steps = steps

        def should_stop(self, *, run_ends=False):
            self.run_ends = run_ends
            return False

    inner, curves = Inner(), [[], [], []]
    first = FoldReporter(inner, 0, curves, 0)
    first.report(5, 0.6)
    first.report(10, 0.8)
    first.add_steps(11)
    second = FoldReporter(inner, 11, curves, 1)
    second.report(5, 0.4)
    second.report(10, 0.6)
    losses = [[], [], []]  # the validation losses, for a rung signal, are averaged the same way
    third = FoldReporter(inner, 22, curves, 2, losses)
    losses[0] = [(5, 0.9)]
    losses[1] = [(5, 0.7), (10, 0.5)]
    third.report(7, 0.5, 0.8)  # between evaluations: the earlier folds' values at step 5
    assert inner.reports == [
        (5, 0.6),
        (10, 0.8),
        (16, pytest.approx(0.5)),
        (21, pytest.approx(0.7)),
        (29, pytest.approx((0.6 + 0.4 + 0.5) / 3)),
    ]
    assert inner.losses == [None, None, None, None, pytest.approx((0.9 + 0.7 + 0.8) / 3)]
    assert inner.steps == 11
    # The end of an earlier fold is not the trial's end (stopping there saves the later folds); the last is.
    second.should_stop(run_ends=True)
    assert inner.run_ends is False
    third.should_stop(run_ends=True)
    assert inner.run_ends is True


def test_cli_search_refuses_bad_cv_folds_and_also_tune_with_a_space(tiny_bert, sentiment_files, tmp_path, capsys):
    import yaml

    from recipes.cli import main

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(classification_config(tiny_bert, sentiment_files, tmp_path / "run")))
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"training.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2}}))
    assert main(["search", str(path), "--cv-folds", "three", "--run-dir", str(tmp_path / "s")]) == 2
    assert "--cv-folds: expected an integer >= 2" in capsys.readouterr().err
    assert (
        main(["search", str(path), "--space", str(space), "--also-tune", "head", "--run-dir", str(tmp_path / "s")]) == 2
    )
    assert "also_tune" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("model_fixture", ["tiny_llama", "tiny_bert"])
def test_attention_target_set_adapts_only_attention_layers(model_fixture, request):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from finetune.config import MethodConfig
    from finetune.methods import apply_method

    causal = model_fixture == "tiny_llama"
    auto = AutoModelForCausalLM if causal else AutoModelForSequenceClassification
    task = "causal_lm" if causal else "classification"

    def adapted(target_modules):
        model = apply_method(
            auto.from_pretrained(request.getfixturevalue(model_fixture)),
            MethodConfig(target_modules=target_modules),
            task,
        )
        return {name.rsplit(".lora_A", 1)[0] for name, _ in model.named_modules() if name.endswith("lora_A")}

    attention, every = adapted("attention"), adapted("all-linear")
    assert attention and attention < every  # a strict subset: the MLP layers are left out
    assert all(("self_attn." if causal else ".attention.") in name for name in attention)
    assert not any(("self_attn." if causal else ".attention.") in name for name in every - attention)


def test_neftune_noise_reaches_training_only(tiny_llama, sft_files, tmp_path):
    from conftest import causal_config

    def run(alpha):
        raw = causal_config(
            tiny_llama,
            sft_files["messages"],
            tmp_path / f"a{alpha}",
            training={"neftune_noise_alpha": alpha, "learning_rate": 1e-2},
        )
        config = FinetuneConfig.from_dict(raw)
        assert training_arguments(config, tmp_path).neftune_noise_alpha == (alpha or None)
        return finetune.train(config)

    clean, noisy = run(0.0), run(15.0)
    assert noisy.final_metrics["eval_loss"] != pytest.approx(clean.final_metrics["eval_loss"], abs=1e-6)
    # Evaluation sees clean embeddings: the reloaded model scores what training logged.
    reloaded = finetune.evaluate(tmp_path / "a15.0", "validation")
    assert reloaded["validation_loss"] == pytest.approx(noisy.final_metrics["eval_loss"], abs=1e-5)
    with pytest.raises(ConfigError, match="training.neftune_noise_alpha must be >= 0"):
        FinetuneConfig.from_dict(
            causal_config(tiny_llama, sft_files["messages"], tmp_path, training={"neftune_noise_alpha": -1})
        )
