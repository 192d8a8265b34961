"""plan_search: everything a fine-tune search decides before its first trial, computed without training.

The space (given, or the method-aware default), what a trial is scored by, one validation split or k
folds, the untuned run's length (the unit of full-run equivalents), the evaluation interval (the first
rung of the schedulers) and the budgets: the whole step budget, and what of it exploration may spend
once the untuned run's re-runs are set aside (hpo.finetune.admission).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from finetune import FinetuneConfig
from finetune.data import load_splits
from finetune.errors import ConfigError
from finetune.inputs import check_inputs
from finetune.metrics import constant_prediction_metrics
from finetune.train import planned_steps
from hpo.budget import Budget
from hpo.finetune.admission import EPOCHS, SHORTENED_EVALUATIONS, RerunBudget, check_room_to_explore
from hpo.finetune.config_space import check_combinations, flatten
from hpo.finetune.cross_validation import fold_config, resolve_folds
from hpo.finetune.default_spaces import default_space
from hpo.finetune.lr_range_test import space_lr_bounds
from hpo.finetune.settings import SearchSettings
from hpo.rung_signal import RungSignal, rate_noise
from hpo.samplers import rung_steps
from hpo.space import SearchSpace, finite_values
from hpo.winner_rule import SelectionSettings, trial_score

# Objectives scored on generated answers (finetune.generate): trials then generate at each evaluation on
# the first data.max_generation_samples validation rows (GENERATION_SAMPLES when the config sets none).
GENERATION_METRICS = ("eval_exact_match", "eval_token_f1")
GENERATION_SAMPLES = 64
# Metrics that move smoothly from the first step: no rung signal needed (hpo.rung_signal).
SMOOTH_METRICS = ("eval_loss", "eval_perplexity")
# Rungs per untuned run: trials are evaluated every 1/9 of it, so the schedulers' rungs (1/9 x 3^k of a
# run, reduction factor 3) always fall on an evaluation.
EVALUATIONS_PER_RUN = 9
# The LR sweep: a third of one run, within these steps (fewer cannot be read through the loss noise).
LR_SWEEP_STEPS = (30, 100)
# evaluate_at: rungs without a step budget: rungs listed up to this many full runs (a longer trial evaluates
# at its last step only beyond them).
UNBUDGETED_RUNG_FULL_RUNS = 20
# Auto runs the sweep only where it costs at most half a run and, after it, the budget holds this many full
# runs (the untuned trial, its re-run and something to explore).
LR_SWEEP_MIN_FULL_RUNS = 3
# The floor on a sampled trial's optimizer steps (search.min_trial_optimizer_steps: auto): this share of the
# untuned run's steps, at most the cap. A run of a handful of AdamW steps is a few sign-like updates of about
# the learning rate each: its result follows the seed and the batches drawn. On sst2_words, 8-12-step trials
# (batch 32 on 128 rows) won searches within the validation noise and tested at 0.70-0.83 exact match across
# training seeds, where 32-48-step runs of the same learning rates tested at 0.82-0.87 (benchmarks/RESULTS.md).
# The cap keeps it from binding where data is plentiful (torchtune's LoRA recipes warm up for 100 steps).
TRIAL_STEP_FLOOR_SHARE = 1 / 3
TRIAL_STEP_FLOOR_CAP = 100


@dataclass(frozen=True)
class Scoring:
    """How a run is scored: the evaluation key, its direction, its best or last evaluation, and the folds."""

    metric: str  # e.g. "eval_accuracy"
    direction: str  # "maximize" or "minimize"
    use: str  # "best" or "last"
    folds: int | None  # k-fold cross-validation, or None: one validation split

    def score(self, values: list[float]) -> float:
        return trial_score(values, self.use, self.direction)


@dataclass(frozen=True)
class SearchPlan:
    space: SearchSpace
    base_values: dict[str, Any]  # the untuned config's dotted values (conditions and untuned params read them)
    scoring: Scoring
    validation: str  # one split or k folds, and why
    trial_rows: int  # training rows of one run (of one fold under cross-validation)
    world_size: int
    # Optimizer steps of the untuned run, all folds: the unit of full-run equivalents. Every length the budget
    # counts (trials, re-runs, rungs) is in steps of the untuned run's effective batch (work_per_step).
    full_run_steps: int
    min_steps: int  # evaluation interval and first rung
    # The shortest a trial may be shortened to, all folds: SHORTENED_EVALUATIONS of the untuned run's
    # EVALUATIONS_PER_RUN evaluation intervals, unrounded (a third of it): from the rounded interval, a
    # 60-step run's third (20 steps, one of its 3 epochs) would count as shorter than 3 x 7 = 21, and a
    # 2-epoch proposal that does not fit would be refused rather than run for 1 epoch.
    shortest_trial_steps: int
    total_steps: int | None  # the whole step budget: exploration and re-runs
    budget: Budget  # what exploration may spend
    rerun_budget: RerunBudget | None  # admission of trials (None: no re-runs, or no step budget)
    selection: SelectionSettings
    generation_samples: int | None = None  # validation rows generated on at each evaluation (None: none)
    rung_signal: RungSignal | None = None  # what the schedulers compare (None: the metric)
    # What a constant prediction scores on validation and that score's standard error over every validation
    # row: an untuned run there needs no re-run to be beaten (hpo.sequential_winner). None: not known.
    constant_prediction: RungSignal | None = None
    # Steps of the learning-rate sweep before the first trial (hpo.finetune.lr_range_test), set aside from
    # the budget: total_steps is what is left for trials and re-runs. 0: no sweep.
    lr_range_steps: int = 0
    # The steps trials and re-runs evaluate at (search.evaluate_at: rungs, and the last step); None: every
    # min_steps.
    evaluation_steps: tuple[int, ...] | None = None
    # The untuned run's effective batch per process (0: unknown, every step counts as one).
    base_batch: int = 0
    # A sampled trial's fewest optimizer steps (one fold's; 0: no floor): hpo.finetune.objective runs one
    # proposed with fewer at a smaller effective batch (trial_step_floor).
    min_trial_optimizer_steps: int = 0

    def work_per_step(self, config: FinetuneConfig) -> float:
        """Budget steps one optimizer step of ``config`` counts for: its effective batch over the untuned run's.
        A step of 4x the rows costs about 4x the time and has seen 4x the data by a given rung; counted as one,
        large-batch trials looked 4x cheaper to admission and ahead at every rung, and sst2_words searches of
        "4 full-run equivalents" trained 4.1 to 7.8 untuned runs' worth of rows (benchmarks/RESULTS.md)."""
        if not self.base_batch:
            return 1.0
        return config.training.effective_batch_size / self.base_batch

    def evaluation_schedule(self, config: FinetuneConfig) -> dict[str, Any]:
        """When ``config`` evaluates as a trial or re-run, as config overrides (runs compared with them use it
        too): every min_steps budget steps (or at the rungs), in its own optimizer steps."""
        scale = self.work_per_step(config)
        if self.evaluation_steps:
            at = sorted({max(1, math.ceil(step / scale - 1e-9)) for step in self.evaluation_steps})
            return {"training.eval_steps": None, "training.eval_at_steps": at}
        return {"training.eval_steps": max(1, round(self.min_steps / scale)), "training.eval_at_steps": None}

    def search_evaluations(self, config: FinetuneConfig) -> dict[str, Any]:
        """Overrides of ``config`` as a trial or re-run: evaluations on the search's schedule, scored on
        validation only (and generated answers on a fixed subset when the objective needs them)."""
        overrides = {**self.evaluation_schedule(config), "training.train_split_metrics": False}
        if self.generation_samples:
            overrides["data.max_generation_samples"] = self.generation_samples
        return overrides

    @property
    def planned_exploration_steps(self) -> int | None:
        """Budget steps for trials as planned before the search: the step budget less the selection's planned
        re-runs (None: no step budget). RerunBudget.exploration_steps is the most exploration can ever get."""
        if self.rerun_budget is None:
            return self.budget.steps
        return self.rerun_budget.total_steps - self.rerun_budget.planned_reserve_steps()

    def trial_length(self, config: FinetuneConfig) -> int:
        """Budget steps ``config`` will run as a trial, all folds (work_per_step)."""
        steps = (self.scoring.folds or 1) * self.optimizer_steps(config)
        return self.budget_steps(config, steps)

    def budget_steps(self, config: FinetuneConfig, optimizer_steps: int) -> int:
        """``optimizer_steps`` of ``config`` in budget steps (work_per_step)."""
        return round(optimizer_steps * self.work_per_step(config))

    def optimizer_steps(self, config: FinetuneConfig) -> int:
        """Optimizer steps ``config`` will run as a trial (one fold's)."""
        return planned_steps(config, self.trial_rows, self.world_size)


