"""Evaluation runs the tokens every row starts with once per pass: the same loss, fewer tokens through the model."""

import sys

import pytest
import torch
from conftest import causal_config, write_jsonl
from datasets import Dataset
from transformers import AutoModelForCausalLM

import finetune
from finetune import FinetuneConfig
from finetune.answer_logits import answer_logits_collator
from finetune.evaluate import evaluation_trainer
from finetune.inputs import prepare_inputs
from finetune.methods import apply_method
from finetune.models import load_tokenizer, resolve_source
from finetune.packing import IGNORE_INDEX
from finetune.shared_prefix import MIN_SHARED_TOKENS, PromptPrefix, shared_prefix, shared_prefix_for

QUESTIONS = [
    ("what is the capital of france?", "paris"),
    ("why is the sky blue?", "the ocean"),
    ("how many humps?", "one or two"),
    ("where is water?", "in the river"),
    ("what is blue?", "the sky"),
    ("where is paris?", "in france"),
] * 4


@pytest.fixture
def one_instruction(tmp_path) -> str:
    """Rows that share a chat-template opening and one instruction, as a task with one instruction has."""
    rows = [{"instruction": "answer the question in one or two words.", "input": q, "output": a} for q, a in QUESTIONS]
    return write_jsonl(tmp_path / "one_instruction.jsonl", rows)


def _prepared(tiny_llama, train_file, tmp_path, method: str = "lora"):
    config = FinetuneConfig.from_dict(
        causal_config(
            tiny_llama,
            train_file,
            tmp_path,
            data={"validation_size": 8},
            method={"name": method},
            training={"per_device_eval_batch_size": 3, "mixed_precision": "no"},
        )
    )
    inputs = prepare_inputs(config, load_tokenizer(config.model, resolve_source(config.model)))
    torch.manual_seed(0)
    model = apply_method(AutoModelForCausalLM.from_pretrained(tiny_llama), config.method, "causal_lm")
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero: the adapter must change the outputs the cache holds
            torch.nn.init.normal_(parameter, std=0.5)
    return config, inputs, model.eval()


def test_the_shared_prefix_stops_before_the_first_labelled_target():
    def row(ids: list[int], first_label: int) -> tuple[list[int], list[int]]:
        return ids, [IGNORE_INDEX] * first_label + ids[first_label:]

    rows = [row(list(range(20)), 16), row([*range(14), 99, 98, 97, 96], 16), row([*range(16), 50, 51], 12)]
    split = Dataset.from_dict({"input_ids": [ids for ids, _ in rows], "labels": [labels for _, labels in rows]})
    # The first two rows agree on 14 tokens and are labelled from 16 on.
    assert shared_prefix(split.select([0, 1])) == list(range(14))
    # The third's first target is token 12, which position 11 predicts: the prefix ends before it.
    assert shared_prefix(split) == list(range(11))
    too_short = Dataset.from_dict(
        {"input_ids": [[*range(5), 7], [*range(5), 8]], "labels": [[IGNORE_INDEX] * 5 + [7]] * 2}
    )
    assert MIN_SHARED_TOKENS > 5 and shared_prefix(too_short) is None
    assert shared_prefix(Dataset.from_dict({"input_ids": [list(range(20))] * 2, "label": [0, 1]})) is None


def test_rows_padded_on_the_left_do_not_start_with_the_prefix():
    prefix = PromptPrefix(list(range(1, 9)))
    right = {
        "input_ids": torch.tensor([[*range(1, 9), 20, 0], [*range(1, 9), 20, 21]]),
        "attention_mask": torch.ones(2, 10),
    }
    right["attention_mask"][0, -1] = 0
    assert prefix.starts(right)
    left = {
        "input_ids": torch.tensor([[0, *range(1, 9), 20], [*range(1, 9), 20, 21]]),
        "attention_mask": torch.ones(2, 10),
    }
    left["attention_mask"][0, 0] = 0
    assert not prefix.starts(left)


@pytest.mark.parametrize("method", ["lora", "dora", "ia3", "full"])
def test_an_evaluation_runs_the_prefix_once_and_scores_the_same_loss(tiny_llama, one_instruction, tmp_path, method):
    config, inputs, model = _prepared(tiny_llama, one_instruction, tmp_path, method)
    collator = answer_logits_collator(model, inputs.collator, inputs.train)
    token_ids = shared_prefix_for(model, collator, inputs.validation)
    assert token_ids is not None and len(token_ids) >= MIN_SHARED_TOKENS
    trainer = evaluation_trainer(model, config, inputs.collator, inputs.validation, batch_size=3, scratch=str(tmp_path))
    assert trainer.prompt_prefix
    widths: list[tuple[int, int]] = []
    embed = model.get_input_embeddings()
    hook = embed.register_forward_pre_hook(lambda module, args: widths.append(tuple(args[0].shape)))
    shared = trainer.evaluate(inputs.validation)["eval_loss"]
    run_with_prefix = list(widths)
    widths.clear()
    trainer.prompt_prefix = False
    whole = trainer.evaluate(inputs.validation)["eval_loss"]
    hook.remove()
    assert abs(shared - whole) < 1e-5
    # Once per pass: the prefix alone (one row), then each batch without it.
    assert run_with_prefix[0] == (1, len(token_ids))
    assert len(run_with_prefix) == len(widths) + 1
    assert [(rows, width - len(token_ids)) for rows, width in widths] == run_with_prefix[1:]


