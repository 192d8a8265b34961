"""A causal LM's evaluation loss is the mean over every labelled token of the split, however rows are batched."""

import torch
from conftest import causal_config

from finetune import FinetuneConfig
from finetune.evaluate import evaluate_untrained
from finetune.inputs import prepare_inputs
from finetune.models import build_model, load_tokenizer, resolve_source
from finetune.trainer import labelled_targets


def _config(tiny_llama, sft_files, tmp_path, eval_batch: int) -> FinetuneConfig:
    raw = causal_config(
        tiny_llama,
        sft_files["prompt_completion"],
        tmp_path,
        data={"validation_size": 8},
        training={"per_device_eval_batch_size": eval_batch, "mixed_precision": "no"},
    )
    return FinetuneConfig.from_dict(raw)


def test_the_evaluation_loss_is_the_token_mean_at_any_batch_size(tiny_llama, sft_files, tmp_path):
    config = _config(tiny_llama, sft_files, tmp_path, eval_batch=1)
    source = resolve_source(config.model)
    tokenizer = load_tokenizer(config.model, source)
    validation = prepare_inputs(config, tokenizer).validation
    model = build_model(config, source, tokenizer, None).eval()
    losses, targets = [], []
    with torch.no_grad():
        for row in validation:
            labels = torch.tensor([row["labels"]])
            losses.append(float(model(input_ids=torch.tensor([row["input_ids"]]), labels=labels).loss))
            targets.append(labelled_targets(labels))
    token_mean = sum(loss * n for loss, n in zip(losses, targets, strict=True)) / sum(targets)
    row_mean = sum(losses) / len(losses)
    # The answers differ in length ("paris" .. "in the river"), so the two means differ (by 4e-4 to 2e-2 on
    # the random model; fp32 evaluation agrees with the hand mean to 1e-6): the test can fail.
    assert len(set(targets)) > 1 and abs(token_mean - row_mean) > 2e-5
    for eval_batch in (1, 3, 8):
        metrics = evaluate_untrained(_config(tiny_llama, sft_files, tmp_path, eval_batch), "validation")
        assert abs(metrics["validation_loss"] - token_mean) < 1e-5, eval_batch


def test_a_run_scores_its_validation_split_as_evaluating_it_again_at_another_batch_size(
    tiny_llama, sft_files, tmp_path
):
    import finetune

    config = _config(tiny_llama, sft_files, tmp_path / "run", eval_batch=3)
    result = finetune.train(config)
    again = finetune.evaluate(result.output_dir, "validation", batch_size=1)
    assert abs(result.final_metrics["eval_loss"] - again["validation_loss"]) < 1e-5
