"""The fine-tune adapter of hpo: a search whose trials are finetune.train runs.

search.py (search_finetune) reads top to bottom: plan.py decides the space, metric, folds and budgets;
lr_range_test.py sweeps the learning rate to place its searched range; objective.py runs one trial
(at a lower batch when it takes fewer than the plan's floor of optimizer steps; admission.py admits it under
the step budget, trial_training.py trains and reports it); reruns.py re-runs
the top candidates to choose the winner. settings.py holds every setting.
"""

from hpo.finetune.plan import Scoring, SearchPlan, plan_search
from hpo.finetune.search import FinetuneSearch, search_finetune
from hpo.finetune.settings import DEFAULT_FULL_RUN_EQUIVALENTS, Objective, SearchSettings
from hpo.finetune.warm_start import warm_start_config

__all__ = [
    "DEFAULT_FULL_RUN_EQUIVALENTS",
    "FinetuneSearch",
    "Objective",
    "Scoring",
    "SearchPlan",
    "SearchSettings",
    "plan_search",
    "search_finetune",
    "warm_start_config",
]
