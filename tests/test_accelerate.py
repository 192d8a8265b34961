"""A run under `accelerate launch` with two CPU processes (gloo DDP) splits the data and writes once."""

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import classification_config, write_recipe

ROOT = Path(__file__).resolve().parents[1]


def _launch(*args: str) -> list[str]:
    """accelerate launch with two gloo processes on a free port (a fixed port can still be in use)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(port),
        *args,
    ]


def test_two_process_run_splits_data_and_writes_outputs_once(tiny_bert, sentiment_files, tmp_path):
    raw = classification_config(tiny_bert, sentiment_files, tmp_path / "run", method={"name": "lora"})
    raw["training"].update({"max_steps": -1, "num_train_epochs": 1, "eval_steps": None})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    command = _launch("-m", "recipes.cli", "train", str(path))
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # One summary on stdout: only the main process reports.
    summary = json.loads(done.stdout)
    # 96 training rows, batch 8 per process, 2 processes: 6 optimizer steps per epoch, not 12.
    assert summary["optimizer_steps"] == 6
    run = tmp_path / "run"
    assert (run / "run_result.json").is_file() and (run / "model" / "adapter_config.json").is_file()
    assert sorted(p.name for p in run.iterdir()) == ["model", "run_result.json", "tunelab_config.yaml"]


def test_two_process_search_prunes_and_stops_together(tiny_bert, sentiment_files, tmp_path):
    raw = classification_config(tiny_bert, sentiment_files, tmp_path / "run", method={"name": "lora"})
    raw["training"].update(
        {"max_steps": -1, "num_train_epochs": 1, "eval_steps": None, "per_device_train_batch_size": 4}
    )
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    space = tmp_path / "space.yaml"
    space.write_text(
        yaml.safe_dump(
            {
                "training.learning_rate": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
                "training.num_train_epochs": {"type": "int", "low": 1, "high": 3},
            }
        )
    )
    command = _launch(
        "-m",
        "recipes.cli",
        "search",
        str(path),
        "--space",
        str(space),
        "--sampler",
        "random",
        "--scheduler",
        "sha",
        "--budget-trials",
        "6",
        "--run-dir",
        str(tmp_path / "s"),
    )
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)  # printed once, by the main process
    assert sum(summary["trials"].values()) == 6
    trials = json.loads((tmp_path / "s" / "trials.json").read_text())
    # 96 rows, batch 4 per process x 2 processes: the untuned 1-epoch run is 12 optimizer steps.
    untuned = trials[0]
    assert untuned["extra"]["role"] == "untuned" and untuned["steps"] == 12
    assert all(t["state"] in ("COMPLETE", "PRUNED") for t in trials)
    # Pruned trials stopped early on both processes at the same step (else the run would hang or the
    # counts would differ): the steps the trial recorded are the steps the Trainer ran, short of its plan.
    pruned = [t for t in trials if t["state"] == "PRUNED"]
    assert pruned, [(t["state"], t["steps"]) for t in trials]
    for t in pruned:
        assert t["steps"] == t["extra"]["optimizer_steps"] < t["extra"]["planned_steps"]
    # The followers trained each re-run the main process announced: one record per re-run, at least the
    # untuned run's two (whether or not any challenger completed under the scheduler).
    selection = json.loads((tmp_path / "s" / "selection" / "selection.json").read_text())
    replicates = list((tmp_path / "s" / "selection").glob("trial_*/replicate_*.json"))
    assert len(replicates) == sum(len(c["values"]) for c in selection["candidates"]) >= 2


def _shape(value):
    """Keys and list lengths of a JSON document, not its numbers."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items() if k not in ("evaluations", "train_losses")}
    if isinstance(value, list):
        return [len(value)]
    return type(value).__name__


def test_two_process_recipe_matches_the_single_process_shape(tiny_bert, sentiment_files, tmp_path):
    from recipes.run import main as run_main

    raw = classification_config(tiny_bert, sentiment_files, tmp_path / "out", method={"name": "lora"})
    raw["training"].update({"max_steps": -1, "num_train_epochs": 1, "eval_steps": None, "learning_rate": 1e-3})
    path = write_recipe(raw, tmp_path / "recipe.yaml", selection={"top_k": 2, "seeds": 2})
    command = _launch("-m", "recipes.run", str(path), "--run-dir", str(tmp_path / "two"))
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("Answer: tuned lora:") == 1  # one process reports
    two = tmp_path / "two"
    assert sorted(p.name for p in two.glob("report.*")) == ["report.html", "report.md"]
    assert run_main([str(path), "--run-dir", str(tmp_path / "one")]) == 0
    one_results = json.loads((tmp_path / "one" / "results.json").read_text())
    two_results = json.loads((two / "results.json").read_text())
    # Same shape; the multi-process run trained with half the steps per process.
    assert _shape(two_results["comparison"]) == _shape(one_results["comparison"])
    assert {arm: len(r) for arm, r in two_results["runs"].items()} == {"tuned": 2, "untuned": 2}
    assert two_results["search"]["trials"] == one_results["search"]["trials"]
    assert len(two_results["search"]["selection"]["candidates"]) == 2
    assert two_results["search"]["full_run_steps"] * 2 == one_results["search"]["full_run_steps"]
    assert len(list((two / "search" / "selection").glob("trial_*/replicate_*.json"))) == 4