def trial_step_floor(settings: SearchSettings, run_steps: int) -> int:
    """search.min_trial_optimizer_steps, or for auto TRIAL_STEP_FLOOR_SHARE of the untuned run's ``run_steps``
    (one fold's), at most TRIAL_STEP_FLOOR_CAP; 0 for the grid sampler, which runs its points as written."""
    if settings.sampler == "grid":
        return 0
    if settings.min_trial_optimizer_steps is not None:
        return settings.min_trial_optimizer_steps
    return min(TRIAL_STEP_FLOOR_CAP, math.ceil(run_steps * TRIAL_STEP_FLOOR_SHARE - 1e-9))


def plan_search(base: FinetuneConfig, settings: SearchSettings, *, world_size: int = 1) -> SearchPlan:
    """The plan of a search around ``base`` (the untuned config) on ``world_size`` processes."""
    if settings.isolation == "subprocess" and world_size > 1:
        raise ConfigError(
            "search.isolation='subprocess' runs one process per trial; under accelerate launch "
            "with several processes use isolation='none'"
        )
    space = settings.space or default_space(
        base.method.name, base.model.task, also_tune=settings.also_tune, from_scratch=base.model.init == "scratch"
    )
    metric, direction = settings.objective.resolve(base.model.task)
    generation_samples = None
    if metric in GENERATION_METRICS:
        if base.model.task != "causal_lm":
            raise ConfigError(f"search.objective.metric {metric!r} scores generated answers: it needs a causal LM")
        generation_samples = base.data.max_generation_samples or GENERATION_SAMPLES
    base_values = flatten(base)
    check_combinations(space, base_values)
    check_inputs(base)  # bad data fails here, once, not in every trial
    folds, validation = resolve_folds(settings.objective.cv_folds, base)
    # The unit of the budget is the untuned trial: all its folds.
    data = base.data if folds is None else fold_config(base, folds, 0, "unused").data
    splits = load_splits(data)
    trial_rows = len(splits.train)
    run_steps = planned_steps(base, trial_rows, world_size)
    full_run_steps = (folds or 1) * run_steps
    min_steps = max(1, round(run_steps / EVALUATIONS_PER_RUN))
    lr_range_steps = _lr_range_steps(settings, space, run_steps, full_run_steps, world_size)
    # Where the metric starts; its noise is that of a score over every validation row (all folds).
    constant = _constant_prediction(base, metric, splits.validation, folds=folds or 1)
    shortest_trial_steps = max(1, SHORTENED_EVALUATIONS * full_run_steps // EVALUATIONS_PER_RUN)
    budget, rerun_budget, selection = _budgets(
        settings,
        full_run_steps,
        min_steps,
        set_aside=lr_range_steps,
        shortest_proposal_steps=min(
            shortest_trial_steps, _fewest_steps_proposed(base, space, trial_rows * (folds or 1), world_size)
        ),
        constant_prediction=constant,
    )
    if settings.sampler == "grid" and budget.steps is not None:
        grid = space.grid_size(base_values)
        if grid * full_run_steps > budget.steps * 3:
            raise ConfigError(
                f"search: the grid has {grid} points, about {grid * full_run_steps} steps at the "
                f"untuned run's length, far over the budget of {budget.steps} steps"
            )
    return SearchPlan(
        space=space,
        base_values=base_values,
        scoring=Scoring(metric=metric, direction=direction, use=settings.objective.use, folds=folds),
        validation=validation,
        trial_rows=trial_rows,
        world_size=world_size,
        full_run_steps=full_run_steps,
        min_steps=min_steps,
        shortest_trial_steps=shortest_trial_steps,
        total_steps=rerun_budget.total_steps if rerun_budget else budget.steps,
        budget=budget,
        rerun_budget=rerun_budget,
        selection=selection,
        generation_samples=generation_samples,
        rung_signal=_rung_signal(settings, metric, constant, validation_rows=len(splits.validation)),
        constant_prediction=constant,
        lr_range_steps=lr_range_steps,
        evaluation_steps=_evaluation_steps(settings, min_steps, full_run_steps, folds),
        base_batch=base.training.effective_batch_size,
        min_trial_optimizer_steps=trial_step_floor(settings, run_steps),
    )


def _fewest_steps_proposed(base: FinetuneConfig, space: SearchSpace, rows: int, world_size: int) -> int:
    """A lower bound on the budget steps of any trial the sampler may propose on ``rows`` training rows (all
    folds): the space's fewest epochs over every row at the untuned run's batch, whatever batch the trial takes
    (budget steps count rows: SearchPlan.work_per_step). 0 where a step count, not epochs, may set the length."""
    if base.training.max_steps > 0 or "training.max_steps" in space.parameters:
        return 0
    parameter = space.parameters.get(EPOCHS)
    if parameter is None:
        epochs = base.training.num_train_epochs
    else:
        values = finite_values(parameter)
        epochs = min(values) if values is not None else parameter.low
    return math.floor(epochs * rows / (base.training.effective_batch_size * world_size))


def _evaluation_steps(
    settings: SearchSettings, min_steps: int, full_run_steps: int, folds: int | None
) -> tuple[int, ...] | None:
    """The scheduler's rungs up to the longest trial a budget can pay for (evaluate_at: rungs, one split)."""
    if settings.evaluate_at != "rungs" or folds is not None:
        return None
    longest = _total_steps(settings, full_run_steps) or UNBUDGETED_RUNG_FULL_RUNS * full_run_steps
    return tuple(rung_steps(min_steps=min_steps, up_to=longest))


def _lr_range_steps(
    settings: SearchSettings, space: SearchSpace, run_steps: int, full_run_steps: int, world_size: int
) -> int:
    """Steps of the learning-rate sweep (a third of one run, LR_SWEEP_STEPS at most and at least), or 0 for none:
    where it was turned off, cannot run, or (auto) where the space is the user's, the run too short or the budget
    small."""
    wanted = settings.lr_range_test
    if wanted is False:
        return 0
    total = _total_steps(settings, full_run_steps)
    why_not = None
    if space_lr_bounds(space) is None:
        why_not = "the space's training.learning_rate is not a log-scale float range (without a `when`)"
    elif settings.sampler == "grid":
        why_not = "the grid sampler runs its own points"
    elif total is None:
        why_not = "the sweep is paid from a step budget: give search.budget.full_run_equivalents or steps"
    elif world_size > 1:
        why_not = "it runs in one process; under accelerate launch with several processes set it false"
    elif settings.storage is not None:
        why_not = "workers sharing a database would each sweep; set it false with search.storage"
    if why_not is not None:
        if wanted:
            raise ConfigError(f"search.lr_range_test: {why_not}")
        return 0
    steps = min(LR_SWEEP_STEPS[1], max(LR_SWEEP_STEPS[0], round(run_steps / 3)))
    small = steps > full_run_steps / 2 or total - steps < LR_SWEEP_MIN_FULL_RUNS * full_run_steps
    if wanted is None and (settings.space is not None or small):
        return 0
    if total - steps < full_run_steps:
        raise ConfigError(
            f"search.lr_range_test: its {steps} steps leave less than one full run ({full_run_steps} steps) of the "
            f"{total}-step budget; raise the budget or set it false"
        )
    return steps


def _total_steps(settings: SearchSettings, full_run_steps: int) -> int | None:
    """The whole step budget (trials, re-runs and sweep), or None without one."""
    if settings.full_run_equivalents is not None:
        return Budget.from_full_runs(settings.full_run_equivalents, full_run_steps).steps
    return settings.budget.steps


def _budgets(
    settings: SearchSettings,
    full_run_steps: int,
    min_steps: int,
    *,
    set_aside: int,
    shortest_proposal_steps: int = 0,
    constant_prediction: RungSignal | None = None,
) -> tuple[Budget, RerunBudget | None, SelectionSettings]:
    """The search's budget in steps (full-run equivalents x the untuned run) less ``set_aside`` (the LR
    sweep's); when the winner is chosen by re-runs, its admission rule with what exploration may spend; the
    selection with its rule decided for the whole budget."""
    budget, selection = settings.budget, settings.selection
    if settings.full_run_equivalents is not None:
        budget = Budget.from_full_runs(
            settings.full_run_equivalents,
            full_run_steps,
            trials=budget.trials if budget else None,
            wall_seconds=budget.wall_seconds if budget else None,
        )
        selection = selection.for_budget(settings.full_run_equivalents)  # SearchSettings checked its room
    elif budget.steps is not None:
        selection = selection.for_budget(budget.steps / full_run_steps)
        if selection.enabled:
            check_room_to_explore(budget.steps / full_run_steps, selection)
    else:
        selection = selection.for_budget(math.inf)  # no step budget: the fixed rule has room
    if set_aside:
        budget = Budget(trials=budget.trials, steps=budget.steps - set_aside, wall_seconds=budget.wall_seconds)
    if not selection.enabled or budget.steps is None:
        return budget, None, selection
    rerun_budget = RerunBudget.for_selection(
        selection,
        total_steps=budget.steps,
        full_run_steps=full_run_steps,
        shortest_useful_steps=min_steps,
        shortest_proposal_steps=shortest_proposal_steps,
        constant_prediction=constant_prediction,
    )
    exploration = Budget(trials=budget.trials, steps=rerun_budget.exploration_steps(), wall_seconds=budget.wall_seconds)
    return exploration, rerun_budget, selection


def _constant_prediction(base: FinetuneConfig, metric: str, validation: Any, *, folds: int) -> RungSignal | None:
    """What a constant prediction scores on the ``validation`` split (one fold's under cross-validation) for a
    classification metric, with the standard error of a score over ``folds`` such splits; None otherwise."""
    if metric in SMOOTH_METRICS or base.model.task != "classification":
        return None
    flat = constant_prediction_metrics(validation[base.data.label_column]).get(metric.removeprefix("eval_"))
    return None if flat is None else RungSignal(flat=flat, noise=rate_noise(folds * len(validation)))


def _rung_signal(
    settings: SearchSettings, metric: str, constant: RungSignal | None, *, validation_rows: int
) -> RungSignal | None:
    """The schedulers' rung signal: the metric alone, or with the loss where it has not moved (``rungs: smooth``;
    ``auto``: where the metric is a classification one), anchored at what a constant prediction scores on one
    validation split of ``validation_rows`` (a rung compares one fold's evaluation)."""
    rungs = settings.objective.rungs
    if rungs == "metric" or metric in SMOOTH_METRICS:
        return None
    if constant is None:
        if rungs == "auto":
            return None
        raise ConfigError(
            f"search.objective.rungs: smooth needs a classification metric (accuracy, macro_f1) to know where it "
            f"starts; {metric!r} cannot (a loss is already smooth: use rungs: metric)"
        )
    return RungSignal(flat=constant.flat, noise=rate_noise(validation_rows))
