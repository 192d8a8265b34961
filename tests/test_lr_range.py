"""The learning-rate range test: reading a sweep (synthetic curves), planning it, and running it on a tiny model."""

import json
import math
import random
import time

import pytest
from conftest import classification_config

import finetune
import hpo.finetune.search
from finetune import ConfigError, FinetuneConfig
from hpo import Budget, Float, SearchSpace
from hpo.finetune import SearchSettings, lr_range_test, plan_search, search_finetune
from hpo.finetune.lr_range_test import RESULT_FILE, placed_space, run_lr_range_test
from hpo.lr_range import LRRangeReading, read_sweep, sweep_rates


def _curve(rates, *, starts_falling, blows_up, noise=0.0, seed=0):
    """A sweep's loss: flat at 0.69 below ``starts_falling``, falling in log LR, then growing past ``blows_up``."""
    rng = random.Random(seed)
    losses = []
    for lr in rates:
        loss = 0.69
        if lr > starts_falling:
            loss -= 0.15 * math.log10(lr / starts_falling)
        if lr > blows_up:
            loss += 3.0 * math.log10(lr / blows_up) ** 0.5 * 4
        losses.append(max(loss, 0.05) + rng.gauss(0, noise))
    return list(zip(rates, losses, strict=True))


def test_sweep_rates_are_log_spaced_from_low_to_high():
    rates = sweep_rates(1e-6, 1e-2, 5)
    assert rates[0] == pytest.approx(1e-6) and rates[-1] == pytest.approx(1e-2)
    assert [b / a for a, b in zip(rates, rates[1:], strict=False)] == pytest.approx([10.0] * 4)
    with pytest.raises(ValueError):
        sweep_rates(1e-2, 1e-6, 5)


def test_the_range_is_the_decade_around_a_tenth_of_where_the_loss_is_lowest():
    rates = sweep_rates(1e-6, 1.0, 60)
    reading = read_sweep(_curve(rates, starts_falling=1e-4, blows_up=1e-2, noise=0.01))
    assert reading.placed and reading.diverged_at is not None and 1e-2 < reading.diverged_at < 1e-1
    # The lowest smoothed loss lies just before the blow-up (the moving average lags by a few steps).
    assert 3e-3 < reading.lowest_loss_lr < 3e-2
    assert reading.low == pytest.approx(reading.lowest_loss_lr / 30)
    assert reading.high == pytest.approx(reading.lowest_loss_lr / 3)
    assert "searching LR in" in reading.reason


def test_a_loss_still_falling_at_the_top_places_the_range_below_the_top():
    rates = sweep_rates(1e-6, 1e-2, 60)
    reading = read_sweep(_curve(rates, starts_falling=1e-4, blows_up=1.0, noise=0.005))
    assert reading.placed and reading.diverged_at is None
    assert reading.lowest_loss_lr == pytest.approx(1e-2) and "top of the sweep" in reading.reason


def test_a_flat_or_too_short_sweep_places_nothing():
    rates = sweep_rates(1e-6, 1e-2, 60)
    flat = read_sweep(_curve(rates, starts_falling=1.0, blows_up=10.0, noise=0.01))
    assert not flat.placed and "never fell 5%" in flat.reason
    short = read_sweep(_curve(rates[:8], starts_falling=1e-5, blows_up=1.0))
    assert not short.placed and "8 finite losses" in short.reason
    space = SearchSpace({"training.learning_rate": Float(low=1e-5, high=1e-3, log=True)})
    assert placed_space(space, flat) is space


def test_a_nan_loss_ends_the_sweep_and_what_came_before_is_read():
    rates = sweep_rates(1e-6, 1.0, 60)
    points = _curve(rates, starts_falling=1e-4, blows_up=10.0)
    points = points[:45] + [(lr, math.nan) for lr, _ in points[45:]]
    reading = read_sweep(points)
    assert reading.placed and reading.diverged_at == pytest.approx(rates[45])
    assert reading.lowest_loss_lr <= rates[44]


