"""tunelab check RECIPE: what `tunelab run RECIPE` would train and about how long it takes, before training.

It loads the recipe, the data, the tokenizer and the model's config (bad input fails here with the same
error as `tunelab run`), plans the search without training (hpo.finetune.plan_search), then times a few
optimizer steps, one evaluation and the testing of the untuned configuration (test loss, and a causal LM's
greedy answers to the test prompts) to turn steps and runs into minutes.
"""

from __future__ import annotations

import itertools
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import AutoConfig, TrainerCallback

import finetune
from finetune.inputs import check_inputs
from finetune.models import resolve_source
from finetune.train import planned_steps
from hpo import SelectionSettings
from hpo.finetune.plan import EVALUATIONS_PER_RUN, plan_search
from hpo.finetune.search import left_out_text, plan_warm_start
from recipes.recipe import Recipe
from recipes.references import reference_config
from recipes.run import require_test_split, reused_untuned_runs

TIMED_STEPS = 4  # the first step warms up; the median of the others is the step time


@dataclass(frozen=True)
class StepTiming:
    """Measured on the untuned configuration: one optimizer step, one evaluation, a run's fixed cost
    (loading the model and the data, saving the kept model), and testing a run as `tunelab run` tests each
    arm's (for a causal LM, with the answers of a model 4 steps in: at most as long as a trained one's)."""

    step_seconds: float
    evaluation_seconds: float
    setup_seconds: float
    test_seconds: float


def check_recipe(recipe: Recipe, *, time_steps: bool = True) -> dict[str, Any]:
    """The recipe's data, model and plan (and, with ``time_steps``, the estimated wall time) as a mapping."""
    config = recipe.untuned
    require_test_split(config)
    inputs = check_inputs(config)  # the same loading and checks as training
    source = resolve_source(config.model)
    model_config = AutoConfig.from_pretrained(source.path, trust_remote_code=config.model.trust_remote_code)
    plan = plan_search(config, recipe.search)
    seeds, reused = len(recipe.seeds), reused_untuned_runs(plan, len(recipe.seeds))
    reserve = plan.rerun_budget.planned_reserve_steps() if plan.rerun_budget else None
    retrains = (2 + len(recipe.references)) * seeds - reused
    run_steps = planned_steps(config, len(inputs.train))
    # The tuned arm at the untuned run's length (the winner is not known yet); references at their own.
    reference_steps = sum(planned_steps(reference_config(n, config), len(inputs.train)) for n in recipe.references)
    warm = plan_warm_start(recipe.search, plan, config)
    lengths = [len(ids) for ids in inputs.train["input_ids"]]
    at_limit = sum(length >= config.data.max_length for length in lengths)
    report: dict[str, Any] = {
        "rows": {name: len(getattr(inputs, name)) for name in ("train", "validation", "test")},
        "labels": inputs.label_names,
        "tokens_per_train_row": {"mean": statistics.fmean(lengths), "max": max(lengths)},
        "train_rows_at_max_length": at_limit,
        "max_length": config.data.max_length,
        "model": {
            "name": config.model.name,
            "type": model_config.model_type,
            "layers": getattr(model_config, "num_hidden_layers", None),
            "hidden_size": getattr(model_config, "hidden_size", None),
        },
        "validation": plan.validation,
        "objective": f"{plan.scoring.metric} ({plan.scoring.direction}, {plan.scoring.use} evaluation)",
        "full_run_steps": plan.full_run_steps,
        "evaluation_every_steps": plan.min_steps,
        # A sampled trial's fewest optimizer steps (a larger batch is lowered to reach them); 0: no floor.
        "min_trial_optimizer_steps": plan.min_trial_optimizer_steps,
        # search.evaluate_at: rungs: a full-length trial evaluates at these steps and its last one only (else None).
        "evaluation_steps": [s for s in plan.evaluation_steps if s < plan.full_run_steps]
        if plan.evaluation_steps
        else None,
        "search_steps": None if plan.total_steps is None else plan.total_steps + plan.lr_range_steps,
        "lr_range_steps": plan.lr_range_steps,
        "exploration_steps": plan.planned_exploration_steps,
        "reserve_steps": reserve or 0,
        # The untuned run's reserved re-run is released if it learns nothing (hpo.sequential_winner).
        "reserve_released_if_untuned_learns_nothing": bool(plan.rerun_budget and plan.rerun_budget.constant_prediction),
        "selection": _selection_summary(plan.selection),
        "warm_start": warm.kept_names,
        # Those past search.warm_start_share of the steps to explore, longest first (hpo.finetune.warm_start).
        "warm_start_left_out": warm.left_out,
        "warm_start_share": recipe.search.warm_start_share,
        # Budget steps the warm-start configurations take as trials, from the steps to explore (queued
        # trials are shortened by epochs where they do not fit: hpo.finetune.admission).
        "warm_start_steps": warm.kept_steps,
        "untuned_trial": recipe.search.include_untuned,  # the search's first trial (else only the untuned arm)
        # The untuned configuration's re-runs are untuned-arm seeds; the other seeds train fresh, on the
        # whole train split (trials under cross-validation on a fold's share).
        "retrain_runs": retrains,
        "retrain_steps": (2 * seeds - reused) * run_steps + seeds * reference_steps,
        "references": recipe.references,
        "reused_untuned_runs": reused,
        "seeds": seeds,
    }
    if time_steps:
        timing = time_untuned_steps(config)
        report["timing"] = timing.__dict__
        report["estimated_minutes"] = estimate_minutes(report, timing)
    return report


