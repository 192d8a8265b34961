"""Searches around finetune.train on a tiny model."""

import csv
import json
import math
import os
from pathlib import Path

import pytest
from conftest import classification_config

from finetune import FinetuneConfig
from finetune.train import CONFIG_FILE
from hpo import Budget, Categorical, Float, SearchSpace
from hpo.finetune import Objective, SearchSettings, search_finetune

SMALL_SPACE = SearchSpace(
    {
        "training.learning_rate": Float(low=1e-4, high=1e-2, log=True),
        "training.effective_batch_size": Categorical(choices=(8, 16)),
        "method.lora_r": Categorical(choices=(4, 8)),
    }
)


def _base(tiny_bert, sentiment_files, tmp_path, **training):
    raw = classification_config(
        tiny_bert,
        sentiment_files,
        tmp_path / "unused",
        training={"max_steps": -1, "num_train_epochs": 1, "eval_steps": None, "learning_rate": 5e-5, **training},
    )
    return FinetuneConfig.from_dict(raw)


def _random_search(base, run_dir, *, space=SMALL_SPACE, **settings):
    """A random search without a scheduler (every trial runs to its end), quiet; ``settings`` add the rest."""
    return search_finetune(
        base,
        SearchSettings(space=space, sampler="random", scheduler="none", progress=False, **settings),
        run_dir=run_dir,
    )


def test_search_runs_untuned_first_then_selects_the_winner_over_fresh_seeds(tiny_bert, sentiment_files, tmp_path):
    base = _base(tiny_bert, sentiment_files, tmp_path)
    search = search_finetune(
        base,
        SearchSettings(
            space=SMALL_SPACE, sampler="tpe", scheduler="hyperband", full_run_equivalents=10, progress=False
        ),
        run_dir=tmp_path / "search",
    )
    result = search.result
    # 96 rows / batch 8, one epoch: the untuned run is 12 steps. 10 full runs = 120 steps for exploring and
    # for the re-runs (top_k=3 candidates x seeds=2); the whole stays within the budget.
    assert search.full_run_steps == 12
    assert result.stop_reason.startswith("step budget spent") and 48 <= result.steps_spent <= 96
    assert result.trials[0].extra.get("role") == "untuned"
    assert result.trials[0].params["training.learning_rate"] == 5e-5
    selection = search.selection
    # The untuned run and the best challenger always; the third only if its re-runs fit what is left.
    assert [c.role for c in selection.candidates][0] == "untuned" and len(selection.candidates) in (2, 3)
    assert all(len(c.values) == 2 for c in selection.candidates)
    replicates = sorted(p.name for p in (tmp_path / "search" / "selection").glob("trial_*/replicate_*.json"))
    assert len(replicates) == 2 * len(selection.candidates)
    assert not list((tmp_path / "search" / "selection").glob("trial_*/replicate_*/model"))  # scores only
    kept = list((tmp_path / "search" / "trials").glob("trial_*/model"))
    assert 1 <= len(kept) <= 3
    winner = next(t for t in result.trials if t.number == selection.winner)
    assert search.best_checkpoint == winner.extra["checkpoint"]
    if selection.kept_baseline:
        assert search.best_config == base
    assert search.best_config.training.output_dir != search.best_checkpoint
    assert search.metric == "eval_accuracy" and result.direction == "maximize"
    summary = json.loads((tmp_path / "search" / "summary.json").read_text())
    assert summary["winner_trial"] == selection.winner
    assert summary["full_run_equivalents_spent"] == pytest.approx((result.steps_spent + selection.steps) / 12)
    assert result.steps_spent + selection.steps <= 120
    assert summary["full_run_equivalents_budget"] == 10
    assert summary["budget"]["steps"] == 96  # exploration never gets the untuned run's 2 re-runs
    # Where the time went: every trial's and re-run's stages summed; the search's wall time covers them all.
    times = summary["time_breakdown"]
    ran = [t for t in result.trials if t.state in ("COMPLETE", "PRUNED") and t.steps > 0]  # trained, not refused
    per_trial = [t.extra["time_breakdown"] for t in ran]
    assert all(t["training"] > 0 for t in per_trial) and times["trials"]["evaluation"] > 0
    assert times["trials"]["training"] == pytest.approx(sum(t["training"] for t in per_trial), abs=0.01)
    assert times["reruns"]["training"] > 0 and times["reruns"]["evaluation"] > 0
    in_runs = sum(times["trials"].values()) + sum(times["reruns"].values())
    wall = times["wall_seconds_this_invocation"]
    # Between runs: what this invocation spent outside its runs (sampling, storage); the rest of the wall
    # time is the runs' clean-up (gc, handing memory back), which no stage counts.
    assert 0 <= times["between_runs_this_invocation"] and in_runs + times["between_runs_this_invocation"] <= wall


