"""SearchSettings: everything a fine-tune search is told, each default and each check written once.

The recipe's ``search:`` section and the flags of ``tunelab search`` are both read by
SearchSettings.from_dict; code builds it directly. Whatever the source, the same checks run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from finetune.errors import ConfigError
from hpo.budget import Budget
from hpo.errors import SearchConfigError
from hpo.finetune.admission import check_room_to_explore
from hpo.finetune.config_space import check_config_key, check_space_keys
from hpo.finetune.cross_validation import CvFolds
from hpo.finetune.default_spaces import EXTRAS
from hpo.samplers import RUNG_SCHEDULERS, SAMPLERS, SCHEDULERS
from hpo.space import SearchSpace
from hpo.winner_rule import SelectionSettings

# With no budget given: 8 untuned runs' worth of optimizer steps, choosing the winner included.
DEFAULT_FULL_RUN_EQUIVALENTS = 8.0
BUDGET_KEYS = ("full_run_equivalents", "trials", "steps", "minutes")
ISOLATIONS = ("none", "subprocess")
T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class Objective:
    """What a trial is scored by: one metric, its direction, and the best or the last evaluation."""

    metric: str = "auto"  # accuracy, macro_f1, loss, perplexity... ("auto": accuracy or loss by task)
    direction: Literal["auto", "maximize", "minimize"] = "auto"
    use: Literal["best", "last"] = "best"
    # k-fold cross-validation instead of one validation split: k >= 2, "auto" (hpo.finetune.cross_validation)
    # or None.
    cv_folds: CvFolds = "auto"
    # What the scheduler compares at its rungs: the metric, or "smooth": the validation loss among trials whose
    # metric has not left what a constant prediction scores (hpo.rung_signal); "auto": smooth for classification
    # metrics, the metric elsewhere. A loss is its own smooth signal.
    rungs: Literal["auto", "metric", "smooth"] = "auto"

    def __post_init__(self) -> None:
        if self.use not in ("best", "last"):
            raise ConfigError(f"search.objective.use must be 'best' or 'last', got {self.use!r}")
        if self.rungs not in ("auto", "metric", "smooth"):
            raise ConfigError(f"search.objective.rungs must be 'auto', 'metric' or 'smooth', got {self.rungs!r}")

    def resolve(self, task: str) -> tuple[str, str]:
        """(the evaluation key, "maximize" or "minimize") for ``task``."""
        metric = self.metric if self.metric != "auto" else ("accuracy" if task == "classification" else "loss")
        key = metric if metric.startswith("eval_") else f"eval_{metric}"
        direction = self.direction
        if direction == "auto":
            direction = "minimize" if any(word in key for word in ("loss", "perplexity")) else "maximize"
        return key, direction


@dataclass(kw_only=True)
class SearchSettings:
    sampler: str = "tpe"
    scheduler: str = "hyperband"
    # When trials and re-runs evaluate: every interval (a tenth of the untuned run), or "rungs": only where
    # the scheduler compares trials (sha, hyperband: the interval x 3^k) and at a run's last step, about half
    # the validation passes. The kept checkpoint and the score are the best of those evaluations. With
    # cross-validation every interval.
    evaluate_at: Literal["interval", "rungs"] = "interval"
    # Trials, steps and wall time; with full_run_equivalents the step budget is that many untuned runs.
    budget: Budget | None = None
    full_run_equivalents: float | None = None  # None and no budget: DEFAULT_FULL_RUN_EQUIVALENTS
    objective: Objective = field(default_factory=Objective)
    selection: SelectionSettings = field(default_factory=SelectionSettings)  # how the winner is chosen
    space: SearchSpace | None = None  # None: the method-aware default space (hpo.finetune.default_spaces)
    also_tune: tuple[str, ...] = ()  # groups added to the default space: optimizer, head, architecture
    # A trial's largest per-device batch; larger effective batches accumulate gradients, so no trial needs
    # more activation memory than a run at this batch. None: the base config's per-device batch (a recipe
    # resolves it to the batch its training section states: the one the user knows fits).
    max_per_device_batch: int | None = None
    isolation: Literal["none", "subprocess"] = "none"  # subprocess: each trial in its own process
    seed: int = 0  # the sampler's
    # Shared search (tunelab worker): a database URL all workers reach, the study's name, heartbeat period.
    storage: str | None = None  # None: a journal file in the run folder (re-running resumes)
    study_name: str = "search"
    heartbeat_seconds: int | None = None
    # The untuned config is the first trial and the baseline of the winner rule (without it, selection.seeds
    # >= 2 falls back to 0: the best trial wins; seeds 1, re-ranking, needs no baseline).
    include_untuned: bool = True
    # Overrides of the untuned config tried right after it, exactly as written (hpo.finetune.warm_start),
    # e.g. the field's recipes for the method: a recipe's `search.warm_start: references`, its default for
    # causal LMs (recipes.recipe).
    warm_start: tuple[dict[str, Any], ...] = ()
    # What the search log and `tunelab check` call each warm_start configuration (a recipe's references: their
    # names); empty: search.warm_start[i].
    warm_start_names: tuple[str, ...] = ()
    # The most of the steps to explore the warm start may take (e.g. 0.5): beyond it, its longest configurations
    # are left out until it fits (hpo.finetune.warm_start.within_share). None (default): all of them; a recipe's
    # default warm start from the references is capped at 0.5 (recipes.recipe).
    warm_start_share: float | None = None
    # A short learning-rate sweep before the first trial places the space's LR range (hpo.lr_range), paid from
    # the step budget. None (auto): on for the default space with a step budget, one process and the run
    # folder's own journal; true asks for it with a given space too.
    lr_range_test: bool | None = None
    # A sampled trial takes at least this many optimizer steps: one proposed at a larger effective batch runs at
    # the largest batch of the space that reaches it (the same rows, so the same budget steps). None (auto):
    # a third of the untuned run's steps, at most 100 (hpo.finetune.plan.trial_step_floor); 0: no floor.
    min_trial_optimizer_steps: int | None = None
    choose_winner: bool = True  # False for workers: `tunelab run` chooses once the budget is spent
    progress: bool = True

    def __post_init__(self) -> None:
        if self.budget is None and self.full_run_equivalents is None:
            self.full_run_equivalents = DEFAULT_FULL_RUN_EQUIVALENTS
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"search.sampler: expected one of {SAMPLERS}, got {self.sampler!r}")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"search.scheduler: expected one of {SCHEDULERS}, got {self.scheduler!r}")
        if self.evaluate_at not in ("interval", "rungs"):
            raise ConfigError(f"search.evaluate_at: expected 'interval' or 'rungs', got {self.evaluate_at!r}")
        if self.evaluate_at == "rungs" and self.scheduler not in RUNG_SCHEDULERS:
            raise ConfigError(
                f"search.evaluate_at: 'rungs' evaluates where the scheduler compares trials; search.scheduler "
                f"{self.scheduler!r} has no rungs (use one of {RUNG_SCHEDULERS}, or evaluate_at: interval)"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"search.seed: expected an integer >= 0, got {self.seed!r}")
        cap = self.max_per_device_batch
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
            raise ConfigError(f"search.max_per_device_batch: expected an integer >= 1 or null, got {cap!r}")
        floor = self.min_trial_optimizer_steps
        if floor is not None and (isinstance(floor, bool) or not isinstance(floor, int) or floor < 0):
            raise ConfigError(
                "search.min_trial_optimizer_steps: expected an integer >= 0 (0: no floor) or null (auto), "
                f"got {floor!r}"
            )
        if self.lr_range_test is not None and not isinstance(self.lr_range_test, bool):
            raise ConfigError(f"search.lr_range_test: expected true, false or null (auto), got {self.lr_range_test!r}")
        if self.isolation not in ISOLATIONS:
            raise ConfigError(f"search.isolation must be 'none' or 'subprocess', got {self.isolation!r}")
        self.also_tune = tuple(self.also_tune)
        if self.warm_start is None:
            self.warm_start = ()
        if isinstance(self.warm_start, dict) or not all(isinstance(item, dict) for item in self.warm_start):
            raise ConfigError(
                f"search.warm_start: expected a list of mappings of section.key overrides, got {self.warm_start!r}"
            )
        self.warm_start = tuple(self.warm_start)
        names = self.warm_start_names or ()
        if isinstance(names, str) or not all(isinstance(n, str) for n in names):
            raise ConfigError(f"search.warm_start_names: expected a list of names, got {names!r}")
        self.warm_start_names = tuple(names)
        if names and len(names) != len(self.warm_start):
            raise ConfigError(
                f"search.warm_start_names: {len(names)} names for {len(self.warm_start)} search.warm_start "
                "configurations; give one name each, or none"
            )
        share = self.warm_start_share
        if share is not None and (isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1):
            raise ConfigError(f"search.warm_start_share: expected a number in (0, 1] or null (no cap), got {share!r}")
        for overrides in self.warm_start:
            for key in overrides:
                check_config_key(key, "search.warm_start")
        if set(self.also_tune) - set(EXTRAS):
            raise ConfigError(
                f"search.also_tune: expected a list drawn from {list(EXTRAS)}, got {list(self.also_tune)}"
            )
        if self.also_tune and self.space is not None:
            raise ConfigError(
                f"search.also_tune={list(self.also_tune)} extends the default space; with search.space given, "
                "list those parameters in it instead"
            )
        if self.space is not None:
            check_space_keys(self.space)
        if not self.include_untuned and not self.selection.rerank:
            self.selection = SelectionSettings(top_k=self.selection.top_k, seeds=0)  # no baseline to keep
        if self.full_run_equivalents is not None:
            check_room_to_explore(self.full_run_equivalents, self.selection.for_budget(self.full_run_equivalents))

    def warm_start_name(self, index: int) -> str:
        """The name of search.warm_start[index] in logs and reports."""
        return self.warm_start_names[index] if self.warm_start_names else f"search.warm_start[{index}]"

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SearchSettings:
        """From a recipe's ``search:`` mapping: budget {full_run_equivalents, trials, steps, minutes},
        objective {metric, direction, use, cv_folds, rungs}, selection {top_k, seeds, confidence, sequential},
        space (YAML form), also_tune, and the plain fields by name."""
        if not isinstance(raw, dict):
            raise ConfigError(f"search: expected a mapping, got {raw!r}")
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = set(raw) - allowed
        if unknown:
            raise ConfigError(f"search: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
        values = dict(raw)
        full_runs, budget = _budget(values.pop("budget", None) or {})
        values["objective"] = _section(Objective, "objective", values.pop("objective", None) or {})
        values["selection"] = _section(SelectionSettings, "selection", values.pop("selection", None) or {})
        space = values.pop("space", None)
        values["space"] = _as_config_error(lambda: SearchSpace.from_dict(space)) if space else None
        also_tune = values.pop("also_tune", None) or []
        if not isinstance(also_tune, (list, tuple)):
            raise ConfigError(f"search.also_tune: expected a list drawn from {list(EXTRAS)}, got {also_tune!r}")
        return cls(full_run_equivalents=full_runs, budget=budget, also_tune=tuple(also_tune), **values)


def _budget(raw: Any) -> tuple[float | None, Budget | None]:
    if not isinstance(raw, dict):
        raise ConfigError(f"search.budget: expected a mapping, got {raw!r}")
    unknown = set(raw) - set(BUDGET_KEYS)
    if unknown:
        raise ConfigError(f"search.budget: unknown key(s) {sorted(unknown)}; allowed: {', '.join(BUDGET_KEYS)}")
    if not any(raw.get(k) is not None for k in ("trials", "steps", "minutes")):
        return raw.get("full_run_equivalents"), None
    minutes = raw.get("minutes")
    budget = _as_config_error(
        lambda: Budget(trials=raw.get("trials"), steps=raw.get("steps"), wall_seconds=minutes * 60 if minutes else None)
    )
    return raw.get("full_run_equivalents"), budget


def _section(kind: Callable[..., T], name: str, raw: Any) -> T:
    if not isinstance(raw, dict):
        raise ConfigError(f"search.{name}: expected a mapping, got {raw!r}")
    try:
        return _as_config_error(lambda: kind(**raw))
    except TypeError as exc:
        allowed = ", ".join(f.name for f in dataclasses.fields(kind))
        raise ConfigError(f"search.{name}: {exc}; allowed: {allowed}") from exc


def _as_config_error(build: Callable[[], T]) -> T:
    """A search setting read from a recipe or flags is a config error whichever layer checks it."""
    try:
        return build()
    except SearchConfigError as exc:
        raise ConfigError(str(exc)) from exc
