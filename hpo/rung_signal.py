"""What the scheduler compares at its rungs: the metric, and the validation loss where the metric has not moved.

At the first rungs of a LoRA classification search (a ninth of a run) no trial has left the majority class:
every accuracy is the majority share give or take a few rows, and successive halving keeps whichever trial
is ahead by that noise, stopping the ones that were about to learn. Their validation loss has already
moved and separates them. So with ``search.objective.rungs: smooth`` (``auto``, the default, for classification
metrics) the value each evaluation reports to the scheduler is, for a metric to maximize (mirrored for one
to minimize),

    metric                                      where metric > flat + noise  (it has moved up)
    flat - noise + 2 noise x 0.999 / (1 + loss)  where |metric - flat| <= noise (it has not moved)
    metric                                      where metric < flat - noise  (it has moved down)

``flat`` is what the metric scores before anything is learnt (the best constant prediction on the
validation split: the majority share for accuracy) and ``noise`` its standard error there. Every trial
that moved up ranks above every trial that has not, and among those the lower loss ranks higher. Only the
schedulers see it: a trial's score, the winner and every table stay the metric.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class RungSignal:
    flat: float  # the metric before anything is learnt
    noise: float  # how far from ``flat`` the metric must be to have moved

    def __post_init__(self) -> None:
        if not self.noise > 0:
            raise ValueError(f"RungSignal.noise must be > 0, got {self.noise!r}")

    def is_flat(self, metric: float) -> bool:
        """Whether ``metric`` has not moved from what a constant prediction scores (within ``noise``)."""
        return abs(metric - self.flat) <= self.noise

    def value(self, metric: float, loss: float, *, maximize: bool) -> float:
        """The value a scheduler compares for an evaluation scoring ``metric`` at validation ``loss``."""
        sign = 1.0 if maximize else -1.0
        gain = sign * (metric - self.flat)
        if self.is_flat(metric):  # not moved: inside the band, ordered by the loss
            gain = self.noise * (2 * 0.999 / (1.0 + max(loss, 0.0)) - 1)
        return self.flat + sign * gain


def rate_noise(rows: int) -> float:
    """The standard error of a rate (accuracy, F1) measured on ``rows`` rows, at its largest (a rate of 1/2)."""
    return 0.5 / math.sqrt(max(1, rows))
