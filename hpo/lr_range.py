"""Learning-rate range test (Smith, "Cyclical Learning Rates", 2017; fastai's lr_find): where to search the LR.

One short run raises the learning rate exponentially from step to step and records the training loss. The
loss stays flat while the rate is too small to move the model, falls once it is large enough, and blows up
past the largest stable rate. The rate at the lowest smoothed loss is about the largest that still trains;
fastai's rule of thumb trains at a tenth of it. The search then looks one decade around that tenth,
[lowest-loss rate / 30, lowest-loss rate / 3], instead of a fixed method-wide range that may put a task's
good rates at its edge or outside it. Where the loss still falls at the top of the sweep (it ends 10x above
the space's range), the top counts as the lowest-loss rate.

Measured on SST-2 MiniLM (benchmarks/RESULTS.md, 2026-12-03 fifth session): the decade below the tenth
instead, [/100, /10], left LoRA's learning rates where the method-wide range had them and 2 of 3 searches at
4 full-run equivalents found no trial that learned; the decade around it found one in 10 of 10.

The test says nothing (None, with the reason) when the loss never fell by ``MIN_DROP`` of where it started:
a sweep too short or too noisy to read. The search then keeps its range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SMOOTHING = 0.9  # exponential moving average of the loss, bias-corrected (fastai's, for ~60-100 steps)
DIVERGED = 4.0  # the sweep is over once the smoothed loss exceeds 4x its lowest so far (fastai's)
MIN_DROP = 0.05  # the smoothed loss must fall 5% below its start for the test to say anything
BELOW_LOWEST_LOSS = (30.0, 3.0)  # the searched range: the lowest-loss rate divided by these


@dataclass(frozen=True, kw_only=True)
class LRRangeReading:
    """What a sweep says: the learning-rate range to search (None when it cannot tell), and why."""

    low: float | None
    high: float | None
    lowest_loss_lr: float | None  # the rate where the smoothed loss was lowest
    diverged_at: float | None  # the first rate where the loss blew up (None: never within the sweep)
    reason: str

    @property
    def placed(self) -> bool:
        return self.low is not None


def sweep_rates(low: float, high: float, steps: int) -> list[float]:
    """``steps`` learning rates from ``low`` to ``high``, equally spaced in log."""
    if not 0 < low < high or steps < 2:
        raise ValueError(f"an LR sweep needs 0 < low < high and >= 2 steps, got {low}, {high}, {steps}")
    ratio = math.log(high / low) / (steps - 1)
    return [low * math.exp(ratio * i) for i in range(steps)]


def smoothed(losses: list[float], smoothing: float = SMOOTHING) -> list[float]:
    """Bias-corrected exponential moving average of ``losses``."""
    average, out = 0.0, []
    for i, loss in enumerate(losses):
        average = smoothing * average + (1 - smoothing) * loss
        out.append(average / (1 - smoothing ** (i + 1)))
    return out


def read_sweep(points: list[tuple[float, float]]) -> LRRangeReading:
    """The range to search from a sweep's (learning rate, training loss) points in sweep order."""
    finite = []
    for lr, loss in points:
        if not math.isfinite(loss):
            break  # a NaN/inf loss ends the sweep: what came before still counts
        finite.append((lr, loss))
    diverged_at = points[len(finite)][0] if len(finite) < len(points) else None
    if len(finite) < 10:
        reason = f"the LR sweep recorded {len(finite)} finite losses; at least 10 are needed"
        return LRRangeReading(low=None, high=None, lowest_loss_lr=None, diverged_at=diverged_at, reason=reason)
    curve = smoothed([loss for _, loss in finite])
    kept, lowest = len(curve), math.inf
    for i, value in enumerate(curve):
        if value > DIVERGED * lowest:
            diverged_at, kept = finite[i][0], i
            break
        lowest = min(lowest, value)
    best = min(range(kept), key=lambda i: curve[i])
    lowest_loss_lr, start = finite[best][0], sum(curve[:5]) / 5
    if curve[best] > start * (1 - MIN_DROP):
        reason = (
            f"the smoothed training loss never fell {MIN_DROP:.0%} below its start ({start:.4g} -> lowest "
            f"{curve[best]:.4g} at LR {lowest_loss_lr:.3g}): the sweep cannot place the learning rate"
        )
        return LRRangeReading(
            low=None, high=None, lowest_loss_lr=lowest_loss_lr, diverged_at=diverged_at, reason=reason
        )
    low, high = (lowest_loss_lr / divisor for divisor in BELOW_LOWEST_LOSS)
    where = "at the top of the sweep (still falling)" if best == len(finite) - 1 else f"at LR {lowest_loss_lr:.3g}"
    blew = f", blew up from LR {diverged_at:.3g}" if diverged_at is not None else ""
    reason = (
        f"smoothed training loss {start:.4g} -> {curve[best]:.4g}, lowest {where}{blew}: "
        f"searching LR in [{low:.3g}, {high:.3g}]"
    )
    return LRRangeReading(low=low, high=high, lowest_loss_lr=lowest_loss_lr, diverged_at=diverged_at, reason=reason)
