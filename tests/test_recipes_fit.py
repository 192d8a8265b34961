"""The fit rule (recipes.fit) on hand-made learning curves: each label where it should be, and only there."""

import pytest

from recipes.fit import diagnose_arm, diagnose_run


def _evals(train, validation, key="accuracy"):
    return [
        {"step": i + 1, f"train_{key}": t, f"eval_{key}": v}
        for i, (t, v) in enumerate(zip(train, validation, strict=True))
    ]


@pytest.mark.parametrize(
    ("train", "validation", "label"),
    [
        ([0.80, 0.95, 0.99], [0.82, 0.86, 0.83], "overfitting"),  # gap 16 points, validation fell 3
        ([0.80, 0.95, 0.99], [0.82, 0.86, 0.87], "overfitting"),  # a 12-point gap, validation still at its best
        ([0.80, 0.90, 0.93], [0.82, 0.86, 0.87], "good fit"),  # a 6-point gap, validation still at its best
        ([0.60, 0.63, 0.63], [0.61, 0.64, 0.635], "underfitting"),  # flat, but not even fitting its training rows
        ([0.52, 0.53, 0.55], [0.51, 0.52, 0.54], "underfitting"),  # near chance for 2 labels
        ([0.60, 0.70, 0.80], [0.60, 0.70, 0.79], "underfitting"),  # no gap, still climbing at the end
        ([0.85, 0.88, 0.89], [0.86, 0.88, 0.885], "good fit"),  # no gap, flat at the end, far above chance
    ],
)
def test_labels(train, validation, label):
    assert diagnose_run(_evals(train, validation), "accuracy", True, labels=2)["label"] == label


def test_loss_only_tasks_read_the_gap_the_other_way():
    overfit = _evals([2.0, 1.2, 0.6], [2.1, 1.8, 2.0], key="loss")
    assert diagnose_run(overfit, "loss", False)["label"] == "overfitting"
    assert diagnose_run(overfit, "loss", False)["gap"] == pytest.approx(1.4)


def test_arm_label_is_the_majority_and_reports_the_variance():
    runs = [
        {"evaluations": _evals([0.8, 0.99], [0.85, 0.80]), "test": {"test_accuracy": 0.80}},
        {"evaluations": _evals([0.8, 0.99], [0.85, 0.81]), "test": {"test_accuracy": 0.82}},
        {"evaluations": _evals([0.8, 0.90], [0.85, 0.86]), "test": {"test_accuracy": 0.84}},
    ]
    arm = diagnose_arm(runs, "accuracy", True, labels=2)
    assert arm["label"] == "overfitting" and arm["votes"] == {"overfitting": 2, "good fit": 1}
    assert arm["test_std"] == pytest.approx(0.02) and arm["test_variance"] == pytest.approx(0.0004)
    assert (
        diagnose_arm([{"evaluations": [{"step": 1, "eval_accuracy": 0.5}], "test": {}}], "accuracy", True)["label"]
        == "unknown"
    )
