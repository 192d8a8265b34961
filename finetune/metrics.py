"""Evaluation metrics: accuracy and macro-F1 for classification; loss and perplexity for causal LM."""

from __future__ import annotations

import math

import numpy as np
from transformers import EvalPrediction


def classification_metrics(prediction: EvalPrediction) -> dict[str, float]:
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    predicted = np.asarray(logits).argmax(axis=-1)
    labels = np.asarray(prediction.label_ids)
    return {"accuracy": float((predicted == labels).mean()), "macro_f1": macro_f1(labels, predicted)}


def macro_f1(labels: np.ndarray, predicted: np.ndarray) -> float:
    """Unweighted mean of per-class F1 over the classes present in labels or predictions."""
    scores = []
    for cls in np.union1d(labels, predicted):
        tp = np.sum((predicted == cls) & (labels == cls))
        fp = np.sum((predicted == cls) & (labels != cls))
        fn = np.sum((predicted != cls) & (labels == cls))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def add_perplexity(metrics: dict[str, float], task: str, prefix: str = "eval") -> dict[str, float]:
    """Add ``{prefix}_perplexity`` for causal LMs (exp of the loss); classification metrics pass through."""
    if task != "causal_lm":
        return metrics
    loss = metrics.get(f"{prefix}_loss")
    if loss is not None:
        metrics[f"{prefix}_perplexity"] = math.exp(loss) if loss < 50 else float("inf")
    return metrics


def default_metric(task: str) -> tuple[str, bool]:
    """(metric name without prefix, greater_is_better) used to pick the kept checkpoint."""
    return ("accuracy", True) if task == "classification" else ("loss", False)
