"""What a fine-tune search decides before its first trial (plan_search), and where its settings come from."""

import json

import pytest
from conftest import classification_config

from finetune import ConfigError, FinetuneConfig
from hpo import Budget, Categorical, Float, SearchSpace, SelectionSettings
from hpo.finetune import DEFAULT_FULL_RUN_EQUIVALENTS, Objective, SearchSettings, plan_search
from hpo.finetune.admission import EPOCHS, longest_fitting
from recipes.cli import _search_settings, build_parser


def _base(tiny_bert, sentiment_files, tmp_path, **training):
    training = {"max_steps": -1, "num_train_epochs": 1, "eval_steps": None, "learning_rate": 5e-5, **training}
    return FinetuneConfig.from_dict(
        classification_config(tiny_bert, sentiment_files, tmp_path / "unused", training=training)
    )


def test_plan_of_the_default_search_without_training(tiny_bert, sentiment_files, tmp_path):
    plan = plan_search(_base(tiny_bert, sentiment_files, tmp_path), SearchSettings(full_run_equivalents=10))
    # 96 training rows at batch 8, one epoch: the untuned run is 12 steps; evaluations every 12/9 -> 1 step.
    assert plan.trial_rows == 96 and plan.full_run_steps == 12 and plan.min_steps == 1
    assert (plan.scoring.metric, plan.scoring.direction, plan.scoring.use) == ("eval_accuracy", "maximize", "best")
    assert plan.scoring.folds is None and plan.validation.startswith("one validation split")
    # 10 full runs = 120 steps in all; exploration may spend all but the untuned run's 2 re-runs.
    assert plan.total_steps == 120 and plan.budget.steps == 120 - 2 * 12
    assert plan.rerun_budget.total_steps == 120 and plan.rerun_budget.top_k == 3
    assert "method.lora_r" in plan.space.parameters  # the LoRA default space
    base = _base(tiny_bert, sentiment_files, tmp_path)
    assert plan.search_evaluations(base) == {
        "training.eval_steps": 1,
        "training.eval_at_steps": None,
        "training.train_split_metrics": False,
    }
    three_epochs = _base(tiny_bert, sentiment_files, tmp_path, num_train_epochs=3)
    assert plan.trial_length(three_epochs) == 36
    assert not (tmp_path / "unused").exists()  # nothing trained, nothing written


def test_plan_without_reruns_explores_the_whole_budget(tiny_bert, sentiment_files, tmp_path):
    base = _base(tiny_bert, sentiment_files, tmp_path)
    plan = plan_search(base, SearchSettings(full_run_equivalents=3, selection=SelectionSettings(seeds=0)))
    assert plan.rerun_budget is None and plan.budget.steps == 36 == plan.total_steps
    plan = plan_search(base, SearchSettings(budget=Budget(trials=4), objective=Objective(metric="loss")))
    assert plan.budget == Budget(trials=4) and plan.total_steps is None and plan.rerun_budget is None
    assert (plan.scoring.metric, plan.scoring.direction) == ("eval_loss", "minimize")


def test_a_step_budget_too_small_for_the_reruns_is_refused_before_training(tiny_bert, sentiment_files, tmp_path):
    base = _base(tiny_bert, sentiment_files, tmp_path)
    fixed = SelectionSettings(top_k=3, seeds=2, sequential=False)
    with pytest.raises(ConfigError, match="selection reserve of 6 full runs"):
        plan_search(base, SearchSettings(budget=Budget(steps=12 * 5), selection=fixed))
    with pytest.raises(ConfigError, match="selection reserve of 2 full runs"):  # even the sequential rule's
        plan_search(base, SearchSettings(budget=Budget(steps=12 * 2)))


def test_the_default_rule_is_the_fixed_one_where_its_reserve_fits_else_the_sequential_one(
    tiny_bert, sentiment_files, tmp_path
):
    base = _base(tiny_bert, sentiment_files, tmp_path)  # the untuned run: 12 steps
    # top_k 3 x seeds 2 = 6 full runs at worst, plus one to explore: 7 full runs hold the fixed rule.
    # Where top_k is not given, the fixed rule re-runs the top 3, the sequential one the top 2.
    for settings, sequential, top_k in [
        (SearchSettings(full_run_equivalents=7), False, 3),
        (SearchSettings(full_run_equivalents=6.9), True, 2),
        (SearchSettings(full_run_equivalents=4), True, 2),
        (SearchSettings(budget=Budget(steps=12 * 8)), False, 3),  # a budget in steps is decided by the plan
        (SearchSettings(budget=Budget(steps=12 * 4)), True, 2),
        (SearchSettings(full_run_equivalents=5, selection=SelectionSettings(top_k=2)), False, 2),  # 2 x 2 + 1 <= 5
        (SearchSettings(full_run_equivalents=4, selection=SelectionSettings(top_k=3)), True, 3),
        (SearchSettings(budget=Budget(trials=6)), False, 3),  # no step budget: the fixed rule has room
    ]:
        plan = plan_search(base, settings)
        assert (plan.selection.sequential, plan.selection.top_k) == (sequential, top_k), settings
        if plan.rerun_budget:
            assert plan.rerun_budget.seeds == (1 if sequential else 2)
            assert plan.rerun_budget.challengers == (top_k - 1 if sequential else 1)
    assert SelectionSettings(sequential=False).for_budget(2).sequential is False  # what the user set stays
    assert SelectionSettings(sequential=True).for_budget(20).top_k == 2
    with pytest.raises(ConfigError, match="selection reserve of 2 full runs"):  # top 2 x 1 re-run, + 1 to explore
        plan_search(base, SearchSettings(full_run_equivalents=2.9))
    assert plan_search(base, SearchSettings(full_run_equivalents=3)).selection.top_k == 2


