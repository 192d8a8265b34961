"""Train one trial and report it: the TrainerCallback between a Trainer run and its trial, in this process
(retrying out-of-memory at half batch) or in a child process; under several processes, one decides for all."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import multiprocessing
import shutil
import sys
from dataclasses import asdict
from typing import Any

import torch
from transformers import TrainerCallback

import finetune
from finetune import FinetuneConfig
from finetune.errors import ConfigError
from hpo.errors import InfeasibleTrial
from hpo.reporter import Reporter


def broadcast(value: Any) -> Any:
    """The main process's ``value`` on every process (gloo/NCCL through accelerate)."""
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value])[0]


def at_run_end(state) -> bool:
    """Whether a Trainer evaluation is the run's last: a stop decided there would save nothing."""
    return state.global_step >= state.max_steps


def is_new_evaluation(seen_steps: set[int], state) -> bool:
    """False for the final re-evaluation of the kept model: it repeats the last step, nothing new to report."""
    if state.global_step in seen_steps:
        return False
    seen_steps.add(state.global_step)
    return True


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
    main process's decision at every evaluation, so all processes stop at the same step. The reporter sees
    budget steps: optimizer steps times ``work_per_step`` (hpo.finetune.plan.SearchPlan.work_per_step).
    """

    def __init__(self, reporter: Reporter | None, metric: str, *, sync: bool = False, work_per_step: float = 1.0):
        self.reporter = reporter
        self.metric = metric
        self.sync = sync
        self.work_per_step = work_per_step
        self.seen_steps: set[int] = set()

    def budget_steps(self, optimizer_steps: int) -> int:
        return round(optimizer_steps * self.work_per_step)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not is_new_evaluation(self.seen_steps, state):
            return
        decision = None
        if self.reporter is not None:
            decision = self.decide(state.global_step, metrics or {}, run_ends=at_run_end(state))
        if self.sync:
            decision = broadcast(decision)
        apply_decision(decision, control)

    def on_train_end(self, args, state, control, **kwargs):
        if self.reporter is not None:
            self.reporter.add_steps(self.budget_steps(state.global_step))

    def decide(self, step: int, metrics: dict[str, float], run_ends: bool = False) -> tuple[str, str]:
        """Report ``metrics`` at optimizer ``step`` (the last when ``run_ends``); ("go" | "stop" | "error", message)."""
        if self.metric not in metrics:
            available = sorted(k for k in metrics if k.startswith("eval_"))
            return "error", f"search.objective.metric: {self.metric!r} is not among the evaluation metrics {available}"
        smooth = metrics.get("eval_loss") if self.metric != "eval_loss" else None  # for a rung signal
        self.reporter.report(self.budget_steps(step), metrics[self.metric], smooth)
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


def release_memory() -> None:
    """After a run: free its model and optimizer, and hand the freed heap back to the system. glibc keeps
    freed memory for reuse, so without malloc_trim a search's resident memory stays at the largest of its
    trials and grows by fragmentation on top of the next one's."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # another C library (musl) without malloc_trim: nothing to hand back
            pass


def train_trial(config: FinetuneConfig, callback: TrainerCallback) -> finetune.RunResult:
    """Out of memory: retry once with half the per-device batch and twice the accumulation (same effective
    batch); a second OOM makes the configuration infeasible."""
    try:
        return finetune.train(config, callbacks=[callback])
    except torch.OutOfMemoryError as first:
        release_memory()
        t = config.training
        if t.per_device_train_batch_size == 1:
            raise InfeasibleTrial(f"out of memory at per-device batch 1: {first}") from first
        retry = config.with_overrides(
            {
                "training.per_device_train_batch_size": t.per_device_train_batch_size // 2,
                "training.gradient_accumulation_steps": t.gradient_accumulation_steps * 2,
            }
        )
        if t.per_device_train_batch_size % 2:
            raise InfeasibleTrial(f"out of memory at odd per-device batch {t.per_device_train_batch_size}") from first
        shutil.rmtree(t.output_dir, ignore_errors=True)
        try:
            return finetune.train(retry, callbacks=[callback])
        except torch.OutOfMemoryError as second:
            raise InfeasibleTrial(
                f"out of memory even at per-device batch {retry.training.per_device_train_batch_size}: {second}"
            ) from second


class TrialProcessError(RuntimeError):
    """The trial's child process failed; the message is the child's exception."""


def train_trial_in_subprocess(
    config: FinetuneConfig, reporter: Reporter, metric: str, *, work_per_step: float = 1.0
) -> finetune.RunResult:
    """Run the trial in a fresh process (isolation: subprocess): nothing it allocates can outlive it.

    The child reports each evaluation through a pipe and waits for this process's decision, so
    scheduling, budget and pruning work exactly as in-process.
    """
    context = multiprocessing.get_context("spawn")  # no CUDA state inherited from this process
    ours, theirs = context.Pipe()
    child = context.Process(target=_child_main, args=(config.to_dict(), theirs, metric), daemon=True)
    child.start()
    theirs.close()
    decider = ReportToTrial(reporter, metric, work_per_step=work_per_step)
    try:
        while True:
            if not ours.poll(timeout=1.0):
                if not child.is_alive():
                    raise TrialProcessError(f"the trial process exited with code {child.exitcode} without a result")
                continue
            kind, payload = ours.recv()
            if kind == "eval":
                ours.send(decider.decide(*payload))
            elif kind == "done":
                result = finetune.RunResult(**payload)
                reporter.add_steps(decider.budget_steps(result.optimizer_steps))
                return result
            elif kind == "infeasible":
                raise InfeasibleTrial(payload)
            else:
                raise TrialProcessError(payload)
    finally:
        child.join(timeout=60)
        if child.is_alive():
            child.kill()
        ours.close()


class _PipeCallback(TrainerCallback):
    """In the child: send each new evaluation to the parent and obey its decision."""

    def __init__(self, connection: Any):
        self.connection = connection
        self.seen_steps: set[int] = set()

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not is_new_evaluation(self.seen_steps, state):
            return
        self.connection.send(("eval", (state.global_step, dict(metrics or {}), at_run_end(state))))
        apply_decision(self.connection.recv(), control)


def _child_main(raw_config: dict[str, Any], connection: Any, metric: str) -> None:
    try:
        result = train_trial(FinetuneConfig.from_dict(raw_config), _PipeCallback(connection))
        connection.send(("done", asdict(result)))
    except InfeasibleTrial as exc:
        connection.send(("infeasible", str(exc)))
    except Exception as exc:  # reported to the parent, which records the failed trial
        connection.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        connection.close()
