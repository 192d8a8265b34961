"""The Trainer tunelab trains and evaluates with: transformers' Trainer, with two evaluation changes.

- A causal LM's evaluation loss is the mean over every labelled token of the split. Trainer's is the mean
  over rows of each batch's per-token mean, which depends on how rows are batched (their order, the batch
  size) wherever answers differ in length: on dolly_short_qa the same model tested 2.179 with the rows in
  file order and 2.227 longest first (benchmarks/RESULTS.md). Each batch's loss is rescaled so that Trainer's
  row-weighted mean becomes the token mean: a batch's labelled tokens over its rows, against the split's.
- A packed run (``eval_collator``) trains on packed batches and evaluates on padded ones.
- ``prompt_prefix``: the tokens every evaluated row starts with are run once per pass (finetune.shared_prefix).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from datasets import Dataset
from transformers import Trainer

from finetune.packing import IGNORE_INDEX
from finetune.shared_prefix import PromptPrefix, shared_prefix


class FinetuneTrainer(Trainer):
    """Trainer; ``token_mean_loss``: evaluation loss per labelled token of the whole split (causal LMs);
    ``eval_collator``: the collator of evaluation batches where training's packs rows; ``prompt_prefix``: run
    the tokens every row of an evaluated split starts with once per pass (the model was checked to allow it:
    finetune.shared_prefix.shared_prefix_for)."""

    def __init__(
        self, *args, token_mean_loss: bool = False, eval_collator=None, prompt_prefix: bool = False, **kwargs
    ) -> None:
        super().__init__(*args, **kwargs)
        self.token_mean_loss = token_mean_loss
        self.eval_collator = eval_collator
        self.prompt_prefix = prompt_prefix
        self._labelled_per_row: float | None = None  # of the split being evaluated
        self._prefix: PromptPrefix | None = None  # of the split being evaluated

    def get_eval_dataloader(self, eval_dataset=None):
        with self._padded_batches():
            return super().get_eval_dataloader(eval_dataset)

    def get_test_dataloader(self, test_dataset):
        with self._padded_batches():
            return super().get_test_dataloader(test_dataset)

    def evaluation_loop(self, dataloader, *args, **kwargs):
        if self.token_mean_loss:
            self._labelled_per_row = labelled_tokens_per_row(dataloader.dataset)
        if self.prompt_prefix and self.args.prediction_loss_only and isinstance(dataloader.dataset, Dataset):
            token_ids = shared_prefix(dataloader.dataset)
            self._prefix = None if token_ids is None else PromptPrefix(token_ids)
        try:
            return super().evaluation_loop(dataloader, *args, **kwargs)
        finally:
            self._labelled_per_row = None
            self._prefix = None  # its keys and values belong to this pass's weights

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # Counted before the step: computing the loss may pop the labels.
        labels = inputs.get("labels") if self._labelled_per_row else None
        share = None if labels is None else labelled_targets(labels) / labels.shape[0] / self._labelled_per_row
        if self._prefix is not None and prediction_loss_only and self._prefix.starts(inputs):
            inputs = self._prepare_inputs(inputs)
            # The model's forward carries Trainer's autocast (accelerate wraps it), as in super().prediction_step.
            with torch.no_grad(), self.compute_loss_context_manager():
                loss, logits, label_ids = self._prefix.loss(model, inputs).detach().mean(), None, None
        else:
            loss, logits, label_ids = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        if loss is not None and share is not None:
            # A batch without a labelled token adds nothing to the token mean (its own mean is 0/0).
            loss = loss * share if share > 0 else loss.new_zeros(())
        return loss, logits, label_ids

    @contextmanager
    def _padded_batches(self):
        if self.eval_collator is None:
            yield
            return
        packed, self.data_collator = self.data_collator, self.eval_collator
        try:
            yield
        finally:
            self.data_collator = packed


def labelled_tokens_per_row(split) -> float | None:
    """Next-token targets (labels after the first position that are not IGNORE_INDEX) per row of ``split``;
    None where it has no token labels (classification, a dataset without a labels column)."""
    if not isinstance(split, Dataset) or "labels" not in split.column_names or len(split) == 0:
        return None
    rows = split["labels"]
    if not isinstance(rows[0], list):
        return None
    return sum(sum(label != IGNORE_INDEX for label in row[1:]) for row in rows) / len(rows)


def labelled_targets(labels) -> int:
    """Next-token targets in a batch's ``labels`` (rows x positions): after the first position, not IGNORE_INDEX."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())
