"""Search the hyperparameters of a fine-tune: each trial is one finetune.train run, reported to hpo.optimize."""

from __future__ import annotations

import gc
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from finetune import FinetuneConfig
from finetune.data import load_splits
from finetune.errors import ConfigError
from finetune.train import planned_steps, process_state
from hpo.budget import Budget
from hpo.default_spaces import default_space
from hpo.optimize import PlannedTrial, Reporter, optimize
from hpo.outputs import write_search_outputs
from hpo.results import SearchResult
from hpo.space import DERIVED_KEYS, EFFECTIVE_BATCH_SIZE, LORA_ALPHA_MULTIPLIER, SearchSpace, to_overrides
from hpo.trial_callback import ReportToTrial, broadcast, follow_trials
from hpo.trial_runner import train_trial, train_trial_in_subprocess

UNTUNED = "untuned"


@dataclass(frozen=True, kw_only=True)
class Objective:
    """What a trial is scored by: one metric, its direction, and the best or the last evaluation."""

    metric: str = "auto"  # accuracy, macro_f1, loss, perplexity... ("auto": accuracy or loss by task)
    direction: Literal["auto", "maximize", "minimize"] = "auto"
    use: Literal["best", "last"] = "best"

    def resolve(self, task: str) -> tuple[str, str]:
        metric = self.metric if self.metric != "auto" else ("accuracy" if task == "classification" else "loss")
        key = metric if metric.startswith("eval_") else f"eval_{metric}"
        direction = self.direction
        if direction == "auto":
            direction = "minimize" if any(word in key for word in ("loss", "perplexity")) else "maximize"
        if self.use not in ("best", "last"):
            raise ConfigError(f"search.objective.use must be 'best' or 'last', got {self.use!r}")
        return key, direction


@dataclass
class FinetuneSearch:
    result: SearchResult
    best_config: FinetuneConfig
    best_checkpoint: str | None
    full_run_steps: int  # optimizer steps of the untuned run: the unit of "full-run equivalents"
    metric: str
    run_dir: str


