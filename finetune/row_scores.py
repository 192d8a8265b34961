"""Each row's share of a saved run's loss on a split: what comparing two runs row by row on the same rows needs.

A causal LM's loss on a split is the mean over all its labelled tokens (finetune.trainer): row i contributes
its tokens' summed loss times (rows / labelled tokens of the split), so the mean of the rows' shares is the
split's loss, and two runs scored on the same rows differ by the mean of their rows' differences. A
classifier's loss is already a mean over rows: each row's share is its own cross-entropy.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from finetune.answer_logits import answer_logits_collator
from finetune.errors import DataError
from finetune.evaluate import load_trained
from finetune.inputs import prepare_inputs
from finetune.packing import IGNORE_INDEX
from finetune.precision import autocast


@torch.no_grad()
def row_losses(run_dir: str | Path, split: str = "validation") -> list[float]:
    """The saved run's per-row shares of its ``split`` loss (their mean is the loss it evaluates to), in the
    split's row order, under the run's precision."""
    model, tokenizer, config = load_trained(run_dir)
    inputs = prepare_inputs(config, tokenizer)
    dataset = getattr(inputs, split)
    if dataset is None or len(dataset) == 0:
        raise DataError(f"{run_dir}: there is no {split} split to score row by row")
    device = next(model.parameters()).device
    causal = config.model.task == "causal_lm"
    # A causal LM's logits at the labelled positions only, where the model allows it (finetune.answer_logits).
    collator = answer_logits_collator(model, inputs.collator, dataset) if causal else inputs.collator
    loader = DataLoader(
        dataset,
        batch_size=config.training.per_device_eval_batch_size,
        collate_fn=collator,
        generator=torch.Generator(),  # its own: the global RNG stays as it was
    )
    sums, tokens = [], []
    for batch in loader:
        batch = {key: value.to(device) for key, value in batch.items()}
        labels = batch.pop("labels")
        targets = batch.pop("shift_labels", None)
        with autocast(config.training.mixed_precision, device):
            logits = model(**batch).logits.float()
        if not causal:
            sums += F.cross_entropy(logits, labels, reduction="none").tolist()
            tokens += [1] * len(labels)
            continue
        if targets is None:  # every position's logits: position t predicts token t + 1
            keep = labels[:, 1:] != IGNORE_INDEX
            logits, targets = logits[:, :-1][keep], labels[:, 1:][keep]
        else:
            keep = batch["logits_to_keep"]
        losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets, reduction="none")
        counts = keep.sum(dim=1).tolist()
        sums += [float(part.sum()) for part in torch.split(losses, counts)]
        tokens += counts
    per_row = len(sums) / max(sum(tokens), 1)  # rows per labelled token: the shares' mean is the token mean
    return [total * per_row for total in sums]
