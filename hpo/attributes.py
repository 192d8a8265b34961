"""Every key the search stores on Optuna trials and studies, in one place (Optuna's user attributes).

They are what a run folder's trials.json shows under ``extra`` and what a resumed or shared search reads
back, so a key is renamed here or nowhere.
"""

# The role of the baseline trial: the configuration a user launches without tuning. It is the search's
# first trial, it is always re-run when the winner is chosen, and it is kept unless beaten beyond the noise.
UNTUNED = "untuned"
# The role of a warm-start trial: a configuration given before the search (e.g. a field's recipe), tried first.
WARM_START = "warm_start"

# --- on trials, written by the search loop (hpo.optimize, hpo.reporter) ---
ROLE = "role"  # UNTUNED on the baseline trial, WARM_START on warm-start trials; absent on the others
PARAMS = "params"  # the trial's full params when they differ from Optuna's (fixed values included)
GIVEN_PARAMS = "given_params"  # params run as given: a planned point outside the space (e.g. an untuned warmup)
STEPS = "steps"  # steps a trial ran, as reported (a fine-tune search: at the untuned run's batch)
# The metric of a trial's last evaluation, where the scheduler was given a rung signal (hpo.rung_signal)
# instead: what a stopped trial scored.
LAST_VALUE = "last_value"
FAILURE = "failure"  # why a trial failed or is infeasible
STOP_REASON = "stop_reason"  # why a trial was stopped early (also a study attribute: why the search ended)
PLANNED = "planned"  # queued up front (the untuned trial, grid points)
DISCARDED = "discarded"  # asked for but never run (the grid ran out, or replaced): not a trial at all; why
REPLACES = "replaces"  # on a replacement (shortened, batch lowered): the number of the proposal it runs in place of
# --- on trials, written by the workers sharing a study (hpo.workers) ---
RETRY_OF = "retry_of"  # the number of the lost trial this one retries
RETRIES = "retries"  # how many times the same params were retried
# --- on trials, written by the fine-tune search (hpo.finetune) ---
CHECKPOINT = "checkpoint"  # the trial's saved model (deleted unless it stays a candidate)
OPTIMIZER_STEPS = "optimizer_steps"  # steps the trial's run reported at its end
PLANNED_STEPS = "planned_steps"  # steps the trial's run would take to its end: the length of its re-runs
CV_FOLD_SCORES = "cv_fold_scores"  # under cross-validation: each fold's score
CV_STD = "cv_std"  # and their standard deviation
NOT_RUN = "not_run"  # refused: its re-runs would not have fit the step budget
SHORTENED = "shortened"  # replaced a proposal too long for the budget: what was proposed, and why
BATCH_LOWERED = "batch_lowered"  # replaced a proposal with too few optimizer steps: what was proposed, and why
TIME_BREAKDOWN = "time_breakdown"  # seconds per stage of its run(s): hpo.finetune.time_spent
# What a trial run in place of another (a replacement: hpo.optimize; a lost trial's retry: hpo.workers) keeps
# of it: its role, and every change already made to what the sampler proposed.
STAND_IN_KEEPS = (ROLE, SHORTENED, BATCH_LOWERED)

# --- on studies ---
QUEUED = "queued"  # the creator has queued the planned trials
PLANNED_TRIALS = "planned_trials"  # how many trials the progress line counts towards
SEARCH_STOP_REASON = STOP_REASON

# Trial.set_constraint name; > 0 means infeasible (e.g. out of memory even at half batch). TPE and GP
# read trial constraints and learn to avoid infeasible regions.
INFEASIBLE_CONSTRAINT = "infeasible"
