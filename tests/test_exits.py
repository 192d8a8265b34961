"""How the command line ends: one error line and a documented exit code; Ctrl-C leaves a resumable search;
out of memory is retried, then recorded as infeasible; importing tunelab changes no global state."""

import argparse
import os
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import classification_config
from synthetic import SPACE, curve_objective
from transformers import TrainerCallback

import finetune
from finetune import FinetuneConfig
from hpo import Budget, InfeasibleTrial, SearchConfigError, StudySettings, optimize
from hpo.attributes import FAILURE, RETRY_OF
from hpo.finetune import trial_training
from hpo.storage import open_storage
from recipes.cli import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, main


class _PoisonWeights(TrainerCallback):
    """Turn the weights to NaN after the first step, as a diverged run would."""

    def on_step_end(self, args, state, control, model=None, **kwargs):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.fill_(float("nan"))


def _config_file(tiny_bert, sentiment_files, tmp_path, **training):
    raw = classification_config(tiny_bert, sentiment_files, tmp_path / "run", training={"logging_steps": 1, **training})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_a_diverged_training_is_one_error_line_and_exit_code_3(
    tiny_bert, sentiment_files, tmp_path, monkeypatch, capsys
):
    real_train = finetune.train
    monkeypatch.setattr(finetune, "train", lambda config, callbacks=None: real_train(config, [_PoisonWeights()]))
    assert main(["train", _config_file(tiny_bert, sentiment_files, tmp_path)]) == EXIT_FAILED == 3
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("tunelab: error: training loss is nan at step 2")


