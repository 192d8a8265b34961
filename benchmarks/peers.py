"""tunelab against the tools users would pick instead, on the same fine-tuning work, measured side by side.

Task: the SST-2 MiniLM recipes (LoRA and full fine-tuning): selection on validation, final numbers on the
held-out 872-sentence test set, every contender's final configuration retrained with the same 3 seeds
by the same training code. Every search gets the same budget B in steps actually run, counted at the untuned
run's effective batch (a batch-32 step is 4 where the untuned batch is 8: the rows trained on), as tunelab
counts its own: B full-run equivalents of the untuned run (default 8). Contenders:

  untuned        transformers TrainingArguments defaults with the method's peft defaults (no search)
  hf_default     Trainer.hyperparameter_search(backend="optuna"), its default space, model_init as its
                 docs say; trials are started until the budget is spent
  optuna_tpe_hb  a hand-written Optuna study: TPE + HyperbandPruner over tunelab's default space,
                 reporting through a TrainerCallback
  random         random search over the same space, no pruning
  grid           a coarse grid (full cost reported, however much larger than B)
  tunelab        tunelab's default strategy (what `tunelab run` does when the user picks nothing)
  tunelab:S/P    tunelab with sampler S and scheduler P (e.g. tunelab:gp/hyperband); tunelab:S/P/smooth
                 with search.objective.rungs: smooth (early stopping on the loss while accuracy is flat)

Prints a table, writes benchmarks/peers_<method>_<rows>.json and benchmarks/peers_<method>_<rows>_anytime.png.

    python benchmarks/peers.py --method lora [--budget 8] [--train-rows 500] [--jobs 2] [--contenders untuned,...]
    python benchmarks/peers.py --contenders untuned,tunelab:random/none,tunelab:tpe/sha,tunelab:gp/hyperband
    python benchmarks/peers.py --quick        # a small version to check it still works

"tunelab" is the default strategy (TPE + Hyperband + noise-aware selection); "tunelab:SAMPLER/SCHEDULER"
names another combination (samplers: random, qmc, tpe, gp; schedulers: none, median, sha, hyperband).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402
from peers_report import plot_anytime, results_table, targets  # noqa: E402
from transformers import Trainer, TrainerCallback, TrainingArguments  # noqa: E402

import finetune  # noqa: E402
from finetune import FinetuneConfig  # noqa: E402
from finetune.data import load_splits  # noqa: E402
from finetune.train import planned_steps  # noqa: E402
from hpo import attributes  # noqa: E402
from hpo.budget import Budget  # noqa: E402
from hpo.finetune import Objective, SearchSettings, search_finetune  # noqa: E402
from hpo.finetune.config_space import flatten, to_overrides  # noqa: E402
from hpo.finetune.default_spaces import default_space  # noqa: E402
from hpo.finetune.trial_training import at_run_end  # noqa: E402
from recipes.recipe import load_recipe  # noqa: E402

RECIPES = {"lora": "sst2_minilm_lora.yaml", "full": "sst2_minilm_full.yaml"}
CONTENDERS = ("untuned", "hf_default", "optuna_tpe_hb", "random", "grid", "tunelab")
METRIC = "eval_accuracy"
# No contender's runs need finetune's train-split metrics (~30% of a LoRA run evaluated 9 times); tunelab's
# search turns them off in its trials, and the harness does the same for every other run it trains.
NOT_MEASURED = {"training.train_split_metrics": False}
optuna.logging.set_verbosity(optuna.logging.WARNING)


class Ledger:
    """Steps and validation scores of one contender's trials, in order: the anytime curve and the budget."""

    def __init__(self, budget_steps: int, base_batch: int) -> None:
        self.budget_steps = budget_steps
        self.base_batch = base_batch  # the untuned run's effective batch: the unit of a step
        self.trials: list[dict] = []
        self.shortened = 0  # tunelab: trials run shorter than proposed, to fit the budget
        self.started = time.perf_counter()

    @property
    def steps(self) -> int:
        return sum(t["steps"] for t in self.trials)

    def spent(self) -> bool:
        return self.steps >= self.budget_steps

    def at_base_batch(self, optimizer_steps: int, batch: int) -> int:
        return round(optimizer_steps * batch / self.base_batch)

    def add(self, steps: int, value: float | None, state: str, *, batch: int | None = None) -> None:
        """``steps`` at the untuned batch; or optimizer steps at effective ``batch``."""
        steps = steps if batch is None else self.at_base_batch(steps, batch)
        self.trials.append({"steps": int(steps), "value": value, "state": state})

    def anytime(self) -> list[tuple[int, float]]:
        points, total, best = [], 0, None
        for t in self.trials:
            total += t["steps"]
            if t["state"] == "COMPLETE" and t["value"] is not None:
                best = t["value"] if best is None else max(best, t["value"])
            if best is not None:
                points.append((total, best))
        return points

    def summary(self) -> dict:
        counts = {s: sum(t["state"] == s for t in self.trials) for s in ("COMPLETE", "PRUNED", "FAIL", "NOT_RUN")}
        counts["SHORTENED"] = self.shortened
        curve = self.anytime()
        return {
            "steps": self.steps,
            "seconds": time.perf_counter() - self.started,
            "trials": counts,
            "best_validation": curve[-1][1] if curve else None,
            "anytime": curve,
        }


