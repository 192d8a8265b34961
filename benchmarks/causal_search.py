"""Does a tuned causal-LM fine-tune beat the field's recipes? tunelab's search over search seeds, against the
reference recipes, transformers' defaults and an oracle grid, on tasks that ship with the project.

Per task (a recipe in recipes/configs/, SmolLM2-135M-Instruct LoRA):

  untuned        the recipe's untuned run (transformers' defaults, the method's peft defaults)
  references     recipes/references/*.yaml (torchtune, Axolotl, LLaMA-Factory LoRA defaults)
  grid           learning rate x epochs (4 x 3 = 12 points), everything else untuned; "oracle" is the
                 point with the best mean test score: the best a user could have found by hand, known
                 only after testing every point
  tunelab s      `tunelab run`'s search (the recipe's search settings and budget, sampler seed s) and
                 its winner retrained

Every arm trains with the same training seeds on the same rows and is tested on the same test split
(test loss and the greedy answers' exact match and token F1). Every run is stored under --out and read
back when the command runs again, so a stopped benchmark continues where it was.

    python benchmarks/causal_search.py --task sst2_words [--search-seeds 5] [--seeds 2]
    python benchmarks/causal_search.py --task dolly_short_qa
    python benchmarks/causal_search.py --task sst2_words --quick   # a small version to check it still works
    python benchmarks/causal_search.py --task sst2_words --report-only   # the table of the committed JSON
    python benchmarks/causal_search.py --task dolly_short_qa --only winners --winners-of OLD.json  # retest
    python benchmarks/causal_search.py --task dolly_short_qa --seeds 4 --only references,winners \
        --winners-of benchmarks/causal_search_dolly_short_qa.json   # seeds 2, 3 added to those arms
    python benchmarks/causal_search.py --task sst2_words --only tunelab --variant sequential \
        --set search.selection.top_k=4 --set search.selection.seeds=2 --set search.selection.sequential=true
    python benchmarks/causal_search.py --task sst2_words --output benchmarks/causal_search_sst2_words_fp32.json
    python benchmarks/causal_search.py --task sst2_words --precision fp32 --seeds 4 --only grid \
        --output benchmarks/causal_search_sst2_words_fp32.json   # fp32 seeds added on a bf16 machine
    python benchmarks/causal_search.py --task dolly_short_qa --output J --current-code tunelab_a_0,tunelab_b_1,...

A change to the search that leaves some searches as they were (e.g. it acts only where a search shortened a
trial) reruns only the others as a new variant; --current-code names the arms that are the current code's
searches, and the report judges the goals over them too. Every search is also compared with the best
reference by Welch's test over the training seeds (does it miss the floor by more than the seeds' noise?).

Each arm records the precision it trained in (training.mixed_precision "auto" resolves per machine: bf16 where
the CPU or GPU runs it natively, fp32 elsewhere); the goals say when they compare arms of several precisions,
since the precision alone moves a configuration's test scores by about as much as the goals' margins.

Prints a seed x arm table and the goals' verdicts; writes benchmarks/causal_search_<task>.json (--quick: under
--out; --output: that file).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from finetune import FinetuneConfig  # noqa: E402
from finetune.precision import resolve_precision  # noqa: E402
from hpo.finetune import search_finetune  # noqa: E402
from hpo.finetune.time_spent import training_share  # noqa: E402
from recipes.recipe import load_recipe  # noqa: E402
from recipes.references import reference_config  # noqa: E402
from recipes.run import seed_run  # noqa: E402
from recipes.stats import compare  # noqa: E402

# task -> (recipe, the generation metric that is its accuracy)
TASKS = {
    "sst2_words": ("recipes/configs/sst2_words_smollm2_lora.yaml", "exact_match"),
    "dolly_short_qa": ("recipes/configs/dolly_short_qa_smollm2_lora.yaml", "token_f1"),
}
GRID_LEARNING_RATES = (1e-4, 3e-4, 1e-3, 3e-3)  # spans the causal-LM LoRA space's [5e-5, 3e-3]
GRID_EPOCHS = (1, 2, 3)
QUICK = ["data.max_train_samples=24", "data.validation_size=8", "data.test_size=8"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(TASKS), required=True)
    parser.add_argument("--search-seeds", type=int, default=5, help="searches, with sampler seeds 0..N-1")
    parser.add_argument(
        "--search-seed",
        type=int,
        action="append",
        help="run only this search seed (repeatable): splits the searches between processes",
    )
    parser.add_argument(
        "--seeds", type=int, default=2, help="training seeds per arm (0..N-1); seeds an arm holds are kept"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "causal_search", help="where runs are kept")
    parser.add_argument("--quick", action="store_true", help="24 training rows, 1 search, 2 grid points")
    parser.add_argument(
        "--grid-learning-rate",
        type=float,
        action="append",
        help="train only this grid learning rate (repeatable): splits the grid between processes",
    )
    parser.add_argument(
        "--grid-epochs", type=int, action="append", help="train only this grid epoch count (repeatable)"
    )
    parser.add_argument(
        "--only", default="untuned,references,tunelab,grid", help="the arm groups to train now (in this order)"
    )
    parser.add_argument("--report-only", action="store_true", help="print the table of the JSON, train nothing")
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        help="train every arm in this precision (training.mixed_precision no / bf16) instead of the recipe's "
        "auto, e.g. to add seeds to arms another machine trained; an arm is never extended in another precision",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="the JSON to read and extend (default benchmarks/causal_search_TASK.json), e.g. one per precision",
    )
    parser.add_argument(
        "--variant",
        help="a name for search settings other than the recipe's (with --set): its arms are tunelab_NAME_S",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="search.KEY=VALUE",
        help="override the recipe's search settings for this variant, e.g. search.selection.sequential=true",
    )
    parser.add_argument(
        "--current-code",
        metavar="ARM,ARM,...",
        help="record in the JSON which tunelab arms are the current code's searches (e.g. arms of several variants "
        "where a change leaves some searches as they were); the report then judges the goals over them",
    )
    parser.add_argument(
        "--winners-of",
        type=Path,
        help="with --only winners: retrain the tunelab arms' winners stored in this JSON (their searches not run "
        "again), e.g. to test them again after a change to how runs are scored",
    )
    args = parser.parse_args()
    if bool(args.set) != bool(args.variant):
        parser.error("--set and --variant go together: a variant names the search settings it changes")
    if any(not item.startswith("search.") for item in args.set):
        parser.error("--set: only search.* keys (the other arms must train what the recipe says)")

    recipe_path, generation_metric = TASKS[args.task]
    forced = {"fp32": ["training.mixed_precision=no"], "bf16": ["training.mixed_precision=bf16"], None: []}
    recipe = load_recipe(ROOT / recipe_path, (QUICK if args.quick else []) + forced[args.precision] + args.set)
    seeds = list(range(args.seeds))
    name = f"{args.task}_quick" if args.quick else args.task
    run_dir = args.out / name
    output = run_dir / "causal_search.json" if args.quick else ROOT / "benchmarks" / f"causal_search_{name}.json"
    output = args.output or output
    learning_rates, epochs = GRID_LEARNING_RATES, GRID_EPOCHS
    if args.quick:
        learning_rates, epochs = GRID_LEARNING_RATES[1:3], GRID_EPOCHS[:1]
    if args.grid_learning_rate:
        learning_rates = tuple(args.grid_learning_rate)
    if args.grid_epochs:
        epochs = tuple(args.grid_epochs)
    search_seeds = args.search_seed or range(1 if args.quick else args.search_seeds)

    def stored() -> dict:
        """The JSON now: another invocation (e.g. --only grid beside --only tunelab) may add arms."""
        return json.loads(output.read_text()) if output.is_file() else {}

    # arm -> {"group", "runs", ...}; arms stored by earlier invocations (e.g. with another --only) stay
    arms = stored().get("arms", {})
    if args.current_code:
        current_code = args.current_code.split(",")
        unknown = [arm for arm in current_code if arms.get(arm, {}).get("group") != "tunelab"]
        if unknown:
            parser.error(f"--current-code: {unknown} are not tunelab arms of {output}")
        output.write_text(json.dumps({**stored(), "current_code": current_code}, indent=2))
    if args.report_only or args.current_code:
        _report(arms, generation_metric, stored().get("current_code", []))
        return

    def recorded(arm: str) -> bool:
        """Already in the JSON with these seeds or more (e.g. committed by an earlier session): not trained
        again, and kept whole (fewer --seeds than an arm holds never drops its other seeds)."""
        return arm in arms and set(seeds) <= {run["seed"] for run in arms[arm]["runs"]}

    def train_arm(arm: str, group: str, config: FinetuneConfig, **extra) -> None:
        if recorded(arm):
            print(f"[causal_search] {arm}: recorded in {output.name}", flush=True)
            return
        # A seed the JSON already holds for this arm is kept (e.g. --seeds 4 adds seeds 2 and 3 to a 2-seed arm).
        stored_runs = {run["seed"]: run for run in arms.get(arm, {}).get("runs", [])}
        precision = resolve_precision(config.training.mixed_precision)
        precision = "fp32" if precision == "no" else precision
        if stored_runs and arms[arm].get("precision", precision) != precision:
            raise SystemExit(
                f"[causal_search] {arm}: its seeds in {output.name} trained in {arms[arm]['precision']}, this "
                f"machine trains {precision}: pass --precision {arms[arm]['precision']} (or another --output)"
            )
        runs = []
        for seed in seeds:
            if seed in stored_runs:
                runs.append(stored_runs[seed])
                continue
            started = time.perf_counter()
            record, resumed = seed_run(config, arm, seed, None, run_dir)
            print(
                f"[causal_search] {arm} seed {seed}: test loss {record['test']['test_loss']:.4f}, "
                f"{generation_metric} {record['test'][f'test_{generation_metric}']:.3f}"
                f"{' (stored)' if resumed else f', {time.perf_counter() - started:.0f} s'}",
                flush=True,
            )
            runs.append(_summarised(record))
        on_disk = stored()  # read again before writing
        arms.update(on_disk.get("arms", {}))
        arms[arm] = {"group": group, "runs": runs, "precision": precision, **extra}
        header = {"task": args.task, "recipe": recipe_path, "generation_metric": generation_metric, "seeds": seeds}
        header["current_code"] = on_disk.get("current_code", [])
        output.write_text(json.dumps({**header, "arms": arms}, indent=2, default=str))

    for group in args.only.split(","):
        if group == "untuned":
            train_arm("untuned", "untuned", recipe.untuned)
        elif group == "references":
            for reference in recipe.references:
                train_arm(reference, "reference", reference_config(reference, recipe.untuned))
        elif group == "grid":
            for lr in learning_rates:
                for n_epochs in epochs:
                    overrides = {"training.learning_rate": lr, "training.num_train_epochs": n_epochs}
                    train_arm(f"grid_lr{lr:g}_ep{n_epochs}", "grid", recipe.untuned.with_overrides(overrides))
        elif group == "tunelab":
            prefix = f"tunelab_{args.variant}" if args.variant else "tunelab"
            for search_seed in search_seeds:
                search_dir = run_dir / f"{prefix.replace('tunelab', 'search')}_{search_seed}"
                with _held_alone(search_dir) as alone:
                    if not alone:
                        print(
                            f"[causal_search] {prefix}_{search_seed}: another invocation runs it; skipped", flush=True
                        )
                        continue
                    # Read again under the lock: another invocation may have finished this search meanwhile.
                    arms.update(stored().get("arms", {}))
                    if recorded(f"{prefix}_{search_seed}"):
                        print(f"[causal_search] {prefix}_{search_seed}: recorded in {output.name}", flush=True)
                        continue
                    started = time.perf_counter()
                    search = search_finetune(
                        recipe.untuned, replace(recipe.search, seed=search_seed), run_dir=search_dir
                    )
                    summary = json.loads((search_dir / "summary.json").read_text())
                    winner = search.best_config
                    # Under a selection rule with re-runs the winner need not be the trial with the best search score.
                    winner_trial = next(t for t in search.result.trials if t.number == summary["winner_trial"])
                    train_arm(
                        f"{prefix}_{search_seed}",
                        "tunelab",
                        winner,
                        variant=args.variant,
                        settings_changed=args.set,
                        search_seed=search_seed,
                        search_steps=round(summary["full_run_equivalents_spent"] * summary["full_run_steps"]),
                        full_run_equivalents=summary["full_run_equivalents_spent"],
                        search_seconds_this_invocation=time.perf_counter() - started,
                        time_breakdown=summary.get("time_breakdown"),
                        winner=_hyperparameters(winner, recipe.untuned),
                        winner_search_score=winner_trial.value,
                    )
        elif group == "winners":
            if args.winners_of is None:
                parser.error("--only winners needs --winners-of JSON")
            for arm, stored in json.loads(args.winners_of.read_text())["arms"].items():
                if stored["group"] == "tunelab" and (not args.search_seed or stored["search_seed"] in search_seeds):
                    searched = {k: v for k, v in stored.items() if k not in ("group", "runs")}
                    if args.winners_of.resolve() != output.resolve():  # else: more seeds for the file's own arms
                        searched["winner_retrained_from"] = str(args.winners_of)
                    config = recipe.untuned.with_overrides(stored["winner"])
                    train_arm(arm, "tunelab", config, **searched)
        else:
            parser.error(f"--only: unknown group {group!r} (untuned, references, tunelab, grid, winners)")
    _report(arms, generation_metric, stored().get("current_code", []))


@contextmanager
def _held_alone(folder: Path) -> Iterator[bool]:
    """Whether this process holds ``folder``'s lock (released when the block or the process ends): two
    invocations whose --search-seed lists overlap must not run one search and its retrains twice at once."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "benchmark.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def _summarised(record: dict) -> dict:
    return {
        "seed": record["seed"],
        "test": record["test"],
        "validation": record["validation"],
        "optimizer_steps": record["optimizer_steps"],
        "wall_seconds": record["wall_seconds"],
    }


