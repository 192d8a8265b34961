"""Causal-LM batches compute logits at the labelled positions only: same loss, same gradients, less work."""

import pytest
import torch
from conftest import causal_config
from transformers import AutoModelForCausalLM

from finetune import FinetuneConfig
from finetune.answer_logits import AnswerLogitsCollator, answer_logits_collator
from finetune.inputs import prepare_inputs
from finetune.methods import apply_method
from finetune.models import load_tokenizer, resolve_source
from finetune.packing import packed_collator


def _model_and_inputs(tiny_llama, sft_files, tmp_path, method: str):
    config = FinetuneConfig.from_dict(
        causal_config(tiny_llama, sft_files["messages"], tmp_path, method={"name": method})
    )
    inputs = prepare_inputs(config, load_tokenizer(config.model, resolve_source(config.model)))
    torch.manual_seed(0)
    model = apply_method(AutoModelForCausalLM.from_pretrained(tiny_llama), config.method, "causal_lm")
    return model, inputs


def _loss_and_gradients(model, batch) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad()
    inputs = {k: torch.as_tensor(v) for k, v in batch.items() if k != "use_cache"}
    output = model(**inputs, use_cache=False)
    output.loss.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    return output, grads


@pytest.mark.parametrize("packed", [False, True])
def test_labelled_positions_only_give_the_same_loss_and_gradients(tiny_llama, sft_files, tmp_path, packed):
    model, inputs = _model_and_inputs(tiny_llama, sft_files, tmp_path, "lora")
    full_collator = packed_collator() if packed else inputs.collator
    collator = answer_logits_collator(model, full_collator, inputs.train)
    if not isinstance(collator, AnswerLogitsCollator):
        pytest.skip("this transformers does not read a boolean logits_to_keep (full logits are kept)")
    rows = [inputs.train[i] for i in range(4)]
    model.train()
    full, full_grads = _loss_and_gradients(model, full_collator(rows))
    answers, answer_grads = _loss_and_gradients(model, collator(rows))
    labelled = sum(sum(t != -100 for t in row["labels"][1:]) for row in rows)
    assert full.logits.shape[:-1].numel() > labelled  # the full batch scores prompts and padding too
    assert answers.logits.shape[0] == labelled  # one row of logits per labelled prediction
    # Float32 sums in another order: the loss (about log of the vocabulary) agrees to a few ulps, not to 1e-6
    # absolute (1.4e-6 seen after other tests changed the thread pool); a wrong shift differs by O(1).
    assert answers.loss.item() == pytest.approx(full.loss.item(), rel=1e-6)
    for a, f in zip(answer_grads, full_grads, strict=True):
        assert torch.allclose(a, f, rtol=1e-5, atol=1e-6)


def test_a_method_that_shifts_positions_keeps_the_full_logits(tiny_llama, sft_files, tmp_path):
    # Prompt tuning prepends virtual tokens: the mask no longer matches the positions, so the check refuses it.
    model, inputs = _model_and_inputs(tiny_llama, sft_files, tmp_path, "prompt_tuning")
    assert answer_logits_collator(model, inputs.collator, inputs.train) is inputs.collator
