"""SFT formats and completion-only loss masks: which label positions are -100."""

import pytest
from datasets import Dataset
from transformers import AutoTokenizer

from finetune import DataError
from finetune.config import DataConfig
from finetune.preprocess import IGNORE_INDEX, tokenize_classification, tokenize_sft


@pytest.fixture(scope="module")
def tokenizer(tiny_llama):
    return AutoTokenizer.from_pretrained(tiny_llama)


def _trained_text(tokenizer, row) -> str:
    """The tokens that carry loss, space-separated."""
    return " ".join(tokenizer.convert_ids_to_tokens([t for t in row["labels"] if t != IGNORE_INDEX]))


def _sft(tokenizer, rows, **data):
    config = DataConfig(train_file="x", max_length=64, **data)
    return tokenize_sft(Dataset.from_list(rows), "train", "x.jsonl", config, tokenizer)


def test_prompt_completion_goes_through_the_chat_template_of_an_instruct_tokenizer(tokenizer):
    """The chat-template trap: an instruct model fed raw prompt + completion learns a format it never saw."""
    row = _sft(tokenizer, [{"prompt": "what is the capital of france?", "completion": "paris"}])[0]
    assert _trained_text(tokenizer, row).split() == ["paris", "<|im_end|>"]
    assert tokenizer.decode(row["input_ids"]).startswith("<|im_start|> user what is the capital of france ?")
    plain = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    plain.chat_template = None  # a base model's tokenizer: the raw text, nothing to switch
    assert _trained_text(plain, _sft(plain, [{"prompt": "why ", "completion": "blue"}])[0]) == "blue </s>"


def test_data_chat_template_false_trains_the_raw_text(tokenizer):
    raw = [{"instruction": "why?", "input": "sky", "output": "blue"}]
    row = _sft(tokenizer, raw, chat_template=False)[0]
    assert "<|im_start|>" not in tokenizer.decode(row["input_ids"]) and _trained_text(tokenizer, row) == "blue </s>"