def _base(tiny_bert, sentiment_files, tmp_path, method="full", **training):
    training = {"max_steps": -1, "num_train_epochs": 1, "eval_steps": None, "learning_rate": 5e-5, **training}
    raw = classification_config(tiny_bert, sentiment_files, tmp_path / "unused", training=training)
    raw["method"] = {"name": method}
    return FinetuneConfig.from_dict(raw)


def test_the_plan_sets_the_sweep_aside_from_the_budget(tiny_bert, sentiment_files, tmp_path):
    # 96 rows, batch 8, 5 epochs: a 60-step untuned run; the sweep is a third of it (at least 30 steps).
    base = _base(tiny_bert, sentiment_files, tmp_path, num_train_epochs=5)
    plan = plan_search(base, SearchSettings(full_run_equivalents=4))
    assert plan.full_run_steps == 60 and plan.lr_range_steps == 30
    assert plan.total_steps == 4 * 60 - 30  # trials and re-runs get what the sweep leaves
    assert plan.rerun_budget.total_steps == plan.total_steps
    assert plan_search(base, SearchSettings(full_run_equivalents=4, lr_range_test=False)).lr_range_steps == 0
    # Auto: not for a space the user wrote, nor for runs under twice the sweep, nor with a budget under 3
    # full runs after it.
    space = SearchSpace({"training.learning_rate": Float(low=1e-5, high=1e-3, log=True)})
    assert plan_search(base, SearchSettings(full_run_equivalents=4, space=space)).lr_range_steps == 0
    one_epoch = _base(tiny_bert, sentiment_files, tmp_path)  # 12 steps: the sweep would cost 2.5 runs
    assert plan_search(one_epoch, SearchSettings(full_run_equivalents=10)).lr_range_steps == 0
    assert plan_search(one_epoch, SearchSettings(full_run_equivalents=10, lr_range_test=True)).lr_range_steps == 30


def test_asking_for_a_sweep_that_cannot_run_is_an_error(tiny_bert, sentiment_files, tmp_path):
    base = _base(tiny_bert, sentiment_files, tmp_path, num_train_epochs=5)
    with pytest.raises(ConfigError, match="search.lr_range_test: the grid sampler"):
        plan_search(base, SearchSettings(full_run_equivalents=4, sampler="grid", lr_range_test=True))
    with pytest.raises(ConfigError, match="search.lr_range_test: .*step budget"):
        plan_search(base, SearchSettings(budget=Budget(trials=4), lr_range_test=True))
    fixed = SearchSpace({"training.learning_rate": Float(low=1e-5, high=1e-3)})  # not log-scale
    with pytest.raises(ConfigError, match="not a log-scale float range"):
        plan_search(base, SearchSettings(full_run_equivalents=4, space=fixed, lr_range_test=True))
    with pytest.raises(ConfigError, match="expected true, false or null"):
        SearchSettings(lr_range_test="yes")


def test_the_sweep_places_the_range_where_a_grid_finds_the_best_rate(tiny_bert, sentiment_files, tmp_path):
    """On the tiny model the rate that trains best (a grid of short runs at constant rates) lies in or near the
    range the sweep reads."""
    base = _base(tiny_bert, sentiment_files, tmp_path, num_train_epochs=4, lr_scheduler_type="constant")
    space = SearchSpace({"training.learning_rate": Float(low=1e-4, high=1e-2, log=True)})
    test = run_lr_range_test(base, space, steps=40, run_dir=tmp_path / "search")
    reading = test.reading
    assert test.steps == len(test.points) == 40 or reading.diverged_at is not None
    assert [lr for lr, _ in test.points] == sorted(lr for lr, _ in test.points)
    assert reading.placed, reading.reason
    # Half-decade steps, two seeds each: on decades alone the optimum (~3e-3 to 1e-2 here) falls between two
    # points whose 48-step single-seed losses are both near chance, and which one wins varies by machine.
    grid = {}
    for lr in (1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1):
        losses = []
        for seed in (0, 1):
            out = tmp_path / f"grid_{lr}_{seed}"
            overrides = {"training.learning_rate": lr, "training.seed": seed, "training.output_dir": str(out)}
            losses.append(finetune.train(base.with_overrides(overrides)).evaluations[-1]["eval_loss"])
        grid[lr] = sum(losses) / len(losses)
    best = min(grid, key=grid.get)
    assert reading.low / 3 <= best <= reading.high * 3, (reading, grid)
    # Read back, not swept again, by a resumed search.
    stored = json.loads((tmp_path / "search" / RESULT_FILE).read_text())
    again = run_lr_range_test(base, space, steps=40, run_dir=tmp_path / "search")
    assert again == test and stored["steps"] == test.steps


