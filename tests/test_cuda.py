"""GPU-only checks (skipped without CUDA): real out-of-memory handling and bf16 training."""

import pytest
import torch
from conftest import classification_config

import finetune
from finetune import FinetuneConfig
from hpo import Budget, Categorical, SearchSpace
from hpo.finetune import SearchSettings, search_finetune

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def wide_bert(tmp_path, tiny_bert):
    """Same tokenizer as tiny_bert, but wide enough that a huge batch really runs out of memory."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=1024,
        num_hidden_layers=4,
        num_attention_heads=16,
        intermediate_size=4096,
        max_position_embeddings=512,
        pad_token_id=0,
    )
    BertForSequenceClassification(config).save_pretrained(tmp_path / "wide")
    tokenizer.save_pretrained(tmp_path / "wide")
    return str(tmp_path / "wide")


def test_out_of_memory_trial_is_retried_then_infeasible_and_the_search_goes_on(wide_bert, sentiment_files, tmp_path):
    raw = classification_config(
        wide_bert,
        sentiment_files,
        tmp_path / "unused",
        data={"max_length": 512},
        training={"max_steps": 4, "eval_steps": 2, "pad_to_max_length": True, "per_device_train_batch_size": 8},
    )
    base = FinetuneConfig.from_dict(raw)
    space = SearchSpace({"training.effective_batch_size": Categorical(choices=(4096, 8))})
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, 6 * 2**30 / total))  # a 6 GiB card
    try:
        search = search_finetune(
            base,
            SearchSettings(
                space=space,
                sampler="grid",
                scheduler="none",
                budget=Budget(trials=3),
                include_untuned=False,
                max_per_device_batch=4096,
                progress=False,
            ),
            run_dir=tmp_path / "s",
        )
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    by_batch = {t.params["training.effective_batch_size"]: t for t in search.result.trials}
    assert not by_batch[4096].feasible and "out of memory even at per-device batch 2048" in by_batch[4096].failure
    assert by_batch[8].state == "COMPLETE" and by_batch[8].feasible
    assert search.result.best_params == {"training.effective_batch_size": 8}


def test_bf16_training_on_gpu(tiny_bert, sentiment_files, tmp_path):
    raw = classification_config(tiny_bert, sentiment_files, tmp_path / "run", training={"mixed_precision": "bf16"})
    result = finetune.train(FinetuneConfig.from_dict(raw))
    assert result.optimizer_steps == 6
    assert 0 < result.peak_memory_bytes < torch.cuda.get_device_properties(0).total_memory
    reloaded = finetune.evaluate(tmp_path / "run", "validation")
    assert reloaded["validation_accuracy"] == result.final_metrics["eval_accuracy"]
