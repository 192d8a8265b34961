"""hpo: search the hyperparameters of finetune runs (Optuna underneath)."""
