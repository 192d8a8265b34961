"""The TrainerCallback between a Trainer run and its trial; under several processes, one decides for all."""

from __future__ import annotations

import sys
from typing import Any

from transformers import TrainerCallback

from finetune.errors import ConfigError
from hpo.optimize import Reporter


def broadcast(value: Any) -> Any:
    """The main process's ``value`` on every process (gloo/NCCL through accelerate)."""
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value])[0]


def at_run_end(state) -> bool:
    """Whether a Trainer evaluation is the run's last: a stop decided there would save nothing."""
    return state.global_step >= state.max_steps


def apply_decision(decision: tuple[str, str], control) -> None:
    """Obey a ("go" | "stop" | "error", message) decision inside a Trainer callback."""
    kind, message = decision
    if kind == "error":
        raise ConfigError(message)
    if kind == "stop":
        control.should_training_stop = True


class ReportToTrial(TrainerCallback):
    """Reports each evaluation to the trial and stops the run cleanly when the trial must stop.

    ``reporter`` is None on the other processes of a multi-process run: with ``sync`` they receive the
    main process's decision at every evaluation, so all processes stop at the same step.
    """

    def __init__(self, reporter: Reporter | None, metric: str, *, sync: bool = False):
        self.reporter = reporter
        self.metric = metric
        self.sync = sync
        self.seen_steps: set[int] = set()

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        # The final re-evaluation of the kept model repeats the last step: nothing new to report.
        if state.global_step in self.seen_steps:
            return
        self.seen_steps.add(state.global_step)
        decision = None
        if self.reporter is not None:
            decision = self.decide(state.global_step, metrics or {}, run_ends=at_run_end(state))
        if self.sync:
            decision = broadcast(decision)
        apply_decision(decision, control)

    def on_train_end(self, args, state, control, **kwargs):
        if self.reporter is not None:
            self.reporter.add_steps(state.global_step)

    def decide(self, step: int, metrics: dict[str, float], run_ends: bool = False) -> tuple[str, str]:
        """Report ``metrics`` at ``step`` (the last when ``run_ends``); ("go" | "stop" | "error", message)."""
        if self.metric not in metrics:
            available = sorted(k for k in metrics if k.startswith("eval_"))
            return "error", f"search.objective.metric: {self.metric!r} is not among the evaluation metrics {available}"
        self.reporter.report(step, metrics[self.metric])
        stop = self.reporter.should_stop(run_ends=run_ends)
        return ("stop", self.reporter.stop_reason) if stop else ("go", "")


def follow_trials(run: Any, metric: str) -> None:
    """On a non-main process: train each config the main process sends, until it sends None."""
    while True:
        message = broadcast(None)
        if message is None:
            return
        try:
            run(message, ReportToTrial(None, metric, sync=True))
        except Exception as exc:  # the main process records the failure; keep following
            print(f"[hpo] follower: trial failed here too: {type(exc).__name__}: {exc}", file=sys.stderr)
