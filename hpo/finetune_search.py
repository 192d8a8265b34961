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
from hpo.cross_validation import CvFolds, FoldReporter, cv_score, fold_config, resolve_folds
from hpo.default_spaces import default_space
from hpo.finetune_selection import follow_selection, select_finetune_winner
from hpo.optimize import PlannedTrial, ReplaceTrial, Reporter, optimize
from hpo.outputs import write_search_outputs
from hpo.rerun_budget import NOT_RUN_ATTR, RerunBudget
from hpo.results import SearchResult, TrialRecord
from hpo.selection import Selection, SelectionSettings, pick_candidates, trial_score
from hpo.shortening import SHORTENED_ATTR, longest_fitting
from hpo.space import (
    DERIVED_KEYS,
    EFFECTIVE_BATCH_SIZE,
    LORA_ALPHA_MULTIPLIER,
    SearchSpace,
    is_active,
    to_overrides,
)
from hpo.storage import redact
from hpo.trial_callback import ReportToTrial, broadcast, follow_trials
from hpo.trial_runner import train_trial, train_trial_in_subprocess

UNTUNED = "untuned"


@dataclass(frozen=True, kw_only=True)
class Objective:
    """What a trial is scored by: one metric, its direction, and the best or the last evaluation."""

    metric: str = "auto"  # accuracy, macro_f1, loss, perplexity... ("auto": accuracy or loss by task)
    direction: Literal["auto", "maximize", "minimize"] = "auto"
    use: Literal["best", "last"] = "best"
    # k-fold cross-validation instead of one validation split: k >= 2, "auto" (hpo.cross_validation) or null.
    cv_folds: CvFolds = "auto"

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
    selection: Selection | None = None  # how the winner was chosen (None: the best trial, no re-runs)


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
    selection: SelectionSettings | None = None,  # default: SelectionSettings()
    storage: str | None = None,
    study_name: str = "search",
    seed: int = 0,
    max_per_device_batch: int = 32,
    include_untuned: bool = True,
    isolation: Literal["none", "subprocess"] = "none",
    progress: bool = True,
    choose_winner: bool = True,
    heartbeat_seconds: int | None = None,
    also_tune: tuple[str, ...] | list[str] = (),
) -> FinetuneSearch | None:
    """Tune ``base`` (the user's untuned config). The untuned config is the first trial unless told otherwise.

    The budget is a Budget, or ``full_run_equivalents`` multiples of the untuned run's optimizer steps.
    The winner is chosen by hpo.selection: the top candidates are re-run with fresh seeds and the untuned
    config is kept unless beaten beyond the noise. Those re-runs are paid from the step budget, which is
    never exceeded: a trial starts only if the candidates' re-runs still fit after it (hpo.rerun_budget).
    Only the top candidates' models stay on disk; the winner's folder is returned.

    ``isolation="subprocess"`` trains each trial in its own process (GPU memory is fully returned).
    Under ``accelerate launch`` with several processes every process calls this: the main process runs
    the search and sends each trial's config to the others, which train with it and stop when told;
    they return None.

    Several workers may share one search through a database ``storage`` (``tunelab worker``): each calls
    this with ``choose_winner=False``; the run that reports (``tunelab run``) then chooses the winner.
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
    if space is not None and also_tune:
        raise ConfigError(
            f"search.also_tune={list(also_tune)} extends the default space; with search.space given, "
            "list those parameters in it instead"
        )
    space = space or default_space(
        base.method.name, base.model.task, also_tune=also_tune, from_scratch=base.model.init == "scratch"
    )
    metric, direction = objective.resolve(base.model.task)
    base_values = flatten(base)
    space.check_combinations(base_values)
    folds, folds_why = resolve_folds(objective.cv_folds, base)
    if folds is None:
        trial_rows = len(load_splits(base.data).train)
    else:  # the unit of the budget is the untuned trial: all its folds
        trial_rows = len(load_splits(fold_config(base, folds, 0, "unused").data).train)
    run_steps = planned_steps(base, trial_rows, world_size)
    full_run_steps = (folds or 1) * run_steps
    selection = selection or SelectionSettings()
    if not include_untuned:
        selection = SelectionSettings(top_k=selection.top_k, seeds=0)  # nothing to keep unless beaten
    if full_run_equivalents is not None:
        selection.check_budget(full_run_equivalents)
        budget = Budget.from_full_runs(
            full_run_equivalents,
            full_run_steps,
            trials=budget.trials if budget else None,
            wall_seconds=budget.wall_seconds if budget else None,
        )
    elif budget is not None and budget.steps is not None and selection.enabled:
        selection.check_budget(budget.steps / full_run_steps)
    if budget is None:
        raise ConfigError("search.budget: give a budget (trials, steps, wall_seconds) or full_run_equivalents")
    # Evaluations every rung unit: SHA/Hyperband rungs (min_steps x 3^k) then always fall on an evaluation.
    min_steps = max(1, round(run_steps / 9))
    # Trials and their re-runs are scored on validation only: the train-split metrics are not measured.
    search_evaluations = {"training.eval_steps": min_steps, "training.train_split_metrics": False}
    total_steps = budget.steps
    rerun_budget = None
    if selection.enabled and total_steps is not None:
        rerun_budget = RerunBudget(
            total_steps=total_steps,
            full_run_steps=full_run_steps,
            top_k=selection.top_k,
            seeds=selection.seeds,
            baseline_role=UNTUNED,
            shortest_useful_steps=min_steps,
        )
        budget = Budget(trials=budget.trials, steps=rerun_budget.exploration_steps(), wall_seconds=budget.wall_seconds)
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
        if selection.enabled and choose_winner:
            follow_selection(run_dir / "selection", metric, objective.use, direction)  # folds: candidates.json
        return None

    def train_one(config: FinetuneConfig, trial_reporter: Reporter | FoldReporter):
        if sync:
            broadcast(config.to_dict())
        try:
            if isolation == "subprocess":
                return train_trial_in_subprocess(config, trial_reporter, metric)
            return train_trial(config, ReportToTrial(trial_reporter, metric, sync=sync))
        finally:
            gc.collect()  # the trial's model and optimizer go before the next trial starts
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def run_trial(params: dict[str, Any], reporter: Reporter) -> float:
        number = reporter.trial.number
        untuned = reporter.trial.user_attrs.get("role") == UNTUNED
        overrides = {} if untuned else to_overrides(params, base_values, max_per_device_batch, world_size)
        overrides.update({"training.output_dir": str(trials_dir / f"trial_{number:04d}"), **search_evaluations})
        config = base.with_overrides(overrides)
        if rerun_budget is not None and not untuned:  # the untuned run is the baseline: always run
            admit_or_shorten(params, config, reporter)
        if folds is not None:
            return run_cv_trial(config, reporter)
        result = train_one(config, reporter)
        reporter.trial.set_user_attr("checkpoint", result.best_checkpoint)
        reporter.trial.set_user_attr("optimizer_steps", result.optimizer_steps)
        reporter.trial.set_user_attr("planned_steps", result.planned_steps)
        values = [value for _, value in reporter.values]
        if not values:
            raise ConfigError(f"trial {number}: no evaluation reported {metric}")
        return trial_score(values, objective.use, direction)

    def trial_length(config: FinetuneConfig) -> int:
        return (folds or 1) * planned_steps(config, trial_rows, world_size)

    def admit_or_shorten(params: dict[str, Any], config: FinetuneConfig, reporter: Reporter) -> None:
        """Start the trial if its re-runs fit; else run its longest shorter variant that fits instead
        (hpo.shortening); else not at all (rerun_budget.admit raises)."""
        so_far, length = reporter.search_so_far(), trial_length(config)
        if not rerun_budget.fits(so_far, length) and sampler != "grid":  # a grid runs its own points only
            shorter = longest_fitting(
                params,
                space,
                length=lambda variant: trial_length(
                    base.with_overrides(to_overrides(variant, base_values, max_per_device_batch, world_size))
                ),
                fits=lambda steps: rerun_budget.fits(so_far, steps),
            )
            if shorter is not None:
                variant, steps = shorter
                changed = {k: params[k] for k in variant if variant[k] != params[k]}
                why = f"proposed {changed} ({length} steps): its re-runs would not fit; {steps} steps do"
                raise ReplaceTrial(variant, {SHORTENED_ATTR: why})
        rerun_budget.admit(so_far, length, reporter.trial)

    def run_cv_trial(config: FinetuneConfig, reporter: Reporter) -> float:
        """Fold after fold until done or stopped; the score is the mean of the folds' scores."""
        curves: list[list[tuple[int, float]]] = [[] for _ in range(folds)]
        offset, scores = 0, []
        for fold in range(folds):
            out = Path(config.training.output_dir) / f"fold_{fold}"
            result = train_one(fold_config(config, folds, fold, str(out)), FoldReporter(reporter, offset, curves, fold))
            offset += result.optimizer_steps
            if processes.is_main_process:
                shutil.rmtree(out, ignore_errors=True)  # a fold's model is not a candidate: only its score counts
            if reporter.stop_reason:
                break
            if not curves[fold]:
                raise ConfigError(f"trial {reporter.trial.number}, fold {fold}: no evaluation reported {metric}")
            scores.append(trial_score([value for _, value in curves[fold]], objective.use, direction))
        reporter.trial.set_user_attr("optimizer_steps", offset)
        if not scores:
            return float("nan")  # stopped during the first fold: the trial is pruned
        score = cv_score(scores, offset)
        reporter.trial.set_user_attr("cv_fold_scores", score.fold_scores)
        reporter.trial.set_user_attr("cv_std", score.std)
        return score.mean

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
            on_trial_end=lambda r: keep_top_checkpoints(r, max(1, selection.top_k)),
            heartbeat_seconds=heartbeat_seconds,
        )
    finally:
        if sync:
            broadcast(None)  # followers stop waiting for trials

    def config_of(trial: TrialRecord) -> FinetuneConfig:
        if trial.extra.get("role") == UNTUNED:
            return base
        return base.with_overrides(to_overrides(trial.params, base_values, max_per_device_batch, world_size))

    chosen, best = None, result.best_trial
    if selection.enabled and choose_winner:
        if rerun_budget is not None:
            picked = rerun_budget.candidates(result)
        else:
            picked = pick_candidates(result, selection.top_k, UNTUNED)
        chosen = select_finetune_winner(
            result,
            # Re-runs evaluate on the search's schedule, so "best" means the same as in the search.
            {t.number: config_of(t).with_overrides(search_evaluations) for t in picked},
            folder=run_dir / "selection",
            settings=selection,
            metric=metric,
            use=objective.use,
            direction=direction,
            baseline_role=UNTUNED,
            folds=folds,
        )
        best = next(t for t in result.trials if t.number == chosen.winner)
    best_config = config_of(best)
    checkpoint = best.extra.get("checkpoint")
    search = FinetuneSearch(
        result=result,
        best_config=best_config,
        best_checkpoint=checkpoint if checkpoint and Path(checkpoint).exists() else None,
        full_run_steps=full_run_steps,
        metric=metric,
        run_dir=str(run_dir),
        selection=chosen,
    )
    summary = {
        "study_name": study_name,
        "storage": redact(storage),
        "metric": metric,
        "use": objective.use,
        "sampler": sampler,
        "scheduler": scheduler,
        "full_run_steps": full_run_steps,
        "cross_validation_folds": folds,
        "validation": folds_why,
        "full_run_equivalents_spent": (result.steps_spent + (chosen.steps if chosen else 0)) / full_run_steps,
        # The whole step budget (exploration + selection re-runs) in full runs; None without a step budget.
        "full_run_equivalents_budget": None if total_steps is None else total_steps / full_run_steps,
        "exploration_steps": result.steps_spent,
        # Trials the sampler proposed that were not run: their re-runs would not have fit the budget.
        "trials_not_run": sum(bool(t.extra.get(NOT_RUN_ATTR)) for t in result.trials),
        # Trials that ran shorter than proposed (fewer epochs or a larger batch) so their re-runs would fit.
        "trials_shortened": sum(bool(t.extra.get(SHORTENED_ATTR)) for t in result.trials),
        "selection": chosen.to_dict() if chosen else None,
        "winner_trial": best.number,
        "winner_role": best.extra.get("role"),
        "best_checkpoint": search.best_checkpoint,
        "space": space.to_dict(),
        "budget": asdict(budget),
    }
    write_search_outputs(result, run_dir, best_config=best_config, extra=summary)
    return search