def test_a_prompt_tuning_model_is_evaluated_with_whole_rows(tiny_llama, one_instruction, tmp_path):
    config, inputs, model = _prepared(tiny_llama, one_instruction, tmp_path, method="prompt_tuning")
    # Its virtual tokens come before the rows' own: a cache of the rows' prefix does not continue it.
    assert shared_prefix(inputs.validation) is not None
    assert shared_prefix_for(model, inputs.collator, inputs.validation) is None
    trainer = evaluation_trainer(model, config, inputs.collator, inputs.validation, batch_size=3, scratch=str(tmp_path))
    assert not trainer.prompt_prefix


def test_a_run_scores_its_validation_as_whole_rows_score_it(tiny_llama, one_instruction, tmp_path, monkeypatch):
    config = FinetuneConfig.from_dict(
        causal_config(
            tiny_llama,
            one_instruction,
            tmp_path / "run",
            data={"validation_size": 8},
            training={"per_device_eval_batch_size": 3, "mixed_precision": "no"},
        )
    )
    calls = []
    prefix_loss = PromptPrefix.loss
    monkeypatch.setattr(PromptPrefix, "loss", lambda self, *args: calls.append(1) or prefix_loss(self, *args))
    result = finetune.train(config)
    assert calls  # the run's evaluations ran the prefix once per pass
    monkeypatch.setattr(sys.modules["finetune.evaluate"], "shared_prefix_for", lambda *args: None)
    calls.clear()
    again = finetune.evaluate(result.output_dir, "validation", batch_size=1)
    assert not calls and abs(result.final_metrics["eval_loss"] - again["validation_loss"]) < 1e-5


def test_the_training_split_metrics_run_the_prefix_once_with_the_same_loss(tiny_llama, one_instruction, tmp_path):
    from finetune.train_metrics import TrainSplitMetrics

    _, inputs, model = _prepared(tiny_llama, one_instruction, tmp_path)
    collator = answer_logits_collator(model, inputs.collator, inputs.train)
    whole, shared = (
        TrainSplitMetrics(inputs.train, collator, 3, "causal_lm", prompt_prefix=prompt_prefix)
        for prompt_prefix in (False, True)
    )
    assert whole.prefix_ids is None and len(shared.prefix_ids) >= MIN_SHARED_TOKENS
    tokens: list[int] = []
    hook = model.get_input_embeddings().register_forward_pre_hook(lambda module, args: tokens.append(args[0].numel()))
    expected = whole.measure(model)["train_loss"]
    whole_tokens = sum(tokens)
    tokens.clear()
    assert abs(shared.measure(model)["train_loss"] - expected) < 1e-5
    hook.remove()
    # 16 rows: the prefix once instead of 16 times.
    assert whole_tokens - sum(tokens) == (len(inputs.train) - 1) * len(shared.prefix_ids)


@pytest.mark.parametrize("method", ["lora", "prompt_tuning"])
def test_generation_runs_the_shared_prompt_once_and_answers_as_each_prompt_alone(
    tiny_llama, one_instruction, tmp_path, method
):
    from finetune.generate import generate
    from finetune.shared_prefix import prompt_prefix_for_generation

    config, _, model = _prepared(tiny_llama, one_instruction, tmp_path, method)
    tokenizer = load_tokenizer(config.model, resolve_source(config.model))
    prompts = [f"answer the question in one or two words, as briefly as you can. {q}" for q, _ in QUESTIONS[:6]]
    rows = tokenizer(prompts)["input_ids"]
    prefix = prompt_prefix_for_generation(model, rows)
    alone = [generate(model, tokenizer, [prompt], max_new_tokens=5, batch_size=1)[0] for prompt in prompts]
    if method == "prompt_tuning":
        # Its virtual tokens come before the prompt's own: a cache of the prompts' prefix does not continue it.
        assert prefix is None
        # peft drops its position ids: batches of prompts of one length, unpadded, answer as each alone.
        assert len({len(row) for row in rows}) > 1
        assert generate(model, tokenizer, prompts, max_new_tokens=5, batch_size=4) == alone
        return
    widths: list[tuple[int, int]] = []
    embed = model.get_input_embeddings()
    hook = embed.register_forward_pre_hook(lambda module, args: widths.append(tuple(args[0].shape)))
    assert generate(model, tokenizer, prompts, max_new_tokens=5, batch_size=4) == alone
    hook.remove()
    shared = len(prefix.token_ids)
    assert shared >= MIN_SHARED_TOKENS
    # The prefix alone once (after the two-prompt check), then each batch's prompts (4, then 2) without it.
    assert widths.count((1, shared)) == 1
    first, second = (max(len(row) - shared for row in batch) for batch in (rows[:4], rows[4:]))
    assert (4, first) in widths and (2, second) in widths
    assert not [rows_ for rows_, width in widths if rows_ > 1 and width > max(first, second)]
