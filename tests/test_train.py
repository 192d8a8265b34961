"""Every task x method trains a few steps, evaluates, saves and reloads with identical predictions."""

import json

import pytest
import torch
from conftest import causal_config, classification_config
from transformers import TrainerCallback

import finetune
from finetune import ConfigError, DataError, FinetuneConfig, ModelError, TrainingError
from finetune.evaluate import load_run_config
from finetune.train import CONFIG_FILE, RESULT_FILE

METHODS = ["full", "lora", "dora", "ia3", "prompt_tuning", "prefix_tuning"]


def _cls_config(tiny_bert, sentiment_files, out, method, **training):
    return FinetuneConfig.from_dict(
        classification_config(
            tiny_bert, sentiment_files, out, method={"name": method, "num_virtual_tokens": 4}, training=training
        )
    )


@pytest.mark.parametrize("method", [m for m in METHODS if m != "prefix_tuning"])
def test_classification_method_trains_saves_and_reloads(tiny_bert, sentiment_files, tmp_path, method, monkeypatch):
    from transformers import Trainer

    evaluations = []
    evaluate = Trainer.evaluate
    monkeypatch.setattr(Trainer, "evaluate", lambda self, *a, **k: evaluations.append(1) or evaluate(self, *a, **k))
    config = _cls_config(tiny_bert, sentiment_files, tmp_path / "run", method)
    result = finetune.train(config)
    assert result.optimizer_steps == 6 and [e["step"] for e in result.evaluations] == [3, 6]
    # The best checkpoint's logged metrics are the final ones: no evaluation pass after training.
    assert len(evaluations) == 2
    assert {"eval_accuracy", "eval_macro_f1", "eval_loss"} <= set(result.final_metrics)
    assert 0 < result.trainable_params <= result.total_params
    if method != "full":
        assert result.trainable_params < result.total_params / 2
    assert result.tokens_seen > 0 and result.wall_seconds > 0 and result.peak_memory_bytes > 0
    # The run's time, split by stage, adds up to its wall time; two evaluations and checkpoints took some.
    stages = result.time_breakdown
    assert set(stages) == {"setup", "training", "evaluation", "checkpoints"} and min(stages.values()) > 0
    assert sum(stages.values()) == pytest.approx(result.wall_seconds)
    # Reloading the saved run (adapter + trained head) gives the same predictions as the best checkpoint
    # (tight: a best checkpoint loaded without its LayerNorm weights is off by a few 1e-6 on this model).
    reloaded = finetune.evaluate(tmp_path / "run", "validation")
    assert reloaded["validation_loss"] == pytest.approx(result.final_metrics["eval_loss"], abs=1e-6)
    assert reloaded["validation_accuracy"] == result.final_metrics["eval_accuracy"]
    assert "test_accuracy" in finetune.evaluate(tmp_path / "run", "test")
    saved = json.loads((tmp_path / "run" / RESULT_FILE).read_text())
    assert saved["best_checkpoint"] == str(tmp_path / "run" / "model")
    assert not (tmp_path / "run" / "checkpoints").exists()  # only the kept model stays on disk
    assert FinetuneConfig.from_yaml(tmp_path / "run" / CONFIG_FILE).data.label_names == ["neg", "pos"]


