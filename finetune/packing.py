"""Padding-free SFT batches: a batch's rows end to end in one row, each keeping its own attention.

transformers' DataCollatorWithFlattening restarts position_ids at every row and puts -100 on each row's
first label, so no row predicts the next row's tokens. Models whose causal mask is built by
transformers' masking utilities read the restarts and block attention across rows, when no KV cache is
built (PackedCollator's batches say use_cache=False). Not every model builds its mask that way, so
``check_rows_kept_apart`` compares a packed pair of rows with the same rows alone before training.
Evaluation batches stay padded: one long packed row of a large evaluation batch costs more in attention
(quadratic in its length) than the padding it saves.
"""

from __future__ import annotations

import torch
from datasets import Dataset
from transformers import DataCollatorWithFlattening

from finetune.errors import ConfigError

IGNORE_INDEX = -100


class PackedCollator(DataCollatorWithFlattening):
    """DataCollatorWithFlattening whose batches also say use_cache=False: transformers reads the packed
    rows' boundaries from position_ids only when no cache is built, and models build one by default
    (config.use_cache), training included; attention would then cross rows."""

    def __call__(self, features, return_tensors=None, separator_id=None):
        return {**super().__call__(features, return_tensors, separator_id), "use_cache": False}


def packed_collator() -> PackedCollator:
    return PackedCollator(return_position_ids=True, separator_id=IGNORE_INDEX)


def token_losses(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy of every labelled next-token prediction in ``batch``, in order (flattened)."""
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "use_cache")}
    logits = model(**inputs, use_cache=False).logits.float()
    labels = batch["labels"][:, 1:]
    losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none"
    )
    return losses[labels.reshape(-1) != IGNORE_INDEX]


def check_rows_kept_apart(model: torch.nn.Module, train: Dataset, padded_collator, model_type: str) -> None:
    """Refuse packing when the model attends across packed rows: two rows packed must score as alone."""
    if len(train) < 2:
        return
    rows = [train[0], train[1]]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            alone = torch.cat([token_losses(model, on_model_device(padded_collator([row]), model)) for row in rows])
            packed = token_losses(model, on_model_device(packed_collator()(rows), model))
    finally:
        model.train(was_training)
    if alone.shape != packed.shape or not torch.allclose(alone, packed, atol=1e-3, rtol=1e-3):
        raise ConfigError(
            f"data.packing: this {model_type} model attends across packed rows with the installed transformers "
            "(a packed pair scores differently from the same rows alone); set data.packing: false"
        )


def on_model_device(batch: dict, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A collated batch as tensors on ``model``'s device, for a forward outside the Trainer (checks)."""
    device = next(model.parameters()).device
    return {k: torch.as_tensor(v).to(device) for k, v in batch.items() if k != "use_cache"}
