"""Live search progress on stderr: trials done/planned, steps spent of budget, best so far, ETA.

The ETA is what is left of the budget at the pace measured so far (elapsed over steps, trials or time
spent), plus ``steps_after`` (what the caller runs after exploring: re-runs, retrains) at the measured
seconds per step: one ETA for the whole command.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

import optuna

from hpo.budget import Budget, spent

if TYPE_CHECKING:
    from hpo.results import SearchResult


class Progress:
    def __init__(
        self, *, budget: Budget, planned_trials: int | None, direction: str, enabled: bool = True, steps_after: int = 0
    ):
        self.budget = budget
        self.steps_after = steps_after
        self.planned = planned_trials
        self.direction = direction
        self.enabled = enabled
        self.started = time.perf_counter()
        self.last_shown: tuple[int, int] | None = None

    def update(self, study: optuna.Study) -> None:
        if not self.enabled:
            return
        from hpo.results import trial_records

        used = spent(study)
        records = trial_records(study)
        done = sum(r.state in ("COMPLETE", "PRUNED", "FAIL") for r in records)
        if (done, used.steps) == self.last_shown:
            return  # a discarded proposal (it ran shortened as another trial): nothing new to show
        self.last_shown = (done, used.steps)
        parts = [f"trials {done}/{self.planned or '?'}"]
        if self.budget.steps:
            parts.append(f"steps {used.steps}/{self.budget.steps}")
        complete = [r for r in records if r.state == "COMPLETE" and r.feasible and r.value is not None]
        if complete:
            best = (max if self.direction == "maximize" else min)(complete, key=lambda r: r.value)
            shown = ", ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in best.params.items())
            parts.append(f"best {best.value:.4g} (trial {best.number}: {shown})")
        parts.append(
            f"pruned {sum(r.state == 'PRUNED' for r in records)} failed {sum(r.state == 'FAIL' for r in records)}"
        )
        eta = self._eta(done, used.steps)
        if eta is not None:
            parts.append(f"eta {eta / 60:.1f} min")
        print("[hpo] " + " | ".join(parts), file=sys.stderr, flush=True)

    def finish(self, result: SearchResult) -> None:
        if self.enabled:
            print(
                f"[hpo] search finished: {result.stop_reason}; best {result.best_value} {result.best_params}",
                file=sys.stderr,
                flush=True,
            )

    def _eta(self, done: int, steps: int) -> float | None:
        elapsed = time.perf_counter() - self.started
        fractions = []
        if self.budget.steps and steps:
            fractions.append(steps / self.budget.steps)
        if self.planned and done:
            fractions.append(done / self.planned)
        if self.budget.wall_seconds:
            fractions.append(elapsed / self.budget.wall_seconds)
        fraction = max(fractions, default=0.0)
        if fraction <= 0:
            return None
        exploring = max(0.0, elapsed / min(fraction, 1.0) - elapsed)
        after = self.steps_after * elapsed / steps if steps else 0.0
        return exploring + after


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