def _hyperparameters(config: FinetuneConfig, untuned: FinetuneConfig) -> dict:
    """The winner's values that differ from the untuned config's (section.key: value)."""
    changed = {}
    for section in ("training", "method", "data"):
        mine, theirs = getattr(config, section).__dict__, getattr(untuned, section).__dict__
        changed |= {f"{section}.{k}": v for k, v in mine.items() if theirs.get(k) != v and k != "output_dir"}
    return changed


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _report(arms: dict, generation_metric: str, current_code: list[str]) -> None:
    """Seed x arm table, the oracle grid point, and the issue's goals on the generation metric and test loss:
    per variant over its own searches, then over the current code's searches where the JSON names them."""

    def scores(arm: str, key: str) -> list[float]:
        return [run["test"][f"test_{key}"] for run in arms[arm]["runs"]]

    print(f"\n| arm | test loss per seed | mean | {generation_metric} per seed | mean | steps | precision |")
    print("|---|---|---|---|---|---|---|")
    for arm, record in arms.items():
        loss, gen = scores(arm, "loss"), scores(arm, generation_metric)
        steps = record["runs"][0]["optimizer_steps"]
        extra = f" (+{record['search_steps']} searching)" if record["group"] == "tunelab" else ""
        print(
            f"| {arm} | {', '.join(f'{v:.3f}' for v in loss)} | {statistics.fmean(loss):.3f} | "
            f"{', '.join(f'{v:.3f}' for v in gen)} | {statistics.fmean(gen):.3f} | {steps}{extra} | "
            f"{record.get('precision', 'not recorded')} |"
        )

    groups = {g: [a for a, r in arms.items() if r["group"] == g] for g in ("reference", "grid")}
    variants = {}  # None: the recipe's own search settings
    for arm, record in arms.items():
        if record["group"] == "tunelab":
            variants.setdefault(record.get("variant"), []).append(arm)
    sections = {}  # title -> the searches judged together
    for variant, searches in variants.items():
        changed = arms[searches[0]].get("settings_changed") or "the recipe's search settings"
        sections[f"tunelab{'' if variant is None else ' ' + variant}: {changed}"] = searches
    if current_code:
        sections[f"the current code's searches: {', '.join(current_code)}"] = current_code
    for title, searches in sections.items():
        print(f"\n## {title}")
        compared = searches + groups["reference"] + groups["grid"]
        precisions = sorted({arms[arm].get("precision", "not recorded") for arm in compared})
        if len(precisions) > 1:
            print(f"(compares arms trained in {', '.join(precisions)}: the precision alone moves test scores)")
        _goals(arms, searches, groups, generation_metric, scores)
        _time_outside_training(arms, searches)
        _winners_curse(arms, searches)