def test_bad_input_is_exit_code_2_and_ctrl_c_is_130(tiny_bert, sentiment_files, tmp_path, monkeypatch, capsys):
    path = _config_file(tiny_bert, sentiment_files, tmp_path)
    assert main(["train", path, "training.learning_rat=1e-3"]) == EXIT_BAD_INPUT == 2
    assert "training.learning_rat" in capsys.readouterr().err

    def interrupted(config, callbacks=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(finetune, "train", interrupted)
    assert main(["train", path]) == EXIT_INTERRUPTED == 130
    assert "run the same command again to resume" in capsys.readouterr().err


def test_report_on_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == EXIT_BAD_INPUT
    assert f"{tmp_path} is not a finished `tunelab run` folder: results.json is missing" in capsys.readouterr().err


def test_ctrl_c_mid_trial_leaves_a_journal_the_same_search_resumes(tmp_path):
    journal = str(tmp_path / "study.journal")
    settings = StudySettings(sampler="random", storage=journal, study_name="s", progress=False)
    objective = curve_objective(max_steps=3)
    calls = []

    def interrupted_at_third(params, reporter):
        calls.append(params)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return objective(params, reporter)

    with pytest.raises(KeyboardInterrupt):
        optimize(interrupted_at_third, SPACE, budget=Budget(trials=5), settings=settings)
    stored = optuna_trials(journal)
    assert [t.state.name for t in stored] == ["COMPLETE", "COMPLETE", "FAIL", "WAITING"]
    assert stored[2].user_attrs[FAILURE] == "interrupted (Ctrl-C)" and stored[3].user_attrs[RETRY_OF] == 2

    result = optimize(objective, SPACE, budget=Budget(trials=5), settings=settings)
    retry = next(t for t in result.trials if t.extra.get(RETRY_OF) == 2)
    assert retry.state == "COMPLETE" and retry.params == calls[2]  # the interrupted trial, run again
    assert result.count("COMPLETE") == 5  # the interrupted trial does not use up one of the five


def optuna_trials(journal):
    import optuna

    return optuna.load_study(study_name="s", storage=open_storage(journal)).get_trials()


def _out_of_memory(times):
    """finetune.train that raises CUDA's out-of-memory error ``times`` times, then trains."""
    calls = []
    real_train = finetune.train

    def train(config, callbacks=None):
        calls.append(config.training)
        if len(calls) <= times:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_train(config, callbacks=callbacks)

    return train, calls


def test_out_of_memory_is_retried_at_half_batch_then_infeasible(tiny_bert, sentiment_files, tmp_path, monkeypatch):
    raw = classification_config(tiny_bert, sentiment_files, tmp_path / "run", training={"max_steps": 2})
    config = FinetuneConfig.from_dict(raw)  # per-device batch 8, no accumulation
    train, calls = _out_of_memory(times=1)
    monkeypatch.setattr(finetune, "train", train)
    result = trial_training.train_trial(config, TrainerCallback())
    assert [(t.per_device_train_batch_size, t.gradient_accumulation_steps) for t in calls] == [(8, 1), (4, 2)]
    assert result.optimizer_steps == 2

    train, calls = _out_of_memory(times=2)
    monkeypatch.setattr(finetune, "train", train)
    with pytest.raises(InfeasibleTrial, match="out of memory even at per-device batch 4"):
        trial_training.train_trial(config, TrainerCallback())


def test_a_trial_out_of_memory_twice_is_infeasible_and_the_search_goes_on(
    tiny_bert, sentiment_files, tmp_path, monkeypatch
):
    from hpo import Categorical, SearchSettings, SearchSpace, search_finetune

    real_train = finetune.train

    def out_of_memory_at_batch_16(config, callbacks=None):
        t = config.training
        if t.per_device_train_batch_size * t.gradient_accumulation_steps == 16:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real_train(config, callbacks=callbacks)

    monkeypatch.setattr(finetune, "train", out_of_memory_at_batch_16)
    raw = classification_config(
        tiny_bert, sentiment_files, tmp_path / "unused", training={"max_steps": 2, "eval_steps": 2}
    )
    space = SearchSpace({"training.effective_batch_size": Categorical(choices=(8, 16))})
    settings = SearchSettings(
        space=space,
        sampler="grid",
        scheduler="none",
        budget=Budget(trials=3),
        include_untuned=False,
        max_per_device_batch=16,  # above the config's 8: batch 16 runs on one device, then retries at 8
        progress=False,
    )
    search = search_finetune(FinetuneConfig.from_dict(raw), settings, run_dir=tmp_path / "s")
    by_batch = {t.params["training.effective_batch_size"]: t for t in search.result.trials}
    assert by_batch[16].state == "COMPLETE" and not by_batch[16].feasible
    assert by_batch[16].failure.startswith("infeasible: out of memory even at per-device batch 8")
    assert by_batch[8].feasible and search.result.best_trial.number == by_batch[8].number


@pytest.mark.parametrize(
    ("where", "budget", "message"),
    [
        ("code", {}, "give at least one of trials, steps, full_run_equivalents, wall_seconds"),
        ("code", {"trials": 0}, r"search.budget.trials must be > 0, got 0"),
        ("code", {"steps": -5}, r"search.budget.steps must be > 0, got -5"),
        ("code", {"wall_seconds": 0.0}, r"search.budget.wall_seconds must be > 0"),
        ("recipe", {"full_run_equivalents": 0}, "0 full-run equivalents leave less than one full run to explore"),
        ("recipe", {"full_run_equivalents": -2}, "-2 full-run equivalents leave less than one full run to explore"),
        ("recipe", {"hours": 2}, r"search.budget: unknown key\(s\) \['hours'\]"),
        ("recipe", {"minutes": -1}, r"search.budget.wall_seconds must be > 0"),
    ],
)
def test_impossible_budgets_are_refused(where, budget, message):
    """In code, hpo's own error; in a recipe's search.budget (or the flags), a ConfigError naming the key."""
    from finetune import ConfigError
    from hpo import SearchSettings

    if where == "code":
        with pytest.raises(SearchConfigError, match=message):
            Budget(**budget)
    else:
        with pytest.raises(ConfigError, match=message):
            SearchSettings.from_dict({"budget": budget})


def test_importing_tunelab_changes_no_global_state():
    code = (
        "import sys, matplotlib, optuna\n"
        "backend = dict.__getitem__(matplotlib.rcParams, 'backend')\n"
        "verbosity = optuna.logging.get_verbosity()\n"
        "import finetune, hpo, recipes.cli, recipes.report, recipes.run, recipes.worker\n"
        "assert dict.__getitem__(matplotlib.rcParams, 'backend') == backend, 'matplotlib backend changed'\n"
        "assert optuna.logging.get_verbosity() == verbosity, 'optuna verbosity changed'\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'\n"
    )
    _runs_in_a_fresh_python(code)


def _runs_in_a_fresh_python(code: str) -> None:
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-2000:]


