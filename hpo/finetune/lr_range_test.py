"""Place the learning rate before a fine-tune search: one short LR sweep of the untuned config (hpo.lr_range).

The sweep trains the untuned config at a constant learning rate that rises exponentially each optimizer step
from a tenth of the space's lowest rate to ten times its highest, and records the training loss of every
step. Its steps come out of the search's budget (plan_search sets them aside), so a search that runs one
spends no more than one that does not. What it read goes to <run_dir>/lr_range_test.json: a resumed search
reads it back instead of sweeping again, and the summary and the report show it.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

import finetune
from finetune import FinetuneConfig
from finetune.errors import TrainingError
from hpo.finetune.time_spent import summed
from hpo.finetune.trial_training import release_memory
from hpo.lr_range import DIVERGED, LRRangeReading, read_sweep, smoothed, sweep_rates
from hpo.space import Float, SearchSpace

LR_KEY = "training.learning_rate"
RESULT_FILE = "lr_range_test.json"
SWEEP_BEYOND_SPACE = 10.0  # the sweep starts 10x below the space's lowest rate and ends 10x above its highest


@dataclass(frozen=True)
class LRRangeTest:
    steps: int  # optimizer steps the sweep ran
    points: list[tuple[float, float]]  # (learning rate, training loss) per step
    reading: LRRangeReading
    time_breakdown: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "points": [list(point) for point in self.points],
            "reading": dataclasses.asdict(self.reading),
            "time_breakdown": self.time_breakdown,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> LRRangeTest:
        points = [(float(lr), float(loss)) for lr, loss in raw["points"]]
        return cls(raw["steps"], points, LRRangeReading(**raw["reading"]), raw.get("time_breakdown") or {})


class ExponentialSweep(TrainerCallback):
    """Sets the optimizer's learning rate to ``rates[step]`` before each step (the scheduler is constant) and
    records each step's training loss (logging_steps=1); stops once the smoothed loss has blown up."""

    def __init__(self, rates: list[float]):
        self.rates = rates
        self.points: list[tuple[float, float]] = []

    def on_step_begin(self, args, state, control, **kwargs):
        rate = self.rates[min(state.global_step, len(self.rates) - 1)]
        for group in kwargs["optimizer"].param_groups:
            group["lr"] = rate

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs or state.global_step < 1:
            return
        self.points.append((self.rates[min(state.global_step, len(self.rates)) - 1], float(logs["loss"])))
        curve = smoothed([loss for _, loss in self.points])
        if curve[-1] > DIVERGED * min(curve):
            control.should_training_stop = True


def space_lr_bounds(space: SearchSpace) -> tuple[float, float] | None:
    """The space's learning-rate range when it is a log-scale float range (what a sweep can narrow), else None."""
    parameter = space.parameters.get(LR_KEY)
    if isinstance(parameter, Float) and parameter.log and parameter.grid is None and parameter.when is None:
        return parameter.low, parameter.high
    return None


def run_lr_range_test(base: FinetuneConfig, space: SearchSpace, *, steps: int, run_dir: Path) -> LRRangeTest:
    """Sweep ``base`` over ``steps`` optimizer steps across ``space``'s learning-rate range widened 10x each
    way; read back from ``run_dir`` when an earlier invocation of the same search swept already."""
    done = run_dir / RESULT_FILE
    if done.is_file():
        return LRRangeTest.from_dict(json.loads(done.read_text()))
    low, high = space_lr_bounds(space)  # plan_search only plans a sweep for such a space
    rates = sweep_rates(low / SWEEP_BEYOND_SPACE, high * SWEEP_BEYOND_SPACE, steps)
    out = run_dir / "lr_range_test"
    config = base.with_overrides(
        {
            "training.max_steps": steps,
            "training.learning_rate": rates[0],
            "training.lr_scheduler_type": "constant",
            "training.warmup_ratio": 0.0,
            "training.warmup_steps": 0,
            "training.logging_steps": 1,
            "training.eval_steps": steps,  # one validation pass (at the end), whatever the config says
            "training.eval_at_steps": None,
            "training.train_split_metrics": False,
            "data.max_generation_samples": None,
            "training.output_dir": str(out),
            "training.run_name": "lr_range_test",
        }
    )
    print(f"[hpo] LR range test: {steps} steps, LR {rates[0]:.3g} -> {rates[-1]:.3g}", file=sys.stderr, flush=True)
    sweep = ExponentialSweep(rates)
    started = time.perf_counter()
    try:
        run = finetune.train(config, callbacks=[sweep])
        ran, breakdown = run.optimizer_steps, run.time_breakdown
    except TrainingError:  # a NaN loss at the top of the sweep: the steps before it are the reading
        ran, breakdown = len(sweep.points), {"training": round(time.perf_counter() - started, 3)}
    finally:
        release_memory()
    shutil.rmtree(out, ignore_errors=True)  # nothing in it is a candidate
    test = LRRangeTest(ran, sweep.points, read_sweep(sweep.points), summed([breakdown]))
    run_dir.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(test.to_dict(), indent=2))
    print(f"[hpo] LR range test: {test.reading.reason}", file=sys.stderr, flush=True)
    return test


def placed_space(space: SearchSpace, reading: LRRangeReading) -> SearchSpace:
    """``space`` with its learning-rate range replaced by the one the sweep read (unchanged when it read none)."""
    if not reading.placed:
        return space
    return SearchSpace({**space.parameters, LR_KEY: Float(low=reading.low, high=reading.high, log=True)})