class ReportAndPrune(TrainerCallback):
    """The hand-written Optuna contenders: report each evaluation to the trial and stop when pruned."""

    def __init__(self, trial: optuna.Trial, ledger: Ledger) -> None:
        self.trial, self.ledger, self.pruned, self.values = trial, ledger, False, []

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.values.append(metrics[METRIC])
        self.trial.report(metrics[METRIC], state.global_step)
        # As in tunelab: at the run's last evaluation a budget stop saves nothing, so the trial completes.
        ran = self.ledger.at_base_batch(
            state.global_step, args.per_device_train_batch_size * args.gradient_accumulation_steps
        )
        over_budget = self.ledger.steps + ran >= self.ledger.budget_steps and not at_run_end(state)
        if self.trial.should_prune() or over_budget:
            self.pruned = True
            control.should_training_stop = True


def space_values(trial: optuna.Trial, method: str) -> dict:
    """tunelab's default space, suggested through plain Optuna (what a user would hand-write)."""
    space = default_space(method, "classification")
    values = {}
    for key, parameter in space.parameters.items():
        kind = type(parameter).__name__
        if kind == "Float":
            values[key] = trial.suggest_float(key, parameter.low, parameter.high, log=parameter.log)
        elif kind == "Int":
            values[key] = trial.suggest_int(key, parameter.low, parameter.high)
        else:
            values[key] = trial.suggest_categorical(key, list(parameter.choices))
    return values


def optuna_contender(
    untuned: FinetuneConfig, ledger: Ledger, scratch: Path, sampler, pruner, method: str, eval_steps: int
) -> FinetuneConfig:
    """Evaluations every 1/9 of the untuned run, as tunelab does, so Hyperband's rungs can act."""
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    base = flatten(untuned)

    def objective(trial: optuna.Trial) -> float:
        overrides = to_overrides(space_values(trial, method), base, 32, 1)
        config = untuned.with_overrides(
            {
                **overrides,
                **NOT_MEASURED,
                "training.output_dir": str(scratch / f"t{trial.number}"),
                "training.eval_steps": eval_steps,
            }
        )
        callback = ReportAndPrune(trial, ledger)
        result = finetune.train(config, callbacks=[callback])
        best = max(callback.values) if callback.values else float("nan")
        trial.set_user_attr("config", config.to_dict())
        state = "PRUNED" if callback.pruned else "COMPLETE"
        ledger.add(result.optimizer_steps, best, state, batch=config.training.effective_batch_size)
        if callback.pruned:
            raise optuna.TrialPruned()
        return best

    def stop_when_spent(study, trial):
        if ledger.spent():
            study.stop()

    study.optimize(objective, n_trials=1000, callbacks=[stop_when_spent], catch=(Exception,))
    best = study.best_trial
    return FinetuneConfig.from_dict(best.user_attrs["config"])


