"""Choose a fine-tune search's winner by re-running its top candidates with fresh seeds (hpo.winner_rule).

Replicate i of every candidate trains with seed rerun_seed(search seed, i), never a search or recipe seed.
When the validation split is carved from train, replicate i also draws a fresh validation split
(data.validation_split_seed, the same seed; the test split never moves): the re-runs then measure the noise
of the validation set too, not only of the training seed. Replicate i is the same draw for every candidate,
so candidates are compared on equal terms; searches with other seeds draw other re-runs, so their choices
sample the re-run noise rather than share one draw of it. Each finished re-run is stored as JSON, so a killed
run resumes; its model is deleted (only its score is needed; its tracker logs stay), except for the trials
in ``keep_models``: `tunelab run` tests the untuned configuration's re-runs as untuned-arm seeds
(kept_reruns), since nothing was selected on them.

Under ``accelerate launch`` with several processes, every process trains every re-run together: the main
process writes the candidates' configs to candidates.json, the others read them and train each re-run the
main process announces (follow_selection): the sequential rule decides the next re-run from the scores.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
from collections.abc import Callable, Collection
from dataclasses import asdict
from pathlib import Path

import finetune
from finetune import FinetuneConfig
from finetune.row_scores import row_losses
from finetune.train import MODEL_DIR, process_state
from hpo.finetune.cross_validation import fold_config
from hpo.finetune.plan import Scoring
from hpo.finetune.time_spent import summed
from hpo.finetune.trial_training import broadcast, release_memory
from hpo.rerank_winner import select_winner_by_reruns
from hpo.results import SearchResult, TrialRecord
from hpo.rung_signal import RungSignal
from hpo.sequential_winner import select_winner_sequentially
from hpo.winner_rule import Selection, SelectionSettings, select_winner

SELECTION_SEED = 10_000
SEARCH_SEED_STRIDE = 1_000  # replicates of one search stay below the next search seed's


def rerun_seed(search_seed: int, replicate: int) -> int:
    """The seed of a re-run: far from recipe seeds (0, 1, 42...), distinct per search seed and replicate, and
    below 2**32 (numpy's seeds) for any search seed."""
    return SELECTION_SEED + (SEARCH_SEED_STRIDE * search_seed + replicate) % 2**31


def redraws_validation(config: FinetuneConfig, scoring: Scoring) -> bool:
    """Whether a re-run draws its own validation rows (folds, or a split carved from train): its score then
    compares with the other candidates' re-runs of the same seed, not with search scores (on dolly_short_qa one
    draw put every candidate 0.2-0.4 above its search score, another within 0.07)."""
    return scoring.folds is not None or (config.data.validation_file is None and config.data.dataset is None)


CANDIDATES_FILE = "candidates.json"


def select_finetune_winner(
    result: SearchResult,
    configs: dict[int, FinetuneConfig],
    *,
    folder: Path,
    selection: SelectionSettings,
    scoring: Scoring,
    search_seed: int,
    keep_models: Collection[int] = (),
    steps_left: int | None = None,
    rerun_length: Callable[[TrialRecord], int] | None = None,
    constant_prediction: RungSignal | None = None,
    budget_steps: Callable[[FinetuneConfig, int], int] = lambda config, steps: steps,
) -> Selection:
    """``configs`` maps each picked trial (hpo.winner_rule.pick_candidates, in its order) to its config;
    the re-runs of the trials in ``keep_models`` keep their saved model. The sequential rule
    (``selection.sequential``) re-runs within ``steps_left``, each re-run priced by ``rerun_length``, and
    beats an untuned run at ``constant_prediction``'s score without re-running it. A re-run's optimizer
    steps count as ``budget_steps(config, steps)`` (hpo.finetune.plan.SearchPlan.budget_steps)."""
    folder.mkdir(parents=True, exist_ok=True)
    processes = process_state()
    if processes.is_main_process:
        raw = {
            "seeds": selection.seeds,
            "search_seed": search_seed,
            "scoring": asdict(scoring),
            "configs": {str(n): c.to_dict() for n, c in configs.items()},
        }
        (folder / CANDIDATES_FILE).write_text(json.dumps(raw, indent=2))
    processes.wait_for_everyone()  # the other processes read candidates.json now

    most, done = len(configs) * selection.seeds, [0]

    # Re-ranking compares the winner with the best re-run field recipe row by row (hpo.rerank_winner) where
    # the score is one validation split's loss.
    rows = selection.rerank and row_scored(scoring)

    def rerun(record: TrialRecord, replicate: int) -> tuple[float, int, list[float] | None]:
        done[0] += 1
        seed = rerun_seed(search_seed, replicate)
        if processes.num_processes > 1:
            broadcast([record.number, replicate])  # the followers train the same re-run
        _say(f"choosing the winner: re-run {done[0]} of at most {most} (trial {record.number}, seed {seed})")
        keep = record.number in keep_models
        score, steps, row_scores = rerun_candidate(
            configs[record.number], record.number, replicate, folder, scoring, seed=seed, keep_model=keep, rows=rows
        )
        drawn = " on validation rows drawn with it" if redraws_validation(configs[record.number], scoring) else ""
        _say(f"trial {record.number} re-run with seed {seed}{drawn}: {scoring.metric}={score:.4g}")
        return score, budget_steps(configs[record.number], steps), row_scores

    picked = [next(t for t in result.trials if t.number == number) for number in configs]
    if selection.rerank:
        chosen = select_winner_by_reruns(
            result,
            rerun,
            picked=picked,
            steps_left=steps_left,
            rerun_length=rerun_length or (lambda record: 0),
            incumbent_z=selection.incumbent_z,
        )
    elif selection.sequential:
        chosen = select_winner_sequentially(
            result,
            rerun,
            settings=selection,
            picked=picked,
            steps_left=steps_left,
            rerun_length=rerun_length or (lambda record: 0),
            constant_prediction=constant_prediction,
        )
    else:
        chosen = select_winner(result, rerun, settings=selection, picked=picked)
    if processes.num_processes > 1:
        broadcast(None)  # no more re-runs
    _say(f"winner: trial {chosen.winner}: {chosen.reason}")
    processes.wait_for_everyone()  # followers finished their part of the last re-run
    if processes.is_main_process:
        (folder / "selection.json").write_text(json.dumps(chosen.to_dict(), indent=2, default=str))
    return chosen


def follow_selection(folder: Path) -> None:
    """A non-main process: train each re-run the main process announces, until it announces None."""
    processes = process_state()
    processes.wait_for_everyone()
    raw = json.loads((folder / CANDIDATES_FILE).read_text())
    scoring = Scoring(**raw["scoring"])
    configs = {int(number): FinetuneConfig.from_dict(c) for number, c in raw["configs"].items()}
    while (message := broadcast(None)) is not None:
        number, replicate = message
        try:
            seed = rerun_seed(raw["search_seed"], replicate)
            rerun_candidate(configs[number], number, replicate, folder, scoring, seed=seed)
        except Exception as exc:  # the main process records the failure and decides what comes next
            print(f"[hpo] follower: re-run failed here too: {type(exc).__name__}: {exc}", file=sys.stderr)
    processes.wait_for_everyone()


def rerun_candidate(
    config: FinetuneConfig,
    trial: int,
    replicate: int,
    folder: Path,
    scoring: Scoring,
    *,
    seed: int,
    keep_model: bool = False,
    rows: bool = False,
) -> tuple[float, int, list[float] | None]:
    """Train ``config`` once more as replicate ``replicate``, with ``seed``; its validation score, steps and,
    with ``rows``, each validation row's share of its loss (finetune.row_scores; None otherwise).

    Under cross-validation a re-run is a whole k-fold run on freshly dealt folds (the mean of the folds)."""
    out = folder / f"trial_{trial:04d}" / f"replicate_{replicate}"
    done = out.with_suffix(".json")
    process_state().wait_for_everyone()  # every process sees the same files before deciding to skip
    if done.is_file():
        record = json.loads(done.read_text())
        return record["score"], record["steps"], record.get("row_scores")
    folds = scoring.folds
    overrides = {
        "training.seed": seed,
        "training.output_dir": str(out),
        "training.run_name": f"selection/trial_{trial:04d}/replicate_{replicate}",
    }
    if redraws_validation(config, scoring):
        overrides["data.validation_split_seed"] = seed
    if rows:  # the kept checkpoint is the scored evaluation's, whatever the task's default
        overrides["training.metric_for_best_model"] = scoring.metric
    fresh = config.with_overrides(overrides)
    runs = [fresh] if folds is None else [fold_config(fresh, folds, f, str(out / f"fold_{f}")) for f in range(folds)]
    scores, steps, breakdowns = [], 0, []
    for run_config in runs:
        run = finetune.train(run_config)
        release_memory()
        breakdowns.append(run.time_breakdown)
        values = [e[scoring.metric] for e in run.evaluations if scoring.metric in e]
        if not values:
            raise ValueError(f"re-run of trial {trial} reported no {scoring.metric}")
        scores.append(scoring.score(values))
        steps += run.optimizer_steps
    score = statistics.fmean(scores)
    row_scores = None
    if process_state().is_main_process:
        if rows:  # one split (row_scored); the saved model is the scored (best) evaluation's: metric_for_best_model
            row_scores = _row_scores(out, trial)
        keep = keep_model and folds is None  # a k-fold re-run is k models, none of them trained on all rows
        record = {
            "score": score,
            "steps": steps,
            "overrides": overrides,
            "fold_scores": scores if folds else None,
            "model_kept": keep,
            "time_breakdown": summed(breakdowns),
            "row_scores": row_scores,
        }
        done.write_text(json.dumps(record))
        if not keep:
            shutil.rmtree(out / MODEL_DIR, ignore_errors=True)  # only the score is needed (and tracker logs kept)
    return score, steps, row_scores


def _row_scores(run_dir: Path, trial: int) -> list[float] | None:
    """The re-run's validation rows' shares of its loss; None, said, where scoring them fails: they describe
    the choice (or test it, with selection.incumbent_z), and must never disqualify the candidate."""
    try:
        return row_losses(run_dir)
    except Exception as exc:  # noqa: BLE001
        _say(f"trial {trial}: its re-run's validation rows could not be scored one by one: {type(exc).__name__}: {exc}")
        return None


def row_scored(scoring: Scoring) -> bool:
    """Whether re-runs can be compared row by row: the best evaluation's loss on one validation split (a run
    keeps its best checkpoint; finetune.row_scores scores it)."""
    return scoring.folds is None and scoring.metric == "eval_loss" and scoring.use == "best"


def kept_reruns(folder: Path, trial: int) -> list[dict]:
    """The finished re-runs of ``trial`` whose model was kept, in replicate order: each its stored record
    plus "output_dir", the folder it trained in (model, config, run result; the caller may move it)."""
    found = []
    records = (folder / f"trial_{trial:04d}").glob("replicate_*.json")
    for done in sorted(records, key=lambda path: int(path.stem.removeprefix("replicate_"))):
        record = json.loads(done.read_text())
        if record.get("model_kept"):
            found.append({**record, "output_dir": str(done.with_suffix(""))})
    return found


def _say(message: str) -> None:
    if process_state().is_main_process:
        print(f"[hpo] {message}", file=sys.stderr, flush=True)
