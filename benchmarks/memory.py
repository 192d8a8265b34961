"""Memory of a search. Not part of CI.

Default: RSS over 20 consecutive in-process trials, tunelab's search against Trainer.hyperparameter_search,
on the same small random BERT classifier and the same rows. Prints the RSS after each trial for both, and
the growth from trial 1 to the last (we expect tunelab flat: each trial's model, optimizer and Trainer go
before the next starts).

--causal: peak RSS of a causal-LM search (SmolLM2-135M-Instruct LoRA, the sst2_words recipe: `tunelab
search` at 2 full-run equivalents, and the recipe's own search as `tunelab run` runs it) against one run
of the same config evaluated on the search's schedule (`tunelab train`), each in a fresh process. Target:
the search at most 1.25x the run. A last process trains the space's largest configuration (LoRA r 32 on
every linear layer, dropout 0.1, the config's per-device batch): what any trial may need, so the search's
own overhead is its peak over that one.

    python benchmarks/memory.py [--trials 20] [--quick]
    python benchmarks/memory.py --causal
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,  # noqa: E402
)

from finetune import FinetuneConfig  # noqa: E402
from hpo import Budget, Float, SearchSpace  # noqa: E402

PROCESS = psutil.Process(os.getpid())


def small_model(folder: Path) -> str:
    """A random 4-layer BERT (hidden 256) with the MiniLM tokenizer: big enough for leaks to show."""
    from transformers import AutoTokenizer

    from finetune.models import resolve_source

    minilm = resolve_source(FinetuneConfig.from_dict(_config("all-minilm-l6-v2", folder)).model).path
    tokenizer = AutoTokenizer.from_pretrained(minilm)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=1024,
        num_labels=2,
    )
    path = folder / "small-bert"
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def _config(model: str, folder: Path, rows: int = 400) -> dict:
    data = ROOT / "recipes" / "data" / "sst2"
    return {
        "model": {"name": model, "task": "classification"},
        "data": {
            "train_file": str(data / "train.tsv"),
            "test_file": str(data / "validation.tsv"),
            "validation_size": 100,
            "text_column": "sentence",
            "label_column": "label",
            "label_names": ["0", "1"],
            "max_length": 64,
            "max_train_samples": rows,
        },
        "method": {"name": "full"},
        "training": {"output_dir": str(folder / "out"), "num_train_epochs": 1, "per_device_train_batch_size": 16},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="5 trials")
    parser.add_argument("--causal", action="store_true", help="a SmolLM2 search's peak RSS vs one run's")
    args = parser.parse_args()
    if args.causal:
        causal_peaks()
        return
    trials = 5 if args.quick else args.trials
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        model = small_model(scratch)
        ours = run_tunelab(model, scratch, trials)
        gc.collect()
        theirs = run_hf(model, scratch, trials)
    print(f"\nRSS after each of {trials} trials (MiB), small BERT, 400 rows, 1 epoch\n")
    print("| trial | tunelab | Trainer.hyperparameter_search |")
    print("|---|---|---|")
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True), start=1):
        print(f"| {i} | {a >> 20} | {b >> 20} |")
    for name, series in (("tunelab", ours), ("Trainer.hyperparameter_search", theirs)):
        print(f"{name}: {series[0] >> 20} -> {series[-1] >> 20} MiB ({(series[-1] - series[0]) / series[0]:+.1%})")


CAUSAL_RECIPE = ROOT / "recipes" / "configs" / "sst2_words_smollm2_lora.yaml"
# A trial of the recipe's search evaluates every 5 steps (the first rung) without the train-split metrics.
SEARCH_SCHEDULE = ["training.eval_steps=5", "training.train_split_metrics=false"]


SHIPPED_SEARCH = (
    "import sys; from recipes.recipe import load_recipe; from hpo.finetune import search_finetune; "
    "recipe = load_recipe(sys.argv[1]); search_finetune(recipe.untuned, recipe.search, run_dir=sys.argv[2])"
)


def causal_peaks() -> None:
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        tunelab = [sys.executable, "-m", "recipes.cli"]
        one_run = [*tunelab, "train", str(CAUSAL_RECIPE), f"training.output_dir={scratch / 'run'}", *SEARCH_SCHEDULE]
        search = [*tunelab, "search", str(CAUSAL_RECIPE), "--budget-fre", "2", "--top-k", "1"]
        search += ["--selection-seeds", "0", "--run-dir", str(scratch / "search")]
        largest = [*tunelab, "train", str(CAUSAL_RECIPE), f"training.output_dir={scratch / 'largest'}"]
        largest += [*SEARCH_SCHEDULE, "method.lora_r=32", "method.target_modules=all-linear", "method.lora_dropout=0.1"]
        # The search step of `tunelab run` as the recipe ships it: 4 FRE, the field's recipes first, the top 3
        # re-run and scored row by row (`tunelab search` reads flags, not the recipe's search section).
        shipped = [sys.executable, "-c", SHIPPED_SEARCH, str(CAUSAL_RECIPE), str(scratch / "shipped")]
        peaks = {
            "one run (tunelab train)": peak_rss(one_run),
            "search, 2 FRE (tunelab search)": peak_rss(search),
            "the recipe's own search (tunelab run's first step)": peak_rss(shipped),
            "one run of the space's largest trial (r 32, all linear layers, dropout 0.1)": peak_rss(largest),
        }
    print("\nPeak RSS, SmolLM2-135M-Instruct LoRA, sst2_words recipe, each in a fresh process\n")
    print("| process | peak RSS (GiB) | vs one run |")
    print("|---|---|---|")
    run = next(iter(peaks.values()))
    for name, peak in peaks.items():
        print(f"| {name} | {peak / 2**30:.2f} | {peak / run:.2f} |")


def peak_rss(command: list[str]) -> int:
    """Peak RSS in bytes of ``command``, run in a fresh wrapper process (its only child)."""
    probe = "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
    probe += "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    done = subprocess.run([sys.executable, "-c", probe, *command], cwd=ROOT, check=True, capture_output=True, text=True)
    return int(done.stdout.split()[-1]) * 1024  # Linux reports kibibytes


class RecordRss(TrainerCallback):
    def __init__(self, sink: list[int]) -> None:
        self.sink = sink

    def on_train_end(self, args, state, control, **kwargs):
        gc.collect()
        self.sink.append(PROCESS.memory_info().rss)


def run_tunelab(model: str, folder: Path, trials: int) -> list[int]:
    """hpo.optimize over finetune.train, as search_finetune runs it, recording RSS after each trial."""
    import finetune
    from hpo import StudySettings, optimize

    base = FinetuneConfig.from_dict(_config(model, folder))
    rss: list[int] = []

    def objective(params, reporter):
        config = base.with_overrides({**params, "training.output_dir": str(folder / f"t{reporter.trial.number}")})
        result = finetune.train(config)
        reporter.report(result.optimizer_steps, result.final_metrics["eval_accuracy"])
        return result.final_metrics["eval_accuracy"]

    def after(result):
        gc.collect()
        rss.append(PROCESS.memory_info().rss)

    optimize(
        objective,
        SearchSpace({"training.learning_rate": Float(low=1e-5, high=1e-3, log=True)}),
        budget=Budget(trials=trials),
        on_trial_end=after,
        settings=StudySettings(sampler="random", progress=False),
    )
    return rss


def run_hf(model: str, folder: Path, trials: int) -> list[int]:
    """Trainer.hyperparameter_search(backend="optuna") as transformers documents it (model_init)."""
    from finetune.inputs import prepare_inputs
    from finetune.metrics import classification_metrics
    from finetune.models import load_model, load_tokenizer, resolve_source

    config = FinetuneConfig.from_dict(_config(model, folder))
    source = resolve_source(config.model)
    tokenizer = load_tokenizer(config.model, source)
    inputs = prepare_inputs(config, tokenizer)
    rss: list[int] = []
    trainer = Trainer(
        model_init=lambda trial=None: load_model(config.model, source, tokenizer, inputs.label_names),
        args=TrainingArguments(
            output_dir=str(folder / "hf"),
            num_train_epochs=1,
            per_device_train_batch_size=16,
            eval_strategy="no",
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            remove_unused_columns=False,
        ),
        train_dataset=inputs.train,
        eval_dataset=inputs.validation,
        data_collator=inputs.collator,
        compute_metrics=classification_metrics,
        callbacks=[RecordRss(rss)],
    )
    trainer.hyperparameter_search(
        direction="maximize",
        backend="optuna",
        n_trials=trials,
        hp_space=lambda trial: {"learning_rate": trial.suggest_float("learning_rate", 1e-5, 1e-3, log=True)},
    )
    return rss


if __name__ == "__main__":
    main()
