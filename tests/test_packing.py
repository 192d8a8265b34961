"""data.packing: padding-free SFT batches score every row as it scores alone, and train like padded ones."""

import pytest
import torch
from conftest import causal_config
from transformers import AutoModelForCausalLM

import finetune
from finetune import ConfigError, FinetuneConfig
from finetune.inputs import prepare_inputs
from finetune.models import load_tokenizer, resolve_source
from finetune.packing import check_rows_kept_apart, packed_collator, token_losses


def _rows_and_collator(tiny_llama, sft_files, tmp_path, data_format="messages", **data):
    config = FinetuneConfig.from_dict(causal_config(tiny_llama, sft_files[data_format], tmp_path, data=data))
    inputs = prepare_inputs(config, load_tokenizer(config.model, resolve_source(config.model)))
    rows = [inputs.train[i] for i in range(4)]
    assert len({len(row["input_ids"]) for row in rows}) > 1  # rows of different lengths: padding matters
    return rows, inputs.collator


def _batch(collated):
    return {k: torch.as_tensor(v) for k, v in collated.items() if k != "use_cache"}


@pytest.mark.parametrize("data_format", ["messages", "text"])  # completion-only loss, and loss on every token
def test_a_packed_batch_gives_each_row_the_loss_it_has_alone(tiny_llama, sft_files, tmp_path, data_format):
    rows, padded_collator = _rows_and_collator(
        tiny_llama, sft_files, tmp_path, data_format, completion_only_loss=data_format == "messages"
    )
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    collated = packed_collator()(rows)
    assert collated["use_cache"] is False  # boundaries are read only when no cache is built
    packed = _batch(collated)
    assert packed["input_ids"].shape[0] == 1 and "attention_mask" not in packed
    with torch.no_grad():
        packed_losses = token_losses(model, packed)
        padded = _batch(padded_collator(rows))
        assert padded["input_ids"].shape[1] == max(len(row["input_ids"]) for row in rows)
        padded_losses = token_losses(model, padded)  # row after row, padding ignored
    # Every labelled prediction of every row, as each row scores alone (a row's first token is predicted
    # by nothing, alone or packed: the collator's separator sits where the previous row would predict it).
    alone = [token_losses(model, _batch(padded_collator([row]))) for row in rows]
    for losses, row in zip(alone, rows, strict=True):
        assert len(losses) == sum(t != -100 for t in row["labels"][1:])
    assert torch.allclose(padded_losses, torch.cat(alone), atol=1e-5)
    assert torch.allclose(packed_losses, torch.cat(alone), atol=1e-5)
    per_row = torch.split(packed_losses, [len(losses) for losses in alone])
    for packed_row, alone_row in zip(per_row, alone, strict=True):
        assert packed_row.mean().item() == pytest.approx(alone_row.mean().item(), abs=1e-5)


def test_packing_is_refused_where_the_model_attends_across_rows(tiny_llama, sft_files, tmp_path, monkeypatch):
    import transformers.masking_utils

    rows, padded_collator = _rows_and_collator(tiny_llama, sft_files, tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    check_rows_kept_apart(model, rows, padded_collator, "llama")  # kept apart: no error
    # A masking that ignores the restarts of position_ids, as some architectures' do.
    monkeypatch.setattr(transformers.masking_utils, "find_packed_sequence_indices", lambda position_ids: None)
    with pytest.raises(ConfigError, match="data.packing: this llama model attends across packed rows"):
        check_rows_kept_apart(model, rows, padded_collator, "llama")


def test_packed_training_runs_evaluates_padded_and_reloads(tiny_llama, sft_files, tmp_path):
    runs = {}
    for packing in (False, True):
        raw = causal_config(tiny_llama, sft_files["messages"], tmp_path / str(packing), data={"packing": packing})
        runs[packing] = finetune.train(FinetuneConfig.from_dict(raw))
    padded, packed = runs[False], runs[True]
    assert packed.optimizer_steps == padded.optimizer_steps
    assert packed.tokens_seen == padded.tokens_seen  # real tokens only, padded or not
    # Same rows, same order, same seed: the packed run trains like the padded one, up to float error.
    assert packed.final_metrics["eval_loss"] == pytest.approx(padded.final_metrics["eval_loss"], abs=1e-3)
    reloaded = finetune.evaluate(tmp_path / "True", "validation")
    assert reloaded["validation_loss"] == pytest.approx(packed.final_metrics["eval_loss"], abs=1e-5)


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"model": {"task": "classification"}}, "data.packing joins SFT rows.*model.task='causal_lm'"),
        ({"method": {"name": "prompt_tuning"}}, "data.packing cannot be used with method.name='prompt_tuning'"),
        ({"training": {"pad_to_max_length": True}}, "data.packing removes padding"),
    ],
)
def test_bad_packing_settings_name_the_field(tiny_llama, sft_files, tmp_path, sections, message):
    raw = causal_config(tiny_llama, sft_files["messages"], tmp_path, data={"packing": True})
    for section, values in sections.items():
        raw[section].update(values)
    with pytest.raises(ConfigError, match=message):
        FinetuneConfig.from_dict(raw)