def _goals(arms: dict, searches: list[str], groups: dict, generation_metric: str, scores) -> None:
    """The issue's goals for one set of searches: every search against the best reference, the median
    against the oracle grid point."""
    for key, better in ((generation_metric, max), ("loss", min)):
        sign = 1 if better is max else -1
        tuned = {arm: statistics.fmean(scores(arm, key)) for arm in searches}
        median = statistics.median(tuned.values())
        worst = min(tuned.values()) if better is max else max(tuned.values())
        print(f"\n{key}: tunelab median over {len(tuned)} searches {median:.3f} (worst {worst:.3f})")
        if groups["reference"]:
            best_ref = better(groups["reference"], key=lambda a: statistics.fmean(scores(a, key)))
            ref_mean, ref_sd = _mean_sd(scores(best_ref, key))
            floor = ref_mean - sign * ref_sd
            ok = all(sign * (v - floor) >= 0 for v in tuned.values())
            print(
                f"  best reference {best_ref} {ref_mean:.3f} +/- {ref_sd:.3f}: every search at least the "
                f"reference minus one seed sd ({floor:.3f})? {'yes' if ok else 'no'}"
            )
            # Whether a search under the floor is worse than the reference beyond the training seeds' noise.
            for arm in searches:
                c = compare(scores(arm, key), scores(best_ref, key))
                where = "at" if sign * (c.tuned_mean - floor) >= 0 else "under"
                print(
                    f"    {arm}: {c.tuned_mean:.3f} +/- {c.tuned_std:.3f}, {where} the floor; minus the reference "
                    f"{c.difference:+.3f} [{c.ci_low:+.3f}, {c.ci_high:+.3f}] (95%), Welch p {c.p_value:.2g}"
                )
        if groups["grid"]:
            oracle = better(groups["grid"], key=lambda a: statistics.fmean(scores(a, key)))
            oracle_mean = statistics.fmean(scores(oracle, key))
            gap = sign * (oracle_mean - median)
            verdict = f"; within 3 points? {'yes' if gap <= 0.03 else 'no'}" if key == generation_metric else ""
            print(f"  oracle grid point {oracle} {oracle_mean:.3f}: median's gap {gap:+.3f}{verdict}")


