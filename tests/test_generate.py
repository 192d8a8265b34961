"""Generation-based evaluation of causal-LM runs: greedy, batched with left padding, scored by exact match and F1."""

import json

import pytest
from conftest import causal_config, write_recipe
from transformers import AutoModelForCausalLM, AutoTokenizer

import finetune
from finetune import ConfigError, DataError, FinetuneConfig
from finetune.generate import generate, score, stop_token_ids, token_f1
from recipes.cli import main


def test_scores_with_and_without_an_answer_pattern():
    records = [
        {"reference": "so 6 + 7 = 13\n#### 13", "generated": "6 + 7 makes 13. #### 13"},
        {"reference": "#### 8", "generated": "it is 8"},  # no "####": no answer extracted, scores 0
        {"reference": "#### 5", "generated": "#### 50"},
    ]
    assert score(records, r"#### (\S+)") == {
        "exact_match": pytest.approx(1 / 3),
        "token_f1": pytest.approx(1 / 3),
        "generated": 3.0,
        "answer_found": pytest.approx(2 / 3),
        "references_with_answer": 3.0,
    }
    plain = [{"reference": "The Paris!", "generated": "paris"}, {"reference": "in the river", "generated": "river"}]
    result = score(plain, None)
    assert result["exact_match"] == 0.5  # normalised: case, punctuation and articles do not count
    assert result["token_f1"] == pytest.approx((1.0 + token_f1("river", "in the river")) / 2)
    assert token_f1("river", "in the river") == pytest.approx(2 * 1.0 * 0.5 / 1.5)


def _train(tiny_llama, sft_files, tmp_path, fmt, **data):
    raw = causal_config(
        tiny_llama, sft_files[fmt], tmp_path / "run", data={"test_size": 6, "max_new_tokens": 5, **data}
    )
    finetune.train(FinetuneConfig.from_dict(raw))
    return tmp_path / "run", raw