def test_sequential_selection_at_4_full_runs_stays_in_the_budget(tiny_bert, sentiment_files, tmp_path):
    from hpo import SelectionSettings

    base = _base(tiny_bert, sentiment_files, tmp_path)
    search = _random_search(
        base,
        tmp_path / "search",
        full_run_equivalents=4,
        selection=SelectionSettings(top_k=3, seeds=2, sequential=True),
    )
    # 4 x 12 = 48 steps: admission holds back one untuned re-run (12) unless the untuned run learnt nothing
    # (accuracy at the majority share), and the challengers' first re-runs; the re-runs get what is left.
    summary = json.loads((tmp_path / "search" / "summary.json").read_text())
    assert summary["budget"]["steps"] == 48
    selection = search.selection
    assert search.result.steps_spent + selection.steps <= 48
    challengers = [c for c in selection.candidates if c.role != "untuned"]
    assert challengers and all(1 <= len(c.values) <= 2 for c in challengers)  # each re-run once, at most twice
    recorded = json.loads((tmp_path / "search" / "selection" / "selection.json").read_text())
    assert recorded["winner"] == selection.winner and recorded["reason"] == selection.reason
    replicates = list((tmp_path / "search" / "selection").glob("trial_*/replicate_*.json"))
    assert len(replicates) == sum(len(c.values) for c in selection.candidates)


def test_re_ranking_without_the_untuned_trial_re_runs_the_top_trials_once_within_the_budget(
    tiny_bert, sentiment_files, tmp_path
):
    from hpo import SelectionSettings

    base = _base(tiny_bert, sentiment_files, tmp_path)
    search = _random_search(
        base,
        tmp_path / "search",
        full_run_equivalents=4,
        include_untuned=False,
        selection=SelectionSettings(top_k=2, seeds=1),
        seed=2,
    )
    result, selection = search.result, search.selection
    assert all(t.extra.get("role") != "untuned" for t in result.trials)
    assert result.steps_spent + selection.steps <= 48  # 4 x 12 steps, the re-runs included
    top = [t.number for t in result.ranked()[:2]]
    assert [c.trial for c in selection.candidates] == top and all(len(c.values) <= 1 for c in selection.candidates)
    assert len(selection.candidates[0].values) == 1  # the best trial's re-run is always kept room for
    scores = {c.trial: c.values[0] for c in selection.candidates if c.values}
    assert selection.winner == max(scores, key=scores.get)  # accuracy: the best re-run wins
    summary = json.loads((tmp_path / "search" / "summary.json").read_text())
    assert summary["winner_trial"] == selection.winner and summary["selection_settings"]["seeds"] == 1
    # Re-runs draw seeds of their search's own (search seed 2): other searches sample other re-run noise.
    reruns = [json.loads(p.read_text()) for p in (tmp_path / "search" / "selection").glob("trial_*/replicate_0.json")]
    assert reruns and {r["overrides"]["training.seed"] for r in reruns} == {12_000}


