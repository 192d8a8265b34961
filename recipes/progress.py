"""One [run] line at each step of `tunelab run`: the phase, optimizer steps done of the run's planned total
(search budget + retrains) and one ETA for the whole command, from the steps per second this invocation
has measured. Work stored by an earlier invocation counts as done, not as speed: finished retrains and a
finished search (a search interrupted halfway counts whole as this invocation's, so the ETA after it is
optimistic)."""

from __future__ import annotations

import sys
import time


class RunProgress:
    def __init__(self, *, search_steps: int, retrain_steps: int, enabled: bool = True):
        self.search_steps, self.retrain_steps = search_steps, retrain_steps
        self.enabled = enabled
        self.started = time.perf_counter()
        self.done = 0  # steps done, this invocation or earlier
        self.done_before = 0  # steps an earlier invocation did (resumed work)

    @property
    def total(self) -> int:
        return self.search_steps + self.retrain_steps

    def add(self, steps: int, *, resumed: bool = False) -> None:
        self.done += steps
        if resumed:
            self.done_before += steps

    def say(self, phase: str) -> None:
        if not self.enabled:
            return
        parts = [f"[run] {phase}", f"steps {self.done}/{self.total} of the run"]
        eta = self.eta_seconds()
        if eta is not None:
            parts.append(f"eta {eta / 60:.1f} min")
        print(" | ".join(parts), file=sys.stderr, flush=True)

    def eta_seconds(self) -> float | None:
        measured = self.done - self.done_before
        if measured <= 0:
            return None
        per_step = (time.perf_counter() - self.started) / measured
        return max(self.total - self.done, 0) * per_step
