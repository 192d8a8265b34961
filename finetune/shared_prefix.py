"""Evaluating a causal LM (and generating from it) with the tokens every row starts with run once per pass.

A chat template opens every row with the same tokens (SmolLM2's default system prompt, and in a task with one
instruction that instruction too: 42 of an sst2_words row's 69 tokens, 24 of a dolly_short_qa row's 52), and
the weights do not change during an evaluation pass. ``PromptPrefix`` runs those tokens through the model once
per pass, keeps their keys and values, and each batch runs only the rest of its rows on top of them. The loss
is the same sum over the same labelled tokens (the prefix stops before the first labelled target).

A batch whose rows do not start with the prefix (a tokenizer padding on the left) is evaluated whole. Not every
model continues from a cache as from its own prompt (prompt-learning adapters prepend virtual tokens), so
``shared_prefix_for`` compares the loss both ways on two rows before it is used, as answer_logits does.
Generation (finetune.generate) keeps the prefix of its tokenized prompts once per call the same way:
``prompt_prefix_for_generation`` compares the next-token logits both ways on two prompts.
"""

from __future__ import annotations

import copy
import inspect

import torch
from datasets import Dataset

from finetune.packing import IGNORE_INDEX, on_model_device

# Below this many shared tokens the pass's extra forward call costs about what it saves.
MIN_SHARED_TOKENS = 8


def shared_prefix(split: Dataset) -> list[int] | None:
    """The token ids every row of ``split`` starts with, up to the position before its first labelled target
    (labels after the prefix only); None where fewer than MIN_SHARED_TOKENS or the split has no token labels."""
    if len(split) == 0 or "labels" not in split.column_names:
        return None
    rows, labels = split["input_ids"], split["labels"]
    if not isinstance(labels[0], list):
        return None
    # A row needs one token after the prefix: the prefix's last position then predicts a token of the row.
    length = min(len(row) for row in rows) - 1
    length = min(length, *(_first_labelled(row_labels) - 1 for row_labels in labels))
    length = _shared_length(rows, length)
    return list(rows[0][:length]) if length >= MIN_SHARED_TOKENS else None


def _shared_length(rows: list[list[int]], length: int) -> int:
    """How many of the first ``length`` tokens every row shares with the first."""
    for row in rows[1:]:
        same = 0
        while same < length and row[same] == rows[0][same]:
            same += 1
        length = same
    return length


def _first_labelled(labels: list[int]) -> int:
    return next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))


class PromptPrefix:
    """The keys and values of a prefix all rows share, computed by the model on first use in a pass."""

    def __init__(self, token_ids: list[int]) -> None:
        self.token_ids = token_ids
        self._cache = None
        self._keyword = "past_key_values"  # the model's name for a cache, read with the cache

    def starts(self, batch: dict) -> bool:
        """Whether every row of ``batch`` starts with the prefix, unpadded."""
        width = len(self.token_ids)
        ids, mask = batch["input_ids"], batch.get("attention_mask")
        if ids.shape[1] <= width:
            return False
        prefix = torch.as_tensor(self.token_ids, device=ids.device)
        starts = bool((ids[:, :width] == prefix).all())
        return starts and (mask is None or bool((mask[:, :width] == 1).all()))

    def cache(self, model: torch.nn.Module, rows: int, device: torch.device) -> dict:
        """{the model's cache keyword: the prefix's keys and values repeated for ``rows`` rows} (a fresh copy:
        the model appends the rest of the rows to it)."""
        if self._cache is None:
            prefix = torch.as_tensor([self.token_ids], device=device)
            output = model(input_ids=prefix, use_cache=True, logits_to_keep=1)
            self._cache = output["cache"] if "cache" in output else output["past_key_values"]
            self._keyword = _cache_keyword(model)
        cache = copy.deepcopy(self._cache)
        cache.batch_repeat_interleave(rows)
        return {self._keyword: cache}

    def loss(self, model: torch.nn.Module, batch: dict) -> torch.Tensor:
        """The model's loss on ``batch`` (whose rows start with the prefix), running only the rest of its rows."""
        width, rows = len(self.token_ids), batch["input_ids"].shape[0]
        cache = self.cache(model, rows, batch["input_ids"].device)
        rest = {key: value for key, value in batch.items() if key != "use_cache"}
        rest["input_ids"] = batch["input_ids"][:, width:]
        rest["labels"] = batch["labels"][:, width:]
        if isinstance(batch.get("logits_to_keep"), torch.Tensor):
            rest["logits_to_keep"] = batch["logits_to_keep"][:, width:]  # shift_labels: unchanged, none in the prefix
        # attention_mask stays whole: it covers the cached positions too.
        return model(**rest, **cache, use_cache=True).loss


def _cache_keyword(model: torch.nn.Module) -> str:
    # transformers renamed past_key_values to cache (the old name still works, with a warning).
    base = getattr(model, "module", model)  # a DistributedDataParallel wrapper
    base = base.get_base_model() if hasattr(base, "get_base_model") else base  # a peft model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def shared_prefix_for(model: torch.nn.Module, collator, split: Dataset) -> list[int] | None:
    """``split``'s shared prefix where ``model`` gives the same loss on two of its rows with the prefix run
    once as without; None otherwise (no prefix, a model that cannot continue from a cache)."""
    token_ids = shared_prefix(split)
    if token_ids is None or len(split) < 2:
        return None
    batch = on_model_device(collator([split[0], split[1]]), model)
    prefix = PromptPrefix(token_ids)
    if not prefix.starts(batch):
        return None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            whole = model(**batch, use_cache=False).loss
            shared = prefix.loss(model, batch)
    # A model that cannot continue from a cache (a shape or type error deep in its forward) is evaluated whole.
    except Exception:  # noqa: BLE001
        return None
    finally:
        model.train(was_training)
    # fp32 float noise between the two ways is about 1e-6; a prompt-tuning adapter on a random model (a loss near
    # log(vocabulary)) moves the loss by 6e-4 to 5e-3 only, so the bound stays well under that.
    if whole is None or shared is None or not torch.allclose(whole.float(), shared.float(), rtol=1e-5, atol=1e-6):
        return None
    return token_ids


def prompt_prefix_for_generation(model: torch.nn.Module, prompts: list[list[int]]) -> PromptPrefix | None:
    """The prefix every tokenized prompt starts with (each keeping a token of its own), where ``model`` predicts
    the same next token logits for two of the prompts with the prefix cached as from the whole prompt; None
    otherwise (fewer than MIN_SHARED_TOKENS shared, a model that cannot continue from a cache)."""
    if len(prompts) < 2:
        return None
    length = _shared_length(prompts, min(len(prompt) for prompt in prompts) - 1)
    if length < MIN_SHARED_TOKENS:
        return None
    prefix = PromptPrefix(list(prompts[0][:length]))
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for prompt in prompts[:2]:
                whole = model(input_ids=torch.as_tensor([prompt], device=device)).logits[0, -1]
                rest = torch.as_tensor([prompt[length:]], device=device)
                mask = torch.ones(1, len(prompt), dtype=torch.long, device=device)
                cached = model(input_ids=rest, attention_mask=mask, **prefix.cache(model, 1, device)).logits[0, -1]
                if not torch.allclose(whole.float(), cached.float(), rtol=1e-4, atol=1e-4):
                    return None
    # A model that cannot continue from a cache (a shape or type error deep in its forward) generates whole.
    except Exception:  # noqa: BLE001
        return None
    return prefix
