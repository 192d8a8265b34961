"""Greedy generation on a split of a causal-LM run, scored against the references: exact match and token F1.

Prompts are rendered exactly as training renders them before the answer (the chat template with its
generation prompt, or the raw prompt), left-padded in batches of similar lengths (the tokens all prompts
share run once: finetune.shared_prefix), and decoded greedily with the KV cache until EOS, the chat
template's end of turn, or data.max_new_tokens. With data.answer_pattern (a regex whose first group is the
answer, e.g. "#### (\\S+)"), both the reference and the generation are reduced to that answer before
scoring; a generation where it does not match scores 0.
"""

from __future__ import annotations

import json
import re
import string
import sys
from collections import Counter
from pathlib import Path

import torch
from transformers import GenerationConfig, PreTrainedTokenizerBase, TrainerCallback

from finetune.config import FinetuneConfig
from finetune.data import load_splits
from finetune.errors import ConfigError, DataError
from finetune.precision import autocast
from finetune.preprocess import canonical_sft_split, render_prompt
from finetune.shared_prefix import PromptPrefix, prompt_prefix_for_generation

# End-of-turn tokens of common chat templates: generation stops at any of them, as at EOS.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")


def generate_on_split(
    model, tokenizer: PreTrainedTokenizerBase, config: FinetuneConfig, split: str, *, batch_size: int | None = None
) -> tuple[dict[str, float], list[dict[str, str]]]:
    """(metrics prefixed with the split name, one {prompt, reference, generated} row per example)."""
    if config.model.task != "causal_lm":
        raise ConfigError("--generate scores causal-LM runs; this run's model.task is classification")
    rows, sft_format = _split_rows(config, split)
    examples = [render_prompt(row, sft_format, tokenizer, chat_template=config.data.chat_template) for row in rows]
    prompts = [prompt for prompt, _ in examples]
    batch_size = batch_size or generation_batch_size(config)
    precision = config.training.mixed_precision
    generated = generate(model, tokenizer, prompts, config.data.max_new_tokens, batch_size, precision=precision)
    records = [
        {"prompt": prompt, "reference": reference, "generated": text}
        for (prompt, reference), text in zip(examples, generated, strict=True)
    ]
    metrics = score(records, config.data.answer_pattern)
    _check_pattern(metrics, len(records), config.data.answer_pattern, split)
    return {f"{split}_{name}": value for name, value in metrics.items()}, records


def generation_batch_size(config: FinetuneConfig) -> int:
    return config.data.generation_batch_size or config.training.per_device_eval_batch_size


def _check_pattern(metrics: dict[str, float], count: int, pattern: str | None, split: str) -> None:
    """A pattern that finds no reference answer is a mistake; one that finds few generated ones is said."""
    if pattern is None:
        return
    if metrics["references_with_answer"] == 0:
        raise DataError(
            f"data.answer_pattern {pattern!r} matches none of the {count} references of the {split} split: "
            "it cannot find the answers to compare with"
        )
    found = round(metrics["answer_found"] * count)
    if found < count / 2:
        print(
            f"[finetune] data.answer_pattern {pattern!r} found an answer in only {found} of {count} generations "
            "(the others score 0)",
            file=sys.stderr,
        )