def search_finetune(
    base: FinetuneConfig,
    *,
    run_dir: str | Path,
    space: SearchSpace | None = None,
    sampler: str = "tpe",
    scheduler: str = "hyperband",
    budget: Budget | None = None,
    full_run_equivalents: float | None = None,
    objective: Objective = Objective(),
    storage: str | None = None,
    study_name: str = "search",
    seed: int = 0,
    max_per_device_batch: int = 32,
    include_untuned: bool = True,
    isolation: Literal["none", "subprocess"] = "none",
    progress: bool = True,
) -> FinetuneSearch | None:
    """Tune ``base`` (the user's untuned config). The untuned config is the first trial unless told otherwise.

    The budget is a Budget, or ``full_run_equivalents`` multiples of the untuned run's optimizer steps.
    Only the best trial's model stays on disk; its folder is returned.

    ``isolation="subprocess"`` trains each trial in its own process (GPU memory is fully returned).
    Under ``accelerate launch`` with several processes every process calls this: the main process runs
    the search and sends each trial's config to the others, which train with it and stop when told;
    they return None.
    """
    processes = process_state()
    world_size, sync = processes.num_processes, processes.num_processes > 1
    if isolation not in ("none", "subprocess"):
        raise ConfigError(f"search.isolation must be 'none' or 'subprocess', got {isolation!r}")
    if isolation == "subprocess" and sync:
        raise ConfigError(
            "search.isolation='subprocess' runs one process per trial; under accelerate launch "
            "with several processes use isolation='none'"
        )
    run_dir = Path(run_dir)
    storage = storage or str(run_dir / "study.journal")  # in the run folder: re-running resumes
    space = space or default_space(base.method.name, base.model.task)
    metric, direction = objective.resolve(base.model.task)
    base_values = flatten(base)
    train_rows = len(load_splits(base.data).train)
    full_run_steps = planned_steps(base, train_rows, world_size)
    if full_run_equivalents is not None:
        budget = Budget.from_full_runs(
            full_run_equivalents,
            full_run_steps,
            trials=budget.trials if budget else None,
            wall_seconds=budget.wall_seconds if budget else None,
        )
    if budget is None:
        raise ConfigError("search.budget: give a budget (trials, steps, wall_seconds) or full_run_equivalents")
    # Evaluations every rung unit: SHA/Hyperband rungs (min_steps x 3^k) then always fall on an evaluation.
    min_steps = max(1, round(full_run_steps / 9))
    if sampler == "grid" and budget.steps is not None:
        grid = space.grid_size(base_values)
        if grid * full_run_steps > budget.steps * 3:
            raise ConfigError(
                f"search: the grid has {grid} points, about {grid * full_run_steps} steps at the "
                f"untuned run's length, far over the budget of {budget.steps} steps"
            )

    trials_dir = run_dir / "trials"
    if not processes.is_main_process:
        follow_trials(lambda raw, callback: train_trial(FinetuneConfig.from_dict(raw), callback), metric)
        return None

    def run_trial(params: dict[str, Any], reporter: Reporter) -> float:
        number = reporter.trial.number
        untuned = reporter.trial.user_attrs.get("role") == UNTUNED
        overrides = {} if untuned else to_overrides(params, base_values, max_per_device_batch, world_size)
        overrides.update(
            {"training.output_dir": str(trials_dir / f"trial_{number:04d}"), "training.eval_steps": min_steps}
        )
        config = base.with_overrides(overrides)
        if sync:
            broadcast(config.to_dict())
        try:
            if isolation == "subprocess":
                result = train_trial_in_subprocess(config, reporter, metric)
            else:
                result = train_trial(config, ReportToTrial(reporter, metric, sync=sync))
        finally:
            gc.collect()  # the trial's model and optimizer go before the next trial starts
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        reporter.trial.set_user_attr("checkpoint", result.best_checkpoint)
        reporter.trial.set_user_attr("optimizer_steps", result.optimizer_steps)
        reporter.trial.set_user_attr("planned_steps", result.planned_steps)
        values = [value for _, value in reporter.values]
        if not values:
            raise ConfigError(f"trial {number}: no evaluation reported {metric}")
        if objective.use == "last":
            return values[-1]
        return max(values) if direction == "maximize" else min(values)

    first = [PlannedTrial(untuned_params(space, base_values), role=UNTUNED)] if include_untuned else None
    try:
        result = optimize(
            run_trial,
            space,
            sampler=sampler,
            scheduler=scheduler,
            budget=budget,
            direction=direction,
            seed=seed,
            storage=storage,
            study_name=study_name,
            min_steps=min_steps,
            base=base_values,
            first_params=first,
            progress=progress,
            on_trial_end=keep_best_checkpoint,
        )
    finally:
        if sync:
            broadcast(None)  # followers stop waiting for trials
    best = result.best_trial
    best_config = (
        base
        if best.extra.get("role") == UNTUNED
        else base.with_overrides(to_overrides(best.params, base_values, max_per_device_batch, world_size))
    )
    search = FinetuneSearch(
        result=result,
        best_config=best_config,
        best_checkpoint=best.extra.get("checkpoint"),
        full_run_steps=full_run_steps,
        metric=metric,
        run_dir=str(run_dir),
    )
    summary = {
        "metric": metric,
        "use": objective.use,
        "sampler": sampler,
        "scheduler": scheduler,
        "full_run_steps": full_run_steps,
        "full_run_equivalents_spent": result.steps_spent / full_run_steps,
        "best_checkpoint": search.best_checkpoint,
        "space": space.to_dict(),
        "budget": asdict(budget),
    }
    write_search_outputs(result, run_dir, best_config=best_config, extra=summary)
    return search


def keep_best_checkpoint(result: SearchResult) -> None:
    """Delete every trial's saved model except the best complete trial's: disk stays bounded."""
    best = result.best_trial
    keep = best.extra.get("checkpoint") if best else None
    for trial in result.trials:
        path = trial.extra.get("checkpoint")
        if path and path != keep and trial.state != "RUNNING" and Path(path).exists():
            shutil.rmtree(path, ignore_errors=True)


def flatten(config: FinetuneConfig) -> dict[str, Any]:
    """{"training.learning_rate": 5e-5, ...}: the dotted values conditions and untuned params read."""
    return {f"{section}.{key}": value for section, values in config.to_dict().items() for key, value in values.items()}


def untuned_params(space: SearchSpace, base_values: dict[str, Any]) -> dict[str, Any]:
    """The untuned config expressed in the space's keys (for the trials table and for enqueueing)."""
    params = {}
    for key in space.parameters:
        if key == EFFECTIVE_BATCH_SIZE:
            params[key] = (
                base_values["training.per_device_train_batch_size"]
                * base_values["training.gradient_accumulation_steps"]
            )
        elif key == LORA_ALPHA_MULTIPLIER:
            ratio = base_values["method.lora_alpha"] / base_values["method.lora_r"]
            params[key] = int(ratio) if ratio.is_integer() else ratio
        elif key not in DERIVED_KEYS:
            params[key] = base_values[key]
    return params