def hf_default_contender(untuned: FinetuneConfig, ledger: Ledger, scratch: Path, budget: float) -> FinetuneConfig:
    """Trainer.hyperparameter_search(backend="optuna") with its default space, as transformers documents it."""
    from finetune.inputs import prepare_inputs
    from finetune.methods import apply_method
    from finetune.metrics import classification_metrics
    from finetune.models import load_model, load_tokenizer, resolve_source

    source = resolve_source(untuned.model)
    tokenizer = load_tokenizer(untuned.model, source)
    inputs = prepare_inputs(untuned, tokenizer)

    def model_init(trial=None):
        model = load_model(untuned.model, source, tokenizer, inputs.label_names)
        return apply_method(model, untuned.method, untuned.model.task)

    class Budgeted(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if ledger.spent():  # the budget is spent: later trials are not run
                raise optuna.TrialPruned("budget spent")

        def on_train_end(self, args, state, control, **kwargs):
            self.steps = state.global_step
            self.batch = args.per_device_train_batch_size * args.gradient_accumulation_steps

    budgeted = Budgeted()
    runs = []

    def objective(metrics):  # the default objective (sum of metrics), recorded for the anytime curve
        value = metrics[METRIC]
        ledger.add(budgeted.steps, value, "COMPLETE", batch=budgeted.batch)
        runs.append(value)
        return value

    t = untuned.training
    trainer = Trainer(
        model_init=model_init,
        args=TrainingArguments(
            output_dir=str(scratch / "hf"),
            learning_rate=t.learning_rate,
            per_device_train_batch_size=t.per_device_train_batch_size,
            num_train_epochs=t.num_train_epochs,
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
        callbacks=[budgeted],
    )
    # Its default space costs one untuned run's rows per trial on average (epochs 1-5 against the untuned 3):
    # twice the expected count covers the spread; trials past the budget stop before training.
    n_trials = math.ceil(2 * budget)
    best = trainer.hyperparameter_search(
        direction="maximize", backend="optuna", n_trials=n_trials, compute_objective=objective
    )
    chosen = {k: v for k, v in best.hyperparameters.items() if k != "seed"}  # the searched seed is noise
    overrides = {f"training.{k}": v for k, v in chosen.items()}
    return untuned.with_overrides(overrides)


def grid_contender(untuned: FinetuneConfig, ledger: Ledger, scratch: Path, method: str) -> FinetuneConfig:
    rates = (1e-4, 3e-4, 1e-3) if method == "lora" else (1e-5, 3e-5, 1e-4)
    best, best_config = None, untuned
    for lr in rates:
        for batch in (8, 32):
            for epochs in (1, 3):
                config = untuned.with_overrides(
                    {
                        "training.learning_rate": lr,
                        "training.per_device_train_batch_size": batch,
                        "training.num_train_epochs": epochs,
                        "training.output_dir": str(scratch / f"g{lr}_{batch}_{epochs}"),
                        **NOT_MEASURED,
                    }
                )
                result = finetune.train(config)
                value = result.best_metrics[METRIC]
                ledger.add(result.optimizer_steps, value, "COMPLETE", batch=config.training.effective_batch_size)
                if best is None or value > best:
                    best, best_config = value, config
    return best_config


def tunelab_contender(
    untuned: FinetuneConfig, ledger: Ledger, run_dir: Path, sampler: str, scheduler: str, seed: int, rungs: str
) -> FinetuneConfig:
    settings = SearchSettings(
        objective=Objective(rungs=rungs),
        # In steps, not full-run equivalents: where tunelab cross-validates (validation < 300 rows) its
        # "full run" is all the folds, and the budget must still be the peers'.
        budget=Budget(steps=ledger.budget_steps),
        max_per_device_batch=32,  # the batch the MiniLM recipes state: what `tunelab run` on them caps at
        sampler=sampler,
        scheduler=scheduler,
        seed=seed,
    )
    search = search_finetune(untuned, settings, run_dir=run_dir)
    ledger.shortened = sum(bool(t.extra.get(attributes.SHORTENED)) for t in search.result.trials)
    if search.lr_range_test:  # the LR sweep ran first and is part of its budget
        ledger.add(search.lr_range_test.steps, None, "LR_RANGE_TEST")
    for trial in search.result.trials:
        if trial.extra.get(attributes.NOT_RUN):  # proposed, but its re-runs would not have fit: 0 steps, no score
            ledger.add(0, None, "NOT_RUN")
        else:
            ledger.add(trial.steps, trial.value if trial.state == "COMPLETE" else None, trial.state)
    if search.selection:  # the re-runs are part of its budget
        ledger.add(search.selection.steps, None, "SELECTION")
    return search.best_config


def retrain(config: FinetuneConfig, seeds: list[int], scratch: Path, cache: dict) -> dict:
    """Train ``config`` with each seed; test and validation accuracy (cached: equal configs train once)."""
    key = json.dumps({k: v for k, v in config.to_dict().items() if k != "training"}, sort_keys=True) + json.dumps(
        {
            k: v
            for k, v in config.training.__dict__.items()
            if k not in ("output_dir", "eval_steps", "train_split_metrics")
        },
        sort_keys=True,
    )
    if key not in cache:
        tests, validations = [], []
        for seed in seeds:
            out = scratch / f"final_{len(cache)}_{seed}"
            overrides = {"training.seed": seed, "training.output_dir": str(out), **NOT_MEASURED}
            run = finetune.train(config.with_overrides(overrides))
            validations.append(run.final_metrics[METRIC])
            tests.append(finetune.evaluate(out, "test")["test_accuracy"])
        cache[key] = {"test": tests, "validation": validations}
    return cache[key]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=("lora", "full"), default="lora")
    parser.add_argument("--budget", type=float, default=8.0, help="full-run equivalents per search")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--search-seed",
        type=int,
        default=0,
        help="the searches' own seed (samplers), to measure how much one search's path matters; not "
        "Trainer.hyperparameter_search's, which runs as its defaults are",
    )
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument(
        "--train-rows",
        type=int,
        default=500,
        help="training rows (of the recipe's 3,500; validation stays the recipe's 500)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="contenders measured at once, each in its own single-threaded process (default 2: one per core)",
    )
    parser.add_argument("--output", type=Path, help="the JSON to write (default benchmarks/peers_<method>_<rows>.json)")
    parser.add_argument("--quick", action="store_true", help="400 training rows, 300 validation, budget 7, 2 seeds")
    parser.add_argument(
        "--keep-runs",
        type=Path,
        help="keep each tunelab contender's run folder (trials.csv, summary.json, study journal) under this folder",
    )
    parser.add_argument("--report-only", action="store_true", help="redraw the table and plot from the JSON")
    args = parser.parse_args()
    if args.quick:
        args.train_rows, args.budget, args.seeds = 400, 7.0, 2
    if args.jobs > 1 and len(args.contenders.split(",")) > 1 and not args.report_only:
        run_in_parallel(args)
        return
    if args.report_only:
        stored = json.loads(output_path(args).read_text())
        report(stored["results"], args, stored["full_run_steps"], stored["budget_steps"])
        return
    # fp32 for every contender: Trainer.hyperparameter_search runs TrainingArguments' default precision,
    # and the tables in RESULTS.md were measured in fp32 (finetune's default "auto" is bf16 on this CPU).
    overrides = [f"data.max_train_samples={args.train_rows}", "training.mixed_precision=no"]
    if args.quick:
        # 300 validation rows: one split (below 300, tunelab would cross-validate, 5 runs per trial).
        overrides.append("data.validation_size=300")
    recipe = load_recipe(ROOT / "recipes" / "configs" / RECIPES[args.method], overrides)
    untuned = recipe.untuned
    full_run = planned_steps(untuned, len(load_splits(untuned.data).train))
    budget_steps = int(round(args.budget * full_run))
    eval_steps = max(1, round(full_run / 9))
    seeds = list(range(args.seeds))
    cache = {}
    earlier = earlier_results(args, budget_steps, full_run)
    results = {k: v for k, v in earlier.items() if k not in args.contenders.split(",")}  # run the others only
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        for name in args.contenders.split(","):
            print(f"\n=== {name} ===", file=sys.stderr, flush=True)
            ledger = Ledger(budget_steps, untuned.training.effective_batch_size)
            folder = scratch / name
            if name == "untuned":
                chosen = untuned
            elif name == "hf_default":
                chosen = hf_default_contender(untuned, ledger, folder, args.budget)
            elif name == "optuna_tpe_hb":
                sampler, pruner = optuna.samplers.TPESampler(seed=args.search_seed), optuna.pruners.HyperbandPruner()
                chosen = optuna_contender(untuned, ledger, folder, sampler, pruner, args.method, eval_steps)
            elif name == "random":
                sampler, pruner = optuna.samplers.RandomSampler(seed=args.search_seed), optuna.pruners.NopPruner()
                chosen = optuna_contender(untuned, ledger, folder, sampler, pruner, args.method, eval_steps)
            elif name == "grid":
                chosen = grid_contender(untuned, ledger, folder, args.method)
            elif name == "tunelab" or name.startswith("tunelab:"):
                # "tunelab" is the default strategy; "tunelab:SAMPLER/SCHEDULER[/RUNGS]" a named combination.
                sampler, scheduler, *rungs = (name.partition(":")[2] or "tpe/hyperband").split("/") + ["", ""]
                run_dir = args.keep_runs / name.replace("/", "_") if args.keep_runs else folder / "tunelab"
                chosen = tunelab_contender(
                    untuned, ledger, run_dir, sampler, scheduler or "none", args.search_seed, rungs[0] or "metric"
                )
            else:
                raise SystemExit(f"unknown contender {name!r}; choose from {CONTENDERS}")
            record = ledger.summary()
            record["final"] = retrain(chosen, seeds, scratch, cache)
            record["config"] = {"training": chosen.training.__dict__, "method": chosen.method.__dict__}
            results[name] = record
            # Each finished contender is kept at once: a later crash loses nothing (--report-only redraws).
            partial = {"budget_steps": budget_steps, "full_run_steps": full_run, "results": results}
            output_path(args).write_text(json.dumps(partial, indent=2, default=str))
    report(results, args, full_run, budget_steps)


