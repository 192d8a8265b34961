"""Train one trial: in this process (retrying out-of-memory at half batch) or in a child process."""

from __future__ import annotations

import gc
import multiprocessing
import shutil
from dataclasses import asdict
from typing import Any

import torch
from transformers import TrainerCallback

import finetune
from finetune import FinetuneConfig
from hpo.optimize import InfeasibleTrial, Reporter
from hpo.trial_callback import ReportToTrial, apply_decision, at_run_end


def train_trial(config: FinetuneConfig, callback: TrainerCallback) -> finetune.RunResult:
    """Out of memory: retry once with half the per-device batch and twice the accumulation (same effective
    batch); a second OOM makes the configuration infeasible."""
    try:
        return finetune.train(config, callbacks=[callback])
    except torch.OutOfMemoryError as first:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
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


def train_trial_in_subprocess(config: FinetuneConfig, reporter: Reporter, metric: str) -> finetune.RunResult:
    """Run the trial in a fresh process (isolation: subprocess): nothing it allocates can outlive it.

    The child reports each evaluation through a pipe and waits for this process's decision, so
    scheduling, budget and pruning work exactly as in-process.
    """
    context = multiprocessing.get_context("spawn")  # no CUDA state inherited from this process
    ours, theirs = context.Pipe()
    child = context.Process(target=_child_main, args=(config.to_dict(), theirs, metric), daemon=True)
    child.start()
    theirs.close()
    decider = ReportToTrial(reporter, metric)
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
                reporter.add_steps(result.optimizer_steps)
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
        if state.global_step in self.seen_steps:
            return
        self.seen_steps.add(state.global_step)
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