def test_the_sequential_rule_reserves_one_rerun_each_and_accepts_4_full_runs(tiny_bert, sentiment_files, tmp_path):
    base = _base(tiny_bert, sentiment_files, tmp_path)
    sequential = SelectionSettings(top_k=3, seeds=2, sequential=True)
    plan = plan_search(base, SearchSettings(full_run_equivalents=4, selection=sequential))
    # 48 steps (the fixed rule refuses 4 runs): one re-run of the untuned run and the first re-runs of the 2
    # best challengers are reserved as trials are admitted. Exploration is not capped below the whole budget:
    # an untuned run that learns nothing releases its reserve (admission holds it back only while needed).
    assert plan.total_steps == 48 and plan.budget.steps == 48 and plan.rerun_budget.planned_reserve_steps() == 12
    assert plan.rerun_budget.seeds == 1 and plan.rerun_budget.challengers == 2
    with pytest.raises(ConfigError, match="selection reserve of 8 full runs"):
        plan_search(
            base, SearchSettings(full_run_equivalents=4, selection=SelectionSettings(top_k=4, sequential=False))
        )
    assert SearchSettings.from_dict({"selection": {"sequential": True}}).selection.sequential
    # Accuracy starts at the validation split's majority share, give or take its standard error over the
    # 32 validation rows: an untuned run there gets no reserved re-run (hpo.finetune.admission).
    constant = plan.constant_prediction
    labels = [row["label"] for row in map(json.loads, open(sentiment_files["validation"]))]
    majority = max(labels.count(label) for label in set(labels)) / len(labels)
    assert constant.flat == pytest.approx(majority) and constant.noise == pytest.approx(0.5 / 32**0.5)
    assert plan.rerun_budget.constant_prediction == constant
    loss = plan_search(base, SearchSettings(full_run_equivalents=4, objective=Objective(metric="loss")))
    assert loss.constant_prediction is None  # a loss has no constant-prediction score here
    assert loss.budget.steps == 48 - 12  # so the untuned run's re-run stays out of exploration's reach


def test_evaluating_at_the_rungs_lists_the_schedulers_rungs_up_to_the_budget(tiny_bert, sentiment_files, tmp_path):
    base = _base(tiny_bert, sentiment_files, tmp_path, num_train_epochs=3)  # 36 steps, evaluated every 4
    plan = plan_search(
        base, SearchSettings(full_run_equivalents=4, evaluate_at="rungs", objective=Objective(cv_folds=None))
    )
    # Hyperband compares trials at 4 x 3^k steps; a 144-step budget holds no trial past 144.
    assert plan.min_steps == 4 and plan.evaluation_steps == (4, 12, 36, 108)
    assert plan.search_evaluations(base)["training.eval_at_steps"] == [4, 12, 36, 108]
    assert plan.search_evaluations(base)["training.eval_steps"] is None
    # A trial at twice the batch reaches each rung's rows in half the optimizer steps.
    double = _base(tiny_bert, sentiment_files, tmp_path, num_train_epochs=3, gradient_accumulation_steps=2)
    assert plan.search_evaluations(double)["training.eval_at_steps"] == [2, 6, 18, 54]
    folds = plan_search(
        base, SearchSettings(full_run_equivalents=4, evaluate_at="rungs", objective=Objective(cv_folds=3))
    )
    assert folds.evaluation_steps is None  # cross-validation evaluates every interval
    with pytest.raises(ConfigError, match="search.evaluate_at: 'rungs'.*'median' has no rungs"):
        SearchSettings(evaluate_at="rungs", scheduler="median")
    with pytest.raises(ConfigError, match="search.evaluate_at: expected"):
        SearchSettings(evaluate_at="sometimes")