def time_untuned_steps(config: finetune.FinetuneConfig) -> StepTiming:
    """Train the untuned configuration for TIMED_STEPS steps with one evaluation, then test it, in a scratch
    folder."""
    marks = _StepMarks()
    with tempfile.TemporaryDirectory() as scratch:
        timed = config.with_overrides(
            {
                "training.max_steps": TIMED_STEPS,
                "training.eval_steps": TIMED_STEPS,
                "training.eval_at_steps": None,
                "training.train_split_metrics": False,
                "training.output_dir": str(Path(scratch) / "run"),
                "training.report_to": "none",
            }
        )
        started = time.perf_counter()
        finetune.train(timed, callbacks=[marks])
        total = time.perf_counter() - started
        started = time.perf_counter()
        finetune.evaluate(timed.training.output_dir, "test", generate=config.model.task == "causal_lm")
        test_seconds = time.perf_counter() - started
    steps = [b - a for a, b in itertools.pairwise(marks.step_ends)]
    step_seconds = statistics.median(steps) if steps else total / TIMED_STEPS
    evaluation = marks.evaluated - marks.step_ends[-1] if marks.evaluated else 0.0
    setup = max(total - (marks.step_ends[-1] - marks.train_begin) - evaluation, 0.0)
    return StepTiming(
        step_seconds=step_seconds, evaluation_seconds=evaluation, setup_seconds=setup, test_seconds=test_seconds
    )


def estimate_minutes(report: dict[str, Any], timing: StepTiming) -> dict[str, float]:
    """Steps x step time, plus an evaluation every interval and a fixed cost per run. Exploration's runs
    are counted as one per full run of steps (pruned trials are shorter but more numerous)."""
    interval = report["evaluation_every_steps"]
    search_steps = report["search_steps"] or 0
    search_runs = max(search_steps / report["full_run_steps"], 1.0)
    evaluations = search_steps / interval
    if report["evaluation_steps"]:  # the rungs within a full run and its last step, per full run
        evaluations = search_runs * (len(report["evaluation_steps"]) + 1)
    search = (
        search_steps * timing.step_seconds
        + evaluations * timing.evaluation_seconds
        + search_runs * timing.setup_seconds
    )
    runs = report["retrain_runs"]
    retrains = (
        report["retrain_steps"] * timing.step_seconds
        + runs * EVALUATIONS_PER_RUN * timing.evaluation_seconds
        + runs * timing.setup_seconds
    )
    testing = runs * timing.test_seconds
    return {
        "search": search / 60,
        "retrains": retrains / 60,
        "testing": testing / 60,
        "total": (search + retrains + testing) / 60,
    }


class _StepMarks(TrainerCallback):
    def __init__(self) -> None:
        self.train_begin = 0.0
        self.step_ends: list[float] = []
        self.evaluated = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.train_begin = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.step_ends.append(time.perf_counter())

    def on_evaluate(self, args, state, control, **kwargs):
        self.evaluated = time.perf_counter()


