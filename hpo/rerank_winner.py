"""Re-ranking: the winner is the best of a search's top trials by one fresh-seed re-run each.

A search's best trial is the maximum of many noisy single-seed scores (the winner's curse, hpo.winner_rule).
On a causal-LM LoRA search of 12-48-step trials scored on a few dozen validation rows, the best trial was
often a short run at a high learning rate that got lucky: 0.088 validation loss in the search, 0.155 and
0.146 retrained with fresh seeds (benchmarks/RESULTS.md). A second draw of each top trial exposes that for
a fraction of a full run, since each re-run costs its own trial's length.

So, with ``selection.seeds: 1``: the ``top_k`` best complete trials are re-run once each, best first, while
their re-runs fit in ``steps_left``, a trial whose re-run no longer fits being passed over for shorter ones;
the trial with the best re-run wins (its search score is left out: it was picked for being high). The search
keeps one full run for these re-runs, and always room for the best trial's and the shortest other top trial's,
so that at least two are compared (hpo.finetune.admission.RerunBudget.rerank_reserve). There is no baseline
and no noise test: one re-run per trial cannot measure the noise, and the untuned run is only a candidate if
it ranks among the top trials. That suits a search whose untuned run is far behind the field's recipes (a
causal-LM LoRA at transformers' default learning rate), where `tunelab run` still compares the winner with the
untuned run and the references on test seeds; the rules with a baseline (seeds >= 2) suit a search where
tuning may not help at all.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from hpo.results import SearchResult, TrialRecord
from hpo.winner_rule import Candidate, Rerun, Selection


def rerank_candidates(result: SearchResult, top_k: int) -> list[TrialRecord]:
    """The ``top_k`` best complete feasible trials, best first, the untuned one among them only by its rank."""
    return result.ranked()[:top_k]


def select_winner_by_reruns(
    result: SearchResult,
    rerun: Rerun,
    *,
    picked: list[TrialRecord],
    steps_left: int | None,
    rerun_length: Callable[[TrialRecord], int],
) -> Selection:
    """Re-run each of ``picked`` (best first) once with ``rerun(trial, 0) -> (score, steps)`` while
    ``rerun_length(trial)`` fits in ``steps_left`` (None: no step budget); the best re-run wins. Where no
    re-run finished, the best search trial wins."""
    if not picked:
        raise ValueError("re-ranking: no complete trial to re-rank")
    sign = 1.0 if result.direction == "maximize" else -1.0
    candidates = [Candidate.of_trial(record, baseline=False) for record in picked]
    left = math.inf if steps_left is None else steps_left
    skipped = []
    for record, candidate in zip(picked, candidates, strict=True):
        if rerun_length(record) > left:
            skipped.append(record.number)
            continue
        if candidate.add_rerun(rerun, record):
            left -= candidate.steps
    first = picked[0].number
    scored = [c for c in candidates if c.values]
    if not scored:
        reason = f"no re-run finished (the step budget or failures): trial {first}, the best in the search, wins"
        return Selection(candidates, first, first, 0.0, 0.0, reason)
    best = max(scored, key=lambda c: sign * c.rerun_mean)
    runs = ", ".join(f"trial {c.trial}: {c.search_value:.4g} -> {c.rerun_mean:.4g}" for c in scored)
    reason = f"trial {best.trial} has the best fresh re-run of the {len(scored)} re-ranked (search -> re-run: {runs})"
    if skipped:
        reason += f"; not re-run, too long for the budget left: trials {skipped}"
    return Selection(candidates, best.trial, first, 0.0, 0.0, reason)
