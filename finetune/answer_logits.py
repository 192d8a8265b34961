"""Logits for the labelled positions only.

A causal LM projects every position of a batch onto its vocabulary, yet SFT scores only the completion's
tokens: SmolLM2-135M's head (49,152 words) is a fifth of a forward pass, and its fp32 logits of a padded batch
(8 rows x 96 tokens: 150 MB, again for their gradient) are most of the activations. transformers' causal LMs
take ``logits_to_keep`` (here a boolean mask of the positions whose next token is labelled) and
``shift_labels`` (those positions' targets), so the head and the loss see the labelled positions alone; the
loss is the same sum over the same tokens.

Not every model or transformers version reads a boolean ``logits_to_keep`` (older ones index positions with
it; PEFT's prompt tuning prepends virtual tokens), so ``answer_logits_collator`` compares the loss both ways
on two training rows before using it, and keeps the full logits where they differ.
"""

from __future__ import annotations

import torch
from datasets import Dataset

from finetune.packing import IGNORE_INDEX, on_model_device


class AnswerLogitsCollator:
    """Wraps a causal-LM collator: its batches also carry the labelled positions and their targets."""

    def __init__(self, collator) -> None:
        self.collator = collator

    def __call__(self, features, *args, **kwargs) -> dict:
        return with_answer_positions(self.collator(features, *args, **kwargs))


def with_answer_positions(batch) -> dict:
    labels = torch.as_tensor(batch["labels"])
    # Position t predicts token t + 1: its target is the next label; the last position predicts nothing.
    next_labels = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    keep = next_labels != IGNORE_INDEX
    return {**batch, "logits_to_keep": keep, "shift_labels": next_labels[keep]}


def answer_logits_collator(model: torch.nn.Module, collator, train: Dataset):
    """``collator`` wrapped to compute logits at the labelled positions only, where ``model`` gives the same
    loss that way on two training rows; ``collator`` unchanged otherwise."""
    if len(train) == 0:
        return collator
    rows = [train[i] for i in range(min(2, len(train)))]
    batch = collator(rows)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            full = _loss(model, batch)
            answers_only = _loss(model, with_answer_positions(batch))
    # A model that cannot take the mask (a shape or type error deep in its forward) keeps the full logits.
    except Exception:  # noqa: BLE001
        return collator
    finally:
        model.train(was_training)
    if answers_only is None or not torch.allclose(full, answers_only, rtol=1e-4, atol=1e-5):
        return collator
    return AnswerLogitsCollator(collator)


def _loss(model: torch.nn.Module, batch: dict) -> torch.Tensor | None:
    loss = model(**on_model_device(batch, model), use_cache=False).loss
    return None if loss is None else loss.float()