def _split_rows(config: FinetuneConfig, split: str) -> tuple[list[dict], str]:
    """The split's raw rows (the same rows evaluation and training see) and their SFT format."""
    splits = load_splits(config.data)
    dataset = getattr(splits, split)
    if dataset is None:
        raise DataError(f"there is no {split} split (set data.{split}_file or data.{split}_size)")
    dataset, sft_format = canonical_sft_split(dataset, split, splits.origins[split], config.data)
    return list(dataset), sft_format


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """EOS and every end-of-turn token the tokenizer knows."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    vocabulary = tokenizer.get_vocab()
    ids += [vocabulary[token] for token in END_OF_TURN_TOKENS if token in vocabulary]
    return sorted(set(ids))


def generate(
    model,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int,
    *,
    precision: str = "no",
):
    """Greedy continuations of ``prompts``, decoded without special tokens; batches are left-padded, the tokens
    every prompt starts with (a chat template's system prompt, a shared instruction) run once for all of them
    where the model continues from their cache as from the whole prompt. ``precision``:
    training.mixed_precision, whose autocast the forward passes run under, as in training."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    was_training = model.training
    model.eval()
    try:
        rows = tokenizer(prompts)["input_ids"]
        # Checked in the model's own precision, before autocast.
        prefix = prompt_prefix_for_generation(model, rows)
        with autocast(precision, next(model.parameters()).device):
            return _generate_batches(model, tokenizer, rows, prefix, max_new_tokens, batch_size)
    finally:
        model.train(was_training)


@torch.no_grad()
def _generate_batches(
    model, tokenizer, rows: list[list[int]], prefix: PromptPrefix | None, max_new_tokens: int, batch_size: int
) -> list[str]:
    """Each batch's prompts as [shared prefix][padding][rest of the prompt], the prefix's keys and values
    computed once for every batch (no prefix: plain left padding); the attention mask skips the padding and
    positions count only attended tokens, so every prompt continues as it would unpadded. A prompt-learning
    adapter drops the positions (peft), so its batches hold prompts of one length: no padding."""
    settings = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        use_cache=True,
        eos_token_id=stop_token_ids(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
    )
    device = next(model.parameters()).device
    shared = prefix.token_ids if prefix is not None else []
    texts = [""] * len(rows)
    for batch in _batches(rows, batch_size, unpadded=_drops_positions(model)):
        rests = [rows[index][len(shared) :] for index in batch]
        width = max(len(rest) for rest in rests)
        padding = [width - len(rest) for rest in rests]
        ids = [shared + [tokenizer.pad_token_id] * pad + rest for pad, rest in zip(padding, rests, strict=True)]
        mask = [[1] * len(shared) + [0] * pad + [1] * len(rest) for pad, rest in zip(padding, rests, strict=True)]
        cache = prefix.cache(model, len(rests), device) if prefix is not None else {}
        output = model.generate(
            input_ids=torch.tensor(ids, device=device),
            attention_mask=torch.tensor(mask, device=device),
            generation_config=settings,
            **cache,
        )
        decoded = tokenizer.batch_decode(output[:, len(shared) + width :], skip_special_tokens=True)
        for index, text in zip(batch, decoded, strict=True):
            texts[index] = text.strip()
    return texts


def _batches(rows: list[list[int]], batch_size: int, *, unpadded: bool) -> list[list[int]]:
    """Row indices in batches of at most ``batch_size``, grouped by length: longest first where batches are
    padded (each is as wide as its longest prompt: in file order, padding was 47% of the tokens sst2_words'
    test prompts ran after their shared prefix; longest first, 16%), or (``unpadded``) one length per batch."""
    if not unpadded:
        longest_first = sorted(range(len(rows)), key=lambda index: -len(rows[index]))
        return [longest_first[start : start + batch_size] for start in range(0, len(rows), batch_size)]
    by_length: dict[int, list[int]] = {}
    for index, row in enumerate(rows):
        by_length.setdefault(len(row), []).append(index)
    return [group[i : i + batch_size] for group in by_length.values() for i in range(0, len(group), batch_size)]


def _drops_positions(model) -> bool:
    """peft's prompt-learning models (prompt, prefix, p-tuning) ignore position_ids, so left padding would
    shift a padded prompt's positions."""
    config = getattr(model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))


class GenerationMetrics(TrainerCallback):
    """Adds eval_exact_match and eval_token_f1, measured on the first data.max_generation_samples validation
    rows, to each evaluation (its log entry and the metrics the schedulers and the kept model are chosen on)."""

    def __init__(self, config: FinetuneConfig, tokenizer: PreTrainedTokenizerBase):
        rows, sft_format = _split_rows(config, "validation")
        rows = rows[: config.data.max_generation_samples]
        examples = [render_prompt(row, sft_format, tokenizer, chat_template=config.data.chat_template) for row in rows]
        self.prompts = [prompt for prompt, _ in examples]
        self.references = [reference for _, reference in examples]
        self.tokenizer, self.data = tokenizer, config.data
        self.batch_size = generation_batch_size(config)
        self.precision = config.training.mixed_precision
        self.measured_steps: set[int] = set()

    def on_evaluate(self, args, state, control, model=None, metrics=None, **kwargs):
        entry = state.log_history[-1] if state.log_history else None
        if model is None or not entry or "eval_loss" not in entry or state.global_step in self.measured_steps:
            return
        self.measured_steps.add(state.global_step)
        texts = generate(
            model, self.tokenizer, self.prompts, self.data.max_new_tokens, self.batch_size, precision=self.precision
        )
        records = [{"reference": r, "generated": t} for r, t in zip(self.references, texts, strict=True)]
        scored = score(records, self.data.answer_pattern)
        values = {f"eval_{k}": scored[k] for k in ("exact_match", "token_f1")}
        entry.update(values)
        if metrics is not None:
            metrics.update(values)


def normalize(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (SQuAD's normalisation)."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(word for word in text.split() if word not in ("a", "an", "the"))


def extract_answer(text: str, pattern: str | None) -> str:
    if pattern is None:
        return text
    match = re.search(pattern, text)
    if match is None:
        return ""
    return match.group(1) if match.groups() else match.group(0)


def token_f1(prediction: str, reference: str) -> float:
    predicted, expected = normalize(prediction).split(), normalize(reference).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def score(records: list[dict[str, str]], answer_pattern: str | None) -> dict[str, float]:
    """exact_match and token_f1 over the records (answers extracted with ``answer_pattern`` first); with a
    pattern, also the share of generations where it found an answer and how many references it matched."""
    matches, f1s, found, references_found = [], [], 0, 0
    for record in records:
        reference = extract_answer(record["reference"], answer_pattern)
        references_found += bool(reference)
        reference = reference or record["reference"]
        prediction = extract_answer(record["generated"], answer_pattern)
        found += bool(prediction)
        matches.append(float(normalize(prediction) == normalize(reference)))
        f1s.append(token_f1(prediction, reference))
    count = len(records)
    metrics = {"exact_match": sum(matches) / count, "token_f1": sum(f1s) / count, "generated": float(count)}
    if answer_pattern is not None:
        metrics |= {"answer_found": found / count, "references_with_answer": float(references_found)}
    return metrics


def write_generations(records: list[dict[str, str]], path: str | Path) -> str:
    with open(path, "w") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    return str(path)