def output_path(args) -> Path:
    if args.output is not None:
        return args.output
    seed = f"_seed{args.search_seed}" if args.search_seed else ""
    return ROOT / "benchmarks" / f"peers_{args.method}_{'quick' if args.quick else args.train_rows}{seed}.json"


def earlier_results(args, budget_steps: int, full_run: int) -> dict:
    """Contenders already in the output JSON, measured on the same budget: kept beside the ones run now."""
    path = output_path(args)
    if not path.is_file():
        return {}
    earlier = json.loads(path.read_text())
    if (earlier["budget_steps"], earlier["full_run_steps"]) != (budget_steps, full_run):
        return {}
    return earlier["results"]


def run_in_parallel(args) -> None:
    """Each contender in its own process with one thread, ``args.jobs`` at a time, merged into one JSON.

    Small models scale poorly over threads: on a 2-core CPU two single-threaded contenders side by side
    finish the table in a little over half the time of one after the other. Steps are what the table
    compares; each contender's seconds are measured under that shared load.
    """
    started = time.perf_counter()
    names = args.contenders.split(",")
    for name in names:
        if name not in CONTENDERS and not name.startswith("tunelab:"):
            raise SystemExit(f"unknown contender {name!r}; choose from {CONTENDERS} or tunelab:SAMPLER/SCHEDULER")
    with tempfile.TemporaryDirectory() as parts_name:
        parts = Path(parts_name)
        # The longest first (measured: the tunelab searches, then the Optuna ones), so no core idles at the end.
        waiting, running, finished = sorted(names, key=expected_cost), {}, {}
        while waiting or running:
            while waiting and len(running) < args.jobs:
                name = waiting.pop(0)
                command = [sys.executable, __file__, *child_arguments(args), "--contenders", name, "--jobs", "1"]
                command += ["--output", str(parts / f"{len(finished) + len(running)}.json")]
                log = open(parts / f"{name.replace('/', '_')}.log", "w")  # noqa: SIM115 (closed when it ends)
                env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
                running[name] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env), log)
                print(f"[peers] started {name} ({len(finished)} of {len(names)} done)", file=sys.stderr, flush=True)
            time.sleep(5)
            for name, (process, log) in list(running.items()):
                if process.poll() is None:
                    continue
                log.close()
                del running[name]
                finished[name] = process.returncode
                minutes = (time.perf_counter() - started) / 60
                print(
                    f"[peers] {name} {'done' if process.returncode == 0 else f'FAILED (exit {process.returncode})'}"
                    f" ({len(finished)}/{len(names)}, {minutes:.1f} min so far)",
                    file=sys.stderr,
                    flush=True,
                )
                if process.returncode != 0:
                    print(Path(log.name).read_text()[-3000:], file=sys.stderr)
        merged, budget_steps, full_run = {}, None, None
        for part in sorted(parts.glob("*.json")):
            stored = json.loads(part.read_text())
            budget_steps, full_run = stored["budget_steps"], stored["full_run_steps"]
            merged.update(stored["results"])
    if budget_steps is None:
        raise SystemExit("no contender finished")
    merged = {**earlier_results(args, budget_steps, full_run), **merged}
    ordered = {name: merged[name] for name in [*CONTENDERS, *sorted(merged)] if name in merged}
    report(ordered, args, full_run, budget_steps)
    print(f"whole benchmark: {(time.perf_counter() - started) / 60:.1f} min, {args.jobs} at a time", file=sys.stderr)