@pytest.mark.parametrize("method", METHODS)
def test_causal_lm_method_trains_saves_and_reloads(tiny_llama, sft_files, tmp_path, method):
    raw = causal_config(
        tiny_llama, sft_files["messages"], tmp_path / "run", method={"name": method, "num_virtual_tokens": 4}
    )
    result = finetune.train(FinetuneConfig.from_dict(raw))
    assert result.optimizer_steps == 4
    assert result.final_metrics["eval_perplexity"] == pytest.approx(
        torch.exp(torch.tensor(result.final_metrics["eval_loss"])).item(), rel=1e-5
    )
    reloaded = finetune.evaluate(tmp_path / "run", "validation")
    assert reloaded["validation_loss"] == pytest.approx(result.final_metrics["eval_loss"], abs=1e-5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only machines (tests/test_cuda.py covers the GPU)")
def test_bf16_on_a_cpu_only_machine_trains_under_autocast(tiny_llama, sft_files, tmp_path):
    """transformers refuses bf16 without an accelerator unless the CPU is named; the forward passes must then
    run under bf16 autocast (the weights stay float32)."""
    seen = []

    class AutocastProbe(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            # An inner layer: accelerate wraps the outer model's forward in autocast, inside its hooks.
            layer = next(module for module in model.modules() if isinstance(module, torch.nn.Linear))
            layer.register_forward_hook(
                lambda *_: seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu"))
            )

    raw = causal_config(tiny_llama, sft_files["messages"], tmp_path / "run", training={"mixed_precision": "bf16"})
    result = finetune.train(FinetuneConfig.from_dict(raw), callbacks=[AutocastProbe()])
    assert result.optimizer_steps == 4 and seen and set(seen) == {torch.bfloat16}
    assert finetune.evaluate(tmp_path / "run", "validation")["validation_loss"] == pytest.approx(
        result.final_metrics["eval_loss"], rel=0.05
    )


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_only_where_the_hardware_runs_it(
    native, tiny_bert, sentiment_files, tmp_path, monkeypatch
):
    from finetune import precision

    monkeypatch.setattr(precision, "native_bf16", lambda: native)
    expected = "bf16" if native else "no"
    assert precision.resolve_precision("auto") == expected and precision.resolve_precision("fp16") == "fp16"
    assert precision.precision_arguments("auto")["bf16"] is native
    config = _cls_config(tiny_bert, sentiment_files, tmp_path / "run", "lora")
    assert config.training.mixed_precision == "auto"  # the default
    finetune.train(config)
    # The saved config records what ran, so evaluating it elsewhere runs the same precision.
    assert load_run_config(tmp_path / "run").training.mixed_precision == expected


def test_final_metrics_are_the_kept_models_without_evaluating_it_again(tiny_bert, sentiment_files, tmp_path):
    config = _cls_config(tiny_bert, sentiment_files, tmp_path / "run", "lora", eval_steps=1, learning_rate=3e-3)
    evaluations = []

    class CountEvaluations(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            evaluations.append(state.global_step)

    result = finetune.train(config, callbacks=[CountEvaluations()])
    assert evaluations == [1, 2, 3, 4, 5, 6]  # one per eval_steps, none after training
    best = max(result.evaluations, key=lambda e: e["eval_accuracy"])
    assert result.final_metrics == {k: v for k, v in best.items() if k.startswith("eval_")}
    # The saved model is that checkpoint: evaluated afresh, it scores what the run reports.
    reloaded = finetune.evaluate(tmp_path / "run", "validation")
    for key, value in result.final_metrics.items():
        assert reloaded[key.replace("eval_", "validation_")] == pytest.approx(value, abs=1e-5), key


def test_eval_at_steps_evaluates_there_and_at_the_last_step_only(tiny_bert, sentiment_files, tmp_path):
    config = _cls_config(
        tiny_bert, sentiment_files, tmp_path / "run", "lora", eval_at_steps=[1, 3], eval_steps=None, learning_rate=3e-3
    )
    evaluations = []

    class CountEvaluations(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            evaluations.append(state.global_step)

    result = finetune.train(config, callbacks=[CountEvaluations()])
    assert evaluations == [1, 3, 6]  # the listed steps and the last one, once each
    assert [e["step"] for e in result.evaluations] == [1, 3, 6]
    best = max(result.evaluations, key=lambda e: e["eval_accuracy"])
    assert result.final_metrics == {k: v for k, v in best.items() if k.startswith("eval_")}
    reloaded = finetune.evaluate(tmp_path / "run", "validation")  # the kept checkpoint is that evaluation's
    assert reloaded["validation_accuracy"] == pytest.approx(best["eval_accuracy"], abs=1e-5)


@pytest.mark.parametrize("steps", [[], [3, 1], [0, 2], [1, 1], "5", 5])
def test_eval_at_steps_must_be_increasing_steps(tiny_bert, sentiment_files, tmp_path, steps):
    with pytest.raises(ConfigError, match="training.eval_at_steps"):
        _cls_config(tiny_bert, sentiment_files, tmp_path / "run", "lora", eval_at_steps=steps, eval_steps=None)
    with pytest.raises(ConfigError, match="set one"):
        _cls_config(tiny_bert, sentiment_files, tmp_path / "run", "lora", eval_at_steps=[2], eval_steps=2)


@pytest.mark.parametrize("backbone", ["bert", "llama"])
def test_prefix_tuning_classification_is_a_clear_error(tiny_bert, tiny_llama, sentiment_files, tmp_path, backbone):
    # peft 0.21's prefix tuning for SEQ_CLS requires a `past_key_values` argument that transformers 5 renamed.
    model = tiny_bert if backbone == "bert" else tiny_llama
    with pytest.raises(ConfigError, match="prefix_tuning' for classification needs a backbone whose forward"):
        finetune.train(_cls_config(model, sentiment_files, tmp_path / "run", "prefix_tuning"))
    _assert_nothing_written(tmp_path / "run")


def test_classification_head_is_trained_and_saved_with_the_adapter(tiny_bert, sentiment_files, tmp_path):
    finetune.train(_cls_config(tiny_bert, sentiment_files, tmp_path / "run", "lora"))
    model, _, _ = finetune.load_trained(tmp_path / "run")
    head = [name for name, _ in model.named_parameters() if "classifier" in name and "modules_to_save" in name]
    assert head, "the classifier head must be saved with the adapter (modules_to_save)"


def test_same_seed_same_metrics_other_seed_differs(tiny_bert, sentiment_files, tmp_path):
    runs = [
        finetune.train(_cls_config(tiny_bert, sentiment_files, tmp_path / f"r{i}", "lora", seed=seed))
        for i, seed in enumerate([1, 1, 2])
    ]
    assert runs[0].final_metrics["eval_loss"] == runs[1].final_metrics["eval_loss"]
    assert runs[0].final_metrics["eval_loss"] != runs[2].final_metrics["eval_loss"]


def test_merged_model_saved_on_request(tiny_llama, sft_files, tmp_path):
    raw = causal_config(tiny_llama, sft_files["text"], tmp_path / "run", method={"name": "lora", "save_merged": True})
    finetune.train(FinetuneConfig.from_dict(raw))
    assert (tmp_path / "run" / "merged" / "config.json").is_file()
    assert not (tmp_path / "run" / "merged" / "adapter_config.json").exists()


def test_pad_token_is_set_for_causal_lm_without_one(tiny_llama):
    from finetune.config import ModelConfig
    from finetune.models import load_tokenizer, resolve_source

    model = ModelConfig(name=tiny_llama, task="causal_lm")
    tokenizer = load_tokenizer(model, resolve_source(model))
    assert tokenizer.pad_token == "</s>"


class _PoisonWeights(TrainerCallback):
    """Turn the weights to NaN after the first step, as a diverged run would."""

    def on_step_end(self, args, state, control, model=None, **kwargs):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.fill_(float("nan"))


def test_nan_loss_is_a_clear_error(tiny_bert, sentiment_files, tmp_path):
    config = _cls_config(tiny_bert, sentiment_files, tmp_path / "run", "full", logging_steps=1)
    with pytest.raises(TrainingError, match="training loss is nan at step 2"):
        finetune.train(config, callbacks=[_PoisonWeights()])


def _assert_nothing_written(out):
    assert not out.exists(), f"{out} was written although the input was bad"


@pytest.mark.parametrize("split", ["train", "validation"])
def test_a_row_without_a_label_is_named(tiny_bert, sentiment_files, tmp_path, split):
    import json

    rows = [json.loads(line) for line in open(sentiment_files[split]).read().splitlines()]
    rows[2]["label"] = None
    del rows[4]["label"]  # absent from one jsonl row: read back as null
    broken = tmp_path / f"{split}.jsonl"
    broken.write_text("".join(json.dumps(row) + "\n" for row in rows))
    raw = classification_config(tiny_bert, {**sentiment_files, split: str(broken)}, tmp_path / "run")
    with pytest.raises(DataError, match=rf"{split} \(.*\): 2 row\(s\) have no value in column 'label' \(rows 3, 5,"):
        finetune.train(FinetuneConfig.from_dict(raw))
    _assert_nothing_written(tmp_path / "run")


def test_missing_column_fails_before_writing(tiny_bert, sentiment_files, tmp_path):
    raw = classification_config(tiny_bert, sentiment_files, tmp_path / "run", data={"text_column": "review"})
    with pytest.raises(DataError, match=r"train \(.*train.jsonl\): missing column\(s\) \['review'\]"):
        finetune.train(FinetuneConfig.from_dict(raw))
    _assert_nothing_written(tmp_path / "run")


def test_label_not_in_label_set(tiny_bert, sentiment_files, tmp_path):
    raw = classification_config(tiny_bert, sentiment_files, tmp_path / "run", data={"label_names": ["pos"]})
    with pytest.raises(DataError, match=r"label\(s\) \['neg'\] in column 'label' are not in the label set \['pos'\]"):
        finetune.train(FinetuneConfig.from_dict(raw))
    _assert_nothing_written(tmp_path / "run")


def test_missing_and_empty_data_files(tiny_bert, sentiment_files, tmp_path):
    raw = classification_config(
        tiny_bert, sentiment_files, tmp_path / "run", data={"train_file": str(tmp_path / "nope.csv")}
    )
    with pytest.raises(DataError, match="data file not found: .*nope.csv"):
        finetune.train(FinetuneConfig.from_dict(raw))
    (tmp_path / "empty.jsonl").write_text("\n")
    raw["data"]["train_file"] = str(tmp_path / "empty.jsonl")
    with pytest.raises(DataError, match="empty.jsonl: the file has no rows"):
        finetune.train(FinetuneConfig.from_dict(raw))
    _assert_nothing_written(tmp_path / "run")


def test_missing_local_model_folder(sentiment_files, tmp_path):
    raw = classification_config("./no/such/model", sentiment_files, tmp_path / "run")
    with pytest.raises(ModelError, match="local model folder not found: ./no/such/model"):
        finetune.train(FinetuneConfig.from_dict(raw))
    _assert_nothing_written(tmp_path / "run")


def test_unknown_model_type(tiny_bert, sentiment_files, tmp_path):
    import shutil

    folder = tmp_path / "weird"
    shutil.copytree(tiny_bert, folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "not-a-real-architecture"
    (folder / "config.json").write_text(json.dumps(config))
    raw = classification_config(str(folder), sentiment_files, tmp_path / "run")
    with pytest.raises(ModelError, match="cannot load"):
        finetune.train(FinetuneConfig.from_dict(raw))
    _assert_nothing_written(tmp_path / "run")


def test_file_that_is_not_gguf(sentiment_files, tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    raw = classification_config(str(tmp_path), sentiment_files, tmp_path / "run", model={"gguf_file": "model.gguf"})
    with pytest.raises(ModelError, match="model.gguf is not a GGUF file"):
        finetune.train(FinetuneConfig.from_dict(raw))
    _assert_nothing_written(tmp_path / "run")


def test_unknown_method_is_a_config_error(tiny_bert, sentiment_files, tmp_path):
    raw = classification_config(tiny_bert, sentiment_files, tmp_path / "run", method={"name": "adalora"})
    with pytest.raises(ConfigError, match="method.name: expected one of"):
        FinetuneConfig.from_dict(raw)


def test_cli_train_and_evaluate(tiny_bert, sentiment_files, tmp_path, capsys):
    import yaml

    from recipes.cli import main

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(classification_config(tiny_bert, sentiment_files, tmp_path / "run")))
    assert main(["train", str(path), "training.max_steps=3", "method.name=full"]) == 0
    assert json.loads(capsys.readouterr().out)["optimizer_steps"] == 3
    assert main(["evaluate", str(tmp_path / "run"), "--split", "test"]) == 0
    assert "test_accuracy" in json.loads(capsys.readouterr().out)
    assert main(["train", str(path), "training.lr=1"]) == 2
    assert "unknown key 'training.lr'" in capsys.readouterr().err