def test_prompt_completion_masks_the_prompt(tokenizer):
    rows = [{"prompt": "what is the capital of france? ", "completion": "paris"}]
    row = _sft(tokenizer, rows, chat_template=False)[0]
    n_prompt = len(tokenizer("what is the capital of france? ")["input_ids"])
    assert row["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert row["labels"][n_prompt:] == row["input_ids"][n_prompt:]
    assert _trained_text(tokenizer, row) == "paris </s>"  # the completion and eos, nothing else


def test_completion_only_loss_can_be_switched_off(tokenizer):
    rows = [{"prompt": "why ", "completion": "blue"}]
    row = _sft(tokenizer, rows, completion_only_loss=False, chat_template=False)[0]
    assert row["labels"] == row["input_ids"]


def test_messages_train_only_assistant_turns(tokenizer):
    messages = [
        {"role": "user", "content": "what is water?"},
        {"role": "assistant", "content": "the river"},
        {"role": "user", "content": "and the sky?"},
        {"role": "assistant", "content": "blue"},
    ]
    row = _sft(tokenizer, [{"messages": messages}])[0]
    trained = [i for i, label in enumerate(row["labels"]) if label != IGNORE_INDEX]
    # Two separate assistant spans, each the content plus the end-of-turn token.
    assert _trained_text(tokenizer, row).split() == ["the", "river", "<|im_end|>", "blue", "<|im_end|>"]
    assert trained != list(range(trained[0], trained[-1] + 1))
    assert row["labels"][0] == IGNORE_INDEX


def test_a_chat_template_that_rewrites_earlier_turns_is_refused(tokenizer):
    rewriting = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    # Past assistant turns lose their reasoning (as some reasoning models' templates do): the render of the
    # conversation up to the first answer is not how the whole conversation starts.
    rewriting.chat_template = (
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
        "{% if message['role'] == 'assistant' and not loop.last %}{{ message['content'].split('</think>')[-1] }}"
        "{% else %}{{ message['content'] }}{% endif %}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    messages = [
        {"role": "user", "content": "what is water?"},
        {"role": "assistant", "content": "<think>wet</think>the river"},
        {"role": "user", "content": "and the sky?"},
        {"role": "assistant", "content": "blue"},
    ]
    with pytest.raises(DataError, match="renders the conversation up to message 1 differently"):
        _sft(rewriting, [{"messages": messages}])
    _sft(rewriting, [{"messages": messages[:2]}])  # one assistant turn: nothing earlier to rewrite


def test_instruction_format_with_column_mapping_uses_chat_template(tokenizer):
    rows = [{"instruction": "how many humps?", "context": "", "response": "one or two"}]
    row = _sft(tokenizer, rows, format="instruction", columns={"input": "context", "output": "response"})[0]
    assert _trained_text(tokenizer, row).split() == ["one", "or", "two", "<|im_end|>"]
    assert "user" in tokenizer.decode(row["input_ids"])


def test_instruction_format_without_chat_template_uses_alpaca(tokenizer):
    plain = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    plain.chat_template = None
    row = _sft(plain, [{"instruction": "why?", "input": "sky", "output": "blue"}])[0]
    assert _trained_text(plain, row) == "blue </s>"


def test_text_format_trains_on_everything_but_special_tokens(tokenizer):
    row = _sft(tokenizer, [{"text": "the sky is blue"}])[0]
    assert _trained_text(tokenizer, row) == "the sky is blue </s>"


def test_truncated_away_completions_are_dropped(tokenizer):
    long_prompt = " ".join(["the"] * 100)
    rows = [{"prompt": long_prompt, "completion": "blue"}, {"prompt": "why ", "completion": "blue"}]
    assert len(_sft(tokenizer, rows)) == 1
    with pytest.raises(DataError, match="no row keeps any completion token within data.max_length=64"):
        _sft(tokenizer, rows[:1])


def test_auto_format_missing_columns(tokenizer):
    with pytest.raises(DataError, match="found none of the SFT layouts in columns \\['question'\\]"):
        _sft(tokenizer, [{"question": "why"}])


def test_mapped_column_missing(tokenizer):
    with pytest.raises(DataError, match=r"train \(x.jsonl\): missing column\(s\) \['answer'\]"):
        _sft(tokenizer, [{"prompt": "why"}], columns={"completion": "answer"})


def test_classification_labels_and_pairs(tiny_bert):
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    rows = Dataset.from_list([{"a": "good movie", "b": "the plot", "y": "pos"}, {"a": "bad", "b": "fun", "y": "neg"}])
    config = DataConfig(train_file="x", text_column="a", text_pair_column="b", label_column="y", max_length=16)
    out = tokenize_classification(rows, "train", "x", config, tok, ["neg", "pos"])
    assert out["labels"] == [1, 0]
    assert 1 in out[0]["token_type_ids"]  # the pair is encoded as a second segment
    unseen = Dataset.from_list([{"a": "so so", "b": "the", "y": "neutral"}])
    with pytest.raises(DataError, match=r"validation \(v.tsv\): label\(s\) \['neutral'\] in column 'y' are not in"):
        tokenize_classification(unseen, "validation", "v.tsv", config, tok, ["neg", "pos"])


def test_evaluated_splits_come_longest_first_and_training_keeps_its_order(tiny_llama, sft_files, tmp_path):
    """Evaluation batches pad to their longest row: validation and test are ordered by length (the same rows),
    the training split stays in the data's order (its sampler shuffles)."""
    from conftest import causal_config

    from finetune import FinetuneConfig
    from finetune.data import load_splits
    from finetune.inputs import prepare_inputs
    from finetune.models import load_tokenizer, resolve_source

    config = FinetuneConfig.from_dict(
        causal_config(tiny_llama, sft_files["messages"], tmp_path, data={"validation_size": 8, "test_size": 8})
    )
    tokenizer = load_tokenizer(config.model, resolve_source(config.model))
    inputs = prepare_inputs(config, tokenizer)
    raw = load_splits(config.data)
    for name in ("train", "validation", "test"):
        in_file_order = tokenize_sft(getattr(raw, name), name, "x", config.data, tokenizer)["input_ids"]
        given = getattr(inputs, name)["input_ids"]
        if name == "train":
            assert given == in_file_order
            continue
        assert sorted(map(tuple, given)) == sorted(map(tuple, in_file_order))
        lengths = [len(ids) for ids in given]
        assert lengths == sorted(lengths, reverse=True)
        assert lengths != [len(ids) for ids in in_file_order]  # the fixture's order is not already by length