def test_re_ranking_holds_a_sampled_winner_to_the_warm_start_row_by_row(tiny_bert, sentiment_files, tmp_path):
    from hpo import SelectionSettings

    base = _base(tiny_bert, sentiment_files, tmp_path, mixed_precision="no")  # fp32: rows and run agree to 1e-6
    search = _random_search(
        base,
        tmp_path / "search",
        full_run_equivalents=6,
        include_untuned=False,
        warm_start=({"training.learning_rate": 3e-3},),
        objective=Objective(metric="loss", cv_folds=None),
        selection=SelectionSettings(top_k=3, seeds=1, incumbent_z=1.0),
        seed=3,
    )
    selection = search.selection
    rerun = [c for c in selection.candidates if c.values]
    assert len(rerun) >= 2
    for candidate in rerun:  # one share per validation row, averaging to the re-run's loss
        (rows,) = candidate.row_scores
        assert len(rows) == 32 and sum(rows) / len(rows) == pytest.approx(candidate.values[0], abs=1e-5)
    recorded = json.loads((tmp_path / "search" / "selection" / "selection.json").read_text())
    assert all(len(c["row_scores"]) == len(c["values"]) for c in recorded["candidates"])
    warm = [c for c in rerun if c.role == "warm_start"]
    best = min(rerun, key=lambda c: c.values[0])
    if warm and best.role != "warm_start":  # the test ran: its verdict is in the reason
        assert "by more than 1 standard errors" in selection.reason or "within 1 standard errors" in selection.reason
        gains = [w - b for w, b in zip(warm[0].row_scores[0], best.row_scores[0], strict=True)]
        beaten = sum(gains) / len(gains) > selection.margin
        assert selection.winner == (best.trial if beaten else warm[0].trial)


def test_a_re_run_whose_rows_cannot_be_scored_keeps_its_score(
    tiny_bert, sentiment_files, tmp_path, monkeypatch, capsys
):
    import hpo.finetune.reruns as reruns
    from hpo.finetune.plan import Scoring

    def broken(run_dir):
        raise RuntimeError("no rows")

    monkeypatch.setattr(reruns, "row_losses", broken)
    base = _base(tiny_bert, sentiment_files, tmp_path, mixed_precision="no")
    scoring = Scoring(metric="eval_loss", direction="minimize", use="best", folds=None)
    score, steps, rows = reruns.rerun_candidate(base, 0, 0, tmp_path / "selection", scoring, seed=5, rows=True)
    assert rows is None and math.isfinite(score) and steps == 12  # described nothing, disqualified nothing
    assert "could not be scored one by one: RuntimeError: no rows" in capsys.readouterr().err


def test_evaluating_at_the_rungs_evaluates_trials_and_re_runs_there_and_at_their_last_step(
    tiny_bert, sentiment_files, tmp_path
):
    from hpo import SelectionSettings

    base = _base(tiny_bert, sentiment_files, tmp_path)  # 12 steps; Hyperband's rungs at 1, 3, 9 (27...) steps
    search = search_finetune(
        base,
        SearchSettings(
            space=SMALL_SPACE,
            sampler="random",
            scheduler="hyperband",
            evaluate_at="rungs",
            full_run_equivalents=4,
            selection=SelectionSettings(top_k=2, seeds=1),
            objective=Objective(cv_folds=None),
            progress=False,
        ),
        run_dir=tmp_path / "search",
    )
    runs = [
        *(tmp_path / "search" / "trials").glob("trial_*"),
        *(tmp_path / "search" / "selection").glob("*/replicate_*/"),
    ]
    ran = [t for t in search.result.trials if t.steps]
    assert len(ran) >= 2 and any(run.name.startswith("replicate_") for run in runs)  # trials and re-runs
    for run in runs:
        result = json.loads((run / "run_result.json").read_text())
        steps = [evaluation["step"] for evaluation in result["evaluations"]]
        last = result["optimizer_steps"]
        # The rungs are in steps of the untuned batch (8): a batch-16 run evaluates where it first passes them.
        batch = FinetuneConfig.from_yaml(run / CONFIG_FILE).training.effective_batch_size
        rungs = sorted({math.ceil(rung * 8 / batch) for rung in (1, 3, 9)})
        assert steps == [s for s in rungs if s < last] + [last], run.name


def _strict_budget_search(base, tmp_path, *, epochs, seed):
    """Random search over the learning rate and ``epochs``, 10 untuned runs of budget, re-runs included."""
    space = SearchSpace(
        {
            "training.learning_rate": Float(low=1e-4, high=1e-2, log=True),
            "training.num_train_epochs": Categorical(choices=epochs),
        }
    )
    return _random_search(base, tmp_path / "search", space=space, full_run_equivalents=10, seed=seed)


