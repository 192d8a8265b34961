"""TrialObjective: what one trial of a fine-tune search runs, given its sampled params and its Reporter.

The untuned trial runs the base config as it is; any other trial runs the base config with the sampled
params as overrides: a sampled one with fewer optimizer steps than the plan's floor at a smaller effective
batch (the same rows, so the same budget steps), then once admitted under the step budget
(hpo.finetune.admission: run as proposed, run shortened, or not at all). Then one training run, or k runs
on k folds, reporting each evaluation. Warm-start trials (the field's recipes) run as written, a per-device
batch over search.max_per_device_batch accumulated (hpo.finetune.config_space.trial_config).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import finetune
from finetune import FinetuneConfig
from finetune.errors import ConfigError
from hpo import attributes
from hpo.errors import ReplaceTrial
from hpo.finetune.admission import longest_fitting, shortens_now
from hpo.finetune.config_space import EFFECTIVE_BATCH_SIZE, trial_config
from hpo.finetune.cross_validation import FoldReporter, cv_score, fold_config
from hpo.finetune.plan import SearchPlan
from hpo.finetune.settings import SearchSettings
from hpo.finetune.time_spent import add_run_time
from hpo.finetune.trial_training import (
    ReportToTrial,
    broadcast,
    release_memory,
    train_trial,
    train_trial_in_subprocess,
)
from hpo.reporter import Reporter
from hpo.results import TrialRecord
from hpo.space import finite_values


class TrialObjective:
    """Called by hpo.optimize as objective(params, reporter) -> the trial's score."""

    def __init__(self, base: FinetuneConfig, settings: SearchSettings, plan: SearchPlan, *, trials_dir: Path):
        self.base, self.settings, self.plan = base, settings, plan
        self.trials_dir = trials_dir
        self.sync = plan.world_size > 1  # other processes train every trial with the main process
        self.run_seconds = 0.0  # time spent in training runs by this process (the rest: between runs)

    def __call__(self, params: dict[str, Any], reporter: Reporter) -> float:
        number, role = reporter.trial.number, reporter.trial.user_attrs.get(attributes.ROLE)
        untuned = role == attributes.UNTUNED
        config = self.base if untuned else self.config_for(params)
        if role not in (attributes.UNTUNED, attributes.WARM_START):
            self._enough_optimizer_steps(params, config)
        name = f"trial_{number:04d}"  # its folder, and its run's name in an experiment tracker
        overrides = {"training.output_dir": str(self.trials_dir / name), "training.run_name": name}
        config = config.with_overrides({**overrides, **self.plan.search_evaluations(config)})
        if self.plan.rerun_budget is not None and not untuned:  # the untuned run is the baseline: always run
            self._admit_or_shorten(params, config, reporter)
        if self.plan.scoring.folds is not None:
            return self._run_folds(config, reporter)
        result = self._train(config, reporter)
        reporter.trial.set_user_attr(attributes.CHECKPOINT, result.best_checkpoint)
        reporter.trial.set_user_attr(attributes.OPTIMIZER_STEPS, result.optimizer_steps)
        reporter.trial.set_user_attr(attributes.PLANNED_STEPS, self.plan.budget_steps(config, result.planned_steps))
        values = [value for _, value in reporter.values]
        if not values:
            raise ConfigError(f"trial {number}: no evaluation reported {self.plan.scoring.metric}")
        return self.plan.scoring.score(values)

    def config_for(self, params: dict[str, Any]) -> FinetuneConfig:
        """The base config with sampled ``params`` (derived keys, e.g. the effective batch, made config keys)."""
        return trial_config(self.base, params, self.plan, self.settings)

    def config_of(self, trial: TrialRecord) -> FinetuneConfig:
        """The config a finished trial ran (the base config itself for the untuned trial)."""
        return self.base if trial.extra.get(attributes.ROLE) == attributes.UNTUNED else self.config_for(trial.params)

    def _enough_optimizer_steps(self, params: dict[str, Any], config: FinetuneConfig) -> None:
        """Return if ``config`` takes at least the plan's floor of optimizer steps, or cannot take more by a
        smaller batch; else run the largest smaller batch of the space that reaches the floor (the smallest if
        none does) instead (ReplaceTrial): the same rows, so the same budget steps."""
        floor, steps = self.plan.min_trial_optimizer_steps, self.plan.optimizer_steps(config)
        parameter = self.plan.space.parameters.get(EFFECTIVE_BATCH_SIZE)
        if steps >= floor or parameter is None or EFFECTIVE_BATCH_SIZE not in params:
            return
        proposed = params[EFFECTIVE_BATCH_SIZE]
        smaller = sorted((b for b in finite_values(parameter) or () if b < proposed), reverse=True)
        variant, more = None, steps
        for batch in smaller:  # largest first
            variant = {**params, EFFECTIVE_BATCH_SIZE: batch}
            more = self.plan.optimizer_steps(self.config_for(variant))
            if more >= floor:
                break
        if variant is not None:
            why = (
                f"proposed effective batch {proposed} ({steps} optimizer steps, under the floor of {floor}); "
                f"batch {variant[EFFECTIVE_BATCH_SIZE]} takes {more}"
            )
            raise ReplaceTrial(variant, {attributes.BATCH_LOWERED: why})

    def _admit_or_shorten(self, params: dict[str, Any], config: FinetuneConfig, reporter: Reporter) -> None:
        """Start the trial if its re-runs fit; else run its longest shorter variant that fits instead (of at
        least the plan's shortest_trial_steps) if it may be shortened now (shortens_now); else not at all
        (RerunBudget.admit raises)."""
        rerun_budget, so_far, trial = self.plan.rerun_budget, reporter.search_so_far(), reporter.trial
        length = self.plan.trial_length(config)
        if not rerun_budget.fits(so_far, length) and shortens_now(rerun_budget, trial, self.settings.sampler):
            shorter = longest_fitting(
                params,
                self.plan.space,
                length=lambda variant: self.plan.trial_length(self.config_for(variant)),
                fits=lambda steps: rerun_budget.fits(so_far, steps),
                shortest=self.plan.shortest_trial_steps,
            )
            if shorter is not None:
                variant, steps = shorter
                changed = {k: params[k] for k in variant if variant[k] != params[k]}
                why = f"proposed {changed} ({length} steps): its re-runs would not fit; {steps} steps do"
                raise ReplaceTrial(variant, {attributes.SHORTENED: why})
        rerun_budget.admit(so_far, length, trial)

    def _train(self, config: FinetuneConfig, reporter: Reporter | FoldReporter) -> finetune.RunResult:
        if self.sync:
            broadcast(config.to_dict())
        started, metric, work = time.perf_counter(), self.plan.scoring.metric, self.plan.work_per_step(config)
        try:
            if self.settings.isolation == "subprocess":
                result = train_trial_in_subprocess(config, reporter, metric, work_per_step=work)
            else:
                result = train_trial(config, ReportToTrial(reporter, metric, sync=self.sync, work_per_step=work))
        finally:
            release_memory()  # the trial's model and optimizer go before the next trial starts
            self.run_seconds += time.perf_counter() - started
        add_run_time(reporter.trial, result.time_breakdown)
        return result

    def _run_folds(self, config: FinetuneConfig, reporter: Reporter) -> float:
        """Fold after fold until done or stopped; the score is the mean of the folds' scores."""
        folds = self.plan.scoring.folds
        curves: list[list[tuple[int, float]]] = [[] for _ in range(folds)]
        loss_curves: list[list[tuple[int, float]]] = [[] for _ in range(folds)]
        offset, optimizer_steps, scores = 0, 0, []  # offset: budget steps so far (the folds' curves join there)
        for fold in range(folds):
            out = Path(config.training.output_dir) / f"fold_{fold}"
            result = self._train(
                fold_config(config, folds, fold, str(out)), FoldReporter(reporter, offset, curves, fold, loss_curves)
            )
            offset += self.plan.budget_steps(config, result.optimizer_steps)
            optimizer_steps += result.optimizer_steps
            shutil.rmtree(out, ignore_errors=True)  # a fold's model is not a candidate: only its score counts
            if reporter.stop_reason:
                break
            if not curves[fold]:
                metric = self.plan.scoring.metric
                raise ConfigError(f"trial {reporter.trial.number}, fold {fold}: no evaluation reported {metric}")
            scores.append(self.plan.scoring.score([value for _, value in curves[fold]]))
        reporter.trial.set_user_attr(attributes.OPTIMIZER_STEPS, optimizer_steps)
        if not scores:
            return float("nan")  # stopped during the first fold: the trial is pruned
        score = cv_score(scores, offset)
        reporter.trial.set_user_attr(attributes.CV_FOLD_SCORES, score.fold_scores)
        reporter.trial.set_user_attr(attributes.CV_STD, score.std)
        return score.mean
