"""The smooth rung signal: schedulers compare the validation loss where the metric has not moved yet."""

import pytest
from conftest import causal_config, classification_config

from finetune import ConfigError, FinetuneConfig
from finetune.metrics import constant_prediction_metrics
from hpo import Budget, Categorical, SearchSpace, StudySettings, optimize
from hpo.finetune import Objective, SearchSettings, plan_search
from hpo.rung_signal import RungSignal, rate_noise

SIGNAL = RungSignal(flat=0.51, noise=0.05)


def test_trials_that_moved_rank_by_the_metric_and_the_others_by_their_loss():
    up, flat_low_loss, flat_high_loss, down = (
        SIGNAL.value(0.60, 0.9, maximize=True),
        SIGNAL.value(0.50, 0.60, maximize=True),
        SIGNAL.value(0.53, 0.69, maximize=True),
        SIGNAL.value(0.40, 0.1, maximize=True),
    )
    assert up == 0.60 and down == 0.40  # beyond the noise: the metric itself
    assert up > flat_low_loss > flat_high_loss > down  # within it: the lower loss first, whatever the metric
    assert 0.46 < flat_high_loss < flat_low_loss < 0.56
    # A metric to minimize (e.g. an error rate starting at 0.49) mirrors it: lower is better.
    error = RungSignal(flat=0.49, noise=0.05)
    assert error.value(0.30, 0.9, maximize=False) == 0.30
    assert error.value(0.30, 0.9, maximize=False) < error.value(0.50, 0.6, maximize=False)
    assert error.value(0.50, 0.6, maximize=False) < error.value(0.48, 0.69, maximize=False) < 0.54


def test_where_a_constant_prediction_starts():
    flat = constant_prediction_metrics(["pos", "pos", "neg", 1])
    assert flat["accuracy"] == 0.5  # the majority share
    assert flat["macro_f1"] == pytest.approx((2 * 2 / (2 * 2 + 2)) / 3)  # "pos" for every row, 3 classes
    assert rate_noise(100) == 0.05


def _flat_then_rising(order: list[str]):
    """Arms in ``order``: "good" is at chance (and a hair below the others) at step 1 with a falling loss,
    then reaches 0.9; "bad" stays at the majority share with a flat loss."""

    def objective(params, reporter):
        good = order[params["arm"]] == "good"
        value = 0.51
        for step in range(1, 10):
            if good:
                value, loss = (0.50, 0.60) if step < 3 else (0.90, 0.30)
            else:
                loss = 0.69
            reporter.report(step, value, loss)
            if reporter.should_stop():
                return value
        return value

    return objective


@pytest.mark.parametrize("rungs", ["metric", "smooth"])
def test_metric_rungs_stop_the_arm_that_learns_later_and_the_smooth_signal_keeps_it(rungs):
    order = ["bad", "bad", "good", "bad"]
    space = SearchSpace({"arm": Categorical(choices=tuple(range(len(order))))})
    settings = StudySettings(
        sampler="grid",
        scheduler="sha",
        min_steps=1,
        max_steps=9,
        progress=False,
        rung_signal=SIGNAL if rungs == "smooth" else None,
    )
    result = optimize(_flat_then_rising(order), space, budget=Budget(trials=len(order)), settings=settings)
    by_arm = {t.params["arm"]: t for t in result.trials}
    good = by_arm[order.index("good")]
    if rungs == "metric":  # 0.50 against 0.51 at the first rung: stopped, and a flat arm wins
        assert good.state == "PRUNED" and good.steps == 1 and result.best_value == 0.51
    else:
        assert good.state == "COMPLETE" and result.best_value == 0.90
        late_bad = by_arm[3]  # after the good arm, its higher loss loses the first rung
        assert late_bad.state == "PRUNED" and late_bad.steps == 1
        assert late_bad.value == 0.51  # the table shows the metric, not the scheduler's value


def _base(tiny_bert, sentiment_files, tmp_path):
    training = {"max_steps": -1, "num_train_epochs": 1, "eval_steps": None}
    return FinetuneConfig.from_dict(
        classification_config(tiny_bert, sentiment_files, tmp_path / "unused", training=training)
    )


def test_a_smooth_search_anchors_at_the_validation_majority_share(tiny_bert, sentiment_files, tmp_path):
    base = _base(tiny_bert, sentiment_files, tmp_path)
    plan = plan_search(base, SearchSettings(budget=Budget(trials=2), objective=Objective(rungs="smooth")))
    assert plan.rung_signal is not None and 0.5 <= plan.rung_signal.flat < 1
    assert plan.rung_signal.noise == pytest.approx(rate_noise(len(_validation_labels(base))))
    assert plan.rung_signal.flat == constant_prediction_metrics(_validation_labels(base))["accuracy"]
    metric = Objective(rungs="metric")
    assert plan_search(base, SearchSettings(budget=Budget(trials=2), objective=metric)).rung_signal is None
    loss = Objective(metric="loss", rungs="smooth")  # already smooth: nothing to add
    assert plan_search(base, SearchSettings(budget=Budget(trials=2), objective=loss)).rung_signal is None
    # The default (auto) is smooth for a classification metric.
    assert plan_search(base, SearchSettings(budget=Budget(trials=2))).rung_signal == plan.rung_signal


def test_smooth_rungs_need_a_metric_with_a_starting_point_and_auto_falls_back(tiny_llama, sft_files, tmp_path):
    base = FinetuneConfig.from_dict(causal_config(tiny_llama, sft_files["messages"], tmp_path / "unused"))
    exact_match = {"metric": "exact_match"}
    with pytest.raises(ConfigError, match="rungs: smooth needs a classification metric"):
        plan_search(base, SearchSettings(budget=Budget(trials=2), objective=Objective(**exact_match, rungs="smooth")))
    auto = SearchSettings(budget=Budget(trials=2), objective=Objective(**exact_match, rungs="auto"))
    assert plan_search(base, auto).rung_signal is None


def _validation_labels(base):
    from finetune.data import load_splits

    return load_splits(base.data).validation[base.data.label_column]


def test_bad_rungs_settings_are_named():
    with pytest.raises(ConfigError, match="search.objective.rungs must be 'auto', 'metric' or 'smooth'"):
        Objective(rungs="loss")