def test_trials_whose_reruns_would_not_fit_run_shortened_and_the_budget_holds(tiny_bert, sentiment_files, tmp_path):
    base = _base(tiny_bert, sentiment_files, tmp_path)
    # The untuned run: 1 epoch at batch 8 = 12 steps; budget 10 full runs = 120 steps. A challenger of E
    # epochs is 12 x E steps and costs as much again twice if it becomes the best: after the untuned run
    # (12 + its 2 re-runs, 24) a 4-epoch trial (48 + 96) never fits, so it runs at 1 epoch, its learning rate
    # kept. 1-epoch runs (12 + 24) fit until 72 steps are spent (72 + 12 + 24 + 24 = 132 > 120); then what
    # is left (120 - 72 - 48 = 0) ends the search, with no room for a third candidate.
    search = _strict_budget_search(base, tmp_path, epochs=(1, 4), seed=3)
    result, selection = search.result, search.selection
    shortened = [t for t in result.trials if t.extra.get("shortened")]
    assert shortened and not any(t.extra.get("not_run") for t in result.trials)
    for trial in shortened:
        assert trial.params["training.num_train_epochs"] == 1 and trial.steps == 12
        assert trial.extra["shortened"].startswith("proposed {'training.num_train_epochs': 4} (48 steps)")
    assert all(t.steps == 12 for t in result.trials)  # every trial ran, at 1 epoch
    assert result.steps_spent == 72 and selection.steps == 48
    assert len(selection.candidates) == 2 and all(len(c.values) == 2 for c in selection.candidates)
    assert result.stop_reason.startswith("step budget spent: 72 of 120")
    summary = json.loads((tmp_path / "search" / "summary.json").read_text())
    assert summary["trials_shortened"] == len(shortened) and summary["trials_not_run"] == 0
    # trials.csv accounts for every number: each replaced proposal has a row naming the trial that ran.
    with open(tmp_path / "search" / "trials.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["number"]) for row in rows] == list(range(len(rows)))
    discarded = [row for row in rows if row["state"] == "DISCARDED"]
    assert len(discarded) == len(rows) - len(result.trials)
    replaced = [row for row in discarded if row["note"].startswith("not run: replaced by trial ")]
    assert len(replaced) == len(shortened)
    ended = [row["note"] for row in discarded if row not in replaced]
    assert ended == [f"not run: the search ended ({result.stop_reason})"]
    by_number = {int(row["number"]): row for row in rows}
    for row in replaced:
        replacement = by_number[int(row["note"].removeprefix("not run: replaced by trial "))]
        assert replacement["note"].startswith("shortened: proposed {'training.num_train_epochs': 4}")
        assert int(replacement["number"]) > int(row["number"])


def test_a_joint_samplers_proposal_is_refused_before_it_is_shortened(tiny_bert, sentiment_files, tmp_path):
    """The budget of the test above, with TPE (multivariate: its learning rate is drawn with its epochs): a
    4-epoch proposal that does not fit is refused, so that TPE draws a 1-epoch configuration from its own model;
    only after SHORTEN_AFTER_REFUSALS refusals in a row is one shortened. The random sampler shortens at once."""
    from hpo.finetune.admission import SHORTEN_AFTER_REFUSALS

    base = _base(tiny_bert, sentiment_files, tmp_path)
    space = SearchSpace(
        {
            "training.learning_rate": Float(low=1e-4, high=1e-2, log=True),
            "training.num_train_epochs": Categorical(choices=(1, 4)),
        }
    )
    settings = SearchSettings(space=space, sampler="tpe", scheduler="none", full_run_equivalents=10, progress=False)
    search = search_finetune(base, settings, run_dir=tmp_path / "search")
    trials = search.result.trials
    refused = [t for t in trials if t.extra.get("not_run")]
    assert refused and all(t.params["training.num_train_epochs"] == 4 for t in refused)
    # Each refused 4-epoch proposal would have run shortened under the random sampler: 1 epoch fitted then.
    assert all(t.failure.startswith("infeasible: not run: 48 steps") for t in refused)
    in_a_row = 0
    for trial in trials:
        if trial.extra.get("shortened"):
            assert in_a_row >= SHORTEN_AFTER_REFUSALS, f"trial {trial.number} shortened after {in_a_row} refusals"
        in_a_row = in_a_row + 1 if trial.extra.get("not_run") else 0
    assert all(t.steps == 12 for t in trials if not t.extra.get("not_run"))  # what ran is 1-epoch


def test_trials_with_no_shorter_version_that_fits_are_not_run(tiny_bert, sentiment_files, tmp_path):
    base = _base(tiny_bert, sentiment_files, tmp_path)
    # Only 4-epoch challengers (48 steps, 144 with their re-runs) after the untuned run (12 + 24 re-run):
    # none fits in 120, and the space has nothing shorter; each is recorded as not run, and after 20 in a
    # row the search ends. The untuned configuration is kept.
    search = _strict_budget_search(base, tmp_path, epochs=(4,), seed=0)
    result = search.result
    not_run = [t for t in result.trials if t.extra.get("not_run")]
    assert len(not_run) == 19 and all(t.steps == 0 for t in not_run)  # the 20th ends the search, discarded
    assert all(t.failure.startswith("infeasible: not run: 48 steps") for t in not_run)
    assert result.steps_spent == 12 and "the last 20 trials proposed were too long" in result.stop_reason
    assert search.selection.kept_baseline
    summary = json.loads((tmp_path / "search" / "summary.json").read_text())
    assert summary["trials"] == {"COMPLETE": 1, "PRUNED": 0, "FAIL": 0, "RUNNING": 0, "INFEASIBLE": 19}


def test_budget_without_room_for_the_selection_reserve_is_refused(tiny_bert, sentiment_files, tmp_path):
    from finetune.errors import ConfigError

    base = _base(tiny_bert, sentiment_files, tmp_path)
    with pytest.raises(ConfigError, match="selection reserve of 2 full runs"):  # the sequential rule's top 2
        search_finetune(
            base, SearchSettings(space=SMALL_SPACE, full_run_equivalents=2.5, progress=False), run_dir=tmp_path / "s"
        )


def test_effective_batch_is_split_by_memory_limit(tiny_bert, sentiment_files, tmp_path):
    base = _base(tiny_bert, sentiment_files, tmp_path)
    space = SearchSpace({"training.effective_batch_size": Categorical(choices=(16,))})
    search = _random_search(
        base, tmp_path / "s", space=space, budget=Budget(trials=2), include_untuned=False, max_per_device_batch=4
    )
    t = search.best_config.training
    assert (t.per_device_train_batch_size, t.gradient_accumulation_steps) == (4, 4)


def test_objective_last_and_minimize_loss(tiny_bert, sentiment_files, tmp_path):
    base = _base(tiny_bert, sentiment_files, tmp_path)
    search = _random_search(
        base, tmp_path / "s", budget=Budget(trials=2), objective=Objective(metric="loss", use="last")
    )
    assert search.metric == "eval_loss" and search.result.direction == "minimize"


def test_unknown_objective_metric_fails_trials_with_clear_message(tiny_bert, sentiment_files, tmp_path):
    from hpo import SearchError

    base = _base(tiny_bert, sentiment_files, tmp_path)
    with pytest.raises(SearchError, match="'eval_bleu' is not among the evaluation metrics"):
        _random_search(base, tmp_path / "s", budget=Budget(trials=5), objective=Objective(metric="bleu"))


def test_memory_does_not_grow_over_20_trials(tiny_bert, sentiment_files, tmp_path):
    import psutil

    process = psutil.Process(os.getpid())
    base = _base(tiny_bert, sentiment_files, tmp_path, max_steps=2, eval_steps=2)
    rss = []

    def record(result):
        rss.append(process.memory_info().rss)

    import finetune
    from hpo import StudySettings, optimize
    from hpo.finetune.trial_training import ReportToTrial

    def objective(params, reporter):
        config = base.with_overrides({**params, "training.output_dir": str(tmp_path / f"t{reporter.trial.number}")})
        finetune.train(config, callbacks=[ReportToTrial(reporter, "eval_accuracy")])
        return reporter.values[-1][1]

    optimize(
        objective,
        SearchSpace({"training.learning_rate": Float(low=1e-4, high=1e-2, log=True)}),
        budget=Budget(trials=20),
        on_trial_end=record,
        settings=StudySettings(sampler="random", progress=False),
    )
    growth = (rss[-1] - rss[0]) / rss[0]
    assert growth < 0.10, f"RSS grew {growth:.1%} from trial 1 to 20: {[r >> 20 for r in rss]} MiB"


def test_trial_folders_are_separate(tiny_bert, sentiment_files, tmp_path):
    base = _base(tiny_bert, sentiment_files, tmp_path)
    _random_search(base, tmp_path / "s", budget=Budget(trials=3))
    folders = sorted(Path(tmp_path / "s" / "trials").iterdir())
    assert [f.name for f in folders] == ["trial_0000", "trial_0001", "trial_0002"]
    assert all((f / "run_result.json").is_file() for f in folders)
    # Trials are scored on validation: the train-split metrics (the final report's plot) are not measured.
    evaluations = [e for f in folders for e in json.loads((f / "run_result.json").read_text())["evaluations"]]
    assert evaluations and not any(key.startswith("train_") for e in evaluations for key in e)


def test_cli_search_writes_outputs_and_resumes(tiny_bert, sentiment_files, tmp_path, capsys):
    import json

    import yaml

    from recipes.cli import main

    raw = classification_config(
        tiny_bert,
        sentiment_files,
        tmp_path / "run",
        training={"max_steps": -1, "num_train_epochs": 1, "eval_steps": None},
    )
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SMALL_SPACE.to_dict()))
    args = [
        "search",
        str(path),
        "--space",
        str(space),
        "--sampler",
        "random",
        "--scheduler",
        "none",
        "--budget-trials",
        "3",
        "--run-dir",
        str(tmp_path / "s"),
    ]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["trials"]["COMPLETE"] == 3
    for name in ("trials.csv", "trials.json", "summary.json", "best_config.yaml", "anytime.png", "study.journal"):
        assert (tmp_path / "s" / name).is_file(), name
    best = FinetuneConfig.from_yaml(tmp_path / "s" / "best_config.yaml")
    assert best.training.learning_rate == summary["best_params"].get("training.learning_rate", 5e-5)
    # Re-running with a larger budget resumes: the 3 finished trials are kept, 2 more run.
    assert main([*args[:-4], "--budget-trials", "5", "--run-dir", str(tmp_path / "s")]) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert resumed["trials"]["COMPLETE"] == 5
    assert main(["trials", str(tmp_path / "s")]) == 0
    table = capsys.readouterr().out
    assert table.count("COMPLETE") == 5 and "untuned" in table