def keep_top_checkpoints(result: SearchResult, keep: int) -> None:
    """Delete every trial's saved model except the ``keep`` best complete trials' and the untuned one's
    (selection may pick any of them): disk stays bounded."""
    if _has_untuned(result):
        kept = {t.number for t in pick_candidates(result, keep, UNTUNED)}
    else:
        kept = {t.number for t in result.ranked()[:keep]}
    for trial in result.trials:
        path = trial.extra.get("checkpoint")
        if path and trial.number not in kept and trial.state != "RUNNING" and Path(path).exists():
            shutil.rmtree(path, ignore_errors=True)


def _has_untuned(result: SearchResult) -> bool:
    return any(t.extra.get("role") == UNTUNED for t in result.trials)


def flatten(config: FinetuneConfig) -> dict[str, Any]:
    """{"training.learning_rate": 5e-5, ...}: the dotted values conditions and untuned params read."""
    return {f"{section}.{key}": value for section, values in config.to_dict().items() for key, value in values.items()}


def untuned_params(space: SearchSpace, base_values: dict[str, Any]) -> dict[str, Any]:
    """The untuned config expressed in the space's keys (for the trials table and for enqueueing)."""
    params = {}
    for key, parameter in space.parameters.items():
        if not is_active(parameter.when, params, base_values):
            continue  # e.g. the MLP head's width when the untuned head is linear
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
