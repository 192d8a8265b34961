"""Several workers share one search through a real PostgreSQL server (no mocks): budget, grid, a killed
worker, a restarted database, bad URLs. The objective is the cheap synthetic one (tests/synthetic.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from synthetic import GRID_SPACE

from hpo.errors import SearchConfigError
from hpo.results import SearchResult
from hpo.storage import open_storage

HERE = Path(__file__).resolve().parent


def _worker(url: str, study: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(HERE / "synthetic.py"), "--storage", url, "--study", study, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _result(url: str, study: str) -> SearchResult:
    storage = open_storage(url, heartbeat_seconds=0)
    try:
        return SearchResult.from_study(optuna.load_study(study_name=study, storage=storage), "", url)
    finally:
        # Its connection closes now, not when the garbage collector reaches the engine: the tests poll
        # several times a second, and the connections they left open filled the server's 100 until a
        # worker could not connect.
        storage.engine.dispose()


def _finish(workers: list[subprocess.Popen], timeout: float = 180) -> list[str]:
    logs = []
    for worker in workers:
        code = worker.wait(timeout=timeout)
        log = worker.stderr.read()
        assert code == 0, log[-3000:]
        logs.append(log)
    return logs


def _study() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


def test_three_workers_train_each_grid_point_exactly_once(postgres_url):
    study = _study()
    workers = [_worker(postgres_url, study, "--grid", "--seed", str(i), "--sleep", "0.02") for i in range(3)]
    _finish(workers)
    result = _result(postgres_url, study)
    complete = [tuple(sorted(t.params.items())) for t in result.trials if t.state == "COMPLETE"]
    planned = [tuple(sorted(p.items())) for p in GRID_SPACE.grid_points()]
    assert sorted(complete) == sorted(planned)  # every point once: none twice, none missing
    assert len(result.trials) == len(planned)


def test_three_workers_share_one_step_budget(postgres_url):
    study = _study()
    args = ("--steps", "120", "--max-steps", "10", "--sleep", "0.01")
    workers = [_worker(postgres_url, study, *args, "--seed", str(i)) for i in range(3)]
    _finish(workers)
    result = _result(postgres_url, study)
    # The budget is the study's: 120 steps in total, not per worker. Each worker checks it after every
    # step it reports, so at most one step each can start before another worker's step is seen.
    assert 120 <= result.steps_spent <= 120 + 3
    assert {t.state for t in result.trials} <= {"COMPLETE", "PRUNED"}


def test_a_killed_worker_trial_is_retried_and_nothing_is_lost(postgres_url):
    study = _study()
    args = ("--trials", "6", "--max-steps", "10", "--sleep", "0.2", "--heartbeat", "1")
    victim = _worker(postgres_url, study, *args, "--seed", "1")
    survivor = _worker(postgres_url, study, *args, "--seed", "2")
    deadline = time.time() + 60
    while time.time() < deadline:  # kill the victim in the middle of a trial, after some work is done
        time.sleep(0.3)
        try:
            trials = _result(postgres_url, study).trials
        except KeyError:
            continue  # the study does not exist yet
        running = [t for t in trials if t.state == "RUNNING"]
        # Both running trials must have drawn their parameters: a trial killed before that is retried with
        # fresh ones (nothing to keep), which is not what this test checks.
        if sum(t.state == "COMPLETE" for t in trials) >= 1 and len(running) == 2 and all(t.params for t in running):
            break
    else:
        victim.kill()
        survivor.kill()
        pytest.fail(f"never saw both workers in a trial; the victim's log: {victim.communicate()[1][-2000:]}")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    _finish([survivor])
    result = _result(postgres_url, study)
    lost = [t for t in result.trials if t.state == "FAIL"]
    assert len(lost) == 1, [(t.number, t.state) for t in result.trials]
    retry = [t for t in result.trials if t.extra.get("retry_of") == lost[0].number]
    assert len(retry) == 1 and retry[0].state == "COMPLETE" and retry[0].params == lost[0].params
    # The budget of 6 trials counts the retry, not the lost trial: 6 complete, none counted twice.
    assert sum(t.state == "COMPLETE" for t in result.trials) == 6


def test_a_database_restart_mid_search_loses_nothing(postgres_url):
    study = _study()
    args = ("--trials", "14", "--max-steps", "10", "--sleep", "0.1", "--heartbeat", "1")
    workers = [_worker(postgres_url, study, *args, "--seed", str(i)) for i in range(2)]
    deadline = time.time() + 60
    before = 0
    while time.time() < deadline and before < 3:
        time.sleep(0.3)
        try:
            before = sum(t.state == "COMPLETE" for t in _result(postgres_url, study).trials)
        except KeyError:
            pass
    script = str(HERE.parent / ".ci" / "postgres.sh")
    stopped = subprocess.run(["bash", script, "stop"], capture_output=True, text=True)
    if stopped.returncode != 0:
        for worker in workers:
            worker.kill()
        message = f"cannot stop and start the server here: {stopped.stderr[-300:]}"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI starts its own server, so it can stop it: not being able to is a fault
        pytest.skip(message)
    time.sleep(3)  # the database is down for a while: workers see their connections fail
    assert subprocess.run(["bash", script, "start"], capture_output=True).returncode == 0
    logs = _finish(workers, timeout=240)
    result = _result(postgres_url, study)
    # Workers rejoined the study after the restart and finished the budget; completed trials survived;
    # a trial interrupted by the outage was declared lost and retried.
    assert any("rejoining" in log for log in logs), logs[0][-2000:]
    assert sum(t.state == "COMPLETE" for t in result.trials) == 14
    retried = {t.extra.get("retry_of") for t in result.trials}
    assert all(t.number in retried for t in result.trials if t.state == "FAIL")


def _fails_fast_and_clearly(url, expected):
    started = time.monotonic()
    with pytest.raises(SearchConfigError, match=expected) as raised:
        open_storage(url)
    assert time.monotonic() - started < 15
    assert "wrong-password" not in str(raised.value)  # the password is never printed


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://postgres:wrong-password@127.0.0.1:5432/postgres", "password authentication failed"),
        ("postgresql://postgres:tunelab@127.0.0.1:5432/no_such_database", "no_such_database"),
    ],
    ids=["wrong-password", "no-database"],
)
def test_bad_credentials_or_database_fail_fast_and_clearly(postgres_url, url, expected):
    _fails_fast_and_clearly(url, expected)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://postgres:wrong-password@127.0.0.1:1/postgres", "cannot open it"),
        ("postgresql://postgres:tunelab@10.255.255.1:5432/postgres", "cannot open it"),
        ("postgres-sql://x@y/z", "expected a file path, sqlite"),
    ],
    ids=["refused", "unreachable", "bad-scheme"],
)
def test_bad_storage_urls_fail_fast_and_clearly_without_a_server(url, expected):
    _fails_fast_and_clearly(url, expected)


def test_tunelab_workers_then_tunelab_run_on_one_database(postgres_url, tiny_bert, sentiment_files, tmp_path):
    """The real commands on a tiny model: two `tunelab worker`s share a grid, `tunelab run` reports."""
    import json

    import yaml
    from conftest import classification_config

    from recipes.run import main as run_main

    raw = classification_config(tiny_bert, sentiment_files, tmp_path / "out", method={"name": "lora"})
    raw["training"].update({"max_steps": -1, "num_train_epochs": 1, "eval_steps": None})
    study = _study()
    raw["search"] = {
        "sampler": "grid",
        "scheduler": "none",
        "budget": {"trials": 4},
        "selection": {"top_k": 2, "seeds": 2},
        "space": {"training.learning_rate": {"type": "categorical", "choices": [1e-4, 1e-3, 1e-2]}},
        "storage": postgres_url,
        "study_name": study,
        "heartbeat_seconds": 2,
    }
    raw["seeds"] = 2
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "recipes.cli", "worker", str(recipe), "--run-dir", str(tmp_path / f"w{i}")],
            cwd=HERE.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    _finish(workers, timeout=300)
    trials = _result(postgres_url, study).trials
    assert len(trials) == 4 and all(t.state == "COMPLETE" for t in trials)  # untuned + 3 grid points
    assert run_main([str(recipe), "--run-dir", str(tmp_path / "run")]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["search"]["trials"]["COMPLETE"] == 4  # the run trained no search trial of its own
    assert results["search"]["storage"].startswith("postgresql://postgres:***@")
    assert len(results["search"]["selection"]["candidates"]) == 2
    assert (tmp_path / "run" / "report.html").is_file()