def test_subprocess_isolation_gives_the_same_results(tiny_bert, sentiment_files, tmp_path):
    base = _base(tiny_bert, sentiment_files, tmp_path)
    runs = {}
    for isolation in ("none", "subprocess"):
        search = search_finetune(
            base,
            SearchSettings(
                space=SMALL_SPACE,
                sampler="random",
                scheduler="sha",
                budget=Budget(trials=3),
                isolation=isolation,
                progress=False,
            ),
            run_dir=tmp_path / isolation,
        )
        runs[isolation] = [(t.params, t.state, t.value, t.steps) for t in search.result.trials]
    assert runs["subprocess"] == runs["none"]


def test_a_stopped_trial_saw_exactly_what_the_full_trial_saw(tiny_bert, sentiment_files, tmp_path):
    """The LR schedule is planned over the trial's full length, so stopping early changes nothing before."""
    import finetune
    from hpo.finetune.trial_training import ReportToTrial

    base = _base(
        tiny_bert,
        sentiment_files,
        tmp_path,
        num_train_epochs=2,
        eval_steps=3,
        logging_steps=1,
        lr_scheduler_type="cosine",
        warmup_ratio=0.1,
    )

    class FakeReporter:
        def __init__(self, stop_at):
            self.stop_at, self.step, self.stop_reason, self.values, self.ends = stop_at, 0, None, [], []

        def report(self, step, value, smooth=None):
            self.step = step
            self.values.append((step, value))

        def should_stop(self, *, run_ends=False):
            self.ends.append((self.step, run_ends))
            if self.stop_at is not None and self.step >= self.stop_at:
                self.stop_reason = "pruned"
            return self.stop_reason is not None

        def add_steps(self, steps):
            pass

    full, stopped = FakeReporter(None), FakeReporter(6)
    full_run = finetune.train(
        base.with_overrides({"training.output_dir": str(tmp_path / "full")}),
        callbacks=[ReportToTrial(full, "eval_loss")],
    )
    short_run = finetune.train(
        base.with_overrides({"training.output_dir": str(tmp_path / "short")}),
        callbacks=[ReportToTrial(stopped, "eval_loss")],
    )
    assert full_run.optimizer_steps == 24 and short_run.optimizer_steps == 6 and short_run.planned_steps == 24
    assert stopped.values == full.values[:2]  # evaluations at steps 3 and 6, identical
    # Only the last evaluation is told the run ends there (where a budget stop would save nothing).
    assert full.ends == [(step, step == 24) for step in range(3, 25, 3)]
    assert short_run.train_losses == [e for e in full_run.train_losses if e["step"] <= 6]


