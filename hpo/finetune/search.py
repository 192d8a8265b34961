"""search_finetune: tune the hyperparameters of a fine-tune; each trial is one finetune.train run.

Read it as a recipe: plan, place the learning rate, explore, choose the winner, write the results. The
untuned config is the first trial and the baseline: the winner is the untuned config unless a candidate
beats it beyond the noise over fresh seeds (hpo.winner_rule), and those re-runs are paid from the same step
budget as the exploration, which is never exceeded (hpo.finetune.admission); so is the LR sweep.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from finetune import FinetuneConfig
from finetune.train import process_state
from hpo import attributes
from hpo.finetune.admission import rerun_steps
from hpo.finetune.config_space import untuned_params
from hpo.finetune.lr_range_test import LRRangeTest, placed_space, run_lr_range_test
from hpo.finetune.objective import TrialObjective
from hpo.finetune.plan import SearchPlan, plan_search
from hpo.finetune.reruns import follow_selection, select_finetune_winner
from hpo.finetune.settings import SearchSettings
from hpo.finetune.time_spent import search_time_breakdown
from hpo.finetune.trial_training import broadcast, follow_trials, train_trial
from hpo.finetune.warm_start import warm_start_params, within_share
from hpo.optimize import PlannedTrial, StudySettings, optimize
from hpo.rerank_winner import rerank_candidates
from hpo.result_files import write_search_outputs
from hpo.results import SearchResult, counted_once
from hpo.storage import redact
from hpo.winner_rule import Selection, pick_candidates


@dataclass
class FinetuneSearch:
    result: SearchResult
    best_config: FinetuneConfig
    best_checkpoint: str | None
    full_run_steps: int  # optimizer steps of the untuned run: the unit of "full-run equivalents"
    metric: str
    run_dir: str
    selection: Selection | None = None  # how the winner was chosen (None: the best trial, no re-runs)
    lr_range_test: LRRangeTest | None = None  # the LR sweep before the first trial (None: none ran)

    @property
    def steps_spent(self) -> int:
        """Optimizer steps of the whole search: the LR sweep, the trials and the selection re-runs."""
        swept = self.lr_range_test.steps if self.lr_range_test else 0
        return swept + self.result.steps_spent + (self.selection.steps if self.selection else 0)


def search_finetune(
    base: FinetuneConfig,
    settings: SearchSettings | None = None,
    *,
    run_dir: str | Path,
    plan: SearchPlan | None = None,
    keep_untuned_reruns: bool = False,
    steps_after_search: int = 0,
) -> FinetuneSearch | None:
    """Tune ``base`` (the user's untuned config) as ``settings`` say; results go to ``run_dir``.

    Under ``accelerate launch`` with several processes every process calls this: the main process runs
    the search and sends each trial's config to the others, which train with it; they return None.
    Several workers may share one search through a database (settings.storage, ``tunelab worker``): each
    calls this with settings.choose_winner False; the run that reports then chooses the winner.
    ``plan``: plan_search(base, settings) when the caller has made it already (`tunelab run` does).
    ``keep_untuned_reruns``: the untuned config's re-runs keep their model and measure the train-split
    metrics as ``base`` says (`tunelab run` tests them as untuned-arm seeds; reruns.kept_reruns finds them).
    ``steps_after_search``: steps the caller trains afterwards (`tunelab run`'s retrains); the progress
    line's ETA covers them and the re-runs.
    """
    settings = settings or SearchSettings()
    run_dir = Path(run_dir)
    started = time.perf_counter()
    processes = process_state()
    # 1. Plan: space, metric, folds, the untuned run's length, the budgets. Nothing trains yet.
    plan = plan or plan_search(base, settings, world_size=processes.num_processes)
    choose = plan.selection.enabled and settings.choose_winner
    # 2. The other processes of a multi-process launch train what the main process sends them.
    if not processes.is_main_process:
        follow_trials(lambda raw, callback: train_trial(FinetuneConfig.from_dict(raw), callback), plan.scoring.metric)
        if choose:
            follow_selection(run_dir / "selection")
        return None
    # 3. Place the learning rate: a short LR sweep of the untuned config sets the space's LR range.
    sweep, sweep_seconds = None, 0.0
    if plan.lr_range_steps:
        sweep_started = time.perf_counter()
        sweep = run_lr_range_test(base, plan.space, steps=plan.lr_range_steps, run_dir=run_dir)
        sweep_seconds = time.perf_counter() - sweep_started  # a run: not "between runs" (about 0 when read back)
        plan = replace(plan, space=placed_space(plan.space, sweep.reading))
    # 4. Explore: the untuned config first, then the sampler's proposals, until the budget is spent.
    #    The study is a journal in the run folder unless a database is given: running again resumes it.
    objective = TrialObjective(base, settings, plan, trials_dir=run_dir / "trials")
    storage = settings.storage or str(run_dir / "study.journal")
    reserve = plan.rerun_budget.planned_reserve_steps() if plan.rerun_budget else 0
    study = _study_settings(settings, plan, storage, steps_after=reserve + steps_after_search)
    result = _explore(objective, plan, study)
    # 5. Choose the winner: the top candidates re-run with fresh seeds, the untuned one kept unless beaten.
    chosen, best, run_seconds = None, result.best_trial, sweep_seconds + objective.run_seconds
    if choose:
        if plan.rerun_budget:
            picked = plan.rerun_budget.candidates(result)
        elif plan.selection.rerank:
            picked = rerank_candidates(result, plan.selection.candidates)
        else:
            picked = pick_candidates(result, plan.selection.candidates)
        # Re-runs evaluate on the search's schedule, so "best" means the same as in the search.
        configs = {t.number: objective.config_of(t) for t in picked}
        configs = {number: c.with_overrides(plan.search_evaluations(c)) for number, c in configs.items()}
        untuned = [t.number for t in picked if t.extra.get(attributes.ROLE) == attributes.UNTUNED]
        kept = untuned if keep_untuned_reruns and not plan.selection.rerank else []
        for number in kept:  # measured, not selected on: the fit diagnosis of the untuned arm reads them
            configs[number] = configs[number].with_overrides(
                {"training.train_split_metrics": base.training.train_split_metrics}
            )
        selection_started = time.perf_counter()
        chosen = select_finetune_winner(
            result,
            configs,
            folder=run_dir / "selection",
            selection=plan.selection,
            scoring=plan.scoring,
            search_seed=settings.seed,
            keep_models=kept,
            steps_left=None if plan.total_steps is None else plan.total_steps - result.steps_spent,
            rerun_length=lambda record: rerun_steps([record], 1, plan.full_run_steps),
            constant_prediction=plan.constant_prediction,
            budget_steps=plan.budget_steps,
        )
        run_seconds += time.perf_counter() - selection_started
        best = next(t for t in result.trials if t.number == chosen.winner)
    # 6. Write the trials table, the summary and the winner's config.
    checkpoint = best.extra.get(attributes.CHECKPOINT)
    search = FinetuneSearch(
        result=result,
        best_config=objective.config_of(best),
        best_checkpoint=checkpoint if checkpoint and Path(checkpoint).exists() else None,
        full_run_steps=plan.full_run_steps,
        metric=plan.scoring.metric,
        run_dir=str(run_dir),
        selection=chosen,
        lr_range_test=sweep,
    )
    summary = _summary(search, best.number, plan, settings, storage)
    summary["time_breakdown"] = search_time_breakdown(
        result, run_dir / "selection", wall_seconds=time.perf_counter() - started, run_seconds=run_seconds
    )
    if sweep is not None:
        summary["time_breakdown"]["lr_range_test"] = sweep.time_breakdown
    write_search_outputs(result, run_dir, best_config=search.best_config, extra=summary)
    return search


def _study_settings(settings: SearchSettings, plan: SearchPlan, storage: str, *, steps_after: int) -> StudySettings:
    return StudySettings(
        sampler=settings.sampler,
        scheduler=settings.scheduler,
        direction=plan.scoring.direction,
        seed=settings.seed,
        storage=storage,
        study_name=settings.study_name,
        min_steps=plan.min_steps,
        heartbeat_seconds=settings.heartbeat_seconds,
        progress=settings.progress,
        steps_after=steps_after,
        rung_signal=plan.rung_signal,
    )


def _explore(objective: TrialObjective, plan: SearchPlan, study: StudySettings) -> SearchResult:
    untuned = PlannedTrial(untuned_params(plan.space, plan.base_values), role=attributes.UNTUNED)
    warm = [
        PlannedTrial(warm_start_params(plan.space, objective.base, overrides), role=attributes.WARM_START)
        for overrides in kept_warm_start(objective.settings, plan, objective.base)
    ]
    try:
        return optimize(
            objective,
            plan.space,
            budget=plan.budget,
            settings=study,
            base=plan.base_values,
            first_params=([untuned] if objective.settings.include_untuned else []) + warm,
            on_trial_end=lambda result: keep_top_checkpoints(result, max(1, plan.selection.candidates)),
        )
    finally:
        if objective.sync:
            broadcast(None)  # followers stop waiting for trials


@dataclass(frozen=True)
class WarmStartPlan:
    """search.warm_start as the search tries it: each configuration's name and budget steps as a trial, and
    the indices of those kept within search.warm_start_share of the steps to explore."""

    names: list[str]
    lengths: list[int]
    kept: list[int]

    @property
    def kept_names(self) -> list[str]:
        return [self.names[i] for i in self.kept]

    @property
    def kept_steps(self) -> int:
        return sum(self.lengths[i] for i in self.kept)

    @property
    def left_out(self) -> dict[str, int]:
        """Name -> budget steps of each configuration left out."""
        return {self.names[i]: self.lengths[i] for i in range(len(self.names)) if i not in self.kept}


def plan_warm_start(settings: SearchSettings, plan: SearchPlan, base: FinetuneConfig) -> WarmStartPlan:
    """What the search's warm start tries and leaves out (`tunelab check` reports the same)."""
    lengths = [plan.trial_length(base.with_overrides(overrides)) for overrides in settings.warm_start]
    return WarmStartPlan(
        names=[settings.warm_start_name(i) for i in range(len(lengths))],
        lengths=lengths,
        kept=within_share(lengths, plan.planned_exploration_steps, settings.warm_start_share),
    )


def left_out_text(left_out: dict[str, int]) -> str:
    return ", ".join(f"{name} ({steps} steps)" for name, steps in left_out.items())


def kept_warm_start(settings: SearchSettings, plan: SearchPlan, base: FinetuneConfig) -> list[dict[str, Any]]:
    """search.warm_start within search.warm_start_share of the steps to explore; says what it leaves out."""
    warm = plan_warm_start(settings, plan, base)
    if warm.left_out and settings.progress:
        print(
            f"[hpo] warm start: left out {left_out_text(warm.left_out)}: the warm start takes at most "
            f"{settings.warm_start_share:g} of the {plan.planned_exploration_steps} steps to explore "
            "(search.warm_start_share)"
        )
    return [settings.warm_start[i] for i in warm.kept]


def _summary(
    search: FinetuneSearch, winner: int, plan: SearchPlan, settings: SearchSettings, storage: str
) -> dict[str, Any]:
    """summary.json's keys beyond the generic ones (hpo.result_files)."""
    result, chosen, sweep = search.result, search.selection, search.lr_range_test
    winner_trial = next(t for t in result.trials if t.number == winner)
    trials = counted_once(result.trials)
    return {
        "study_name": settings.study_name,
        "storage": redact(storage),
        "metric": plan.scoring.metric,
        "use": plan.scoring.use,
        "sampler": settings.sampler,
        "scheduler": settings.scheduler,
        "full_run_steps": plan.full_run_steps,
        "cross_validation_folds": plan.scoring.folds,
        "validation": plan.validation,
        "full_run_equivalents_spent": search.steps_spent / plan.full_run_steps,
        # The whole step budget (LR sweep + exploration + selection re-runs) in full runs; None without one.
        "full_run_equivalents_budget": None
        if plan.total_steps is None
        else (plan.lr_range_steps + plan.total_steps) / plan.full_run_steps,
        "exploration_steps": result.steps_spent,
        # Trials the sampler proposed that were not run: their re-runs would not have fit the budget.
        "trials_not_run": sum(bool(t.extra.get(attributes.NOT_RUN)) for t in trials),
        # Trials that ran shorter than proposed (fewer epochs) so their re-runs would fit.
        "trials_shortened": sum(bool(t.extra.get(attributes.SHORTENED)) for t in trials),
        # Trials that ran at a smaller batch than proposed, to take at least plan.min_trial_optimizer_steps.
        "trials_batch_lowered": sum(bool(t.extra.get(attributes.BATCH_LOWERED)) for t in trials),
        "selection": chosen.to_dict() if chosen else None,
        # The LR sweep: its steps, and the range it set (reading.low/high; None: the space's range kept).
        "lr_range_test": {"steps": sweep.steps, "reading": asdict(sweep.reading)} if sweep else None,
        "selection_settings": asdict(plan.selection),
        "winner_trial": winner,
        "winner_role": winner_trial.extra.get(attributes.ROLE),
        "best_checkpoint": search.best_checkpoint,
        "space": plan.space.to_dict(),
        "budget": asdict(plan.budget),
    }


def keep_top_checkpoints(result: SearchResult, keep: int) -> None:
    """Delete every trial's saved model except the ``keep`` best complete trials' and the untuned one's
    (selection may pick any of them): disk stays bounded."""
    if any(t.extra.get(attributes.ROLE) == attributes.UNTUNED for t in result.trials):
        kept = {t.number for t in pick_candidates(result, keep)}
    else:
        kept = {t.number for t in result.ranked()[:keep]}
    for trial in result.trials:
        path = trial.extra.get(attributes.CHECKPOINT)
        if path and trial.number not in kept and trial.state != "RUNNING" and Path(path).exists():
            shutil.rmtree(path, ignore_errors=True)