def _time_outside_training(arms: dict, searches: list[str]) -> None:
    """Goal 3: everything but training (setup, evaluation, checkpoints, between runs) at most 25% of a search."""
    shares = {
        arm: 1 - share
        for arm in searches
        if (share := training_share(arms[arm].get("time_breakdown") or {})) is not None
    }
    if shares:
        listed = ", ".join(f"{arm.rsplit('_', 1)[-1]}: {100 * share:.1f}%" for arm, share in shares.items())
        met = sum(share <= 0.25 for share in shares.values())
        print(f"\noutside training, share of each search's time (seed: share): {listed}")
        print(f"  at most 25%? {met} of {len(shares)} searches")


def _winners_curse(arms: dict, searches: list[str]) -> None:
    """Each winner's score in its search (its objective, one training seed, the best of many trials) beside its
    validation loss on the same split after retraining it with the arm's seeds: with a loss objective, a large
    rise means a lucky trial won."""
    scored = [arm for arm in searches if "winner_search_score" in arms[arm]]
    if not scored:
        return
    print("\n| search | winner's steps | its search score (the objective) | retrained validation loss, per seed |")
    print("|---|---|---|---|")
    for arm in scored:
        runs = arms[arm]["runs"]
        retrained = ", ".join(f"{run['validation']['eval_loss']:.3f}" for run in runs)
        score = arms[arm]["winner_search_score"]
        print(f"| {arm} | {runs[0]['optimizer_steps']} | {score:.3f} | {retrained} |")


if __name__ == "__main__":
    main()