def test_help_and_version_import_nothing_heavy():
    code = (
        "import sys\n"
        "from recipes.cli import parse_args\n"
        "for command in ([], ['train'], ['search'], ['run'], ['worker'], ['evaluate']):\n"
        "    try:\n"
        "        parse_args([*command, '--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "assert not {'torch', 'transformers', 'optuna', 'finetune', 'hpo'} & set(sys.modules), sorted(sys.modules)\n"
    )
    _runs_in_a_fresh_python(code)
    version = subprocess.run([sys.executable, "-m", "recipes.cli", "--version"], capture_output=True, text=True)
    assert version.stdout.startswith("tunelab ")


def test_the_help_lists_the_samplers_and_schedulers_there_are():
    from hpo import SAMPLERS, SCHEDULERS
    from recipes.cli import SAMPLER_NAMES, SCHEDULER_NAMES

    assert (SAMPLER_NAMES, SCHEDULER_NAMES) == (SAMPLERS, SCHEDULERS)


def test_every_argument_says_what_it_is_and_every_command_shows_an_example():
    from recipes.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    for name, sub in commands.items():
        assert sub.epilog.startswith("examples:\n  ") and f"tunelab {name} " in sub.epilog, name
        for action in sub._actions:
            assert action.help, f"tunelab {name}: {action.dest} has no help text"
            if action.default not in (None, False, argparse.SUPPRESS) and action.option_strings:
                assert "default" in action.help, f"tunelab {name}: {action.dest} does not say its default"


def test_overrides_may_follow_the_flags():
    from recipes.cli import parse_args

    args = parse_args(["search", "c.yaml", "method.lora_r=16", "--sampler", "tpe", "training.learning_rate=1e-3"])
    assert args.sampler == "tpe" and args.overrides == ["method.lora_r=16", "training.learning_rate=1e-3"]
    with pytest.raises(SystemExit):
        parse_args(["search", "c.yaml", "--sampler", "tpe", "stray"])  # not key=value: still refused
    with pytest.raises(SystemExit):
        parse_args(["report", "folder", "x=1"])  # report takes no overrides


def test_output_is_tunelabs_own_lines_unless_verbose(tiny_bert, sentiment_files, tmp_path):
    path = _config_file(tiny_bert, sentiment_files, tmp_path, max_steps=2, eval_steps=2)

    def train(*flags):
        command = [sys.executable, "-m", "recipes.cli", "train", path, *flags]
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stderr

    quiet, verbose = train(), train("--verbose")
    assert [line.split()[0] for line in quiet.splitlines()] == ["[finetune]"], quiet
    assert "Map" in verbose  # the datasets progress bars the quiet run hides


def test_the_gguf_bar_obeys_the_quiet_switch():
    """transformers draws its GGUF de-quantization bar with tqdm itself; quiet mode hides it too."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    from finetune.models import _gguf_bar_follows_transformers

    bar, was_enabled = gguf_utils.tqdm, hf_logging.is_progress_bar_enabled()
    try:
        hf_logging.disable_progress_bar()
        with _gguf_bar_follows_transformers():
            assert gguf_utils.tqdm(range(3)).disable
        assert gguf_utils.tqdm is bar
        hf_logging.enable_progress_bar()  # --verbose
        with _gguf_bar_follows_transformers():
            assert gguf_utils.tqdm is bar
    finally:
        (hf_logging.enable_progress_bar if was_enabled else hf_logging.disable_progress_bar)()
