"""hpo: search the hyperparameters of fine-tunes (Optuna underneath).

The flow of `search_finetune(base, settings, run_dir=...)` (hpo/finetune/search.py):
  1. plan     hpo.finetune.plan: the space (space.py), metric, folds, the untuned run's length, budgets
     lr       hpo.finetune.lr_range_test sweeps the learning rate once; lr_range.py reads where to search it
  2. explore  optimize.py: ask / run / tell until the budget (budget.py) is spent; samplers and schedulers
              (samplers.py) are Optuna's; the study lives in storage.py, shared by workers.py
  3. trial    hpo.finetune.objective: raise a short trial to the step floor (a smaller batch), admit it under
              the budget (admission.py), train and report each evaluation (reporter.py, trial_training.py)
              so schedulers can stop it early
  4. winner   hpo.finetune.reruns re-runs the top candidates with fresh seeds; winner_rule.py keeps the
              untuned config unless beaten beyond the noise
  5. files    result_files.py: trials.csv/json, summary.json, best_config.yaml, plots (results.py reads them)
Trial attribute keys: attributes.py. Errors and the signals an objective raises: errors.py.
"""

from hpo.budget import Budget
from hpo.errors import (
    InfeasibleTrial,
    ReplaceTrial,
    SearchConfigError,
    SearchDone,
    SearchError,
    TrialPruned,
)
from hpo.finetune import FinetuneSearch, Objective, SearchSettings, search_finetune
from hpo.lr_range import LRRangeReading, read_sweep
from hpo.optimize import PlannedTrial, StudySettings, optimize
from hpo.reporter import Reporter
from hpo.results import SearchResult, TrialRecord
from hpo.rung_signal import RungSignal
from hpo.samplers import SAMPLERS, SCHEDULERS
from hpo.sequential_winner import select_winner_sequentially
from hpo.space import Categorical, Fixed, Float, Int, SearchSpace
from hpo.winner_rule import Selection, SelectionSettings, select_winner

__all__ = [
    "SAMPLERS",
    "SCHEDULERS",
    "Budget",
    "Categorical",
    "FinetuneSearch",
    "Fixed",
    "Float",
    "InfeasibleTrial",
    "Int",
    "LRRangeReading",
    "Objective",
    "PlannedTrial",
    "ReplaceTrial",
    "Reporter",
    "RungSignal",
    "SearchConfigError",
    "SearchDone",
    "SearchError",
    "SearchResult",
    "SearchSettings",
    "SearchSpace",
    "Selection",
    "SelectionSettings",
    "StudySettings",
    "TrialPruned",
    "TrialRecord",
    "optimize",
    "read_sweep",
    "search_finetune",
    "select_winner",
    "select_winner_sequentially",
]