def test_the_training_share_counts_the_sweep_and_the_time_between_runs():
    from hpo.finetune.time_spent import training_share

    stages = dict.fromkeys(("setup", "training", "evaluation", "checkpoints"), 0.0)
    breakdown = {
        "lr_range_test": stages | {"training": 10.0, "evaluation": 2.0},
        "trials": stages | {"setup": 5.0, "training": 60.0, "evaluation": 20.0},
        "reruns": stages | {"training": 20.0, "evaluation": 10.0},
        "between_runs_this_invocation": 3.0,
    }
    assert training_share(breakdown) == pytest.approx(90 / 130)
    assert training_share({k: v for k, v in breakdown.items() if k != "lr_range_test"}) == pytest.approx(80 / 118)
    assert training_share({"trials": stages, "reruns": stages}) is None


def test_a_trial_at_a_larger_batch_counts_its_rows_in_budget_steps(tiny_bert, sentiment_files, tmp_path):
    """96 rows, one epoch: 12 steps at the untuned batch 8, 6 at batch 16, 3 at batch 32. Each is one pass over
    the rows, so each spends the same 12 budget steps and reports its last evaluation at budget step 12."""
    from hpo import SelectionSettings, attributes

    space = SearchSpace(
        {
            "training.learning_rate": Float(low=1e-4, high=1e-2, log=True),
            "training.effective_batch_size": Categorical(choices=(16, 32)),
        }
    )
    base = _base(tiny_bert, sentiment_files, tmp_path)
    search = _random_search(
        base, tmp_path / "s", space=space, budget=Budget(trials=4), selection=SelectionSettings(seeds=0)
    )
    trials = [t for t in search.result.trials if t.state == "COMPLETE"]
    assert len(trials) == 4
    for trial in trials:
        batch = trial.params.get("training.effective_batch_size", 8)  # the untuned trial: the base's batch 8
        assert trial.extra[attributes.OPTIMIZER_STEPS] == 96 // batch
        assert trial.steps == 12 and trial.extra[attributes.PLANNED_STEPS] == 12
    assert search.result.steps_spent == 4 * 12