@pytest.mark.parametrize("seed", [-1, 1.5, True, None])
def test_search_seed_must_be_a_non_negative_integer(seed):
    with pytest.raises(ConfigError, match="search.seed: expected an integer >= 0"):
        SearchSettings(seed=seed)


def test_settings_default_budget_is_written_once():
    assert SearchSettings().full_run_equivalents == DEFAULT_FULL_RUN_EQUIVALENTS
    assert SearchSettings.from_dict({}).full_run_equivalents == DEFAULT_FULL_RUN_EQUIVALENTS
    only_trials = SearchSettings.from_dict({"budget": {"trials": 5}})
    assert only_trials.full_run_equivalents is None and only_trials.budget == Budget(trials=5)
    assert SearchSettings(budget=Budget(trials=5)).full_run_equivalents is None


def test_flags_and_a_recipe_section_give_the_same_settings():
    flags = build_parser().parse_args(
        ["search", "config.yaml", "--sampler", "random", "--budget-fre", "5", "--top-k", "2", "--cv-folds", "none"]
        + ["--sequential", "--rungs", "smooth", "--no-lr-range-test", "--min-trial-optimizer-steps", "0"]
    )
    recipe = {
        "sampler": "random",
        "budget": {"full_run_equivalents": 5},
        "selection": {"top_k": 2, "sequential": True},
        "objective": {"cv_folds": None, "rungs": "smooth"},
        "lr_range_test": False,
        "min_trial_optimizer_steps": 0,
    }
    assert _search_settings(flags) == SearchSettings.from_dict(recipe)
    assert _search_settings(build_parser().parse_args(["search", "config.yaml"])) == SearchSettings()


def test_tunelab_search_says_which_recipe_sections_it_does_not_read(
    tiny_bert, sentiment_files, tmp_path, monkeypatch, capsys
):
    import yaml

    import hpo.finetune
    from recipes.cli import main

    given = []
    monkeypatch.setattr(hpo.finetune, "search_finetune", lambda config, settings, **kw: given.append(settings))
    raw = classification_config(tiny_bert, sentiment_files, tmp_path / "out")
    plain, recipe = tmp_path / "plain.yaml", tmp_path / "recipe.yaml"
    plain.write_text(yaml.safe_dump(raw))
    recipe.write_text(yaml.safe_dump({**raw, "search": {"sampler": "grid"}, "seeds": 3}))
    assert main(["search", str(plain), "--sampler", "random"]) == 0
    assert "not here" not in capsys.readouterr().err
    assert main(["search", str(recipe), "--sampler", "random"]) == 0
    assert "its search, seeds section(s) are read by `tunelab run`" in capsys.readouterr().err
    assert [settings.sampler for settings in given] == ["random", "random"]  # the flags, not the recipe's


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"also_tune": ["optimizer"], "space": {"training.learning_rate": {"type": "float", "low": 1, "high": 2}}},
            "extends the default space",
        ),
        ({"isolation": "thread"}, "search.isolation"),
        ({"budget": {"trials": 0}}, r"search.budget.trials must be > 0"),
        ({"space": {"training.lr": {"type": "float", "low": 1, "high": 2}}}, "unknown key 'training.lr'"),
        ({"space": {"training.learning_rate": {"type": "float", "low": 2, "high": 1}}}, "empty range"),
    ],
)
def test_bad_settings_are_config_errors_naming_the_key(settings, message):
    with pytest.raises(ConfigError, match=message):
        SearchSettings.from_dict(settings)


def test_no_untuned_trial_turns_the_reruns_off_before_the_budget_check():
    settings = SearchSettings(full_run_equivalents=2, include_untuned=False)
    assert not settings.selection.enabled
    with pytest.raises(ConfigError, match="selection reserve"):
        SearchSettings(full_run_equivalents=2)


def test_budget_steps_are_steps_at_the_untuned_runs_batch(tiny_bert, sentiment_files, tmp_path):
    """A step of a larger batch costs (and has seen) proportionally more: the budget, a trial's length and
    its evaluation interval count steps of the untuned run's effective batch (8 here)."""
    base = _base(tiny_bert, sentiment_files, tmp_path, num_train_epochs=3)  # 96 rows: 36 steps at batch 8
    plan = plan_search(base, SearchSettings(full_run_equivalents=4))
    assert plan.full_run_steps == 36 and plan.min_steps == 4
    for per_device, accumulation, optimizer_steps, interval in ((8, 4, 9, 1), (16, 1, 18, 2), (4, 1, 72, 8)):
        config = _base(
            tiny_bert,
            sentiment_files,
            tmp_path,
            num_train_epochs=3,
            per_device_train_batch_size=per_device,
            gradient_accumulation_steps=accumulation,
        )
        # Three epochs of the same rows: the untuned run's length, whatever the batch.
        assert plan.trial_length(config) == 36
        assert plan.budget_steps(config, optimizer_steps) == 36
        assert plan.search_evaluations(config)["training.eval_steps"] == interval


