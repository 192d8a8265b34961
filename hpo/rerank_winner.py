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

Candidates re-run on the same validation rows (hpo.finetune.reruns: the same draw for every candidate), so
where the score is one split's loss, a sampled winner is compared row by row with the best re-run
warm-start or untuned trial (a configuration the user would launch anyway, such as a field's recipe): the
reason gives the mean row gain and its standard error, the noise of the rows (not of the training seed).
``selection.incumbent_z`` turns that into a test: the sampled trial wins only if its gain exceeds
``incumbent_z`` standard errors, else the incumbent does. Off here (None); a recipe warm-started from the
field's recipes sets 1.645 (recipes.recipe). It trades a search's best case for its worst: on sst2_words (48
validation rows) the standard error of a gain was 0.005 between two similar recipes and 0.024 in a search
whose sampled winner re-ran 0.021 ahead of Axolotl's recipe and tested 0.122 against its 0.148, and at 1.645
standard errors the test gave that search back to the recipe, as it did the one whose winner tested worse
than the recipe (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable

from hpo import attributes
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
    incumbent_z: float | None = None,
) -> Selection:
    """Re-run each of ``picked`` (best first) once with ``rerun(trial, 0)`` while ``rerun_length(trial)`` fits
    in ``steps_left`` (None: no step budget); the best re-run wins, unless ``incumbent_z`` holds it to the
    row-by-row test against an incumbent (module docstring). Where no re-run finished, the best search trial
    wins."""
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
    standard_error = margin = 0.0
    gain = gain_over_incumbent(best, scored, sign)
    if isinstance(gain, str):  # no comparison: why, where the test was asked for
        reason += gain if incumbent_z is not None else ""
    else:
        incumbent, mean_gain, standard_error, rows = gain
        against = (
            f"{incumbent.role} trial {incumbent.trial} by {mean_gain:+.4g} on the re-runs' {rows} validation rows "
            f"(standard error {standard_error:.2g})"
        )
        margin = 0.0 if incumbent_z is None else incumbent_z * standard_error
        if incumbent_z is None:
            reason += f"; it beats {against}"
        elif mean_gain > margin:
            reason += f"; it beats {against}, by more than {incumbent_z:g} standard errors"
        else:
            reason += f"; within {incumbent_z:g} standard errors against {against}: trial {incumbent.trial} wins"
            best = incumbent
    return Selection(candidates, best.trial, first, standard_error, margin, reason)


INCUMBENT_ROLES = (attributes.WARM_START, attributes.UNTUNED)


def gain_over_incumbent(
    best: Candidate, scored: list[Candidate], sign: float
) -> tuple[Candidate, float, float, int] | str:
    """A sampled ``best`` (the best re-run) against the best re-run incumbent, row by row: (the incumbent, the
    mean row gain, its standard error, the rows); where there is no such comparison, why (empty: ``best`` is an
    incumbent itself). ``sign``: +1 where higher scores are better."""
    incumbents = [c for c in scored if c.role in INCUMBENT_ROLES]
    if best.role in INCUMBENT_ROLES:
        return ""
    if not incumbents:
        return "; no warm-start or untuned trial was re-run to test it against"
    incumbent = max(incumbents, key=lambda c: sign * c.rerun_mean)
    challenger_rows = best.row_scores[0] if best.row_scores else []
    incumbent_rows = incumbent.row_scores[0] if incumbent.row_scores else []
    if len(challenger_rows) < 2 or len(challenger_rows) != len(incumbent_rows):
        return f"; no row-by-row scores to test it against trial {incumbent.trial}: the best re-run wins"
    gains = [sign * (a - b) for a, b in zip(challenger_rows, incumbent_rows, strict=True)]
    return incumbent, statistics.fmean(gains), statistics.stdev(gains) / math.sqrt(len(gains)), len(gains)
