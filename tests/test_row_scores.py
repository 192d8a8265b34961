"""Each validation row's share of a saved run's loss: their mean is the loss the run evaluates to."""

import statistics

import pytest
from conftest import causal_config, classification_config

import finetune
from finetune import FinetuneConfig
from finetune.row_scores import row_losses


@pytest.mark.parametrize("eval_batch", [1, 3])
def test_a_causal_lms_row_shares_average_to_its_token_mean_loss(tiny_llama, sft_files, tmp_path, eval_batch):
    raw = causal_config(
        tiny_llama,
        sft_files["prompt_completion"],
        tmp_path / "run",
        data={"validation_size": 8},
        training={"per_device_eval_batch_size": eval_batch, "mixed_precision": "no", "learning_rate": 3e-3},
    )
    result = finetune.train(FinetuneConfig.from_dict(raw))
    rows = row_losses(result.output_dir)
    assert len(rows) == 8
    # Answers differ in length, so a plain mean of per-row token means would differ from the token mean.
    assert statistics.fmean(rows) == pytest.approx(result.final_metrics["eval_loss"], abs=1e-5)
    assert len({round(value, 6) for value in rows}) > 1


def test_a_classifiers_row_shares_are_its_rows_cross_entropies(tiny_bert, sentiment_files, tmp_path):
    raw = classification_config(tiny_bert, sentiment_files, tmp_path / "run", training={"mixed_precision": "no"})
    result = finetune.train(FinetuneConfig.from_dict(raw))
    rows = row_losses(result.output_dir)
    again = finetune.evaluate(result.output_dir, "validation")
    with open(sentiment_files["validation"]) as rows_file:
        assert len(rows) == sum(1 for line in rows_file if line.strip())
    assert statistics.fmean(rows) == pytest.approx(again["validation_loss"], abs=1e-5)
