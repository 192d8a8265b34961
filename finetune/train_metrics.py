"""The training split's loss and metrics at each evaluation, next to the validation ones (fit diagnostics).

Measured in evaluation mode (no dropout) on a fixed sample of the training rows, so the train-validation
gap compares like with like; the running training loss Trainer logs mixes dropout and a moving model.
"""

from __future__ import annotations

import numpy as np
import torch
from datasets import Dataset
from torch.utils.data import DataLoader
from transformers import EvalPrediction, TrainerCallback

from finetune.metrics import add_perplexity, classification_metrics
from finetune.precision import autocast
from finetune.shared_prefix import PromptPrefix, shared_prefix
from finetune.trainer import labelled_targets

TRAIN_SAMPLE_ROWS = 256  # enough for a loss and accuracy to a few points; costs about one small evaluation


class TrainSplitMetrics(TrainerCallback):
    """Adds train_loss, train_accuracy... to each evaluation's log entry (state.log_history)."""

    def __init__(
        self,
        train: Dataset,
        collator,
        batch_size: int,
        task: str,
        *,
        precision: str = "no",
        seed: int = 0,
        prompt_prefix: bool = False,
    ):
        rows = min(len(train), TRAIN_SAMPLE_ROWS)
        # The same rows at every evaluation (and for every seed of a config): a fixed yardstick.
        self.sample = train.shuffle(seed=seed).select(range(rows)) if rows < len(train) else train
        self.collator, self.batch_size, self.task = collator, batch_size, task
        self.precision = precision  # measured under the autocast training and validation run under
        # The rows' shared prompt prefix, run once per measurement (finetune.shared_prefix), where the model allows.
        self.prefix_ids = shared_prefix(self.sample) if prompt_prefix else None
        self.measured_steps: set[int] = set()

    def on_evaluate(self, args, state, control, model=None, metrics=None, **kwargs):
        entry = state.log_history[-1] if state.log_history else None
        if model is None or not entry or "eval_loss" not in entry or state.global_step in self.measured_steps:
            return  # the final re-evaluation of the kept model repeats the last step: nothing new to record
        self.measured_steps.add(state.global_step)
        entry.update(self.measure(model))

    @torch.no_grad()
    def measure(self, model) -> dict[str, float]:
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        losses, weights, logits, labels = [], [], [], []
        # Its own generator: iterating a DataLoader draws a seed, which from the global RNG would shift
        # the run's dropout and data order; measuring must leave the training run exactly as it was.
        loader = DataLoader(
            self.sample, batch_size=self.batch_size, collate_fn=self.collator, generator=torch.Generator()
        )
        prefix = None if self.prefix_ids is None else PromptPrefix(self.prefix_ids)  # this step's weights
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast(self.precision, device):
                if prefix is not None and prefix.starts(batch):
                    output = {"loss": prefix.loss(model, batch)}
                else:
                    output = model(**batch)
            # A causal LM's loss is a mean over its labelled tokens (as finetune.trainer evaluates), a
            # classifier's over its rows.
            weight = batch["labels"].shape[0] if self.task == "classification" else labelled_targets(batch["labels"])
            losses.append(float(output["loss"]) * weight if weight else 0.0)
            weights.append(weight)
            if self.task == "classification":
                logits.append(output["logits"].float().cpu().numpy())
                labels.append(batch["labels"].cpu().numpy())
        model.train(was_training)
        metrics = {"train_loss": sum(losses) / sum(weights)}
        if self.task == "classification":
            prediction = EvalPrediction(predictions=np.concatenate(logits), label_ids=np.concatenate(labels))
            metrics.update({f"train_{k}": v for k, v in classification_metrics(prediction).items()})
        return add_perplexity(metrics, self.task, prefix="train")