def expected_cost(name: str) -> int:
    """Rank of a contender's usual duration, longest first."""
    order = ("tunelab", "optuna_tpe_hb", "random", "hf_default", "grid", "untuned")
    return order.index("tunelab" if name.startswith("tunelab:") else name)


def child_arguments(args) -> list[str]:
    """The options a contender's own process is started with (the same task, budget and seeds)."""
    arguments = ["--method", args.method, "--budget", str(args.budget), "--seeds", str(args.seeds)]
    arguments += ["--search-seed", str(args.search_seed)]
    arguments += ["--train-rows", str(args.train_rows)] + (["--quick"] if args.quick else [])
    return arguments + (["--keep-runs", str(args.keep_runs)] if args.keep_runs else [])


def report(results: dict, args, full_run: int, budget_steps: int) -> None:
    """Print the table and the targets, write the JSON and the anytime plot."""
    title = (
        f"SST-2 MiniLM {args.method}, {args.train_rows} training rows: budget "
        f"{args.budget:g} full runs = {budget_steps} steps; {args.seeds} seeds"
    )
    print(f"\n{title}\n\n{results_table(results, budget_steps)}")
    out = output_path(args)
    out.write_text(
        json.dumps(
            {"budget_steps": budget_steps, "full_run_steps": full_run, "results": results}, indent=2, default=str
        )
    )
    plot_anytime(results, out.with_name(out.stem + "_anytime.png"), full_run)
    print(f"\nwritten: {out}")
    if "untuned" in results and "tunelab" in results:
        print("\n" + "\n".join(targets(results)))


if __name__ == "__main__":
    main()
