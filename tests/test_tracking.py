"""Experiment tracking: TensorBoard logs per trial in the run folder; the search journal opened by optuna-dashboard."""

import json
from wsgiref.util import setup_testing_defaults

from conftest import classification_config
from synthetic import SPACE, curve_objective
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from finetune import ConfigError, FinetuneConfig
from hpo import Budget, Categorical, Fixed, Float, SearchSettings, SearchSpace, StudySettings, optimize, search_finetune
from hpo.optimize import PlannedTrial


def test_every_trial_of_a_search_logs_its_loss_and_evaluations_to_tensorboard(tiny_bert, sentiment_files, tmp_path):
    raw = classification_config(
        tiny_bert,
        sentiment_files,
        tmp_path / "unused",
        training={"max_steps": 4, "eval_steps": 2, "logging_steps": 1, "report_to": ["tensorboard"]},
    )
    space = SearchSpace({"training.learning_rate": Float(low=1e-4, high=1e-2, log=True)})
    settings = SearchSettings(space=space, sampler="random", scheduler="none", budget=Budget(trials=3), progress=False)
    search = search_finetune(FinetuneConfig.from_dict(raw), settings, run_dir=tmp_path / "search")
    assert len(search.result.trials) == 3
    for trial in search.result.trials:
        logs = tmp_path / "search" / "trials" / f"trial_{trial.number:04d}" / "logs"
        events = EventAccumulator(str(logs))
        events.Reload()
        tags = set(events.Tags()["scalars"])
        assert {"train/loss", "eval/loss", "eval/accuracy"} <= tags, (trial.number, tags)
        # Search trials evaluate every 1/9 of the untuned run (here every step): the schedulers' rungs.
        assert [e.step for e in events.Scalars("eval/loss")] == [1, 2, 3, 4]
        assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]


def test_an_unknown_or_missing_tracker_is_a_config_error(tiny_bert, sentiment_files, tmp_path):
    import pytest

    import finetune

    raw = classification_config(tiny_bert, sentiment_files, tmp_path / "run", training={"report_to": "comet"})
    with pytest.raises(ConfigError, match="training.report_to: expected 'none' or a list drawn from"):
        FinetuneConfig.from_dict(raw)
    raw["training"]["report_to"] = ["wandb"]  # a known tracker that is not installed here
    with pytest.raises(ConfigError, match="training.report_to: 'wandb' is not installed"):
        finetune.train(FinetuneConfig.from_dict(raw))
    assert not (tmp_path / "run").exists()


def _get(app, path):
    environ = {}
    setup_testing_defaults(environ)
    environ["PATH_INFO"] = path
    status = []
    body = b"".join(app(environ, lambda code, headers, exc_info=None: status.append(code)))
    return status[0], json.loads(body)


def test_optuna_dashboard_opens_the_search_journal(tmp_path):
    from optuna_dashboard import wsgi

    journal = tmp_path / "study.journal"
    space = SearchSpace(
        {**SPACE.parameters, "training.weight_decay": Fixed(value=0.01), "method.lora_r": Categorical(choices=(8,))}
    )
    # The untuned run's scheduler is one the space does not offer: it runs as given, outside the space.
    given = {"training.learning_rate": 5e-5, "training.num_train_epochs": 3, "training.lr_scheduler_type": "polynomial"}
    untuned = PlannedTrial(given, role="untuned")
    optimize(
        curve_objective(max_steps=3),
        space,
        budget=Budget(trials=4),
        settings=StudySettings(sampler="random", storage=str(journal), study_name="search", progress=False),
        first_params=[untuned],
    )
    app = wsgi(str(journal))  # what `optuna-dashboard runs/..._search/study.journal` serves
    status, studies = _get(app, "/api/studies")
    assert status == "200 OK" and [s["study_name"] for s in studies["study_summaries"]] == ["search"]
    status, detail = _get(app, f"/api/studies/{studies['study_summaries'][0]['study_id']}")
    assert status == "200 OK" and len(detail["trials"]) == 4
    for trial in detail["trials"]:
        assert [v["step"] for v in trial["intermediate_values"]] == [1, 2, 3]
        # Every parameter the trial ran is shown: sampled ones as params, fixed and given ones as user attrs.
        attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
        shown = {p["name"] for p in trial["params"]} | set(json.loads(attrs.get("params", "{}")))
        if attrs.get("role") == "untuned":
            assert json.loads(attrs["given_params"]) == given and set(given) <= shown
        else:
            assert {"training.learning_rate", "training.weight_decay", "method.lora_r"} <= shown
