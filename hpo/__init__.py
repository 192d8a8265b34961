"""hpo: search the hyperparameters of finetune runs (Optuna underneath)."""

from hpo.budget import Budget
from hpo.optimize import InfeasibleTrial, ReplaceTrial, Reporter, SearchDone, SearchError, TrialPruned, optimize
from hpo.results import SearchResult, TrialRecord
from hpo.samplers import SAMPLERS, SCHEDULERS
from hpo.selection import Selection, SelectionSettings, select_winner
from hpo.space import Categorical, Fixed, Float, Int, SearchSpace, derive_batch

__all__ = [
    "SAMPLERS",
    "SCHEDULERS",
    "Budget",
    "Categorical",
    "Fixed",
    "Float",
    "InfeasibleTrial",
    "Int",
    "ReplaceTrial",
    "Reporter",
    "SearchDone",
    "SearchError",
    "SearchResult",
    "SearchSpace",
    "Selection",
    "SelectionSettings",
    "TrialPruned",
    "TrialRecord",
    "derive_batch",
    "optimize",
    "select_winner",
]