def test_a_sampled_trial_under_the_step_floor_runs_at_the_largest_batch_that_reaches_it(
    tiny_bert, sentiment_files, tmp_path
):
    """96 rows, one epoch: the untuned run takes 12 optimizer steps, so the auto floor is 4. A proposed batch 32
    (3 steps) runs at batch 16 (6 steps), the same 12 budget steps; batch 16 runs as proposed. With the floor
    at 0 batch 32 runs as proposed."""
    from hpo import SelectionSettings, attributes

    space = SearchSpace(
        {
            "training.learning_rate": Float(low=1e-4, high=1e-2, log=True),
            "training.effective_batch_size": Categorical(choices=(8, 16, 32)),
        }
    )
    base = _base(tiny_bert, sentiment_files, tmp_path)
    search = search_finetune(
        base,
        SearchSettings(
            space=space,
            sampler="random",
            scheduler="none",
            progress=False,
            include_untuned=False,
            warm_start=({"training.gradient_accumulation_steps": 4},),  # batch 32: a recipe runs as written
            budget=Budget(trials=8),
            selection=SelectionSettings(seeds=0),
            seed=3,
        ),
        run_dir=tmp_path / "floor",
    )
    trials = [t for t in search.result.trials if t.state == "COMPLETE"]
    warm, *sampled = trials
    assert warm.extra[attributes.OPTIMIZER_STEPS] == 3
    lowered = [t for t in sampled if attributes.BATCH_LOWERED in t.extra]
    assert lowered, "the random draws hold no batch 32 to lower: pick another sampler seed"
    for trial in sampled:
        assert trial.params["training.effective_batch_size"] in (8, 16)
        assert trial.extra[attributes.OPTIMIZER_STEPS] >= 4 and trial.steps == 12
    for trial in lowered:
        assert trial.extra[attributes.BATCH_LOWERED].startswith("proposed effective batch 32 (3 optimizer steps")
        assert trial.params["training.effective_batch_size"] == 16
    assert sum(1 for why in search.result.discarded.values() if "replaced by trial" in why) == len(lowered)
    summary = json.loads((tmp_path / "floor" / "summary.json").read_text())
    assert summary["trials_batch_lowered"] == len(lowered)

    unfloored = _random_search(
        base,
        tmp_path / "no_floor",
        space=space,
        budget=Budget(trials=6),
        selection=SelectionSettings(seeds=0),
        seed=3,
        min_trial_optimizer_steps=0,
    )
    batches = [t.params.get("training.effective_batch_size") for t in unfloored.result.trials]
    assert 32 in batches and not any(attributes.BATCH_LOWERED in t.extra for t in unfloored.result.trials)