@pytest.mark.parametrize("fmt", ["messages", "prompt_completion", "instruction"])
def test_evaluate_generate_writes_generations_and_scores(tiny_llama, sft_files, tmp_path, fmt):
    data = {"columns": {"output": "response", "input": "context"}} if fmt == "instruction" else {}
    run_dir, _ = _train(tiny_llama, sft_files, tmp_path, fmt, **data)
    metrics = finetune.evaluate(run_dir, "test", generate=True)
    rows = [json.loads(line) for line in (run_dir / "generations_test.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and metrics["test_generated"] == 6
    assert set(rows[0]) == {"prompt", "reference", "generated"}
    assert all(r["reference"] in ("paris", "the ocean", "one or two", "in the river") for r in rows)
    assert rows[0]["prompt"].endswith("<|im_start|>assistant\n")  # the chat template's generation prompt
    assert 0 <= metrics["test_exact_match"] <= metrics["test_token_f1"] <= 1 and "test_loss" in metrics
    again = finetune.evaluate(run_dir, "test", generate=True)  # greedy: the same text every time
    assert [json.loads(line) for line in (run_dir / "generations_test.jsonl").read_text().splitlines()] == rows
    assert again == metrics


def test_generation_batch_size_sets_the_prompts_per_call(tiny_llama, sft_files, tmp_path, monkeypatch):
    import finetune.generate as generation

    run_dir, _ = _train(tiny_llama, sft_files, tmp_path, "messages", generation_batch_size=5)
    sizes = []
    real = generation.generate
    monkeypatch.setattr(generation, "generate", lambda *args, **kw: sizes.append(args[4]) or real(*args, **kw))
    assert finetune.evaluate(run_dir, "test", generate=True)["test_generated"] == 6
    assert sizes == [5]  # data.generation_batch_size, not training.per_device_eval_batch_size (8)
    raw = causal_config(tiny_llama, sft_files["messages"], tmp_path / "x", data={"generation_batch_size": 0})
    with pytest.raises(ConfigError, match="data.generation_batch_size must be > 0 or null, got 0"):
        FinetuneConfig.from_dict(raw)


def test_batched_left_padded_generation_equals_one_at_a_time(tiny_llama):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    prompts = ["what is water?", "why is the sky blue? what is the capital of france?", "how many humps?"]
    alone = [generate(model, tokenizer, [p], max_new_tokens=6, batch_size=1)[0] for p in prompts]
    assert generate(model, tokenizer, prompts, max_new_tokens=6, batch_size=3) == alone
    # In batches of 2, longest first: the second prompt leads, and each answer still comes back in its place.
    assert generate(model, tokenizer, prompts, max_new_tokens=6, batch_size=2) == alone
    assert all(len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= 6 for text in alone)
    assert set(stop_token_ids(tokenizer)) == {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}


def test_padded_batches_hold_prompts_of_similar_lengths():
    from finetune.generate import _batches

    rows = [[1] * length for length in (3, 9, 5, 7, 5)]
    # Longest first (ties in order): a batch pads to its longest prompt, so mixing lengths runs padding.
    assert _batches(rows, 2, unpadded=False) == [[1, 3], [2, 4], [0]]
    assert _batches(rows, 2, unpadded=True) == [[0], [1], [2, 4], [3]]  # one length per batch


def test_untrained_generation_from_the_command_line(tiny_llama, sft_files, tmp_path, capsys):
    import yaml

    raw = causal_config(tiny_llama, sft_files["messages"], tmp_path / "out", data={"test_size": 4, "max_new_tokens": 3})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["evaluate", str(path), "--untrained", "--split", "test", "--generate"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["test_generated"] == 4 and "test_exact_match" in metrics
    assert len((tmp_path / "out" / "generations_test_untrained.jsonl").read_text().splitlines()) == 4


def test_an_answer_pattern_that_finds_no_reference_is_an_error(tiny_llama, sft_files, tmp_path, capsys):
    run_dir, raw = _train(tiny_llama, sft_files, tmp_path, "messages", answer_pattern="#### (\\S+)")
    with pytest.raises(DataError, match="matches none of the 6 references of the test split"):
        finetune.evaluate(run_dir, "test", generate=True)
    # Matching every reference but few generations: scored, and said.
    import yaml

    saved = yaml.safe_load((run_dir / "tunelab_config.yaml").read_text())
    saved["data"]["answer_pattern"] = "(paris|ocean|one|river)"
    (run_dir / "tunelab_config.yaml").write_text(yaml.safe_dump(saved))
    metrics = finetune.evaluate(run_dir, "test", generate=True)
    assert metrics["test_references_with_answer"] == 6 and 0 <= metrics["test_answer_found"] <= 1
    from finetune.generate import _check_pattern

    _check_pattern({"references_with_answer": 6.0, "answer_found": 1 / 6}, 6, "(x)", "test")
    assert "data.answer_pattern '(x)' found an answer in only 1 of 6 generations" in capsys.readouterr().err


def test_generation_needs_a_prompt_and_an_answer(tiny_llama, sft_files, tmp_path):
    run_dir, _ = _train(tiny_llama, sft_files, tmp_path, "text")
    with pytest.raises(DataError, match="data.format='text' has no prompt and answer"):
        finetune.evaluate(run_dir, "test", generate=True)
    raw = causal_config(tiny_llama, sft_files["messages"], tmp_path / "x", data={"answer_pattern": "(unclosed"})
    with pytest.raises(ConfigError, match="data.answer_pattern"):
        FinetuneConfig.from_dict(raw)


def test_each_evaluation_can_score_generated_answers_without_changing_training(tiny_llama, sft_files, tmp_path):
    def run(out, **data):
        raw = causal_config(tiny_llama, sft_files["messages"], tmp_path / out, data={"max_new_tokens": 4, **data})
        return finetune.train(FinetuneConfig.from_dict(raw))

    plain = run("plain")
    scored = run("scored", max_generation_samples=3)
    assert [e["step"] for e in scored.evaluations] == [2, 4]
    for entry in scored.evaluations:
        assert 0 <= entry["eval_exact_match"] <= entry["eval_token_f1"] <= 1
    assert not any("eval_exact_match" in e for e in plain.evaluations)
    # Generating in between (left padding, eval mode) leaves the training itself exactly as it was.
    assert scored.train_losses == plain.train_losses
    assert [e["eval_loss"] for e in scored.evaluations] == [e["eval_loss"] for e in plain.evaluations]


def test_a_search_can_tune_for_exact_match(tiny_llama, sft_files, tmp_path):
    from hpo import Budget, Float, Objective, SearchSettings, SearchSpace, search_finetune

    raw = causal_config(tiny_llama, sft_files["messages"], tmp_path / "unused", data={"max_new_tokens": 4})
    settings = SearchSettings(
        space=SearchSpace({"training.learning_rate": Float(low=1e-4, high=1e-2, log=True)}),
        sampler="random",
        scheduler="none",
        budget=Budget(trials=3),
        objective=Objective(metric="exact_match"),
        progress=False,
    )
    search = search_finetune(FinetuneConfig.from_dict(raw), settings, run_dir=tmp_path / "search")
    assert search.metric == "eval_exact_match" and search.result.direction == "maximize"
    assert all(0 <= t.value <= 1 for t in search.result.trials if t.state == "COMPLETE")
    assert search.best_config.data.max_generation_samples is None  # the trials' scoring is not the winner's config


def test_generation_objectives_need_a_causal_lm(tiny_bert, sentiment_files, tmp_path):
    from conftest import classification_config

    from hpo import Objective, SearchSettings
    from hpo.finetune import plan_search

    base = FinetuneConfig.from_dict(classification_config(tiny_bert, sentiment_files, tmp_path / "x"))
    with pytest.raises(ConfigError, match="scores generated answers: it needs a causal LM"):
        plan_search(base, SearchSettings(objective=Objective(metric="exact_match")))
    raw = classification_config(tiny_bert, sentiment_files, tmp_path / "x", data={"max_generation_samples": 4})
    with pytest.raises(ConfigError, match="data.max_generation_samples scores generated answers"):
        FinetuneConfig.from_dict(raw)


def test_a_causal_lm_run_reports_generated_answers_for_both_arms(tiny_llama, sft_files, tmp_path, capsys):

    from recipes.run import main as run_main

    raw = causal_config(tiny_llama, sft_files["messages"], tmp_path / "out", data={"test_size": 4, "max_new_tokens": 4})
    recipe = write_recipe(raw, tmp_path / "recipe.yaml", budget={"trials": 2}, selection={"seeds": 0})
    assert run_main([recipe, "--run-dir", str(tmp_path / "run")]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    for arm in ("tuned", "untuned"):
        for run in results["runs"][arm]:
            assert run["test"]["test_generated"] == 4 and 0 <= run["test"]["test_exact_match"] <= 1
            assert len(open(run["generations"]).read().splitlines()) == 4
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Generated answers on test" in report and "| tuned | " in report
    side = report[report.index("## The same test prompts, answered by each arm") :].split("\n## ")[0]
    # Three prompts, each a table row with both arms' answers (newlines shown as ⏎, pipes escaped).
    rows = [line for line in side.splitlines() if line.startswith("| ")][1:]
    assert len(rows) == 3 and all("<\\|im_start\\|>assistant ⏎" in row for row in rows), rows
