"""Tiny random models (BERT-like, Llama-like) with tokenizers built here, and small data files."""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_finish(session) -> None:
    """Every run calls gc.collect() when it ends (tunelab's release_memory, accelerate's free_memory), and
    a full collection walks every object alive: after collection that means torch's, transformers' and
    every test module's. Freezing them takes them out of later collections (objects made by the tests
    themselves are still collected); tests of searches of many tiny trials run about twice as fast."""
    import peft  # noqa: F401  the heavy libraries, imported now if no test module has yet
    import transformers  # noqa: F401

    gc.collect()
    gc.freeze()


WORDS = (
    "the a movie film was is great good bad awful fun boring plot actor story love hate best worst "
    "what why how who where when answer question camel water desert hump store fat energy city river "
    "capital france paris blue sky ocean red green one two three yes no or many humps and of in so"
).split()
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _word_tokenizer(special: list[str]):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    vocab = {token: i for i, token in enumerate(special + WORDS + list("abcdefghijklmnopqrstuvwxyz0123456789?.,!'"))}
    tokenizer = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]" if "[UNK]" in vocab else "<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tokenizer


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    from tokenizers import processors
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    raw = _word_tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    raw.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )
    config = BertConfig(
        vocab_size=raw.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        pad_token_id=0,
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> str:
    """A Llama-like causal LM whose tokenizer has no pad token (tunelab must set one)."""
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-llama")
    raw = _word_tokenizer(["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "user", "assistant", "system"])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tokenizer.chat_template = CHATML
    config = LlamaConfig(
        vocab_size=raw.get_vocab_size(),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.fixture(scope="session")
def sentiment_files(tmp_path_factory) -> dict[str, str]:
    """A learnable toy sentiment task: 'good'-words positive, 'bad'-words negative."""
    import random

    folder = tmp_path_factory.mktemp("sentiment")
    rng = random.Random(0)
    positive, negative, filler = (
        ["great", "good", "fun", "love", "best"],
        ["bad", "awful", "boring", "hate", "worst"],
        ["the", "movie", "plot", "was"],
    )

    def rows(n: int) -> list[dict]:
        out = []
        for _ in range(n):
            label = rng.choice(["pos", "neg"])
            words = rng.sample(filler, 3) + [rng.choice(positive if label == "pos" else negative)]
            rng.shuffle(words)
            out.append({"sentence": " ".join(words), "label": label})
        return out

    return {
        "train": write_jsonl(folder / "train.jsonl", rows(96)),
        "validation": write_jsonl(folder / "validation.jsonl", rows(32)),
        "test": write_jsonl(folder / "test.jsonl", rows(32)),
    }


@pytest.fixture(scope="session")
def sft_files(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("sft")
    qa = [
        ("what is the capital of france?", "paris"),
        ("why is the sky blue?", "the ocean"),
        ("how many humps?", "one or two"),
        ("where is water?", "in the river"),
    ] * 6
    return {
        "instruction": write_jsonl(
            folder / "instr.jsonl", [{"instruction": q, "context": "", "response": a} for q, a in qa]
        ),
        "prompt_completion": write_jsonl(folder / "pc.jsonl", [{"prompt": q + " ", "completion": a} for q, a in qa]),
        "messages": write_jsonl(
            folder / "msg.jsonl",
            [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in qa],
        ),
        "text": write_jsonl(folder / "text.jsonl", [{"text": q + " " + a} for q, a in qa]),
    }


def classification_config(tiny_bert: str, files: dict[str, str], out: Path, **sections) -> dict:
    config = {
        "model": {"name": tiny_bert, "task": "classification"},
        "data": {
            "train_file": files["train"],
            "validation_file": files["validation"],
            "test_file": files["test"],
            "text_column": "sentence",
            "max_length": 16,
        },
        "method": {"name": "lora"},
        "training": {
            "output_dir": str(out),
            "max_steps": 6,
            "eval_steps": 3,
            "per_device_train_batch_size": 8,
            "learning_rate": 1e-3,
            "logging_steps": 2,
        },
    }
    for section, values in sections.items():
        config[section].update(values)
    return config


def causal_config(tiny_llama: str, train_file: str, out: Path, **sections) -> dict:
    config = {
        "model": {"name": tiny_llama, "task": "causal_lm"},
        "data": {"train_file": train_file, "validation_size": 4, "max_length": 32},
        "method": {"name": "lora"},
        "training": {
            "output_dir": str(out),
            "max_steps": 4,
            "eval_steps": 2,
            "per_device_train_batch_size": 4,
            "learning_rate": 1e-3,
            "logging_steps": 2,
        },
    }
    for section, values in sections.items():
        config[section].update(values)
    return config


# A tiny recipe's search: random search over the learning rate, 3 trials (a caller may change any key).
TINY_SEARCH = {
    "sampler": "random",
    "scheduler": "none",
    "budget": {"trials": 3},
    "space": {"training.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
}


def write_recipe(raw: dict, path: Path, *, seeds: int = 2, **search) -> str:
    """``raw`` (a finetune config) as a recipe YAML at ``path``, with TINY_SEARCH updated by ``search``."""
    import yaml

    path.write_text(yaml.safe_dump({**raw, "search": {**TINY_SEARCH, **search}, "seeds": seeds}))
    return str(path)


POSTGRES_SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "postgres.sh"
DEFAULT_POSTGRES_URL = "postgresql://postgres:tunelab@127.0.0.1:5432/postgres"


def _postgres_answers(url: str) -> bool:
    try:
        import psycopg

        psycopg.connect(url, connect_timeout=3).close()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A real PostgreSQL server: TUNELAB_TEST_POSTGRES_URL, or one .ci/postgres.sh starts on 127.0.0.1.

    In CI the tests must run: a server that cannot be reached fails them. Elsewhere they are skipped,
    saying how to get a server.
    """
    import os
    import subprocess

    url = os.environ.get("TUNELAB_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    if not _postgres_answers(url):
        started = subprocess.run(["bash", str(POSTGRES_SCRIPT), "start"], capture_output=True, text=True)
        if started.returncode == 0:
            url = started.stdout.strip().splitlines()[-1]
    if not _postgres_answers(url):
        message = f"no PostgreSQL server at {url} and `bash .ci/postgres.sh start` could not start one"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message + " (set TUNELAB_TEST_POSTGRES_URL to a server you can use)")
    return url
