"""Evaluation metrics: accuracy and macro-F1 for classification; loss and perplexity for causal LM."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from transformers import EvalPrediction


def classification_metrics(prediction: EvalPrediction) -> dict[str, float]:
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    return _scores(np.asarray(prediction.label_ids), np.asarray(logits).argmax(axis=-1))


def constant_prediction_metrics(labels: Sequence[Any]) -> dict[str, float]:
    """The best each classification metric scores when every row gets the same label: where a run stands
    before it has learnt more than the label shares (for accuracy, the majority share)."""
    labels = np.asarray([str(label) for label in labels])
    best: dict[str, float] = {}
    for label in np.unique(labels):
        for key, score in _scores(labels, np.full(labels.shape, label)).items():
            best[key] = max(best.get(key, score), score)
    return best


def _scores(labels: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
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
