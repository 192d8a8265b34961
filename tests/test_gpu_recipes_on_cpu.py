"""The GPU example recipes, run end to end on the CPU: a tiny random model of the same architecture (Qwen2,
Llama, BERT) with its family's chat-template structure stands in for the Hub model, and local rows with the
Hub dataset's columns stand in for the dataset. Their data formats, chat templates, methods, bf16 and
gradient-checkpointing settings then train, search, generate and report in CI; only the size is overridden.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import WORDS, _word_tokenizer, write_jsonl

from recipes.run import main as run_main

GPU = Path(__file__).resolve().parents[1] / "recipes" / "configs" / "gpu"

# The structure of each family's template, written here (the real ones ship with the Hub tokenizers):
# Qwen2.5 adds a default system turn when there is none; Llama 3 wraps turns in header tokens and opens
# with a system turn that carries dates.
QWEN_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nyou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{{ bos_token }}<|start_header_id|>system<|end_header_id|>\n\ncutting knowledge date: december 2023\n"
    "today date: 26 jul 2024\n\n<|eot_id|>"
    "{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def _tiny_causal_lm(folder: Path, family: str) -> str:
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    if family == "qwen2":
        special = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "system", "user", "assistant"]
        tokens = {"unk_token": "<unk>", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
        template, config_class, model_class = QWEN_TEMPLATE, Qwen2Config, Qwen2ForCausalLM
    else:
        special = ["<unk>", "<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]
        special += ["system", "user", "assistant"]
        tokens = {"unk_token": "<unk>", "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
        template, config_class, model_class = LLAMA3_TEMPLATE, LlamaConfig, LlamaForCausalLM
    raw = _word_tokenizer(special)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, additional_special_tokens=[t for t in special if t.startswith("<|")], **tokens
    )
    tokenizer.chat_template = template
    config = config_class(
        vocab_size=raw.get_vocab_size(),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,  # grouped-query attention, as both families use
        max_position_embeddings=256,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=family == "qwen2",
    )
    model_class(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def _questions(count: int) -> list[tuple[str, str, str]]:
    """(instruction, context, answer) triples in the tiny vocabulary."""
    pool = [
        ("what is the capital of france?", "", "paris"),
        ("why is the sky blue?", "the sky and the ocean", "the ocean"),
        ("how many humps?", "a camel in the desert", "one or two"),
        ("where is water?", "", "in the river"),
    ]
    return [pool[i % len(pool)] for i in range(count)]


def _dolly_rows(count: int) -> list[dict]:
    return [{"instruction": q, "context": c, "response": a, "category": "open_qa"} for q, c, a in _questions(count)]


def _alpaca_rows(count: int) -> list[dict]:
    return [{"instruction": q, "input": c, "output": a} for q, c, a in _questions(count)]


def _imdb_rows(count: int, offset: int) -> list[dict]:
    good, bad = ["great", "good", "fun", "love", "best"], ["bad", "awful", "boring", "hate", "worst"]
    rows = []
    for i in range(offset, offset + count):
        label = i % 2
        rows.append(
            {"text": f"the movie was {(good if label else bad)[i % 5]} and the plot {WORDS[i % 9]}", "label": label}
        )
    return rows


# Sizes only: rows, lengths, steps, the search's budget and the seeds. Everything else is the recipe's.
SMALL = [
    "data.dataset=null",
    "data.max_length=64",
    "training.max_steps=4",
    "training.eval_steps=2",
    "training.per_device_train_batch_size=4",
    "training.per_device_eval_batch_size=8",
    "search.budget={trials: 2}",
    "search.selection={top_k: 1, seeds: 0}",
    "search.max_per_device_batch=4",
    "seeds=2",
]


@pytest.mark.parametrize(
    ("recipe", "family"),
    [("qwen2_5_0_5b_dolly_lora.yaml", "qwen2"), ("llama3_2_1b_alpaca_lora.yaml", "llama")],
)
def test_gpu_causal_lm_recipe_runs_on_cpu_with_a_tiny_model_of_its_architecture(tmp_path, recipe, family):
    model_dir = _tiny_causal_lm(tmp_path / "model", family)
    rows = _dolly_rows(48) if "dolly" in recipe else _alpaca_rows(48)
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    overrides = [
        f"model.name={model_dir}",
        f"data.train_file={data}",
        "data.validation_size=8",
        "data.test_size=8",
        "data.max_new_tokens=4",
        "data.max_train_samples=32",
        *SMALL,
    ]
    if family == "llama":  # the reference arms once (qwen2) are enough; here they are turned off
        overrides.append("compare.references=[]")
    run_dir = tmp_path / "run"
    assert run_main([str(GPU / recipe), *overrides, "--run-dir", str(run_dir)]) == 0
    results = json.loads((run_dir / "results.json").read_text())
    tuned = results["runs"]["tuned"][0]
    assert {"test_loss", "test_exact_match", "test_token_f1"} <= set(tuned["test"])
    # The prompts were rendered with the family's template (the answer follows its assistant header).
    generations = [json.loads(line) for line in Path(tuned["generations"]).read_text().splitlines()]
    opening = {"qwen2": "<|im_start|>assistant\n", "llama": "<|start_header_id|>assistant<|end_header_id|>\n\n"}
    assert len(generations) == 8 and all(g["prompt"].endswith(opening[family]) for g in generations)
    if family == "qwen2":
        assert all("you are a helpful assistant." in g["prompt"] for g in generations)  # the default system turn
    report = (run_dir / "report.md").read_text()
    assert "| exact match |" in report
    # The field's LoRA recipes ran as further arms (on by default for causal LMs), same seeds and test rows.
    references = results["references"]
    if family == "llama":
        assert references == {} and "best reference" not in report
        return
    assert set(references) == {"axolotl", "llama_factory", "torchtune"}
    assert sum(ref["best"] for ref in references.values()) == 1
    assert all(
        len(results["runs"][name]) == 2 and "test_exact_match" in results["runs"][name][0]["test"]
        for name in references
    )
    assert "and the best of the field's recipes (" in report and "Against the best reference, " in report
    assert "| torchtune test |" in report and "| torchtune |" in report  # per-seed and the answers tables


def test_gpu_classification_recipe_runs_on_cpu_with_a_tiny_bert(tmp_path, tiny_bert):
    train = write_jsonl(tmp_path / "train.jsonl", _imdb_rows(40, 0))
    test = write_jsonl(tmp_path / "test.jsonl", _imdb_rows(16, 40))
    overrides = [
        f"model.name={tiny_bert}",
        f"data.train_file={train}",
        f"data.test_file={test}",
        "data.validation_size=8",
        *SMALL,
    ]
    run_dir = tmp_path / "run"
    recipe = GPU / "bert_base_imdb_full.yaml"
    assert run_main([str(recipe), *overrides, "--run-dir", str(run_dir)]) == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert results["metric"] == "accuracy" and len(results["runs"]["untuned"]) == 2
    assert all(run["trainable_params"] == run["total_params"] for run in results["runs"]["tuned"])  # method full