def test_a_search_with_the_sweep_searches_its_range_and_counts_its_steps(
    tiny_bert, sentiment_files, tmp_path, monkeypatch
):
    """The plumbing: whatever the sweep reads (fixed here; the reading is tested above) is the range searched."""
    placed = LRRangeReading(low=2e-3, high=2e-2, lowest_loss_lr=6e-2, diverged_at=None, reason="fixed for the test")
    monkeypatch.setattr(lr_range_test, "read_sweep", lambda points: placed)
    sweep_wall = []

    def slow_sweep(*args, **kwargs):  # 5 s longer than the sweep's stages: more than a search's clean-up slack
        started = time.perf_counter()
        time.sleep(5)
        swept = run_lr_range_test(*args, **kwargs)
        sweep_wall.append(time.perf_counter() - started)
        return swept

    monkeypatch.setattr(hpo.finetune.search, "run_lr_range_test", slow_sweep)
    base = _base(tiny_bert, sentiment_files, tmp_path)  # full fine-tuning, a 12-step untuned run
    space = SearchSpace({"training.learning_rate": Float(low=1e-4, high=1e-2, log=True)})
    settings = SearchSettings(
        full_run_equivalents=8, space=space, lr_range_test=True, sampler="random", scheduler="none", progress=False
    )
    search = search_finetune(base, settings, run_dir=tmp_path / "search")
    sweep = search.lr_range_test
    assert sweep is not None and sweep.steps == 30 == len(sweep.points) and sweep.reading == placed
    summary = json.loads((tmp_path / "search" / "summary.json").read_text())
    assert summary["lr_range_test"]["steps"] == 30
    assert summary["lr_range_test"]["reading"]["low"] == sweep.reading.low
    spent = sweep.steps + search.result.steps_spent + search.selection.steps
    assert spent <= 8 * 12 and summary["full_run_equivalents_spent"] == pytest.approx(spent / 12)
    assert summary["full_run_equivalents_budget"] == pytest.approx(8.0)
    tuned = [t for t in search.result.trials if t.extra.get("role") != "untuned" and t.state != "DISCARDED"]
    assert tuned, "no tuned trial ran"
    for trial in tuned:
        assert 2e-3 <= trial.params["training.learning_rate"] <= 2e-2
    assert summary["space"]["training.learning_rate"]["low"] == pytest.approx(2e-3)
    times = summary["time_breakdown"]
    # The sweep is a run: its time is in its own row, not again in what the search spent between runs.
    assert times["lr_range_test"]["training"] > 0
    in_runs = sweep_wall[0] + sum(sum(times[part].values()) for part in ("trials", "reruns"))
    assert in_runs + times["between_runs_this_invocation"] <= times["wall_seconds_this_invocation"]


def test_the_report_counts_the_sweep_in_the_search_and_shows_its_reading():
    from recipes.report import total_steps
    from recipes.time_table import time_rows

    stages = {"setup": 1.0, "training": 8.0, "evaluation": 1.0, "checkpoints": 0.0}
    summary = {"steps_spent": 400, "selection": {"steps": 200}, "lr_range_test": {"steps": 63, "reading": {}}}
    assert total_steps(summary) == 663
    assert total_steps({"steps_spent": 400, "selection": None}) == 400  # results written before the sweep existed
    rows = time_rows({"search": {"lr_range_test": stages, "trials": stages, "reruns": stages}})
    assert [row[0] for row in rows[1:3]] == ["learning-rate range test", "search trials"]