def test_a_lowered_then_shortened_trial_keeps_both_notes_and_a_shortened_recipe_keeps_its_role(
    tiny_bert, sentiment_files, tmp_path
):
    """The untuned run: 1 epoch at batch 8 = 12 steps; budget 10 full runs = 120 steps, so a 4-epoch trial
    (48 steps, 144 with its re-runs) never fits and runs at 1 epoch. With a floor of 10 optimizer steps a
    batch-32 proposal (3 steps an epoch) runs at batch 8, before or after it is shortened: the trial that runs
    names both changes. The field's recipe at 4 epochs is shortened too, and stays the recipe: its role kept,
    it runs its own batch (4, outside the space: as given), not the floor's."""
    from hpo import attributes

    space = SearchSpace(
        {
            "training.learning_rate": Float(low=1e-4, high=1e-2, log=True),
            "training.num_train_epochs": Categorical(choices=(1, 4)),
            "training.effective_batch_size": Categorical(choices=(8, 32)),
        }
    )
    base = _base(tiny_bert, sentiment_files, tmp_path)
    recipe = {"training.num_train_epochs": 4, "training.per_device_train_batch_size": 4}
    search = _random_search(
        base,
        tmp_path / "search",
        space=space,
        full_run_equivalents=10,
        warm_start=(recipe,),
        min_trial_optimizer_steps=10,
        seed=0,
    )
    ran = [t for t in search.result.trials if t.state == "COMPLETE"]
    recipe_trial = next(t for t in ran if t.extra.get(attributes.ROLE) == "warm_start")
    assert attributes.SHORTENED in recipe_trial.extra and attributes.BATCH_LOWERED not in recipe_trial.extra
    assert recipe_trial.params["training.num_train_epochs"] == 1
    assert recipe_trial.params["training.effective_batch_size"] == 4
    assert recipe_trial.extra[attributes.OPTIMIZER_STEPS] == 24  # 96 rows at batch 4, as the recipe says
    sampled = [t for t in ran if t.extra.get(attributes.ROLE) is None]
    assert all(t.params["training.effective_batch_size"] == 8 for t in sampled)
    both = [t for t in sampled if attributes.SHORTENED in t.extra and attributes.BATCH_LOWERED in t.extra]
    assert both, "no batch-32 4-epoch proposal in these draws: pick another sampler seed"
    summary = json.loads((tmp_path / "search" / "summary.json").read_text())
    assert summary["trials_batch_lowered"] == sum(attributes.BATCH_LOWERED in t.extra for t in ran)
    assert summary["trials_shortened"] == sum(attributes.SHORTENED in t.extra for t in ran)