def test_the_floor_on_a_sampled_trials_steps_is_a_third_of_the_untuned_run_at_most_100(
    tiny_bert, sentiment_files, tmp_path
):
    base = _base(tiny_bert, sentiment_files, tmp_path, num_train_epochs=3)  # 96 rows: 36 steps at batch 8
    assert plan_search(base, SearchSettings(full_run_equivalents=4)).min_trial_optimizer_steps == 12
    given = SearchSettings(full_run_equivalents=4, min_trial_optimizer_steps=5)
    assert plan_search(base, given).min_trial_optimizer_steps == 5
    long = _base(tiny_bert, sentiment_files, tmp_path, num_train_epochs=30)  # 360 steps: a third is 120
    assert plan_search(long, SearchSettings(full_run_equivalents=4)).min_trial_optimizer_steps == 100
    grid = SearchSettings(sampler="grid", space=SearchSpace({"training.learning_rate": Categorical(choices=(1e-3,))}))
    assert plan_search(base, grid).min_trial_optimizer_steps == 0  # a grid runs its points as written
    for bad in (-1, 2.5, True, "auto"):
        with pytest.raises(ConfigError, match="search.min_trial_optimizer_steps: expected an integer >= 0"):
            SearchSettings(min_trial_optimizer_steps=bad)


def test_a_trial_may_be_shortened_to_a_third_of_the_untuned_run_whatever_the_interval_rounds_to(
    tiny_bert, sentiment_files, tmp_path
):
    """96 rows at batch 12 for 3 epochs: a 24-step untuned run evaluated every round(24 / 9) = 3 steps. Its
    third, 8 steps, is one epoch: a 2-epoch proposal that does not fit runs for 1 epoch, though 3 rounded
    intervals (9 steps) would be longer."""
    base = _base(tiny_bert, sentiment_files, tmp_path, num_train_epochs=3, per_device_train_batch_size=12)
    space = SearchSpace({EPOCHS: Categorical(choices=(1, 2, 3))})
    plan = plan_search(base, SearchSettings(full_run_equivalents=4, space=space))
    assert plan.full_run_steps == 24 and plan.min_steps == 3 and plan.shortest_trial_steps == 8

    def length(params):
        return plan.trial_length(base.with_overrides(params))

    variant, steps = longest_fitting(
        {EPOCHS: 2}, plan.space, length=length, fits=lambda n: n <= 12, shortest=plan.shortest_trial_steps
    )
    assert (variant[EPOCHS], steps) == (1, 8)
    # Under cross-validation the third counts all folds: each fold still runs a third of its own run.
    folds = plan_search(base, SearchSettings(full_run_equivalents=4, space=space, objective=Objective(cv_folds=3)))
    assert folds.shortest_trial_steps == folds.full_run_steps // 3


def test_exploration_ends_when_what_is_left_is_shorter_than_any_trial_the_space_can_propose(
    tiny_bert, sentiment_files, tmp_path
):
    """96 rows at batch 12 for 3 epochs (24 steps): the space's fewest epochs bound every proposal's length,
    whatever batch it takes (budget steps count rows), up to the shortening floor (a third: 8 steps)."""
    base = _base(tiny_bert, sentiment_files, tmp_path, num_train_epochs=3, per_device_train_batch_size=12)

    def fewest(space, **settings):
        return plan_search(base, SearchSettings(full_run_equivalents=4, space=space, **settings)).rerun_budget

    batches = {"training.effective_batch_size": Categorical(choices=(4, 12, 32))}
    assert fewest(SearchSpace({EPOCHS: Categorical(choices=(2, 3)), **batches})).shortest_proposal_steps == 8
    one_epoch = fewest(SearchSpace({EPOCHS: Categorical(choices=(1, 2, 3)), **batches}))
    assert one_epoch.shortest_proposal_steps == 8 and one_epoch.shortest_useful_steps == 3
    half_epoch = fewest(SearchSpace({EPOCHS: Float(low=0.5, high=3)}))
    assert half_epoch.shortest_proposal_steps == 4  # half of one epoch's 8 steps
    assert fewest(SearchSpace({"training.max_steps": Categorical(choices=(4, 24))})).shortest_proposal_steps == 0
    # Under cross-validation every fold counts.
    space = SearchSpace({EPOCHS: Categorical(choices=(1, 3))})
    folds = plan_search(base, SearchSettings(full_run_equivalents=4, space=space, objective=Objective(cv_folds=3)))
    assert (folds.trial_rows, folds.full_run_steps, folds.shortest_trial_steps) == (85, 72, 24)
    # Every row of the 3 folds once at batch 12, 21.25 steps, floored: a one-epoch trial runs 3 x 8 = 24.
    assert folds.rerun_budget.shortest_proposal_steps == 21