def format_check(report: dict[str, Any]) -> str:
    rows = report["rows"]
    model = report["model"]
    lines = [
        f"data: {rows['train']} train / {rows['validation']} validation / {rows['test']} test rows; "
        f"{report['tokens_per_train_row']['mean']:.0f} tokens per train row on average "
        f"(longest {report['tokens_per_train_row']['max']}); {report['train_rows_at_max_length']} at "
        f"data.max_length={report['max_length']} (truncated)",
    ]
    if report["labels"]:
        lines.append(f"labels: {', '.join(report['labels'])}")
    lines += [
        f"model: {model['name']} ({model['type']}, {model['layers']} layers, hidden size {model['hidden_size']})",
        f"validation: {report['validation']}; objective: {report['objective']}",
        f"one full run (the untuned configuration): {report['full_run_steps']} steps, evaluated {_evaluated(report)}",
        f"search: {report['search_steps']} steps in all, {_sweep(report['lr_range_steps'])}"
        f"{report['exploration_steps']} to explore and {report['reserve_steps']} kept to choose the winner"
        f"{_released(report['reserve_released_if_untuned_learns_nothing'])}; selection: {report['selection']}",
        *_step_floor_line(report["min_trial_optimizer_steps"]),
        *_warm_start_line(report),
        f"retrains: {report['retrain_runs']} runs (tuned, untuned{_and_references(report['references'])}, one "
        f"per seed{_reused(report['reused_untuned_runs'])}{_chosen_reference(report)}), about "
        f"{report['retrain_steps']} steps",
    ]
    if "timing" in report:
        t, minutes = report["timing"], report["estimated_minutes"]
        lines += [
            f"measured: {t['step_seconds']:.2f} s per step, {t['evaluation_seconds']:.1f} s per evaluation, "
            f"{t['setup_seconds']:.1f} s to set up a run, {t['test_seconds']:.1f} s to test one",
            f"estimated wall time: {minutes['total']:.0f} min (search {minutes['search']:.0f}, "
            f"retrains {minutes['retrains']:.0f}, testing {minutes['testing']:.0f}) on this machine",
        ]
    return "\n".join(lines)


def _step_floor_line(floor: int) -> list[str]:
    if not floor:
        return []
    return [f"sampled trials take at least {floor} optimizer steps (a larger batch is lowered to reach them)"]


def _released(released: bool) -> str:
    return " (explored instead if the untuned run learns nothing)" if released else ""


def _warm_start_line(report: dict[str, Any]) -> list[str]:
    names = report["warm_start"]
    if not names:
        left_out = ", ".join(report["warm_start_left_out"])
        return [f"warm start: none; left out: {left_out} (search.warm_start_share)"] if left_out else []
    first = "first (no untuned trial: search.include_untuned)"
    when = "right after the untuned run" if report["untuned_trial"] else first
    steps, explore = report["warm_start_steps"], report["exploration_steps"]
    cost = f": {steps} of the {explore} steps to explore" if explore else f": {steps} steps"
    left_out = report["warm_start_left_out"]
    if left_out:
        cost += (
            f"; left out: {left_out_text(left_out)}, the warm start taking at most "
            f"{report['warm_start_share']:g} of the steps to explore (search.warm_start_share)"
        )
    return [f"warm start: {when} the search tries {', '.join(names)} (search.warm_start){cost}"]


def _and_references(references: list[str]) -> str:
    return f" and the references {', '.join(references)}" if references else ""


def _evaluated(report: dict[str, Any]) -> str:
    if report["evaluation_steps"]:
        listed = ", ".join(str(step) for step in report["evaluation_steps"])
        return f"at steps {listed} (the scheduler's rungs) and the last"
    return f"every {report['evaluation_every_steps']}"


def _chosen_reference(report: dict[str, Any]) -> str:
    if not report["references"]:
        return ""
    return f"; {report['seeds']} fewer where the search chooses a reference: its runs are the tuned arm's"


def _reused(count: int) -> str:
    return f"; {count} untuned seeds are the untuned configuration's re-runs from choosing the winner" if count else ""


def _selection_summary(selection: SelectionSettings) -> str:
    if not selection.enabled:
        return "no re-runs, the best trial wins"
    if selection.rerank:
        held = (
            f" unless it is a sampled trial within {selection.incumbent_z:g} standard errors of the best re-run "
            "warm-start trial, row by row (search.selection.incumbent_z)"
            if selection.incumbent_z is not None
            else ""
        )
        return (
            f"the top {selection.candidates} trials re-run once each with a fresh seed (at their own lengths, "
            f"reserved from the steps to explore as they are known), the best re-run wins{held}"
        )
    if selection.sequential:
        return (
            f"the top {selection.candidates} candidates re-run one fresh seed at a time, up to {selection.seeds} each, "
            "until the decision is clear (sequential rule)"
        )
    return f"the top {selection.candidates} candidates re-run with {selection.seeds} fresh seeds each"


def _sweep(steps: int) -> str:
    return f"{steps} for the learning-rate range test (it sets the searched LR range), " if steps else ""
